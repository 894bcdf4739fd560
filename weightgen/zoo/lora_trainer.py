"""Batched LoRA training: K adapters of one frozen base trained at once, in one forward pass.

The batch holds K equal groups of images, adapter-major, and every targeted `nn.Linear` of a copy of
the base becomes a `MultiLoRA`: the frozen layer on the whole batch plus, per group, its own
low-rank delta (two `bmm`s), the way multi-adapter serving batches LoRAs (Punica, S-LoRA). The
rest of the network is shared and runs once for all K. Losses are per-adapter means summed over
adapters, so each adapter receives exactly its own gradient, and Adam is element-wise, so one
optimizer over the stacked factors equals K separate ones.

Factors follow peft's parametrisation, so an adapter exports to peft unchanged: the layer computes
W x + (alpha / r) B A x, with A (r, in) drawn like peft's default init (kaiming-uniform, a = sqrt 5)
and B (out, r) zero. They are stored stacked as `<module>.lora_A` (K, r, in) and `<module>.lora_B`
(K, out, r), module names as in the base (`vit.layers.0.attention.q_proj`, `classifier`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from weightgen.config import LoRASpec
from weightgen.errors import ConfigError
from weightgen.tasks import SPLITS, TaskSpec
from weightgen.zoo.lora_base import images
from weightgen.zoo.trainer import Recipe, epoch_order, pooled_train_data


class MultiLoRA(nn.Module):
    """A frozen linear layer plus one LoRA delta per group of an adapter-major batch."""

    def __init__(self, base: nn.Linear, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_A: torch.Tensor | None = None  # (K, r, in), set by `set_factors`
        self.lora_B: torch.Tensor | None = None  # (K, out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        k = self.lora_A.shape[0]
        xk = x.reshape(k, -1, x.shape[-1])  # (K, rows of one adapter's group, in)
        delta = torch.bmm(torch.bmm(xk, self.lora_A.transpose(1, 2)), self.lora_B.transpose(1, 2))
        return y + self.scale * delta.reshape(y.shape)


def target_names(base: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The base's linear layers that LoRA adapts, matched by name as peft matches `target_modules`."""
    names = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)
             and any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise ConfigError(f"no linear layer of the base matches target_modules {list(targets)}")
    return names


def factor_shapes(base: nn.Module, spec: LoRASpec) -> dict[str, tuple[int, int]]:
    """Name -> shape of one adapter's factors, in the base's module order."""
    out = {}
    for name in target_names(base, spec.target_modules):
        layer = base.get_submodule(name)
        out[f"{name}.lora_A"] = (spec.rank, layer.in_features)
        out[f"{name}.lora_B"] = (layer.out_features, spec.rank)
    return out


def multi_lora(base: nn.Module, spec: LoRASpec) -> nn.Module:
    """A frozen copy of `base` whose targeted layers are MultiLoRA (factors set with `set_factors`)."""
    model = copy.deepcopy(base).requires_grad_(False).eval()
    for name in target_names(model, spec.target_modules):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, MultiLoRA(getattr(owner, leaf), spec.alpha / spec.rank))
    return model


def set_factors(model: nn.Module, factors: dict[str, torch.Tensor]) -> None:
    for name, module in model.named_modules():
        if isinstance(module, MultiLoRA):
            module.lora_A, module.lora_B = factors[f"{name}.lora_A"], factors[f"{name}.lora_B"]


def init_factors(shapes: dict[str, tuple[int, int]], generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
    """peft's default init for K adapters, each drawn from its own generator: A ~ U(+-1/sqrt(in)), B = 0."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("lora_B"):
            out[name] = torch.zeros(len(generators), *shape)
        else:
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * bound for g in generators])
    return out


def adapters_finite(factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """(K,) bool: every factor of adapter i is finite."""
    return torch.stack([f.flatten(1).isfinite().all(1) for f in factors.values()]).all(0)


def adapter_logits(model: nn.Module, factors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (K, b, classes) of K adapters, each on its own images x (K, b, 64)."""
    set_factors(model, factors)
    k, b = x.shape[:2]
    return model(pixel_values=images(x.reshape(k * b, -1))).logits.reshape(k, b, -1)


def train_lora_batched(base: nn.Module, spec: LoRASpec, tasks: list[TaskSpec], init: dict[str, torch.Tensor],
                       recipe: Recipe, generator: torch.Generator,
                       on_step: Callable[[int, int], None] | None = None,
                       metrics: bool = True,
                       device: torch.device | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train len(tasks) adapters from `init` (K, *shape) on `device` (default: where `init` is);
    returns (factors, on the host, and per-adapter metrics on every split; empty dicts with
    metrics=False). Data orders are drawn on the host from `generator`."""
    k = len(tasks)
    device = next(iter(init.values())).device if device is None else torch.device(device)
    x_all, y_all, offset, sizes = pooled_train_data(tasks)
    x_all, y_all, offset = x_all.to(device), y_all.to(device), offset.to(device)
    length = int(sizes.max())
    steps_per_epoch = math.ceil(length / recipe.batch_size)
    model = multi_lora(base, spec).to(device)
    params = {n: p.to(device).float().clone().requires_grad_(True) for n, p in init.items()}
    opt = recipe.make_optimizer(list(params.values()))
    total = recipe.epochs * steps_per_epoch
    for epoch in range(recipe.epochs):
        order = epoch_order(sizes, length, generator).to(device) + offset[:, None]  # (K, length) global rows
        for s in range(steps_per_epoch):
            rows = order[:, s * recipe.batch_size : (s + 1) * recipe.batch_size].reshape(-1)
            xb = x_all.index_select(0, rows).view(k, -1, x_all.shape[1])
            yb = y_all.index_select(0, rows).view(k, -1)
            logits = adapter_logits(model, params, xb)
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            if on_step is not None:
                on_step(epoch * steps_per_epoch + s + 1, total)
    final = {n: p.detach().contiguous() for n, p in params.items()}
    records = [{} for _ in range(k)]
    for split in SPLITS if metrics else ():
        m = evaluate_adapters(base, spec, final, tasks, split)
        for i in range(k):
            records[i][f"{split}_acc"], records[i][f"{split}_loss"] = m["acc"][i].item(), m["loss"][i].item()
    return {n: f.cpu() for n, f in final.items()}, records


@torch.no_grad()
def evaluate_adapters(base: nn.Module, spec: LoRASpec, factors: dict[str, torch.Tensor], tasks: list[TaskSpec],
                      split: str = "test", chunk: int = 16) -> dict[str, torch.Tensor]:
    """Accuracy and mean loss (K,) of K adapters, each on its own task's split (chunks of adapters
    that share a split size run as one batch), computed where the factors are; returned on the host."""
    device = next(iter(factors.values())).device
    model = multi_lora(base, spec).to(device)
    acc, loss = torch.zeros(len(tasks)), torch.zeros(len(tasks))
    by_size: dict[int, list[int]] = {}
    for i, t in enumerate(tasks):
        by_size.setdefault(len(t.split(split)[1]), []).append(i)
    for idx in by_size.values():
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            x = torch.stack([tasks[i].split(split)[0] for i in part]).to(device)
            y = torch.stack([tasks[i].split(split)[1] for i in part]).to(device)
            logits = adapter_logits(model, {n: f[part].float() for n, f in factors.items()}, x)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(len(part), -1)
            acc[part], loss[part] = (logits.argmax(-1) == y).float().mean(1).cpu(), losses.mean(1).cpu()
    return {"acc": acc, "loss": loss}


__all__ = ["MultiLoRA", "adapter_logits", "adapters_finite", "evaluate_adapters", "factor_shapes", "init_factors", "multi_lora", "set_factors",
           "target_names", "train_lora_batched"]
