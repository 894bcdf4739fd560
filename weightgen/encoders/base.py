"""What the token encoders share: arch bookkeeping, normalisation, metadata embeddings, token MLPs.

Every token is encoded on its own, conditioned on an embedding of where it sits: (arch, layer,
role, position). That lets one encoder serve every arch of a zoo (different archs are just
different token sets), and lets the decoder learn per-slot structure such as a shared init.
"""

from __future__ import annotations

import torch
from torch import nn

from weightgen.space.layout import TokenLayout
from weightgen.space.normalize import TokenStats
from weightgen.specs import ArchSpec


def token_mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class MetaEmbedding(nn.Module):
    """Sum of learned embeddings of a token's arch, layer, role and position."""

    def __init__(self, n_archs: int, n_layers: int, n_positions: int, dim: int):
        super().__init__()
        self.arch = nn.Embedding(n_archs, dim)
        self.layer = nn.Embedding(n_layers, dim)
        self.role = nn.Embedding(2, dim)
        self.position = nn.Embedding(n_positions, dim)

    def forward(self, arch_index: int | torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """arch index (int, or (M,) per token) and meta (M, 3) long -> (M, dim)."""
        arch = self.arch.weight[arch_index] if isinstance(arch_index, int) else self.arch(arch_index)
        return arch + self.layer(meta[:, 0]) + self.role(meta[:, 1]) + self.position(meta[:, 2])


class TokenCodecMixin:
    """Helpers for an nn.Module with `self.stats: TokenStats` and `self.meta_embed: MetaEmbedding`."""

    def _setup(self, archs: list[dict], width: int, embed_dim: int) -> None:
        self.arch_specs = [ArchSpec.from_dict(a) for a in archs]
        self.stats = TokenStats(self.arch_specs, width)
        layouts = [TokenLayout(a, width) for a in self.arch_specs]
        n_layers = max(int(lay.metadata[:, 0].max()) for lay in layouts) + 1
        n_positions = max(int(lay.metadata[:, 2].max()) for lay in layouts) + 1
        self.meta_embed = MetaEmbedding(len(layouts), n_layers, n_positions, embed_dim)

    def _meta(self, arch: ArchSpec) -> tuple[TokenLayout, torch.Tensor]:
        layout = self.stats.layout(arch)  # raises a clear error for an arch it was not fitted on
        meta = layout.metadata.to(self.meta_embed.arch.weight.device)
        return layout, self.meta_embed(self.stats.index[arch.slug], meta)

    def _index_meta(self, arch: ArchSpec, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token arch index (n*T,) and metadata (n*T, 3) for n models of one arch, on the model's device."""
        layout, device = self.stats.layout(arch), self.meta_embed.arch.weight.device
        return (torch.full((n * layout.num_tokens,), self.stats.index[arch.slug], device=device),
                layout.metadata.to(device).repeat(n, 1))

    def tokens(self, arch: ArchSpec, flat: torch.Tensor) -> torch.Tensor:
        """Flat weights (N, P) -> normalised tokens (N, T, width)."""
        return self.stats.normalize(arch, self.stats.layout(arch).tokenize(flat.float()))

    def untokens(self, arch: ArchSpec, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (N, T, width) -> flat weights (N, P)."""
        return self.stats.layout(arch).detokenize(self.stats.denormalize(arch, tokens))

    def fit_stats(self, arch: ArchSpec, flat: torch.Tensor) -> None:
        self.stats.fit(arch, self.stats.layout(arch).tokenize(flat.float()))

    def token_table(self, weights: dict[ArchSpec, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every token of every model, flattened for token-level training (encoders see one token at
        a time): tokens (M, width), arch (M,), meta (M, 3), mask (M, width). Fits stats first."""
        parts = {"tokens": [], "arch": [], "meta": [], "mask": []}
        for arch, flat in weights.items():
            self.fit_stats(arch, flat)
            layout = self.stats.layout(arch)
            tok = self.tokens(arch, flat)  # (N, T, width)
            n, t = tok.shape[:2]
            parts["tokens"].append(tok.reshape(n * t, -1))
            parts["arch"].append(torch.full((n * t,), self.stats.index[arch.slug]))
            parts["meta"].append(layout.metadata.repeat(n, 1))
            parts["mask"].append(layout.mask.repeat(n, 1))
        return {k: torch.cat(v) for k, v in parts.items()}
