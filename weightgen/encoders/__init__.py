"""Encoders: map weight tokens to ids (VQ-VAE), latents (autoencoder) or low-rank deltas (LoRA)."""
