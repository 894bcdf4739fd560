"""LoRA adapters <-> a few principal coefficients (`AdapterPCA`), continuous or quantised to ids.

The adapter's delta tokens (weightgen/encoders/adapter.py) are standardised per coordinate over the
zoo's training adapters and projected on their first `components` principal directions: a linear
encoder fitted in closed form, knowing nothing of tasks. The deltas of a rank-4 adapter zoo live in
a small subspace: on the LoRA zoo 64 directions keep 0.97 of its adapters' accuracy and 128 keep
0.997 (benchmarks/RESULTS.md, issue 16).

- `AdapterPCA` (the diffusion generator's optional encoder, `latent_components` > 0): the
  coefficients, each divided by its training std, as tokens of `per_token` coefficients.
- `AdapterQuantizer` (the AR generator's tokenizer): each coefficient quantised into `bins` uniform
  bins over its training range widened by 10%, so an adapter is `components` ids, one per direction
  from that direction's own codebook; decoding takes each bin's centre back through the same map.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from weightgen.encoders.adapter import AdapterEncoder
from weightgen.errors import CheckpointError, ConfigError


class AdapterPCA(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, lora: dict, rows_per_token: int = 4, components: int = 64, per_token: int = 8):
        super().__init__()
        if components < 1 or per_token < 1 or components % per_token:
            raise ConfigError(f"components ({components}) must be a positive multiple of per_token ({per_token})")
        self.tokens = AdapterEncoder(lora, rows_per_token)
        p = self.tokens.num_tokens * self.tokens.token_dim
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("std", torch.ones(p))
        self.register_buffer("basis", torch.zeros(components, p))
        self.register_buffer("scale", torch.ones(components))  # each coefficient's training std
        t = components // per_token
        self.register_buffer("metadata", torch.tensor([[0, 0, i] for i in range(t)]), persistent=False)
        self.register_buffer("used", torch.ones(t, per_token, dtype=torch.bool), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.config.components // self.config.per_token

    @property
    def token_dim(self) -> int:
        return self.config.per_token

    @property
    def num_positions(self) -> int:
        return self.num_tokens

    @torch.no_grad()
    def fit(self, factors: dict[str, torch.Tensor]):
        """Fit the standardisation and the principal directions on training adapters."""
        x = self.tokens.encode(factors).flatten(1)
        if len(x) <= self.config.components:
            raise ConfigError(f"{len(x)} training adapters cannot fit {self.config.components} principal directions; "
                              "lower components or add adapters")
        std = x.std(0)
        self.mean.copy_(x.mean(0))
        self.std.copy_(std.clamp_min(1e-3 * std[std > 0].median()) if (std > 0).any() else torch.ones_like(std))
        self.basis.copy_(torch.linalg.svd((x - self.mean) / self.std, full_matrices=False)[2][: self.config.components])
        self.scale.copy_(self.coefficients(factors).std(0).clamp_min(1e-6))
        return self

    def coefficients(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> principal coefficients (N, components), not rescaled."""
        return ((self.tokens.encode(factors).flatten(1) - self.mean) / self.std) @ self.basis.T

    def from_coefficients(self, coef: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (coef.float() @ self.basis) * self.std + self.mean
        return self.tokens.decode(x.view(len(coef), self.tokens.num_tokens, self.tokens.token_dim) * self.tokens.used)

    def encode(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> tokens (N, components / per_token, per_token) of unit-scale coefficients."""
        return (self.coefficients(factors) / self.scale).view(-1, self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if tokens.shape[1:] != (self.num_tokens, self.token_dim):
            raise CheckpointError(f"coefficient tokens of shape {tuple(tokens.shape[1:])}, expected "
                                  f"({self.num_tokens}, {self.token_dim})")
        return self.from_coefficients(tokens.reshape(len(tokens), -1) * self.scale)


class AdapterQuantizer(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, lora: dict, rows_per_token: int = 4, components: int = 64, bins: int = 32):
        super().__init__()
        if bins < 2:
            raise ConfigError(f"the adapter quantizer needs bins >= 2, got {bins}")
        self.pca = AdapterPCA(lora, rows_per_token, components, per_token=1)
        self.register_buffer("low", torch.zeros(components))
        self.register_buffer("high", torch.ones(components))

    @property
    def ids_per_token(self) -> int:
        return self.config.components

    @property
    def codebook_size(self) -> int:
        return self.config.bins

    @torch.no_grad()
    def fit(self, factors: dict[str, torch.Tensor]) -> AdapterQuantizer:
        """Fit the principal directions and the bin ranges on training adapters."""
        coef = self.pca.fit(factors).coefficients(factors)
        lo, hi = coef.min(0).values, coef.max(0).values
        pad = 0.05 * (hi - lo).clamp_min(1e-6)
        self.low.copy_(lo - pad)
        self.high.copy_(hi + pad)
        return self

    def encode(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> ids (N, 1, components): one 'token' of `components` ids, as the AR prefix expects."""
        scaled = (self.pca.coefficients(factors) - self.low) / (self.high - self.low) * self.config.bins
        return scaled.floor().clamp(0, self.config.bins - 1).long()[:, None]

    def decode(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ids (N, 1, components) -> factors (rank-r, canonical), through each bin's centre."""
        coef = self.low + (ids[:, 0].float() + 0.5) / self.config.bins * (self.high - self.low)
        return self.pca.from_coefficients(coef)
