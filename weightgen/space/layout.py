"""Weight tokens: every tensor cut into fixed-width chunks within its layer, with metadata.

A weight matrix (out, in) is cut row by row: each output unit's incoming weights form
ceil(in / width) tokens, the last one zero-padded; a bias vector is cut the same way. Cutting along
rows keeps one hidden unit's weights together, so a permutation of hidden units permutes whole
tokens. Every token carries (layer index, role, position):
- layer: index of the layer in the network (0 = first);
- role: `ROLES` index: weight or bias;
- position: index of the token within its tensor (row * chunks_per_row + chunk).
Networks of different depth and width become sequences of different length over the same token
width, so one encoder and one generator can serve many archs. `tokenize` / `detokenize` are exact
inverses on the real (non-padding) values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from weightgen.specs import ArchSpec

ROLES = ("weight", "bias")


@dataclass(frozen=True)
class TokenLayout:
    arch: ArchSpec
    width: int

    @functools.cached_property
    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(index (T, width): flat position of each token slot, -1 = padding; meta (T, 3))."""
        layout = self.arch.layout()
        index, meta = [], []
        for name, shape, off in zip(layout.names, layout.shapes, layout.offsets):
            module, role = name.rsplit(".", 1)
            layer = _layer_index(self.arch, module)
            rows, row_len = (shape[0], math.prod(shape[1:])) if role == "weight" else (1, shape[0])
            chunks = math.ceil(row_len / self.width)
            for r in range(rows):
                for c in range(chunks):
                    cols = torch.arange(c * self.width, (c + 1) * self.width)
                    idx = torch.where(cols < row_len, off + r * row_len + cols, -1)
                    index.append(idx)
                    meta.append((layer, ROLES.index(role), r * chunks + c))
        return torch.stack(index), torch.tensor(meta, dtype=torch.long)

    @property
    def num_tokens(self) -> int:
        return self._tables[0].shape[0]

    @property
    def metadata(self) -> torch.Tensor:
        """(T, 3) long: layer, role, position of each token."""
        return self._tables[1]

    @property
    def mask(self) -> torch.Tensor:
        """(T, width) bool: True where a slot holds a real weight, False where it is padding."""
        return self._tables[0] >= 0

    def tokenize(self, flat: torch.Tensor) -> torch.Tensor:
        """(..., P) flat weights -> (..., T, width) tokens, padding slots zero."""
        index = self._tables[0]
        safe = index.clamp_min(0)
        tokens = flat[..., safe.flatten()].reshape(*flat.shape[:-1], *index.shape)
        return tokens * self.mask.to(tokens.device, tokens.dtype)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., T, width) tokens -> (..., P) flat weights; padding slots are ignored."""
        index, mask = self._tables[0], self.mask
        flat = tokens.new_zeros(*tokens.shape[:-2], self.arch.layout().numel)
        flat[..., index[mask]] = tokens[..., mask]
        return flat


def _layer_index(arch: ArchSpec, module: str) -> int:
    """'layers.2' -> 2; for a cnn, 'convs.i' -> i and 'head' -> number of convs."""
    if module == "head":
        return len(arch.sizes) - 1
    return int(module.rsplit(".", 1)[1])
