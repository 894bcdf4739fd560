"""LoRA adapters of a transformers base <-> canonical tokens: the encoder of LoRA zoos.

An adapter is, for each adapted module m, factors A_m (r, in) and B_m (out, r), and only their
product B_m A_m matters: B A = (B G)(G^-1 A) for any invertible r x r matrix G, so raw factors of
two adapters that compute the same function can look nothing alike. `canonical` removes that
freedom: with B = Q_b R_b and A^T = Q_a R_a (thin QR) and the SVD R_b R_a^T = U S V^T,

    B' = Q_b U sqrt(S)      A' = sqrt(S) V^T Q_a^T          (so B' A' = B A exactly)

ordered by singular value, with each component's sign fixed so that the largest-magnitude entry of
its column of B' is positive. What is left is the function itself (up to ties of singular values).

A token is one rank-1 component: [B'[:, i] (out, zero-padded), A'[i] (in, zero-padded)], so an
adapter is `len(modules) x rank` tokens whose metadata (module index, 0, component index) says where
each sits; the generator's denoiser standardises them per slot. There is one base, hence no
architecture index: every token's identity is its module and its place in the singular spectrum.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from weightgen.errors import CheckpointError
from weightgen.zoo.store import ZooStore


def canonical(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical factors of a batch of rank-r products: a (N, r, in), b (N, out, r) -> (a', b')
    with b' a' = b a, components ordered by singular value and sign-fixed (see the module docstring)."""
    qb, rb = torch.linalg.qr(b.double())  # (N, out, r), (N, r, r)
    qa, ra = torch.linalg.qr(a.double().transpose(1, 2))  # (N, in, r), (N, r, r)
    u, s, vh = torch.linalg.svd(rb @ ra.transpose(1, 2))  # descending singular values
    root = s.sqrt()[:, None, :]
    b_c = qb @ u * root  # (N, out, r)
    a_c = (qa @ vh.transpose(1, 2) * root).transpose(1, 2)  # (N, r, in)
    peak = b_c.abs().argmax(1, keepdim=True)  # (N, 1, r): each column's largest entry
    sign = torch.where(b_c.gather(1, peak) < 0, -1.0, 1.0).to(b_c.dtype)
    return (a_c * sign.transpose(1, 2)).to(a.dtype), (b_c * sign).to(b.dtype)


class AdapterEncoder(ModelMixin, ConfigMixin):
    """Factors {`<module>.lora_A`: (N, r, in), `<module>.lora_B`: (N, out, r)} <-> tokens (N, T, D)."""

    @register_to_config
    def __init__(self, lora: dict):
        """`lora`: a LoRA zoo's zoo.json entry (rank, alpha, target_modules, factors, base, base_sha256)."""
        super().__init__()
        self.rank = int(lora["rank"])
        shapes = lora["factors"]
        # sorted by name: a saved config's keys come back sorted, and the token order must not change
        self.targets = sorted(n.removesuffix(".lora_A") for n in shapes if n.endswith(".lora_A"))
        self.in_dims = [int(shapes[f"{m}.lora_A"][1]) for m in self.targets]
        self.out_dims = [int(shapes[f"{m}.lora_B"][0]) for m in self.targets]
        self.out_width = max(self.out_dims)
        self.token_dim = self.out_width + max(self.in_dims)
        meta = [[m, 0, i] for m in range(len(self.targets)) for i in range(self.rank)]
        self.register_buffer("metadata", torch.tensor(meta, dtype=torch.long), persistent=False)  # (T, 3)
        used = torch.zeros(len(meta), self.token_dim, dtype=torch.bool)  # which coordinates are not padding
        for m, (o, i) in enumerate(zip(self.out_dims, self.in_dims)):
            used[m * self.rank : (m + 1) * self.rank, :o] = True
            used[m * self.rank : (m + 1) * self.rank, self.out_width : self.out_width + i] = True
        self.register_buffer("used", used)

    @classmethod
    def from_zoo(cls, store: ZooStore | str) -> AdapterEncoder:
        store = store if isinstance(store, ZooStore) else ZooStore(store)
        lora = store.manifest.get("lora")
        if not lora or not lora.get("base_sha256"):
            raise CheckpointError(f"{store.root} is not a finished LoRA zoo (its zoo.json has no lora entry with a base)")
        return cls(lora=lora)

    @property
    def num_tokens(self) -> int:
        return len(self.targets) * self.rank

    def check(self, factors: dict[str, torch.Tensor]) -> int:
        """The batch size of a factor dict, after checking every factor's name and shape."""
        expected = {f"{m}.lora_{w}" for m in self.targets for w in "AB"}
        if set(factors) != expected:
            raise CheckpointError(f"adapter factors {sorted(set(factors) ^ expected)[:3]} do not match this encoder's "
                                  f"modules ({', '.join(self.targets)})")
        n = len(next(iter(factors.values())))
        for m, o, i in zip(self.targets, self.out_dims, self.in_dims):
            if factors[f"{m}.lora_A"].shape != (n, self.rank, i) or factors[f"{m}.lora_B"].shape != (n, o, self.rank):
                raise CheckpointError(f"adapter factors of {m} have shapes {tuple(factors[f'{m}.lora_A'].shape)} / "
                                      f"{tuple(factors[f'{m}.lora_B'].shape)}, expected ({n}, {self.rank}, {i}) / "
                                      f"({n}, {o}, {self.rank})")
        return n

    def encode(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Factors (N, ...) -> canonical tokens (N, T, D), zero on padding."""
        n = self.check(factors)
        out = torch.zeros(n, self.num_tokens, self.token_dim)
        for m, name in enumerate(self.targets):
            a, b = canonical(factors[f"{name}.lora_A"].float(), factors[f"{name}.lora_B"].float())
            rows = slice(m * self.rank, (m + 1) * self.rank)
            out[:, rows, : self.out_dims[m]] = b.transpose(1, 2)  # component i's column of B'
            out[:, rows, self.out_width : self.out_width + self.in_dims[m]] = a
        return out

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens (N, T, D) -> factors (padding ignored); the inverse of `encode` up to the canonical form."""
        if tokens.shape[1:] != (self.num_tokens, self.token_dim):
            raise CheckpointError(f"adapter tokens of shape {tuple(tokens.shape[1:])}, expected "
                                  f"({self.num_tokens}, {self.token_dim})")
        out = {}
        for m, name in enumerate(self.targets):
            rows = tokens[:, m * self.rank : (m + 1) * self.rank]
            out[f"{name}.lora_A"] = rows[:, :, self.out_width : self.out_width + self.in_dims[m]].contiguous()
            out[f"{name}.lora_B"] = rows[:, :, : self.out_dims[m]].transpose(1, 2).contiguous()
        return out
