"""LoRA adapters of a transformers base <-> tokens of their weight deltas: the encoder of LoRA zoos.

An adapter is, for each adapted module m, factors A_m (r, in) and B_m (out, r), and only their
product matters: B A = (B G)(G^-1 A) for any invertible r x r matrix G, so raw factors of two
adapters that compute the same function can look nothing alike. The encoder therefore works on the
product itself, the delta D_m = B_m A_m (out, in) that the adapter adds to the module's weight
(peft scales it by alpha / r at run time): a token is one row of one module's delta, so an adapter
is sum(out_m) tokens of width max(in_m), with metadata (module index, 0, row) saying where each
sits. The delta has no symmetry left, and it is linear in what the adapter does to the module, so
averages and interpolations of deltas are meaningful where averages of factors are not
(benchmarks/RESULTS.md, issue 16: averaging the four adapters of a task keeps 0.63-0.96 of their
accuracy as deltas, and falls to 0.05-0.92 as SVD-canonical factors).

Decoding returns rank-r factors again: the best rank-r approximation of each generated delta
(Eckart-Young, truncated SVD) in `canonical` form, B' = U sqrt(S), A' = sqrt(S) V^T, ordered by
singular value, each component's sign fixed so that the largest-magnitude entry of its column of B'
is positive. For a zoo adapter the round trip is exact (its delta has rank r).
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
    """Factors {`<module>.lora_A`: (N, r, in), `<module>.lora_B`: (N, out, r)} <-> delta rows (N, T, D)."""

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
        self.token_dim = max(self.in_dims)
        self.starts = [sum(self.out_dims[:m]) for m in range(len(self.targets))]
        meta = [[m, 0, row] for m, out in enumerate(self.out_dims) for row in range(out)]
        self.register_buffer("metadata", torch.tensor(meta, dtype=torch.long), persistent=False)  # (T, 3)
        used = torch.zeros(len(meta), self.token_dim, dtype=torch.bool)  # which coordinates are not padding
        for start, out, width in zip(self.starts, self.out_dims, self.in_dims):
            used[start : start + out, :width] = True
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
        return sum(self.out_dims)

    @property
    def num_positions(self) -> int:
        return max(self.out_dims)

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
        """Factors (N, ...) -> delta rows (N, T, D), zero on padding."""
        n = self.check(factors)
        out = torch.zeros(n, self.num_tokens, self.token_dim)
        for name, start, o, i in zip(self.targets, self.starts, self.out_dims, self.in_dims):
            out[:, start : start + o, :i] = factors[f"{name}.lora_B"].float() @ factors[f"{name}.lora_A"].float()
        return out

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Delta rows (N, T, D) -> rank-r factors in canonical form (padding ignored)."""
        if tokens.shape[1:] != (self.num_tokens, self.token_dim):
            raise CheckpointError(f"adapter tokens of shape {tuple(tokens.shape[1:])}, expected "
                                  f"({self.num_tokens}, {self.token_dim})")
        out = {}
        for name, start, o, i in zip(self.targets, self.starts, self.out_dims, self.in_dims):
            delta = tokens[:, start : start + o, :i].double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            root = s[:, : self.rank].sqrt()
            a, b = canonical(vh[:, : self.rank] * root[..., None], u[:, :, : self.rank] * root[:, None])
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a.float().contiguous(), b.float().contiguous()
        return out
