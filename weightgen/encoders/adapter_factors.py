"""LoRA adapters <-> tokens of their canonical factors, one token per rank-1 component.

The delta tokens of `weightgen.encoders.adapter.AdapterEncoder` are right for a generator trained
only on weight-space losses: averages of deltas are meaningful. A generator trained through the
task loss as well (`task_loss`, weightgen/generators/task_loss.py) needs an output whose
every value is a rank-r adapter, so that the adapter the loss scores is the adapter it writes:
decoding a delta takes a truncated SVD, and on the validation draw that truncation cost a
function-space model 0.94 -> 0.78 of trained accuracy on tasks in no zoo (benchmarks/RESULTS.md,
issue 16). Here an adapter is, for each adapted module m and component i < r, one token
[a_i (in_m, zero-padded to max in) | b_i (out_m, zero-padded to max out)], with metadata
(module index, 0, i). Encoding puts the factors in `canonical` form (B A = (B G)(G^-1 A) is fixed
by an SVD with signs), so the zoo's adapters are consistent targets; decoding reads the factors
back as they are, with no SVD, so it is differentiable and exact.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from weightgen.encoders.adapter import AdapterEncoder, canonical
from weightgen.errors import CheckpointError


class AdapterFactorTokens(ModelMixin, ConfigMixin):
    """Factors {`<module>.lora_A`: (N, r, in), `<module>.lora_B`: (N, out, r)} <-> tokens (N, modules x r, D)."""

    @register_to_config
    def __init__(self, lora: dict):
        super().__init__()
        self.shapes = AdapterEncoder(lora)  # module names, dims and the factor check
        self.rank, self.targets = self.shapes.rank, self.shapes.targets
        self.in_width, self.out_width = max(self.shapes.in_dims), max(self.shapes.out_dims)
        self.token_dim = self.in_width + self.out_width
        meta = [[m, 0, i] for m in range(len(self.targets)) for i in range(self.rank)]
        self.register_buffer("metadata", torch.tensor(meta, dtype=torch.long), persistent=False)  # (T, 3)
        used = torch.zeros(len(self.targets), self.rank, self.token_dim, dtype=torch.bool)
        for m, (i, o) in enumerate(zip(self.shapes.in_dims, self.shapes.out_dims)):
            used[m, :, :i] = True
            used[m, :, self.in_width : self.in_width + o] = True
        self.register_buffer("used", used.view(len(meta), self.token_dim), persistent=False)

    @property
    def num_tokens(self) -> int:
        return len(self.targets) * self.rank

    @property
    def num_positions(self) -> int:
        return self.rank

    def encode(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> tokens (N, T, D) of their canonical form, zero on padding."""
        n = self.shapes.check(factors)
        device = next(iter(factors.values())).device
        out = torch.zeros(n, len(self.targets), self.rank, self.token_dim, device=device)
        for m, (name, i, o) in enumerate(zip(self.targets, self.shapes.in_dims, self.shapes.out_dims)):
            a, b = canonical(factors[f"{name}.lora_A"].float(), factors[f"{name}.lora_B"].float())
            out[:, m, :, :i] = a
            out[:, m, :, self.in_width : self.in_width + o] = b.transpose(1, 2)
        return out.view(n, self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens (N, T, D) -> factors, read as they are (padding ignored); keeps the autograd graph."""
        if tokens.shape[1:] != (self.num_tokens, self.token_dim):
            raise CheckpointError(f"adapter factor tokens of shape {tuple(tokens.shape[1:])}, expected "
                                  f"({self.num_tokens}, {self.token_dim})")
        x = tokens.reshape(len(tokens), len(self.targets), self.rank, self.token_dim).float()
        out = {}
        for m, (name, i, o) in enumerate(zip(self.targets, self.shapes.in_dims, self.shapes.out_dims)):
            out[f"{name}.lora_A"] = x[:, m, :, :i].contiguous()
            out[f"{name}.lora_B"] = x[:, m, :, self.in_width : self.in_width + o].transpose(1, 2).contiguous()
        return out
