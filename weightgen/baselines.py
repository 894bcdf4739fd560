"""Baselines a weight generator must beat, and the from-scratch and fine-tuning references.

Each baseline returns flat weight vectors (n, P) that `evaluate_samples` scores exactly like the
generated ones (accuracy and novelty), so "the generator beats baseline X" is one comparison of
like with like (DESIGN.md, "Evaluation protocol"):

- noise: zoo models of the task plus Gaussian noise, w + sigma * rms(tensor) * eps. sigma is
  relative to each tensor's RMS, so one sigma perturbs every layer by the same fraction, and it is
  chosen so that the mean accuracy matches a target (the generated samples'): at matched accuracy,
  a generator whose samples are no farther from the zoo than noisy copies is only perturbing.
- average: the mean of (up to) 16 zoo models of the task, after aligning them to each other.
- gaussian: a per-coordinate Gaussian fitted to the aligned zoo models of the task and arch: the
  simplest generative model of that task's weights, with no learned structure.
- mean: the closed-form conditional mean of the arch's seen-task zoo models, one network per task:
  a ridge map from the task code (`weightgen.tasks.task_code`) to the aligned weights, plus the
  task's own shrunk offset when it is a seen task (`weightgen.space.task_mean`). It is what the
  default generators were built around: a generator that does not beat it adds nothing.
- mean+gaussian: that mean plus per-coordinate Gaussian residuals, their std fitted on the seen
  zoo models' residuals around it: a generator of spread with no learned structure.
- retrieval, for unseen tasks: the zoo models of the seen task whose description is closest
  (cosine of pooled MiniLM embeddings), i.e. what a generator that only looks up a neighbour gives.

Averaging and the Gaussian fits use permutation-aligned weights (`canonicalize`): averaging models
whose hidden units are in different orders mixes unrelated units. average and gaussian use only
models of the query task (the task-conditional weight distribution a generator is asked to learn);
mean and mean+gaussian use the seen tasks' models only, as a generator does.

For unseen tasks, `train_from_scratch` trains the arch on the task with the zoo's own recipe (the
reference accuracy) and `finetune_steps` counts the optimiser steps a start needs to reach a target
accuracy, many starts batched as in the zoo trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from weightgen.config import ZooConfig, from_dict
from weightgen.metrics import evaluate_flat, evaluate_params
from weightgen.space.symmetry import canonicalize
from weightgen.space.task_mean import TaskMean
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, TaskSpec, get_task, task_code
from weightgen.zoo.build import recipe_of
from weightgen.zoo.store import ZooStore
from weightgen.zoo.trainer import Recipe, batch_loss, epoch_order, train_batched

if TYPE_CHECKING:
    from weightgen.text import TextEncoder


def tensor_rms(arch: ArchSpec, flat: torch.Tensor) -> torch.Tensor:
    """(N, P) -> (N, P): each coordinate replaced by the RMS of its parameter tensor in its model."""
    parts = arch.layout().unflatten(flat.float())
    return torch.cat([p.flatten(1).pow(2).mean(1, keepdim=True).sqrt().expand(-1, p[0].numel())
                      for p in parts.values()], dim=1)


def noise_baseline(
    arch: ArchSpec,
    zoo: torch.Tensor,
    task: TaskSpec,
    target: float,
    n: int = 32,
    generator: torch.Generator | None = None,
    split: str = "test",
    tolerance: float = 0.01,
    grid: int = 9,
    rounds: int = 3,
    log10_range: tuple[float, float] = (-4.0, 1.0),
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """n noisy copies (n, P) of the zoo models (M, P), taken in turn, whose mean accuracy on `split`
    matches `target`; and {"sigma", "acc", "target", "matched"}.

    The noise eps is drawn once and only sigma varies, so mean accuracy is a smooth, nearly
    monotone function of sigma. Each round scores `grid` log-spaced sigmas in one batched pass and
    narrows the range to the pair that brackets the target (a bisection with `grid` - 1 branches).
    If no sigma in range reaches the target (it is above the zoo's accuracy, or below what even
    the largest noise gives), the closest one is kept and "matched" is False. `score` (flat (K, P)
    -> accuracy (K,)) replaces the accuracy on `split`, e.g. to match accuracy on the probe set."""
    base = zoo.float()[torch.arange(n) % len(zoo)]  # (n, P)
    step = tensor_rms(arch, base) * torch.randn(base.shape, generator=generator)  # (n, P)
    tried: dict[float, float] = {}

    def mean_acc(sigmas: torch.Tensor) -> torch.Tensor:
        models = (base + sigmas.view(-1, 1, 1) * step).flatten(0, 1)  # (G*n, P)
        acc = (score(models) if score else evaluate_flat(arch, models, task, split)["acc"]).view(len(sigmas), n)
        return acc.nanmean(1)  # (G,)

    lo, hi = log10_range
    for _ in range(rounds):
        logs = torch.linspace(lo, hi, grid, dtype=torch.float64)
        accs = mean_acc(10.0**logs)
        tried.update(zip(logs.tolist(), accs.tolist()))
        below = (accs < target).nonzero().squeeze(1)
        if len(below) == 0 or below[0] == 0:  # the target lies outside this range
            break
        i = int(below[0])
        lo, hi = logs[i - 1].item(), logs[i].item()
    log_sigma, acc = min(tried.items(), key=lambda kv: abs(kv[1] - target))
    sigma = 10.0**log_sigma
    info = {"sigma": sigma, "acc": acc, "target": target, "matched": abs(acc - target) <= tolerance}
    return base + sigma * step, info


def average_baseline(arch: ArchSpec, zoo: torch.Tensor, n: int = 16, align: bool = True) -> torch.Tensor:
    """(1, P): the mean of the first min(n, M) zoo models (M, P), aligned to each other first."""
    models = zoo[:n].float()
    if align and len(models) > 1:
        models, _ = canonicalize(arch, models)
    return models.mean(0, keepdim=True)


def gaussian_baseline(
    arch: ArchSpec, zoo: torch.Tensor, n: int = 32, generator: torch.Generator | None = None, align: bool = True
) -> torch.Tensor:
    """(n, P) draws from N(mean, diag(std^2)) fitted per coordinate to the zoo models (M, P),
    aligned first; with one model the std is 0 and every draw is that model."""
    models = zoo.float()
    if align and len(models) > 1:
        models, _ = canonicalize(arch, models)
    mean = models.mean(0)
    std = models.std(0) if len(models) > 1 else torch.zeros_like(mean)
    return mean + std * torch.randn(n, mean.numel(), generator=generator)


@dataclass
class ConditionalMean:
    """The closed-form conditional mean of one arch's seen-task zoo models and their residual spread."""

    task_mean: TaskMean  # ridge map from the task code, plus seen-task offsets (if fitted with them)
    std: torch.Tensor  # (P,) per-coordinate std of the seen models' residuals around it
    numel: int

    @classmethod
    def fit(cls, aligned: torch.Tensor, tasks: list[str], offsets: bool = True) -> ConditionalMean:
        """aligned (N, P): seen-task zoo models of one arch, permutation-aligned to one reference
        (`weightgen.novelty.align_zoo`); tasks: each model's task id."""
        codes = torch.stack([task_code(get_task(t)) for t in tasks])  # (N, C)
        n_tasks = len(set(tasks)) if offsets else 0
        tm = TaskMean(1, TASK_CODE_DIM, aligned.shape[1], n_tasks)
        tm.fit(0, aligned.float(), codes)
        resid = aligned.float() - tm(0, codes, aligned.shape[1])
        std = resid.std(0) if len(resid) > 1 else torch.zeros(aligned.shape[1])
        return cls(tm, std, aligned.shape[1])

    def has_offset(self, task: TaskSpec) -> bool:
        """Whether the task is one of the seen tasks with its own offset."""
        return bool((self.task_mean.seen_codes[0] == task_code(task)).all(-1).any())

    def mean(self, task: TaskSpec) -> torch.Tensor:
        """(1, P): the task's conditional mean network."""
        return self.task_mean(0, task_code(task)[None], self.numel)

    def sample(self, task: TaskSpec, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, P): the mean plus per-coordinate Gaussian residuals."""
        return self.mean(task) + self.std * torch.randn(n, self.numel, generator=generator)


def retrieval_baseline(
    arch: ArchSpec,
    task: TaskSpec,
    store: ZooStore,
    encoder: TextEncoder | None = None,
    held_out: set[str] | None = None,
) -> tuple[torch.Tensor, dict] | None:
    """The zoo models (k, P) of the seen task most similar to `task`, and {"task", "similarity",
    "ids", "ranking"}; None if the zoo has no other seen task with this arch.

    Seen tasks are those of the arch's zoo models that the zoo does not hold out and that are
    outside `held_out` (default: the zoo's held-out tasks), never `task` itself. Similarity is the cosine of the pooled prompt embeddings of the
    task descriptions (`TextEncoder.encode(...).pooled`, already unit-norm)."""
    held = store.held_out if held_out is None else set(held_out)
    records = [r for r in store.records if r["arch"] == arch.slug and not r["held_out"]]
    seen = sorted({r["task"] for r in records} - held - {task.id})
    if not seen:
        return None
    if encoder is None:
        from weightgen.text import TextEncoder

        encoder = TextEncoder()
    pooled = encoder.encode([task.description] + [get_task(t).description for t in seen]).pooled  # (1+S, D)
    sims = pooled[1:] @ pooled[0]  # (S,)
    order = sims.argsort(descending=True).tolist()
    best = seen[order[0]]
    ids = [r["id"] for r in records if r["task"] == best]
    flat = torch.stack([arch.layout().flatten(store.state_dict(i)) for i in ids]).float()
    ranking = [{"task": seen[i], "similarity": sims[i].item()} for i in order[:5]]
    return flat, {"task": best, "similarity": sims[order[0]].item(), "ids": ids, "ranking": ranking}


def zoo_recipe(store: ZooStore | None) -> Recipe:
    """The recipe the zoo's models were trained with (Recipe() without a zoo)."""
    if store is None:
        return Recipe()
    return recipe_of(from_dict(ZooConfig, store.manifest["config"], where=f"{store.root}/zoo.json config"))


def train_from_scratch(
    arch: ArchSpec, task: TaskSpec, recipe: Recipe, seeds: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(seeds, P): the arch trained on the task from fresh inits with `recipe`, all seeds batched by
    the zoo trainer itself, so the reference is exactly what the zoo build would have produced."""
    generator = generator or torch.Generator().manual_seed(0)
    init = arch.init_params(seeds, generator)
    params, _ = train_batched(arch, [task] * seeds, init, recipe, generator)
    return arch.layout().flatten(params)


def finetune_steps(
    arch: ArchSpec,
    task: TaskSpec,
    starts: torch.Tensor,
    recipe: Recipe,
    target: float,
    generator: torch.Generator | None = None,
    split: str = "val",
    eval_every: int = 1,
) -> dict:
    """Optimiser steps each start (K, P) needs to reach `target` accuracy on `split` (the stop
    condition: the validation split, so no test example decides when to stop) when trained on the
    task with `recipe`, all K starts batched; at most the recipe's budget (epochs * steps per
    epoch). Returns {"steps": (K,) long, -1 where never reached; "acc": (K,) accuracy on `split` at
    the end; "flat": (K, P) the weights at the end, for the caller to score on test; "budget": int}.
    A start already at the target takes 0 steps; training stops once every start has reached it.
    Reads only the train split and `split`.

    The step is the zoo trainer's (same optimiser, batch size, loss and precision, each model its
    own data order), with the accuracy checked every `eval_every` steps; with eval_every > 1 a
    count is rounded up to the next check."""
    generator = generator or torch.Generator().manual_seed(0)
    k = starts.shape[0]
    x, y = task.split("train")
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    budget = recipe.epochs * steps_per_epoch
    params = {n: p.float().contiguous().clone().requires_grad_(True)
              for n, p in arch.layout().unflatten(starts).items()}
    opt = recipe.make_optimizer(list(params.values()))

    def accuracy() -> torch.Tensor:
        return evaluate_params(arch, {n: p.detach() for n, p in params.items()}, task, split)["acc"]

    steps = torch.full((k,), -1, dtype=torch.long)
    acc = accuracy()
    steps[acc >= target] = 0
    done = 0
    sizes = torch.full((k,), len(x))
    while done < budget and (steps < 0).any():
        order = epoch_order(sizes, len(x), generator)  # (K, n)
        for s in range(steps_per_epoch):
            rows = order[:, s * recipe.batch_size : (s + 1) * recipe.batch_size]  # (K, b)
            xb, yb = x[rows], y[rows]  # (K, b, in), (K, b[, 1])
            per_model = batch_loss(arch, params, xb, yb, task.loss, recipe.precision)
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()
            opt.step()
            done += 1
            if done % eval_every == 0 or done == budget:
                acc = accuracy()
                steps[(steps < 0) & (acc >= target)] = done
                if (steps >= 0).all():
                    break
    flat = arch.layout().flatten({n: p.detach() for n, p in params.items()})
    return {"steps": steps, "acc": acc, "flat": flat, "budget": budget}
