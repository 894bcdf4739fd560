"""LoRA adapters <-> a short sequence of discrete ids, for the autoregressive generator.

The adapter's delta tokens (weightgen/encoders/adapter.py) are standardised per coordinate over the
zoo's training adapters, projected on their first `components` principal directions (a linear
encoder fitted in closed form: the delta of a 4-rank adapter set lives in a small subspace, and 96
directions keep 0.99 of the zoo adapters' accuracy), and each coefficient is quantised into `bins`
uniform bins over its training range widened by 10%. An adapter is then `components` ids, one per
direction, each from that direction's own codebook; decoding takes each bin's centre back through
the same map. Nothing here knows the task: the conditional map is the generator's.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from weightgen.encoders.adapter import AdapterEncoder
from weightgen.errors import ConfigError


class AdapterQuantizer(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, lora: dict, rows_per_token: int = 4, components: int = 96, bins: int = 64):
        super().__init__()
        if components < 1 or bins < 2:
            raise ConfigError(f"the adapter quantizer needs components >= 1 and bins >= 2, got {components} and {bins}")
        self.tokens = AdapterEncoder(lora, rows_per_token)
        p = self.tokens.num_tokens * self.tokens.token_dim
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("std", torch.ones(p))
        self.register_buffer("basis", torch.zeros(components, p))
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
        """Fit the standardisation, the principal directions and the bin ranges on training adapters."""
        x = self.tokens.encode(factors).flatten(1)
        if len(x) <= self.config.components:
            raise ConfigError(f"{len(x)} training adapters cannot fit {self.config.components} principal directions; "
                              "lower components or add adapters")
        std = x.std(0)
        self.mean.copy_(x.mean(0))
        self.std.copy_(std.clamp_min(1e-3 * std[std > 0].median()) if (std > 0).any() else torch.ones_like(std))
        z = (x - self.mean) / self.std
        self.basis.copy_(torch.linalg.svd(z, full_matrices=False)[2][: self.config.components])
        coef = z @ self.basis.T
        lo, hi = coef.min(0).values, coef.max(0).values
        pad = 0.05 * (hi - lo).clamp_min(1e-6)
        self.low.copy_(lo - pad)
        self.high.copy_(hi + pad)
        return self

    def encode(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> ids (N, 1, components): one 'token' of `components` ids, as the AR prefix expects."""
        coef = ((self.tokens.encode(factors).flatten(1) - self.mean) / self.std) @ self.basis.T
        scaled = (coef - self.low) / (self.high - self.low) * self.config.bins
        return scaled.floor().clamp(0, self.config.bins - 1).long()[:, None]

    def decode(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ids (N, 1, components) -> factors (rank-r, canonical), through each bin's centre."""
        coef = self.low + (ids[:, 0].float() + 0.5) / self.config.bins * (self.high - self.low)
        x = (coef @ self.basis) * self.std + self.mean
        return self.tokens.decode(x.view(len(ids), self.tokens.num_tokens, self.tokens.token_dim) * self.tokens.used)
