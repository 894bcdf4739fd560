"""Evaluation: the full report of N generated weight vectors (the metrics live in `weightgen.metrics`).

`evaluate_samples` runs DESIGN.md's evaluation protocol on N generated weight vectors of one arch
and task: accuracy on the clean test split of the samples, of the zoo's models of that task and of
random inits; novelty (`weightgen.novelty`): weight distance to the nearest zoo model, and on the
task's probe set (`weightgen.probe`) the max wrong-set IoU and the disagreement with the nearest
zoo model, read against the zoo's own leave-one-out figures; baselines a generator must beat (the
closed-form conditional mean and mean + Gaussian among them), a from-scratch reference and, for
unseen tasks, fine-tuning speed (`weightgen.baselines`). Every group of models is scored in batched
forward passes, and the report holds only plain numbers, strings and lists, so it goes straight
into JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from weightgen import baselines as bl
from weightgen.errors import ArchError, ConfigError
from weightgen.metrics import (  # noqa: F401  (re-exported: the metrics were defined here before)
    accuracy_stats,
    cross_entropy,
    evaluate_flat,
    evaluate_module,
    evaluate_params,
    metrics,
    probe_predictions,
    score_flat,
)
from weightgen.novelty import AlignedZoo, align_zoo, functional_novelty, nearest_zoo_distance
from weightgen.specs import ArchSpec
from weightgen.tasks import SPLITS, TaskSpec

if TYPE_CHECKING:
    from weightgen.text import TextEncoder
    from weightgen.zoo.store import ZooStore
    from weightgen.zoo.trainer import Recipe


# "scratch" is reported as its own group (report["scratch"]); the rest under report["baselines"]
BASELINES = ("noise", "average", "gaussian", "mean", "mean+gaussian", "retrieval", "scratch")


@dataclass(frozen=True)
class EvalConfig:
    """How `evaluate_samples` measures; the defaults are DESIGN.md's protocol."""

    split: str = "test"  # the split every reported accuracy is measured on
    n_random: int = 16  # random inits scored (arch.init_params, the zoo's init law); also the random fine-tuning starts
    n_baseline: int = 32  # models drawn by the noise, Gaussian and mean+Gaussian baselines
    n_average: int = 16  # zoo models of the task the average baseline averages (all of them, if fewer)
    noise_tolerance: float = 0.01  # the noise baseline is "matched" within this much of the target accuracy
    candidates: int = 8  # zoo models each sample is aligned to exactly (see weightgen.novelty)
    n_scratch: int = 4  # seeds trained from scratch with the zoo's recipe for the reference accuracy
    mean_offsets: bool = True  # the mean baselines keep each seen task's own offset (as the default generators do)
    finetune_fraction: float = 0.99  # fine-tuning target: this fraction of the from-scratch mean accuracy (on val)
    finetune_starts: int = 16  # generated samples fine-tuned (the first finite ones)
    eval_every: int = 1  # fine-tuning steps between accuracy checks (1: exact step counts)
    min_probe_error: float = 0.03  # a zoo erring on less of the probe than this gets a caveat note
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


def _median(t: torch.Tensor) -> float | None:
    vals = t.double()[t.double().isfinite()]
    return vals.quantile(0.5).item() if len(vals) else None


def _summary(t: torch.Tensor) -> dict:
    """Per-model values and their mean, median, min and max over the finite ones."""
    vals = t.double()[t.double().isfinite()]
    stats = (dict.fromkeys(("mean", "median", "min", "max")) if len(vals) == 0 else
             {"mean": vals.mean().item(), "median": vals.quantile(0.5).item(),
              "min": vals.min().item(), "max": vals.max().item()})
    return {"per_model": _floats(t), **stats}


_POOLS: dict[tuple, AlignedZoo] = {}


def _aligned_pool(store: ZooStore, arch: ArchSpec, ids: tuple[int, ...], flat: torch.Tensor) -> AlignedZoo:
    """`align_zoo` of an arch's seen-task pool, kept for the last few (zoo, arch, models): a benchmark
    scores many tasks of one arch against the same pool, and aligning it is the slow part."""
    key = (str(store.root), arch.slug, hash(ids), len(ids))
    if key not in _POOLS:
        while len(_POOLS) >= 4:
            _POOLS.pop(next(iter(_POOLS)))
        _POOLS[key] = align_zoo(arch, flat)
    return _POOLS[key]


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
        # the zoo's own hold-out (tasks and whole archs) plus the caller's extra held-out tasks
        pool = [i for i, r in enumerate(records) if not r["held_out"] and r["task"] not in held]
        # same-task models: zoo statistics, probe novelty and the noise/average/Gaussian baselines
        self.task_flat, self.task_ids = flat[same], [records[i]["id"] for i in same]
        self.task_probe = probe_predictions(arch, self.task_flat, task) if same else None
        # the zoo's own leave-one-out novelty: what a fresh training run of the zoo scores
        self.loo = (functional_novelty(self.task_probe, self.task_probe, leave_one_out=True)
                    if self.task_probe is not None and len(same) > 1 else None)
        self.loo_iou = None if self.loo is None else _median(self.loo["iou"])
        self.loo_disagreement = None if self.loo is None else _median(self.loo["disagreement"])
        # seen-task models of the arch: what the generator could have memorised
        self.pool_ids, self.pool_tasks = [records[i]["id"] for i in pool], [records[i]["task"] for i in pool]
        self.pool = _aligned_pool(store, arch, tuple(self.pool_ids), flat[pool]) if pool else None
        at = {i: j for j, i in enumerate(pool)}
        self.own_in_pool = torch.tensor([at.get(i, -1) for i in same], dtype=torch.long)

    def group(self, flat: torch.Tensor, zoo_itself: bool = False) -> dict:
        """Accuracy statistics and novelty of N models (N, P). zoo_itself: the models are
        `task_flat`, so each one is compared with the other zoo models only (leave-one-out)."""
        s = score_flat(self.arch, flat, self.task, self.cfg.split)
        novelty: dict = {"distance": None, "nearest_id": None, "nearest_task": None, "probe_iou": None,
                         "disagreement": None, "nearest_probe_id": None, "as_new": None, "as_new_iou": None}
        if self.pool is not None and len(flat):
            exclude = self.own_in_pool if zoo_itself else None
            d = nearest_zoo_distance(self.arch, flat, self.pool, self.cfg.candidates, exclude)
            d["distance"][~s["finite"]], d["index"][~s["finite"]] = float("nan"), -1  # finite weights, non-finite outputs
            index = d["index"].tolist()
            novelty["distance"] = _summary(d["distance"])
            novelty["nearest_id"] = [self.pool_ids[i] if i >= 0 else None for i in index]
            novelty["nearest_task"] = [self.pool_tasks[i] if i >= 0 else None for i in index]
        if self.task_probe is not None and len(flat):
            f = functional_novelty(probe_predictions(self.arch, flat, self.task), self.task_probe, zoo_itself)
            novelty["probe_iou"], novelty["disagreement"] = _summary(f["iou"]), _summary(f["disagreement"])
            novelty["nearest_probe_id"] = [self.task_ids[i] if i >= 0 else None for i in f["nearest"].tolist()]
            ok = f["disagreement"].isfinite()
            if self.loo_disagreement is not None and ok.any():
                # as new as a fresh training run: novelty at least the zoo's leave-one-out median
                novelty["as_new"] = (f["disagreement"][ok] >= self.loo_disagreement).double().mean().item()
                novelty["as_new_iou"] = (f["iou"][ok] <= self.loo_iou).double().mean().item()
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
        task is *unseen* if it is one of them, the arch is one the zoo holds out or lacks
        (`unseen_arch`), or the zoo has no model of it with this arch.
    baselines: True (every baseline that applies), False, or names from BASELINES. noise, average
        and gaussian need zoo models of the task; mean and mean+gaussian need seen-task zoo models
        of the arch; retrieval applies to unseen tasks; scratch trains `cfg.n_scratch` models.
    finetune: also measure fine-tuning speed from generated vs random starts (trains from scratch).
    from_scratch: train the from-scratch reference (default: for unseen tasks, or "scratch" asked for).
    encoder: a `weightgen.text.TextEncoder` for retrieval (default: loaded when needed).
    recipe: training recipe for from-scratch and fine-tuning (default: the zoo's, else Recipe()).

    The report holds task, arch, metric ("accuracy" or "r2"), split, unseen (None without a zoo),
    notes (why a part is missing; how non-finite samples were counted), pools (which zoo models
    novelty compares against), probe (its size, the zoo's error rate on it and the zoo's
    leave-one-out novelty medians), and groups of models: generated, zoo (the task's zoo models,
    each compared with the others), random_init, baselines {name: group}, scratch. A group is
    {"stats": accuracy_stats, "acc": per model, "novelty": {"distance", "nearest_id",
    "nearest_task", "probe_iou", "disagreement", "nearest_probe_id", "as_new", "as_new_iou"}},
    baselines adding how they were made. finetune holds the target, budget, step counts of both
    kinds of start and the speedup. Absent parts are None."""
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
    unseen_arch = None if store is None else arch.slug in store.held_out_archs or arch.slug not in store.archs
    unseen = None if store is None else task.id in held or unseen_arch or not zoo.task_ids
    notes: list[str] = []
    report: dict = {
        "task": task.id, "arch": arch.describe(), "metric": "r2" if task.loss == "mse" else "accuracy",
        "split": cfg.split, "unseen": unseen, "unseen_arch": unseen_arch, "notes": notes,
        "pools": {
            "distance": f"{len(zoo.pool_ids)} zoo models of {arch.describe()} of tasks the generator saw "
                        "(all but held-out tasks): what it could have memorised; relative L2 distance "
                        "||P w - z|| / ||z|| after weight matching",
            "probe": f"{len(zoo.task_ids)} zoo models of {task.id} with this arch (held-out ones included), "
                     "compared on the task's probe set (weightgen.probe)",
        },
        "probe": None,
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
        notes.append(f"the zoo has no model of {task.id} with {arch.describe()}: zoo statistics, probe novelty and "
                     "the noise, average and gaussian baselines are skipped")
    elif unseen and wanted & {"noise", "average", "gaussian"}:
        notes.append("the noise, average and gaussian baselines of an unseen task are built from its held-out "
                     "zoo models, which the generator never saw: they are references, not a generator's shortcut")
    if task.loss == "mse":
        notes.append("probe novelty is not defined for image-fitting tasks (no prediction is wrong or right)")
    elif zoo.task_probe is not None:
        error = zoo.task_probe["wrong"].double().mean(1).median().item()
        report["probe"] = {"size": zoo.task_probe["wrong"].shape[1], "zoo_error_median": error,
                           "loo_iou_median": zoo.loo_iou, "loo_disagreement_median": zoo.loo_disagreement,
                           "as_new_rule": "disagreement with the nearest zoo model >= the zoo's leave-one-out median"}
        if error < cfg.min_probe_error:
            notes.append(f"the task's zoo models err on only {error:.1%} of the {report['probe']['size']} probe "
                         "examples, so probe novelty has little resolution here")
        if zoo.loo is None:
            notes.append("the zoo has one model of this task and arch: no leave-one-out reference, so as_new is None")
    random_flat = arch.layout().flatten(arch.init_params(cfg.n_random, g))
    report["random_init"] = zoo.group(random_flat)

    # 2. baselines, scored like the samples
    report["baselines"] = _baselines(bl, zoo, wanted, report, store, encoder, held, unseen, g, cfg) if wanted - {"scratch"} else None

    # 3. from-scratch reference and fine-tuning speed
    report["scratch"] = report["finetune"] = None
    if finetune or (("scratch" in wanted or unseen) if from_scratch is None else from_scratch):
        recipe = recipe or bl.zoo_recipe(store)
        scratch = bl.train_from_scratch(arch, task, recipe, cfg.n_scratch, g)
        report["scratch"] = zoo.group(scratch) | {"recipe": dataclasses.asdict(recipe)}
        reference = report["scratch"]["stats"]["mean"]
        if finetune and reference is None:
            notes.append("fine-tuning skipped: every from-scratch model diverged, so there is no target")
        elif finetune:
            # the stop condition reads the validation split, so the test split stays unseen until
            # the reported accuracies; the target is a fraction of the from-scratch val accuracy
            val_reference = score_flat(arch, scratch, task, "val")["acc"].nanmean().item()
            runs = torch.tensor([a is not None for a in report["generated"]["acc"]], dtype=torch.bool)
            generated = flat[runs][: cfg.finetune_starts]
            target = cfg.finetune_fraction * val_reference
            res = bl.finetune_steps(arch, task, torch.cat([generated, random_flat]), recipe, target, g,
                                    "val", cfg.eval_every)
            res["test_acc"] = score_flat(arch, res["flat"], task, cfg.split)["acc"]
            report["finetune"] = _finetune_report(res, len(generated), target, reference, val_reference, cfg, notes)
    return report


def _baselines(bl, zoo: _Comparison, wanted: set[str], report: dict, store, encoder, held: set[str], unseen,
               g: torch.Generator, cfg: EvalConfig) -> dict:
    """The baselines group by group (see `weightgen.baselines`), each scored like the samples."""
    arch, task, notes, out = zoo.arch, zoo.task, report["notes"], {}
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
    if wanted & {"mean", "mean+gaussian"}:
        if zoo.pool is None or task.kind == "digits-image":
            notes.append("mean baselines skipped: the zoo has no seen-task model of this arch (or the task has no code)")
        else:
            fit = bl.ConditionalMean.fit(zoo.pool.aligned, zoo.pool_tasks, cfg.mean_offsets)
            info = {"n_fitted": len(zoo.pool_tasks), "seen_offset": fit.has_offset(task)}
            if "mean" in wanted:
                out["mean"] = zoo.group(fit.mean(task)) | info
            if "mean+gaussian" in wanted:
                out["mean+gaussian"] = zoo.group(fit.sample(task, cfg.n_baseline, g)) | info
    if "retrieval" in wanted and unseen:
        found = bl.retrieval_baseline(arch, task, store, encoder, held)
        if found is None:
            notes.append(f"retrieval baseline skipped: the zoo has no seen task with {arch.describe()}")
        else:
            out["retrieval"] = zoo.group(found[0]) | found[1]
    return out


def _finetune_report(res: dict, k: int, target: float, reference: float, val_reference: float, cfg: EvalConfig,
                     notes: list[str]) -> dict:
    """The fine-tuning part of the report from `finetune_steps` on k generated then random starts."""
    budget = res["budget"]

    def side(steps: torch.Tensor, val_acc: torch.Tensor, test_acc: torch.Tensor) -> dict:
        reached = steps >= 0
        capped = torch.where(reached, steps, budget).double()  # a start that never got there counts as the budget
        return {"n": len(steps), "reached": int(reached.sum()),
                "steps": [s if s >= 0 else None for s in steps.tolist()],
                "median_steps": capped.quantile(0.5).item() if len(steps) else None,
                "mean_steps": capped.mean().item() if len(steps) else None,
                "final_val_acc": _floats(val_acc), "final_acc": _floats(test_acc)}

    gen = side(res["steps"][:k], res["acc"][:k], res["test_acc"][:k])
    rnd = side(res["steps"][k:], res["acc"][k:], res["test_acc"][k:])
    # a start already at the target counts as one step, so the ratio stays finite
    speedup = rnd["median_steps"] / max(gen["median_steps"], 1.0) if k else None
    if not k:
        notes.append("fine-tuning: no generated sample runs, so there is none to start from")
    for name, s in (("generated", gen), ("random", rnd)):
        if s["n"] and s["reached"] < s["n"]:
            notes.append(f"fine-tuning: {s['n'] - s['reached']} of {s['n']} {name} starts never reached the "
                         f"target within the recipe's {budget} steps; they count as {budget}")
    return {"target": target, "target_split": "val", "reference_val_acc": val_reference, "reference_acc": reference,
            "fraction": cfg.finetune_fraction, "budget": budget, "eval_every": cfg.eval_every, "generated": gen,
            "random": rnd, "speedup": speedup}
