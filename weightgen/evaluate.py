"""Evaluation core: task metrics of one module, or of many weight vectors of one arch at once.

The metric is accuracy for classification tasks and R^2 (1 - MSE / variance) for image-fitting
tasks, so that "higher is better" holds everywhere; loss is mean cross-entropy or MSE.
"""

from __future__ import annotations

import torch
from torch import nn

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
        return 1.0 - err / y.var(unbiased=False).clamp_min(1e-12), err
    acc = (logits.argmax(-1) == y).float().mean(-1)
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
    acc, loss = torch.empty(k), torch.empty(k)
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
