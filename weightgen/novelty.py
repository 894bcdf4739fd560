"""Novelty of generated weights: how far each sample is from the zoo, in weights and in behaviour.

A generator that copies its training models scores well on accuracy while learning nothing, so
accuracy is read beside two measures of closeness to the zoo (DESIGN.md, "Evaluation protocol"):

- weights: the relative L2 distance to the nearest zoo model after permutation alignment,
      d(w, z) = min_P ||P w - z||_2 / ||z||_2
  with P running over hidden-unit permutations (weight matching, `weightgen.space.symmetry`).
  ||P w - z|| = ||w - P^-1 z||, so d does not depend on which side is permuted; 0 means a permuted
  copy, and dividing by ||z|| makes it comparable across archs (about sqrt(2) for two unrelated
  vectors of equal norm).
- behaviour, on the task's probe set (`weightgen.probe`: the test inputs and many slightly
  perturbed copies, so that good models disagree somewhere):
  - the IoU |A & B| / |A | B| of the sets of probe examples two classifiers get wrong, maximised
    over zoo models of the same task and arch; 1 means the same mistakes. Two models that make no
    mistake count as 1: nothing on the probe tells them apart;
  - the disagreement with the nearest zoo model, 1 - max_z (share of probe examples on which the
    sample and z predict the same class); 0 for a copy.
  Both are read against the zoo's own leave-one-out figures (each zoo model against the other zoo
  models of its task and arch): a sample whose disagreement reaches the zoo's leave-one-out median
  is "as new as a fresh training run" (`as_new`).

Aligning every sample to every zoo model exactly is N*M weight matchings. `nearest_zoo_distance`
instead aligns all of them once to a common centre (N + M matchings) and ranks the zoo by the
distance between aligned vectors. That distance is an upper bound on d (the two alignments compose
to one admissible permutation), so the ranking is a good shortlist: each sample is then aligned
exactly to its `candidates` best-ranked zoo models, and d is the smaller of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weightgen.space.symmetry import canonicalize, match_batch, permute_batch
from weightgen.specs import ArchSpec


@dataclass(frozen=True)
class AlignedZoo:
    """Zoo models and their copies aligned to one centre, computed once and reused for every group."""

    flat: torch.Tensor  # (M, P) as stored
    aligned: torch.Tensor  # (M, P) permuted to match `centre`
    centre: torch.Tensor  # (P,) mean of the aligned zoo (see `canonicalize`)


def align_zoo(arch: ArchSpec, flat: torch.Tensor) -> AlignedZoo:
    """Align M zoo models (M, P) to their common centre."""
    flat = flat.float()
    _, centre = canonicalize(arch, flat)
    # canonicalize's last alignment was to the previous centre; samples are aligned to this one
    aligned = permute_batch(arch, flat, match_batch(arch, flat, centre))
    return AlignedZoo(flat, aligned, centre)


def nearest_zoo_distance(
    arch: ArchSpec,
    flat: torch.Tensor,
    zoo: torch.Tensor | AlignedZoo,
    candidates: int | None = 8,
    exclude: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Relative distance d (module docstring) of each sample (N, P) to its nearest zoo model.

    zoo: the zoo models (M, P), or `align_zoo` of them. candidates: zoo models each sample is
    aligned to exactly (None: all of them). exclude (N,): a zoo index each sample may not match,
    -1 for none (leave-one-out for samples that are zoo models). Returns distance (N,) float64 and
    index (N,) into the zoo; NaN and -1 for samples with non-finite weights or nothing to match."""
    if not isinstance(zoo, AlignedZoo):
        zoo = align_zoo(arch, zoo)
    n, m = flat.shape[0], zoo.flat.shape[0]
    distance = torch.full((n,), float("nan"), dtype=torch.float64)
    index = torch.full((n,), -1, dtype=torch.long)
    ok = flat.isfinite().all(1)
    if m == 0 or not ok.any():
        return {"distance": distance, "index": index}
    x = flat[ok].float()
    norms = zoo.flat.double().norm(dim=1).clamp_min(1e-12)  # (M,)
    x_centred = permute_batch(arch, x, match_batch(arch, x, zoo.centre))
    # the matmul form of cdist loses ~1e-4 relative precision; a permuted copy must measure 0
    d = torch.cdist(x_centred.double(), zoo.aligned.double(), compute_mode="donot_use_mm_for_euclid_dist") / norms
    if exclude is not None:
        ex = exclude[ok]
        rows = (ex >= 0).nonzero().squeeze(1)
        d[rows, ex[rows]] = float("inf")
    k = m if candidates is None else min(candidates, m)
    shortlist = d.topk(k, dim=1, largest=False).indices  # (n_ok, k)
    # one matching call per zoo model, for all the samples that shortlisted it
    for j in shortlist.unique().tolist():
        rows = (shortlist == j).any(1).nonzero().squeeze(1)
        rows = rows[d[rows, j].isfinite()]  # skip excluded pairs
        if len(rows) == 0:
            continue
        ref = zoo.flat[j]
        moved = permute_batch(arch, x[rows], match_batch(arch, x[rows], ref))
        exact = (moved.double() - ref.double()).norm(dim=1) / norms[j]
        d[rows, j] = torch.minimum(d[rows, j], exact)
    best, arg = d.min(1)
    found = best.isfinite()
    distance[ok] = torch.where(found, best, float("nan"))
    index[ok] = torch.where(found, arg, -1)
    return {"distance": distance, "index": index}


def wrong_set_iou(wrong: torch.Tensor, zoo_wrong: torch.Tensor) -> torch.Tensor:
    """IoU of wrong-prediction sets: wrong (N, n) bool, zoo_wrong (M, n) bool -> (N, M) float64.

    Two empty sets give 1 (see the module docstring)."""
    a, b = wrong.double(), zoo_wrong.double()
    inter = a @ b.T  # (N, M)
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def agreement(pred: torch.Tensor, zoo_pred: torch.Tensor) -> torch.Tensor:
    """Share of examples on which two classifiers predict the same class: pred (N, n), zoo_pred (M, n)
    long class indices (-1 for a model that does not run, which agrees with nothing) -> (N, M) float64."""
    k = int(max(pred.max(), zoo_pred.max(), 0)) + 1
    # one-hot rows, so all N * M agreement counts are one matrix product
    a = torch.nn.functional.one_hot(pred.clamp_min(0), k).double() * (pred >= 0)[..., None]  # (N, n, k)
    b = torch.nn.functional.one_hot(zoo_pred.clamp_min(0), k).double() * (zoo_pred >= 0)[..., None]
    return a.flatten(1) @ b.flatten(1).T / pred.shape[1]


def functional_novelty(probe: dict, zoo_probe: dict, leave_one_out: bool = False) -> dict[str, torch.Tensor]:
    """Behavioural novelty of N models against M zoo models, from `metrics.probe_predictions` of
    both: iou (N,) the max wrong-set IoU, disagreement (N,) 1 - the max agreement, nearest (N,) the
    zoo index of that max agreement. leave_one_out: the N models are the M zoo models themselves,
    and none is compared with itself. NaN (and -1) for models that do not run or have no other to
    compare with."""
    iou = wrong_set_iou(probe["wrong"], zoo_probe["wrong"])  # (N, M)
    agree = agreement(probe["pred"], zoo_probe["pred"])  # (N, M)
    usable = zoo_probe["ok"][None].expand_as(iou).clone()
    if leave_one_out:
        usable.fill_diagonal_(False)
    # one never-usable column, so the max is defined with no zoo model to compare with (all -inf)
    pad = torch.full((len(iou), 1), float("-inf"), dtype=torch.float64)
    iou = torch.cat([iou.masked_fill(~usable, float("-inf")), pad], 1)
    agree = torch.cat([agree.masked_fill(~usable, float("-inf")), pad], 1)
    best_iou = iou.max(1).values
    best_agree, nearest = agree.max(1)
    bad = ~probe["ok"] | best_agree.isinf()
    return {"iou": best_iou.masked_fill(bad, float("nan")), "disagreement": (1 - best_agree).masked_fill(bad, float("nan")),
            "nearest": nearest.masked_fill(bad, -1)}
