"""Token normalisation statistics, fitted on a zoo and stored inside the encoder that uses them.

For every arch an encoder was fitted on, `TokenStats` keeps (as buffers, so `save_pretrained`
writes them and a saved encoder decodes on its own):
- `mean`: (T, width) per token slot: the zoo's mean weight at that position. In a `shared`-init
  zoo this removes the common initialisation, leaving what training changed;
- `std`: (T, 1) per token, one value per (layer, role) tensor: the spread of that tensor's values
  around their per-slot mean, so every layer's tokens come out at unit scale.
Padding slots are zero before and after normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from weightgen.errors import ArchError
from weightgen.space.layout import TokenLayout
from weightgen.specs import ArchSpec


class TokenStats(nn.Module):
    def __init__(self, archs: list[ArchSpec], width: int):
        super().__init__()
        archs = list(dict.fromkeys(archs))  # an arch listed twice has one set of statistics
        self.layouts = {a.slug: TokenLayout(a, width) for a in archs}
        self.index = {a.slug: i for i, a in enumerate(archs)}
        for i, layout in enumerate(self.layouts.values()):
            self.register_buffer(f"mean_{i}", torch.zeros(layout.num_tokens, width))
            self.register_buffer(f"std_{i}", torch.ones(layout.num_tokens, 1))

    def layout(self, arch: ArchSpec) -> TokenLayout:
        if arch.slug not in self.layouts:
            known = ", ".join(layout.arch.describe() for layout in self.layouts.values())
            raise ArchError(f"this encoder was not fitted for {arch.describe()}; it knows: {known}")
        return self.layouts[arch.slug]

    def _stats(self, arch: ArchSpec) -> tuple[torch.Tensor, torch.Tensor]:
        self.layout(arch)
        i = self.index[arch.slug]
        return getattr(self, f"mean_{i}"), getattr(self, f"std_{i}")

    @torch.no_grad()
    def fit(self, arch: ArchSpec, tokens: torch.Tensor) -> None:
        """Fit the statistics of one arch from its zoo tokens (N, T, width)."""
        layout, (mean, std) = self.layout(arch), self._stats(arch)
        mask = layout.mask.to(tokens.device, tokens.dtype)
        mean.copy_(tokens.mean(0) * mask)
        sq = ((tokens - mean) ** 2 * mask).sum(dim=(0, 2))  # (T,)
        count = mask.sum(1) * tokens.shape[0]  # (T,)
        meta = layout.metadata
        groups = meta[:, 0] * len(meta) + meta[:, 1]  # one id per (layer, role)
        for g in groups.unique():
            sel = groups == g
            var = sq[sel].sum() / count[sel].sum().clamp_min(1)
            std[sel] = var.sqrt().clamp_min(1e-8)

    def normalize(self, arch: ArchSpec, tokens: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(arch)
        return (tokens - mean) / std * self.layout(arch).mask.to(tokens.device, tokens.dtype)

    def denormalize(self, arch: ArchSpec, tokens: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(arch)
        return (tokens * std + mean) * self.layout(arch).mask.to(tokens.device, tokens.dtype)
