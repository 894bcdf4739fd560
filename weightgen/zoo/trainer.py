"""Batched zoo training: K networks of one ArchSpec trained at once as stacked tensors.

Every layer of all K networks is one `baddbmm` (or one grouped convolution), so the Python and
kernel-launch overhead of a step is paid once for K models instead of K times. Each network has its
own task (any task whose input and output sizes fit the arch), its own data order and its own init.
Losses are per-model means summed over models, so each network receives exactly its own gradient,
and Adam/SGD are element-wise, so one optimizer over the stacked tensors equals K separate ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from weightgen.devices import native_precision
from weightgen.errors import ConfigError
from weightgen.metrics import cross_entropy, evaluate_params
from weightgen.specs import ArchSpec
from weightgen.tasks import SPLITS, TaskSpec

OPTIMIZERS = {"adam", "sgd"}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How each network is trained; the same recipe trains the per-model baseline in benchmarks."""

    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 64
    precision: str = "fp32"  # fp32 | bf16 (matmuls in bf16 where native, weightgen/devices.py; the rest fp32)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; known: {', '.join(sorted(OPTIMIZERS))}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; known: {', '.join(PRECISIONS)}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1 and lr > 0")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        # fused: one kernel per tensor instead of ~10 elementwise passes (~3x faster step on CPU)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, fused=True)


def epoch_order(sizes: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch of example indices per model: a fresh permutation of each model's own n_k examples,
    cycled to `length` (the largest n in the batch) so every model takes the same number of steps.
    (A randperm per model is ~4x faster than argsort of one (K, n) random matrix.)"""
    out = torch.empty(len(sizes), length, dtype=torch.long)
    cols = torch.arange(length)
    for i, n in enumerate(sizes.tolist()):
        perm = torch.randperm(n, generator=generator)
        out[i] = perm if n == length else perm[cols % n]
    return out


def pooled_train_data(tasks: list[TaskSpec]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every distinct task's training set in one tensor: (x_all, y_all, offset (K,), sizes (K,)), where
    model i reads rows offset[i] + its own indices < sizes[i]."""
    uniq = list(dict.fromkeys(tasks))
    xs, ys = zip(*(t.split("train") for t in uniq))
    starts = torch.tensor([0, *torch.tensor([len(x) for x in xs]).cumsum(0)[:-1].tolist()])
    which = torch.tensor([uniq.index(t) for t in tasks])
    return torch.cat(xs), torch.cat(ys), starts[which], torch.tensor([len(xs[i]) for i in which.tolist()])


def batch_loss(arch: ArchSpec, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, loss_kind: str,
               precision: str = "fp32", transposed: bool = False) -> torch.Tensor:
    """Per-model mean loss (K,) of K networks on their batches xb (K, b, in), yb (K, b[, 1]): the
    zoo recipe's step loss (bf16 autocast for the matmuls if asked, the loss itself in fp32)."""
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = arch.forward_batched(params, xb, transposed=transposed).float()  # (K, b, out)
    if loss_kind == "mse":
        return (logits - yb).pow(2).mean(dim=(1, 2))
    return cross_entropy(logits, yb).mean(1)


def train_batched(
    arch: ArchSpec,
    tasks: list[TaskSpec],
    init: dict[str, torch.Tensor],
    recipe: Recipe,
    generator: torch.Generator,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Train len(tasks) networks from `init` (K, *shape) on `device` (default: where `init` is);
    returns (params, per-model metrics), on the host. Data orders are drawn on the host from
    `generator`, so a zoo is the same whichever device trains it."""
    k = len(tasks)
    device = next(iter(init.values())).device if device is None else torch.device(device)
    precision = native_precision(recipe.precision, device, "fp32")
    uniq = list(dict.fromkeys(tasks))
    for t in uniq:
        if t.in_dim != arch.in_dim or t.out_dim != arch.out_dim:
            raise ConfigError(f"task {t.id} ({t.in_dim} in, {t.out_dim} out) does not fit {arch.describe()}")
    x_all, y_all, offset, sizes = pooled_train_data(tasks)
    x_all, y_all, offset = x_all.to(device), y_all.to(device), offset.to(device)
    if precision == "bf16":
        # autocast would cast every gathered batch to bf16; casting the data once saves that pass
        # (and is lossless for the digits, whose pixels are multiples of 1/16)
        x_all = x_all.to(torch.bfloat16)
    length = int(sizes.max())
    steps_per_epoch = math.ceil(length / recipe.batch_size)
    loss_kind = uniq[0].loss

    # linear weights train as (K, in, out); see ArchSpec.forward_batched(transposed=True)
    linear = {n for n, p in init.items() if n.endswith("weight") and p.dim() == 3}
    params = {
        n: (p.transpose(1, 2) if n in linear else p).to(device).float().contiguous().clone().requires_grad_(True)
        for n, p in init.items()
    }
    opt = recipe.make_optimizer(list(params.values()))
    total = recipe.epochs * steps_per_epoch
    for epoch in range(recipe.epochs):
        order = epoch_order(sizes, length, generator).to(device) + offset[:, None]  # (K, length) global rows
        for s in range(steps_per_epoch):
            rows = order[:, s * recipe.batch_size : (s + 1) * recipe.batch_size]  # (K, b)
            flat_rows = rows.reshape(-1)  # index_select is ~3x faster than advanced indexing here
            xb = x_all.index_select(0, flat_rows).view(k, rows.shape[1], -1)  # (K, b, in)
            yb = y_all.index_select(0, flat_rows).view(k, rows.shape[1], *y_all.shape[1:])  # (K, b[, 1])
            per_model = batch_loss(arch, params, xb, yb, loss_kind, precision, transposed=True)
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()
            opt.step()
            if on_step is not None:
                on_step(epoch * steps_per_epoch + s + 1, total)

    # back on the host, to be saved and scored there
    final = {n: (p.detach().transpose(1, 2) if n in linear else p.detach()).cpu().contiguous()
             for n, p in params.items()}
    records = [{} for _ in range(k)]
    for split in SPLITS:
        m = evaluate_params(arch, final, tasks, split)
        for i in range(k):
            records[i][f"{split}_acc"] = m["acc"][i].item()
            records[i][f"{split}_loss"] = m["loss"][i].item()
    return final, records
