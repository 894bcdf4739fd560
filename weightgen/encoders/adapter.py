"""LoRA adapters of a transformers base <-> tokens of their weight deltas: the encoder of LoRA zoos.

An adapter is, for each adapted module m, factors A_m (r, in) and B_m (out, r), and only their
product matters: B A = (B G)(G^-1 A) for any invertible r x r matrix G, so raw factors of two
adapters that compute the same function can look nothing alike. The encoder therefore works on the
product itself, the delta D_m = B_m A_m (out, in) that the adapter adds to the module's weight
(peft scales it by alpha / r at run time): a token is `rows_per_token` consecutive rows of one
module's delta (the last one zero-padded), so an adapter is sum(ceil(out_m / rows)) tokens of width
rows x max(in_m), with metadata (module index, 0, chunk) saying where each sits. Four rows a token
keeps the denoiser's sequence at 35 tokens for the default base instead of 138. The delta has no symmetry left, and it is linear in what the adapter does to the module, so
averages and interpolations of deltas are meaningful where averages of factors are not
(benchmarks/RESULTS.md, issue 16: the average of a task's four adapters scores 0.63-0.96 accuracy
as deltas and 0.05-0.92 as SVD-canonical factors, where the adapters themselves score 0.81-0.95).

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
    """Factors {`<module>.lora_A`: (N, r, in), `<module>.lora_B`: (N, out, r)} <-> delta tokens (N, T, D)."""

    @register_to_config
    def __init__(self, lora: dict, rows_per_token: int = 4):
        """`lora`: a LoRA zoo's zoo.json entry (rank, alpha, target_modules, factors, base, base_sha256)."""
        super().__init__()
        self.rank = int(lora["rank"])
        shapes = lora["factors"]
        # sorted by name: a saved config's keys come back sorted, and the token order must not change
        self.targets = sorted(n.removesuffix(".lora_A") for n in shapes if n.endswith(".lora_A"))
        self.in_dims = [int(shapes[f"{m}.lora_A"][1]) for m in self.targets]
        self.out_dims = [int(shapes[f"{m}.lora_B"][0]) for m in self.targets]
        self.rows, self.width = rows_per_token, max(self.in_dims)
        self.token_dim = rows_per_token * self.width
        self.chunks = [-(-o // rows_per_token) for o in self.out_dims]  # tokens per module
        self.starts = [sum(self.chunks[:m]) for m in range(len(self.targets))]
        meta = [[m, 0, c] for m, n in enumerate(self.chunks) for c in range(n)]
        self.register_buffer("metadata", torch.tensor(meta, dtype=torch.long), persistent=False)  # (T, 3)
        used = torch.zeros(len(meta) * rows_per_token, self.width, dtype=torch.bool)  # not padding, as rows
        for start, out, width in zip(self.starts, self.out_dims, self.in_dims):
            used[start * rows_per_token : start * rows_per_token + out, :width] = True
        self.register_buffer("used", used.view(len(meta), self.token_dim))

    @classmethod
    def from_zoo(cls, store: ZooStore | str) -> AdapterEncoder:
        store = store if isinstance(store, ZooStore) else ZooStore(store)
        lora = store.manifest.get("lora")
        if not lora or not lora.get("base_sha256"):
            raise CheckpointError(f"{store.root} is not a finished LoRA zoo (its zoo.json has no lora entry with a base)")
        return cls(lora=lora)

    @property
    def num_tokens(self) -> int:
        return sum(self.chunks)

    @property
    def num_positions(self) -> int:
        return max(self.chunks)

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
        """Factors (N, ...) -> delta tokens (N, T, D), zero on padding."""
        n = self.check(factors)
        rows = torch.zeros(n, self.num_tokens * self.rows, self.width, device=next(iter(factors.values())).device)
        for name, start, o, i in zip(self.targets, self.starts, self.out_dims, self.in_dims):
            first = start * self.rows
            rows[:, first : first + o, :i] = factors[f"{name}.lora_B"].float() @ factors[f"{name}.lora_A"].float()
        return rows.view(n, self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Delta tokens (N, T, D) -> rank-r factors in canonical form (padding ignored)."""
        if tokens.shape[1:] != (self.num_tokens, self.token_dim):
            raise CheckpointError(f"adapter tokens of shape {tuple(tokens.shape[1:])}, expected "
                                  f"({self.num_tokens}, {self.token_dim})")
        rows = tokens.reshape(len(tokens), self.num_tokens * self.rows, self.width)
        out = {}
        for name, start, o, i in zip(self.targets, self.starts, self.out_dims, self.in_dims):
            delta = rows[:, start * self.rows : start * self.rows + o, :i].double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            root = s[:, : self.rank].sqrt()
            a, b = canonical(vh[:, : self.rank] * root[..., None], u[:, :, : self.rank] * root[:, None])
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a.float().contiguous(), b.float().contiguous()
        return out
