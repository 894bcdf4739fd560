"""Evaluation: task metrics of one module or of many weight vectors at once, and the full report.

The metric is accuracy for classification tasks and R^2 (1 - MSE / variance) for image-fitting
tasks, so that "higher is better" holds everywhere; loss is mean cross-entropy or MSE.

`evaluate_samples` runs DESIGN.md's evaluation protocol on N generated weight vectors of one arch
and task: accuracy statistics of the samples, of the zoo's models of that task and of random
inits; novelty (`weightgen.novelty`); baselines a generator must beat, and for unseen tasks a
from-scratch reference and fine-tuning speed (`weightgen.baselines`). Every group of models is
scored in batched forward passes, and the report holds only plain numbers, strings and lists, so
it goes straight into JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from weightgen.errors import ArchError, ConfigError
from weightgen.novelty import align_zoo, nearest_zoo_distance, wrong_set_iou
from weightgen.specs import ArchSpec
from weightgen.tasks import SPLITS, TaskSpec

if TYPE_CHECKING:
    from weightgen.text import TextEncoder
    from weightgen.zoo.store import ZooStore
    from weightgen.zoo.trainer import Recipe


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


BASELINES = ("noise", "average", "gaussian", "retrieval")


@dataclass(frozen=True)
class EvalConfig:
    """How `evaluate_samples` measures; the defaults are DESIGN.md's protocol."""

    split: str = "test"  # the split every accuracy and wrong-prediction set is measured on
    n_random: int = 16  # random inits scored (arch.init_params, the zoo's init law); also the random fine-tuning starts
    n_baseline: int = 32  # models drawn by the noise and Gaussian baselines
    n_average: int = 16  # zoo models of the task the average baseline averages (all of them, if fewer)
    noise_tolerance: float = 0.01  # the noise baseline is "matched" within this much of the target accuracy
    candidates: int = 8  # zoo models each sample is aligned to exactly (see weightgen.novelty)
    n_scratch: int = 4  # seeds trained from scratch with the zoo's recipe for the reference accuracy
    finetune_fraction: float = 0.99  # fine-tuning target: this fraction of the from-scratch mean accuracy
    finetune_starts: int = 16  # generated samples fine-tuned (the first finite ones)
    eval_every: int = 1  # fine-tuning steps between accuracy checks (1: exact step counts)
    few_errors: int = 3  # zoo models with at most this many wrong test examples (median) get a wrong_iou caveat
    seed: int = 0  # random inits, baseline draws, from-scratch training and fine-tuning data order

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split '{self.split}'; known: {', '.join(SPLITS)}")
        counts = ("n_random", "n_baseline", "n_average", "candidates", "n_scratch", "finetune_starts", "eval_every")
        if min(getattr(self, c) for c in counts) < 1:
            raise ConfigError(f"{', '.join(counts)} must all be at least 1")
        if not 0 < self.finetune_fraction <= 1:
            raise ConfigError(f"finetune_fraction must be in (0, 1], got {self.finetune_fraction}")


def _floats(t: torch.Tensor) -> list[float | None]:
    """JSON-ready list: NaN and inf become None."""
    return [v if math.isfinite(v) else None for v in t.double().tolist()]


def _summary(t: torch.Tensor) -> dict:
    """Per-model values and their mean, median, min and max over the finite ones."""
    vals = t.double()[t.double().isfinite()]
    stats = (dict.fromkeys(("mean", "median", "min", "max")) if len(vals) == 0 else
             {"mean": vals.mean().item(), "median": vals.quantile(0.5).item(),
              "min": vals.min().item(), "max": vals.max().item()})
    return {"per_model": _floats(t), **stats}


class _Comparison:
    """The zoo side of every comparison, loaded, aligned and scored once for all groups."""

    def __init__(self, arch: ArchSpec, task: TaskSpec, store: ZooStore | None, held: set[str], cfg: EvalConfig):
        self.arch, self.task, self.cfg = arch, task, cfg
        flat, records = torch.zeros(0, arch.layout().numel), []
        if store is not None:
            params, records = store.load_arch(arch.slug, include_held_out=True)
            if records:
                flat = arch.layout().flatten(params).float()
        same = [i for i, r in enumerate(records) if r["task"] == task.id]
        pool = [i for i, r in enumerate(records) if r["task"] not in held]
        # same-task models: zoo statistics, wrong-set IoU and the noise/average/Gaussian baselines
        self.task_flat, self.task_ids = flat[same], [records[i]["id"] for i in same]
        self.task_wrong = score_flat(arch, self.task_flat, task, cfg.split)["wrong"] if same else None
        # seen-task models of the arch: what the generator could have memorised
        self.pool_ids, self.pool_tasks = [records[i]["id"] for i in pool], [records[i]["task"] for i in pool]
        self.pool = align_zoo(arch, flat[pool]) if pool else None
        at = {i: j for j, i in enumerate(pool)}
        self.own_in_pool = torch.tensor([at.get(i, -1) for i in same], dtype=torch.long)

    def group(self, flat: torch.Tensor, zoo_itself: bool = False) -> dict:
        """Accuracy statistics and novelty of N models (N, P). zoo_itself: the models are
        `task_flat`, so each one is compared with the other zoo models only (leave-one-out)."""
        s = score_flat(self.arch, flat, self.task, self.cfg.split)
        novelty: dict = {"distance": None, "nearest_id": None, "nearest_task": None, "wrong_iou": None}
        if self.pool is not None and len(flat):
            exclude = self.own_in_pool if zoo_itself else None
            d = nearest_zoo_distance(self.arch, flat, self.pool, self.cfg.candidates, exclude)
            d["distance"][~s["finite"]], d["index"][~s["finite"]] = float("nan"), -1  # finite weights, non-finite outputs
            index = d["index"].tolist()
            novelty["distance"] = _summary(d["distance"])
            novelty["nearest_id"] = [self.pool_ids[i] if i >= 0 else None for i in index]
            novelty["nearest_task"] = [self.pool_tasks[i] if i >= 0 else None for i in index]
        if self.task_wrong is not None and len(flat):
            iou = wrong_set_iou(s["wrong"], self.task_wrong)  # (N, M_task)
            if zoo_itself:
                iou.fill_diagonal_(float("-inf"))
            best = iou.max(1).values
            best[~s["finite"] | best.isinf()] = float("nan")
            novelty["wrong_iou"] = _summary(best)
        return {"stats": accuracy_stats(s["acc"], s["finite"]), "acc": _floats(s["acc"]), "novelty": novelty}


def evaluate_samples(
    arch: ArchSpec,
    flat: torch.Tensor,
    task: TaskSpec,
    store: ZooStore | None = None,
    held_out: Iterable[str] | None = None,
    baselines: bool | Iterable[str] = True,
    finetune: bool = False,
    from_scratch: bool | None = None,
    encoder: TextEncoder | None = None,
    recipe: Recipe | None = None,
    cfg: EvalConfig = EvalConfig(),
) -> dict:
    """The evaluation report (DESIGN.md, "Evaluation protocol") of N generated weight vectors
    flat (N, P) of `arch` for `task`, as a JSON-ready dict.

    store: the zoo the generator was trained on; None scores only the samples and random inits.
    held_out: ids of the tasks the generator never saw (default: the zoo's held-out tasks). The
        task is *unseen* if it is one of them or the zoo has no model of it with this arch.
    baselines: True (every baseline that applies), False, or names from BASELINES. noise, average
        and gaussian need zoo models of the task; retrieval applies to unseen tasks.
    finetune: also measure fine-tuning speed from generated vs random starts (trains from scratch).
    from_scratch: train the from-scratch reference (default: for unseen tasks).
    encoder: a `weightgen.text.TextEncoder` for retrieval (default: loaded when needed).
    recipe: training recipe for from-scratch and fine-tuning (default: the zoo's, else Recipe()).

    The report holds task, arch, metric ("accuracy" or "r2"), split, unseen (None without a zoo),
    notes (why a part is missing; how non-finite samples were counted), pools (which zoo models
    novelty compares against), and groups of models: generated, zoo (the task's zoo models, each
    compared with the others; wrong_median: how many examples they get wrong), random_init, baselines {name: group}, scratch. A group is
    {"stats": accuracy_stats, "acc": per model, "novelty": {"distance", "nearest_id",
    "nearest_task", "wrong_iou"}}, baselines adding how they were made. finetune holds the target,
    budget, step counts of both kinds of start and the speedup. Absent parts are None."""
    from weightgen import baselines as bl  # it builds on this module's metrics, so it is imported late

    if (task.in_dim, task.out_dim) != (arch.in_dim, arch.out_dim):
        raise ArchError(f"task {task.id} ({task.in_dim} in, {task.out_dim} out) does not fit {arch.describe()}")
    flat = flat.detach().float().cpu()
    if flat.dim() == 1:
        flat = flat[None]
    if flat.dim() != 2 or flat.shape[1] != arch.layout().numel:
        raise ArchError(f"generated weights must be (N, {arch.layout().numel}) for {arch.describe()}, "
                        f"got {tuple(flat.shape)}")
    wanted = set(BASELINES if baselines is True else () if baselines is False else baselines)
    if wanted - set(BASELINES):
        raise ConfigError(f"unknown baseline '{sorted(wanted - set(BASELINES))[0]}'; known: {', '.join(BASELINES)}")
    g = torch.Generator().manual_seed(cfg.seed)
    held = set(held_out) if held_out is not None else store.held_out if store is not None else set()
    zoo = _Comparison(arch, task, store, held, cfg)
    unseen = None if store is None else task.id in held or not zoo.task_ids
    notes: list[str] = []
    report: dict = {
        "task": task.id, "arch": arch.describe(), "metric": "r2" if task.loss == "mse" else "accuracy",
        "split": cfg.split, "unseen": unseen, "notes": notes,
        "pools": {
            "distance": f"{len(zoo.pool_ids)} zoo models of {arch.describe()} of tasks the generator saw "
                        "(all but held-out tasks): what it could have memorised; relative L2 distance "
                        "||P w - z|| / ||z|| after weight matching",
            "wrong_iou": f"{len(zoo.task_ids)} zoo models of {task.id} with this arch (held-out ones included)",
        },
    }

    # 1. accuracy and novelty of the samples, the zoo and random inits
    report["generated"] = zoo.group(flat)
    bad = report["generated"]["stats"]["n"] - report["generated"]["stats"]["n_finite"]
    if bad:
        notes.append(f"{bad} of {len(flat)} generated samples have non-finite weights or outputs: they count "
                     "in share_finite and are left out of every mean, median, max, min, std and of novelty")
    report["zoo"] = zoo.group(zoo.task_flat, zoo_itself=True) | {"ids": zoo.task_ids} if zoo.task_ids else None
    if store is None:
        notes.append("no zoo given: only the generated samples and random inits are scored")
    elif not zoo.task_ids:
        notes.append(f"the zoo has no model of {task.id} with {arch.describe()}: zoo statistics and the "
                     "noise, average and gaussian baselines are skipped")
    elif unseen and wanted & {"noise", "average", "gaussian"}:
        notes.append("the noise, average and gaussian baselines of an unseen task are built from its held-out "
                     "zoo models, which the generator never saw: they are references, not a generator's shortcut")
    if task.loss == "mse":
        notes.append("wrong_iou is not defined for image-fitting tasks (no prediction is wrong or right)")
    elif zoo.task_wrong is not None:
        # a few wrong examples are the same hard ones for every model at zoo accuracy, so the max IoU
        # sits near 1 even for models trained from scratch (benchmarks/RESULTS.md, issue 5)
        errors = zoo.task_wrong.sum(1).double().median().item()
        report["zoo"]["wrong_median"] = errors
        if errors <= cfg.few_errors:
            why = ("two models with no mistakes count as IoU 1" if errors == 0 else
                   "the same hard ones for most models")
            notes.append(f"wrong_iou has little resolution here: the task's zoo models get a median of {errors:g} of "
                         f"{zoo.task_wrong.shape[1]} {cfg.split} examples wrong ({why}), so even models trained "
                         "from scratch score near 1")
    random_flat = arch.layout().flatten(arch.init_params(cfg.n_random, g))
    report["random_init"] = zoo.group(random_flat)

    # 2. baselines, scored like the samples
    out: dict = {}
    target = report["generated"]["stats"]["mean"]
    if "noise" in wanted and zoo.task_ids:
        if target is None:
            notes.append("noise baseline skipped: no finite generated sample gives a target accuracy")
        else:
            noisy, info = bl.noise_baseline(arch, zoo.task_flat, task, target, cfg.n_baseline, g, cfg.split,
                                            cfg.noise_tolerance)
            out["noise"] = zoo.group(noisy) | info
            if not info["matched"]:
                notes.append(f"noise baseline: no noise scale reaches the target accuracy {target:.4f}; "
                             f"the closest gives {info['acc']:.4f}")
    if "average" in wanted and zoo.task_ids:
        k = min(cfg.n_average, len(zoo.task_ids))
        out["average"] = zoo.group(bl.average_baseline(arch, zoo.task_flat, cfg.n_average)) | {"ids": zoo.task_ids[:k]}
        if k < cfg.n_average:
            notes.append(f"average baseline: the zoo has only {k} models of this task and arch, so it "
                         f"averages {k}, not {cfg.n_average}")
    if "gaussian" in wanted and zoo.task_ids:
        drawn = bl.gaussian_baseline(arch, zoo.task_flat, cfg.n_baseline, g)
        out["gaussian"] = zoo.group(drawn) | {"n_fitted": len(zoo.task_ids)}
    if "retrieval" in wanted and unseen:
        found = bl.retrieval_baseline(arch, task, store, encoder, held)
        if found is None:
            notes.append(f"retrieval baseline skipped: the zoo has no seen task with {arch.describe()}")
        else:
            out["retrieval"] = zoo.group(found[0]) | found[1]
    report["baselines"] = out if wanted else None

    # 3. from-scratch reference and fine-tuning speed
    report["scratch"] = report["finetune"] = None
    if finetune or (unseen if from_scratch is None else from_scratch):
        recipe = recipe or bl.zoo_recipe(store)
        scratch = bl.train_from_scratch(arch, task, recipe, cfg.n_scratch, g)
        report["scratch"] = zoo.group(scratch) | {"recipe": dataclasses.asdict(recipe)}
        reference = report["scratch"]["stats"]["mean"]
        if finetune and reference is None:
            notes.append("fine-tuning skipped: every from-scratch model diverged, so there is no target")
        elif finetune:
            # generated and random starts in one batched run; only samples that run are fine-tuned
            runs = torch.tensor([a is not None for a in report["generated"]["acc"]], dtype=torch.bool)
            generated = flat[runs][: cfg.finetune_starts]
            target = cfg.finetune_fraction * reference
            res = bl.finetune_steps(arch, task, torch.cat([generated, random_flat]), recipe, target, g,
                                    cfg.split, cfg.eval_every)
            report["finetune"] = _finetune_report(res, len(generated), target, reference, cfg, notes)
    return report


def _finetune_report(res: dict, k: int, target: float, reference: float, cfg: EvalConfig, notes: list[str]) -> dict:
    """The fine-tuning part of the report from `finetune_steps` on k generated then random starts."""
    budget = res["budget"]

    def side(steps: torch.Tensor, acc: torch.Tensor) -> dict:
        reached = steps >= 0
        capped = torch.where(reached, steps, budget).double()  # a start that never got there counts as the budget
        return {"n": len(steps), "reached": int(reached.sum()),
                "steps": [s if s >= 0 else None for s in steps.tolist()],
                "median_steps": capped.quantile(0.5).item() if len(steps) else None,
                "mean_steps": capped.mean().item() if len(steps) else None, "final_acc": _floats(acc)}

    gen, rnd = side(res["steps"][:k], res["acc"][:k]), side(res["steps"][k:], res["acc"][k:])
    # a start already at the target counts as one step, so the ratio stays finite
    speedup = rnd["median_steps"] / max(gen["median_steps"], 1.0) if k else None
    if not k:
        notes.append("fine-tuning: no generated sample runs, so there is none to start from")
    for name, s in (("generated", gen), ("random", rnd)):
        if s["n"] and s["reached"] < s["n"]:
            notes.append(f"fine-tuning: {s['n'] - s['reached']} of {s['n']} {name} starts never reached the "
                         f"target within the recipe's {budget} steps; they count as {budget}")
    return {"target": target, "reference_acc": reference, "fraction": cfg.finetune_fraction, "budget": budget,
            "eval_every": cfg.eval_every, "generated": gen, "random": rnd, "speedup": speedup}
