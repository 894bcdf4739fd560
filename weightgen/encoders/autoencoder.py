"""WeightAutoencoder: weight tokens -> continuous latents -> weight tokens, for latent diffusion.

The same per-token design as the VQ-VAE (MLPs conditioned on the token's metadata embedding), with
a continuous latent of `latent_dim` values per token. A diffusion model never lands exactly on a
training latent, so the decoder is trained on latents perturbed by Gaussian noise of std
`noise_std` (in units of the latent's running scale); latents are also kept near unit scale by a
small L2 penalty, so "small perturbation" means the same thing for every token.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from weightgen.encoders.base import TokenCodecMixin, token_mlp
from weightgen.specs import ArchSpec


class WeightAutoencoder(ModelMixin, ConfigMixin, TokenCodecMixin):
    @register_to_config
    def __init__(
        self,
        archs: list[dict],
        width: int = 16,
        hidden: int = 256,
        latent_dim: int = 8,
        embed_dim: int = 64,
        noise_std: float = 0.05,
    ):
        super().__init__()
        self._setup(archs, width, embed_dim)
        self.encoder = token_mlp(width + embed_dim, hidden, latent_dim)
        self.decoder = token_mlp(latent_dim + embed_dim, hidden, width)

    def forward(self, tokens: torch.Tensor, arch: torch.Tensor, meta: torch.Tensor, noise: bool = True):
        """Normalised tokens (M, width), arch index (M,), meta (M, 3) -> (reconstruction, latents (M, d))."""
        emb = self.meta_embed(arch, meta)
        z = self.encoder(torch.cat([tokens, emb], -1))
        z_in = z + self.config.noise_std * torch.randn_like(z) if noise and self.training else z
        return self.decoder(torch.cat([z_in, emb], -1)), z

    @torch.no_grad()
    def encode(self, flat: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
        """Flat weights (N, P) -> latents (N, T, latent_dim)."""
        layout, emb = self._meta(arch)
        tokens = self.tokens(arch, flat)
        return self.encoder(torch.cat([tokens, emb.expand(*tokens.shape[:-1], -1)], -1))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
        """Latents (N, T, latent_dim) -> flat weights (N, P)."""
        layout, emb = self._meta(arch)
        recon = self.decoder(torch.cat([latents, emb.expand(*latents.shape[:-1], -1)], -1))
        return self.untokens(arch, recon * layout.mask.to(recon.device, recon.dtype))
