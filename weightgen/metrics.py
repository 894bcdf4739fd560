"""Batched task metrics of many weight vectors at once: accuracy (or R^2), loss, finiteness, and
predictions on a task's probe set.

The metric is accuracy for classification tasks and R^2 (1 - MSE / variance) for image-fitting
tasks, so that "higher is better" holds everywhere; loss is mean cross-entropy or MSE. This module
depends only on `weightgen.specs`, `weightgen.tasks` and `weightgen.probe` (DESIGN.md's layering):
the zoo trainer, the encoders and the evaluation protocol all score models through it.
"""

from __future__ import annotations

import torch
from torch import nn

from weightgen.probe import probe_set
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, logits (..., C), y (...) -> (...): logsumexp(z) - z_y.

    Written out because F.cross_entropy on a (K*B, C) tensor with small C runs ~10x slower on CPU
    (its log_softmax vectorises along C); these few elementwise ops are the whole step's hot spot."""
    z = logits - logits.detach().amax(-1, keepdim=True)  # shift for stability; exact for the value
    return z.exp().sum(-1).log() - z.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def metrics(logits: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., n, out), y (n,) or (n, 1) -> (acc (...), loss (...)) averaged over the n examples."""
    if loss == "mse":
        err = (logits - y).pow(2).mean(dim=(-2, -1))
        return (1.0 - err / y.var(unbiased=False).clamp_min(1e-12)).double(), err
    # in float64, so two models with the same number of right answers get bit-identical accuracies
    # and medians (in float32 a median ratio of equal counts came out as 0.99999997)
    acc = (logits.argmax(-1) == y).double().mean(-1)
    return acc, cross_entropy(logits, y).mean(-1)


@torch.no_grad()
def evaluate_module(module: nn.Module, task: TaskSpec, split: str = "test") -> dict[str, float]:
    """Accuracy and loss of one ordinary nn.Module on a task's split."""
    x, y = task.split(split)
    module.eval()
    acc, loss = metrics(module(x), y, task.loss)
    return {"acc": acc.item(), "loss": loss.item()}


@torch.no_grad()
def evaluate_params(
    arch: ArchSpec,
    params: dict[str, torch.Tensor],
    tasks: TaskSpec | list[TaskSpec],
    split: str = "test",
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """Metrics of K stacked networks (params (K, *shape)) on their tasks: one task for all, or one
    per network. Returns acc, loss (K,) and finite (K,): whether every weight is finite."""
    k = next(iter(params.values())).shape[0]
    tasks = [tasks] * k if isinstance(tasks, TaskSpec) else list(tasks)
    acc, loss = torch.empty(k, dtype=torch.float64), torch.empty(k)
    finite = torch.stack([p.flatten(1).isfinite().all(1) for p in params.values()]).all(0)
    by_task: dict[TaskSpec, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    # models of one task share the data, so each group is one batched forward pass
    for task, rows in by_task.items():
        x, y = task.split(split)
        for start in range(0, len(rows), chunk):
            idx = torch.tensor(rows[start : start + chunk])
            sub = {n: p[idx].float() for n, p in params.items()}
            logits = arch.forward_batched(sub, x.expand(len(idx), *x.shape))
            acc[idx], loss[idx] = metrics(logits, y, task.loss)
    acc[~finite], loss[~finite] = float("nan"), float("nan")
    return {"acc": acc, "loss": loss, "finite": finite}


def evaluate_flat(arch: ArchSpec, flat: torch.Tensor, tasks, split: str = "test") -> dict[str, torch.Tensor]:
    """Metrics of N flat weight vectors (N, P) of one arch; see `evaluate_params`."""
    return evaluate_params(arch, arch.layout().unflatten(flat), tasks, split)


@torch.no_grad()
def score_flat(
    arch: ArchSpec, flat: torch.Tensor, task: TaskSpec, split: str = "test", chunk: int = 1024
) -> dict[str, torch.Tensor | None]:
    """Metrics of N flat weight vectors (N, P) on one task, with what novelty needs besides.

    Returns acc and loss (N,), NaN for models that do not run; finite (N,): every weight and every
    output on the split is finite; wrong (N, n) bool: the examples a classifier gets wrong (None
    for image-fitting tasks, which have no wrong answers)."""
    params = arch.layout().unflatten(flat)
    x, y = task.split(split)
    n = flat.shape[0]
    acc, loss = torch.full((n,), float("nan"), dtype=torch.float64), torch.full((n,), float("nan"))
    finite = torch.zeros(n, dtype=torch.bool)
    wrong = torch.zeros(n, len(y), dtype=torch.bool) if task.loss == "ce" else None
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sub = {name: p[rows].float() for name, p in params.items()}
        logits = arch.forward_batched(sub, x.expand(rows.stop - rows.start, *x.shape))  # (k, n, out)
        ok = flat[rows].isfinite().all(1) & logits.flatten(1).isfinite().all(1)
        a, lo = metrics(logits, y, task.loss)
        acc[rows], loss[rows] = a.masked_fill(~ok, float("nan")), lo.masked_fill(~ok, float("nan"))
        finite[rows] = ok
        if wrong is not None:
            wrong[rows] = logits.argmax(-1) != y
    return {"acc": acc, "loss": loss, "finite": finite, "wrong": wrong}


def accuracy_stats(acc: torch.Tensor, finite: torch.Tensor | None = None) -> dict:
    """{"n", "n_finite", "share_finite", "mean", "median", "max", "min", "std"} of N accuracies.

    Models that are not finite (`finite` False, or a NaN accuracy) are counted in n and
    share_finite and left out of every other statistic; std is the population std (0 for one
    model); statistics of no model are None."""
    acc = acc.detach().double().flatten()
    ok = acc.isfinite() if finite is None else finite.flatten() & acc.isfinite()
    vals = acc[ok]
    out = {"n": len(acc), "n_finite": len(vals), "share_finite": len(vals) / len(acc) if len(acc) else None}
    if len(vals) == 0:
        return out | dict.fromkeys(("mean", "median", "max", "min", "std"))
    return out | {"mean": vals.mean().item(), "median": vals.quantile(0.5).item(), "max": vals.max().item(),
                  "min": vals.min().item(), "std": vals.std(correction=0).item()}


@torch.no_grad()
def probe_predictions(arch: ArchSpec, flat: torch.Tensor, task: TaskSpec, chunk: int = 256) -> dict | None:
    """Predicted classes of N flat weight vectors (N, P) on the task's probe set (`weightgen.probe`).

    Returns pred (N, n) long, wrong (N, n) bool (pred != label) and ok (N,) bool: every weight and
    every probe output is finite (rows that are not hold -1 and all-wrong); None for tasks without a
    probe (image fitting)."""
    probe = probe_set(task)
    if probe is None:
        return None
    x, y = probe
    params = arch.layout().unflatten(flat)
    n = flat.shape[0]
    pred = torch.full((n, len(y)), -1, dtype=torch.long)
    ok = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sub = {name: p[rows].float() for name, p in params.items()}
        logits = arch.forward_batched(sub, x.expand(rows.stop - rows.start, *x.shape))  # (k, n, out)
        fine = flat[rows].isfinite().all(1) & logits.flatten(1).isfinite().all(1)
        pred[rows] = torch.where(fine[:, None], logits.argmax(-1), -1)
        ok[rows] = fine
    return {"pred": pred, "wrong": pred != y, "ok": ok}
