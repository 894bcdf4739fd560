"""WeightDiT: a transformer denoiser over per-token encoder latents, built from diffusers blocks.

One sequence = one network: its T tokens' latents (from WeightAutoencoder, or LoRA factors), each
with a learned embedding of its (arch, layer, role, position) metadata added, so one model serves
many archs. Every block is diffusers' `BasicTransformerBlock` with `norm_type="ada_norm_single"`:
self-attention over the network's tokens, cross-attention to the prompt's MiniLM token embeddings,
and the timestep entering through adaptive layer norm (shift / scale / gate from one shared
`AdaLayerNormSingle` embedding, as in DiT (Peebles & Xie, 2023) and PixArt-α). The output head is
modulated the same way. Classifier-free guidance uses a learned null prompt (`null_text`).

This file holds only the denoiser; the noise process is a diffusers scheduler, owned by the
pipeline that will use this model.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from weightgen.encoders.base import MetaEmbedding
from weightgen.generators.common import TextStatsMixin


def _mask_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) bool keep-mask -> (B, 1, L) additive attention bias, as diffusers' blocks expect."""
    if mask is None:
        return None
    return (1.0 - mask.float()).mul(-10000.0).unsqueeze(1)


class WeightDiT(ModelMixin, ConfigMixin, TextStatsMixin):
    @register_to_config
    def __init__(
        self,
        latent_dim: int = 16,
        n_archs: int = 1,
        n_layers: int = 8,
        n_positions: int = 512,
        num_layers: int = 4,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        text_dim: int = 384,
        max_tokens: int = 1,
        task_kinds: list[str] | None = None,  # kinds trained on (others are refused); None = any
        pooled_conditioning: bool = True,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.proj_in = nn.Linear(latent_dim, dim)
        self.meta_embed = MetaEmbedding(n_archs, n_layers, n_positions, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.null_text = nn.Parameter(torch.zeros(1, 1, text_dim))  # the "no prompt" of guidance
        self.adaln_single = AdaLayerNormSingle(dim)
        # the prompt's mean token state joins the timestep in the adaptive norms: a global signal
        # every block sees from the first step, beside the slower-to-learn cross-attention
        self.pooled_proj = nn.Linear(text_dim, dim) if pooled_conditioning else None
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(dim, num_attention_heads, attention_head_dim, cross_attention_dim=dim,
                                  activation_fn="gelu-approximate", norm_type="ada_norm_single",
                                  norm_elementwise_affine=False)
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, latent_dim)
        # per-arch, per-slot latent statistics: the model denoises standardised latents, so the
        # noise has the same meaning in every slot (saved with the weights; set once before training)
        self.register_buffer("latent_mean", torch.zeros(n_archs, max_tokens, latent_dim))
        self.register_buffer("latent_std", torch.ones(n_archs, max_tokens, latent_dim))
        self._register_text_stats(text_dim)

    @torch.no_grad()
    def set_latent_stats(self, arch_index: int, latents: torch.Tensor, floor: float = 0.1) -> None:
        """Fit slot means and stds of one arch from its training latents (N, T, d). Stds are floored
        at `floor` x the arch's median std, so near-constant slots do not turn noise into large errors."""
        t = latents.shape[1]
        if t > self.config.max_tokens:
            raise ValueError(f"{t} tokens but the denoiser was built for at most {self.config.max_tokens}")
        std = latents.std(0) if len(latents) > 1 else torch.ones_like(latents[0])
        self.latent_mean[arch_index, :t] = latents.mean(0)
        self.latent_std[arch_index, :t] = std.clamp_min(floor * std.median().clamp_min(1e-8))

    def standardize(self, latents: torch.Tensor, arch_index: int) -> torch.Tensor:
        t = latents.shape[-2]
        return (latents - self.latent_mean[arch_index, :t]) / self.latent_std[arch_index, :t]

    def destandardize(self, x: torch.Tensor, arch_index: int) -> torch.Tensor:
        t = x.shape[-2]
        return x * self.latent_std[arch_index, :t] + self.latent_mean[arch_index, :t]

    def null_prompt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Text tokens (B, 1, text_dim) and mask (B, 1) of the unconditional prompt."""
        return self.null_text.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=self.null_text.device)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        arch_index: torch.Tensor,
        meta: torch.Tensor,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, T, d), timestep (B,), text (B, L, text_dim) + mask (B, L), arch_index (B,),
        meta (B, T, 3), token_mask (B, T) (False on padding when archs of different T share a
        batch) -> the model output (B, T, d) (noise, sample or v, as the scheduler is configured)."""
        b, t, _ = latents.shape
        h = self.proj_in(latents)  # (B, T, dim)
        h = h + self.meta_embed(arch_index.repeat_interleave(t), meta.reshape(b * t, 3)).view(b, t, -1)
        text_tokens = self.standardize_text(text_tokens)
        text = self.text_proj(text_tokens)  # (B, L, dim)
        embedded_t = self.adaln_single.emb(timestep, resolution=None, aspect_ratio=None, batch_size=b,
                                           hidden_dtype=h.dtype)
        if self.pooled_proj is not None:
            weights = text_mask.to(text_tokens.dtype)[..., None]
            pooled = (text_tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
            embedded_t = embedded_t + self.pooled_proj(pooled)
        t_emb = self.adaln_single.linear(self.adaln_single.silu(embedded_t))
        for block in self.blocks:
            h = block(h, attention_mask=_mask_bias(token_mask), encoder_hidden_states=text,
                      encoder_attention_mask=_mask_bias(text_mask), timestep=t_emb)
        shift, scale = (self.scale_shift_table[None] + embedded_t[:, None]).chunk(2, dim=1)  # (B, 1, dim) each
        return self.proj_out(self.norm_out(h) * (1 + scale) + shift)
