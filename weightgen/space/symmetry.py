"""Permutation symmetry of hidden units: canonicalisation by weight matching, and augmentation.

Permuting the hidden units of a layer (rows of its weight and bias, and the matching input units of
the next layer) leaves the network's function unchanged, so one function has h! weight vectors per
hidden layer. Weight matching (Ainsworth et al., "Git Re-Basin", 2023, Alg. 1) picks, for each
model, the permutation that maximises its inner product with a reference:

    max_P  sum_l <W_l^ref, P_l W_l P_{l-1}^T> + <b_l^ref, P_l b_l>

solved by coordinate descent: one `scipy.optimize.linear_sum_assignment` per hidden layer, with the
other layers fixed, repeated until no permutation changes.

Every layer is viewed as a weight (out, in_units, r) plus a bias (out,): r = 1 for linear layers,
9 for 3x3 convolutions (r runs over the kernel), and side*side for the linear head after the last
convolution (r runs over the pixels of one channel). A hidden unit is then a row of one layer and
an `in_units` slice of the next, for MLPs and CNN channels alike.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from weightgen.specs import ArchSpec


def _split(arch: ArchSpec, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """flat (P,) -> [(W (out, in_units, r), b (out,))] per layer, as views of a copy."""
    sd = arch.layout().unflatten(flat.clone())
    names = [n[: -len(".weight")] for n in arch.layout().names if n.endswith(".weight")]
    layers = []
    for i, name in enumerate(names):
        w = sd[f"{name}.weight"]
        if name == "head" and i > 0:  # head reads conv channels flattened channel-major
            prev_out = sd[f"{names[i - 1]}.weight"].shape[0]
            w = w.reshape(w.shape[0], prev_out, -1)
        else:
            w = w.reshape(w.shape[0], w.shape[1], -1)
        layers.append((w, sd[f"{name}.bias"]))
    return layers


def _join(arch: ArchSpec, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    # layout order is weight, bias per layer, the order `_split` read them in
    return torch.cat([t.reshape(-1) for w, b in layers for t in (w, b)])


def num_hidden(arch: ArchSpec) -> list[int]:
    """Sizes of the permutable hidden layers."""
    return [w.shape[0] for w, _ in _split(arch, torch.zeros(arch.layout().numel))[:-1]]


def permute(arch: ArchSpec, flat: torch.Tensor, perms: list[torch.Tensor]) -> torch.Tensor:
    """Apply one permutation per hidden layer: new unit i of layer l is old unit perms[l][i]."""
    layers = _split(arch, flat)
    out = []
    for i, (w, b) in enumerate(layers):
        if i < len(perms):
            w, b = w[perms[i]], b[perms[i]]
        if i > 0:
            w = w[:, perms[i - 1]]
        out.append((w, b))
    return _join(arch, out)


def random_permutation(arch: ArchSpec, flat: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmentation: the same function under uniformly random hidden-unit permutations. flat (..., P)."""
    if flat.dim() > 1:
        return torch.stack([random_permutation(arch, f, generator) for f in flat])
    perms = [torch.randperm(h, generator=generator) for h in num_hidden(arch)]
    return permute(arch, flat, perms)


def _split_batch(arch: ArchSpec, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """flat (N, P) -> [(W (N, out, in_units, r), b (N, out))] per layer."""
    per_model = [_split(arch, f) for f in flat]
    return [(torch.stack([m[i][0] for m in per_model]), torch.stack([m[i][1] for m in per_model]))
            for i in range(len(per_model[0]))]


def _gather_rows(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """t (N, h, ...) with rows reordered per model by perm (N, h)."""
    return torch.gather(t, 1, perm.view(*perm.shape, *([1] * (t.dim() - 2))).expand_as(t))


def _assign(score: torch.Tensor) -> torch.Tensor:
    """score (N, h, h) -> perm (N, h): one linear_sum_assignment per model."""
    return torch.stack([torch.from_numpy(linear_sum_assignment(s, maximize=True)[1]) for s in score.numpy()])


def match_batch(arch: ArchSpec, flat: torch.Tensor, reference: torch.Tensor, max_iter: int = 100) -> list[torch.Tensor]:
    """Weight matching of N models (N, P) to one reference (P,): per hidden layer, perms (N, h).

    Starts from a forward sweep (each layer matched on its incoming weights and bias, given the
    previous layer's permutation), which avoids most poor local optima of coordinate descent from
    the identity; then coordinate descent on the full objective until no permutation changes."""
    ref = _split(arch, reference.double())
    mdl = _split_batch(arch, flat.double())
    n, sizes = flat.shape[0], [w.shape[1] for w, _ in mdl[:-1]]
    perms = [torch.arange(h).expand(n, h).clone() for h in sizes]

    def score(li: int, with_next: bool) -> torch.Tensor:
        w, b = mdl[li]
        if li > 0:  # inputs in the order of the previous layer's permutation
            w = torch.gather(w, 2, perms[li - 1].view(n, 1, -1, 1).expand_as(w))
        s = torch.einsum("iar,njar->nij", ref[li][0], w) + torch.einsum("i,nj->nij", ref[li][1], b)
        if with_next:
            w_next = mdl[li + 1][0]
            if li + 1 < len(sizes):
                w_next = _gather_rows(w_next, perms[li + 1])
            s = s + torch.einsum("oir,nojr->nij", ref[li + 1][0], w_next)
        return s

    for li in range(len(sizes)):
        perms[li] = _assign(score(li, with_next=False))
    rng = np.random.default_rng(0)
    for _ in range(max_iter):
        changed = False
        for li in rng.permutation(len(sizes)):
            new = _assign(score(li, with_next=True))
            if not torch.equal(new, perms[li]):
                perms[li], changed = new, True
        if not changed:
            break
    return perms


def match(arch: ArchSpec, flat: torch.Tensor, reference: torch.Tensor, max_iter: int = 100) -> list[torch.Tensor]:
    """Weight matching: the permutations that align one model `flat` (P,) to `reference` (P,)."""
    return [p[0] for p in match_batch(arch, flat[None], reference, max_iter)]


def permute_batch(arch: ArchSpec, flat: torch.Tensor, perms: list[torch.Tensor]) -> torch.Tensor:
    """`permute` for N models (N, P) with perms (N, h) per hidden layer."""
    return torch.stack([permute(arch, f, [p[i] for p in perms]) for i, f in enumerate(flat)])


def canonicalize(arch: ArchSpec, flat: torch.Tensor, reference: torch.Tensor | None = None, rounds: int = 3):
    """Align every model (N, P) to a reference, returning (aligned (N, P), reference (P,)).

    Without a reference, one is found: start from the first model, align all models to it, take
    the mean of the aligned models as the new reference, and repeat `rounds` times (the mean of
    aligned models is a better-centred target than any single model)."""
    fixed = reference is not None
    ref = reference if fixed else flat[0]
    for _ in range(1 if fixed else rounds):
        aligned = permute_batch(arch, flat, match_batch(arch, flat, ref))
        if not fixed:
            ref = aligned.mean(0)
    return aligned, ref
