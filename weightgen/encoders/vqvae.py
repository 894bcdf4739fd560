"""WeightVQVAE: weight tokens -> discrete ids -> weight tokens.

Each normalised token (width floats) is encoded by a small MLP conditioned on its metadata
embedding, quantised by residual finite scalar quantisation (Mentzer et al., "Finite Scalar
Quantization", 2023; the `vector-quantize-pytorch` ResidualFSQ), and decoded by a second MLP
conditioned on the same embedding. FSQ has no codebook to collapse and needs no commitment loss.
A token becomes `num_quantizers` ids, each from a codebook of prod(levels) codes, so

    compression = 32 * width / (num_quantizers * log2(prod(levels)))

An autoregressive generator then models the id sequences.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from vector_quantize_pytorch import ResidualFSQ

from weightgen.encoders.base import TokenCodecMixin, token_mlp
from weightgen.specs import ArchSpec


class WeightVQVAE(ModelMixin, ConfigMixin, TokenCodecMixin):
    @register_to_config
    def __init__(
        self,
        archs: list[dict],
        width: int = 16,
        hidden: int = 256,
        latent_dim: int = 16,
        levels: tuple[int, ...] = (8, 5, 5, 5),
        num_quantizers: int = 4,
        embed_dim: int = 64,
    ):
        super().__init__()
        self._setup(archs, width, embed_dim)
        self.encoder = token_mlp(width + embed_dim, hidden, latent_dim)
        self.quantizer = ResidualFSQ(dim=latent_dim, levels=list(levels), num_quantizers=num_quantizers)
        self.decoder = token_mlp(latent_dim + embed_dim, hidden, width)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.config.levels)

    @property
    def bits_per_token(self) -> float:
        return self.config.num_quantizers * math.log2(self.codebook_size)

    @property
    def compression(self) -> float:
        return 32 * self.config.width / self.bits_per_token

    def _encode_tokens(self, arch: ArchSpec, tokens: torch.Tensor) -> torch.Tensor:
        layout, emb = self._meta(arch)
        return self.encoder(torch.cat([tokens, emb.expand(*tokens.shape[:-1], -1)], -1))

    def _decode_latents(self, arch: ArchSpec, z: torch.Tensor) -> torch.Tensor:
        layout, emb = self._meta(arch)
        out = self.decoder(torch.cat([z, emb.expand(*z.shape[:-1], -1)], -1))
        return out * layout.mask.to(out.dtype)

    def forward(self, arch: ArchSpec, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens (N, T, width) -> (reconstruction (N, T, width), ids (N, T, Q))."""
        z = self._encode_tokens(arch, tokens)
        zq, ids = self.quantizer(z)
        return self._decode_latents(arch, zq), ids

    @torch.no_grad()
    def encode(self, arch: ArchSpec, flat: torch.Tensor) -> torch.Tensor:
        """Flat weights (N, P) -> ids (N, T, num_quantizers)."""
        _, ids = self.quantizer(self._encode_tokens(arch, self.tokens(arch, flat)))
        return ids

    @torch.no_grad()
    def decode(self, arch: ArchSpec, ids: torch.Tensor) -> torch.Tensor:
        """ids (N, T, num_quantizers) -> flat weights (N, P)."""
        zq = self.quantizer.get_output_from_indices(ids)
        return self.untokens(arch, self._decode_latents(arch, zq))
