"""The evaluation protocol for generated LoRA adapters: accuracy beside five references, and novelty.

For a task and N generated adapters of a LoRA zoo's base, every figure is the clean test accuracy of
the task (each adapter on the base), read against:
- `base`: the base alone (no adapter);
- `trained`: LoRAs trained on the task with the zoo's recipe: the zoo's own adapters of the task
  where it has them (held-out tasks have them too, and no generator saw them), else trained here;
- `multitask`: one LoRA trained on the union of every seen task's training data;
- `retrieval`: the zoo adapters of the nearest seen task (by task code), the best a lookup can do;
- `mean+gaussian`: a ridge map from the task code to the mean canonical adapter, plus Gaussian
  noise of the zoo's per-coordinate residual spread (the closed-form baseline).
Novelty, on the task's probe set (`weightgen.probe`): a sample is "as new as a fresh training run"
when its disagreement with the nearest zoo adapter of the task is at least the zoo's own
leave-one-out median (`weightgen.novelty.functional_novelty`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from weightgen.config import LoRASpec, ZooConfig, from_dict
from weightgen.encoders.adapter import AdapterEncoder
from weightgen.novelty import functional_novelty
from weightgen.probe import probe_set
from weightgen.space.task_mean import TaskMean
from weightgen.tasks import TASK_CODE_DIM, TaskSpec, get_task, task_code
from weightgen.zoo.build import LORA_ARCH, lora_init_generators, recipe_of
from weightgen.zoo.lora_base import images
from weightgen.zoo.lora_build import zoo_base
from weightgen.zoo.lora_trainer import (
    adapters_finite,
    evaluate_adapters,
    factor_shapes,
    init_factors,
    multi_lora,
    set_factors,
    train_lora_batched,
)
from weightgen.zoo.store import ZooStore


@dataclass
class LoRAZoo:
    """A LoRA zoo loaded for evaluation: base, spec, encoder, every adapter and its record."""

    store: ZooStore
    base: torch.nn.Module
    spec: LoRASpec
    encoder: AdapterEncoder
    factors: dict[str, torch.Tensor]  # every adapter, held out or not, (M, ...)
    records: list[dict]

    @classmethod
    def load(cls, path) -> LoRAZoo:
        store = ZooStore(path)
        store.check_complete()
        cfg = from_dict(ZooConfig, store.manifest["config"], where=f"{store.root}/zoo.json config")
        factors, records = store.load_arch(LORA_ARCH, include_held_out=True)
        return cls(store, zoo_base(store), cfg.lora, AdapterEncoder.from_zoo(store), factors, records)

    def rows(self, task_id: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if r["task"] == task_id]

    def pick(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return {n: f[rows] for n, f in self.factors.items()}

    def accuracy(self, factors: dict[str, torch.Tensor], task: TaskSpec, split: str = "test") -> torch.Tensor:
        n = len(next(iter(factors.values())))
        return evaluate_adapters(self.base, self.spec, factors, [task] * n, split)["acc"]

    @functools.cached_property
    def ridge(self) -> tuple[TaskMean, torch.Tensor, tuple[int, ...]]:
        """mean+gaussian's closed-form part, fitted once: the ridge map from task code to the seen
        adapters' flattened tokens, the residual std per coordinate, and the token shape."""
        rows = self.seen_rows()
        tokens = self.encoder.encode(self.pick(rows))  # (M, T, D)
        codes = torch.stack([task_code(get_task(self.records[i]["task"])) for i in rows])
        flat = tokens.flatten(1)
        tm = TaskMean(1, TASK_CODE_DIM, flat.shape[1], 0)
        tm.fit(0, flat, codes, 1.0)
        return tm, (flat - tm(0, codes, flat.shape[1])).std(0), tuple(tokens.shape[1:])

    def seen_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if not r["held_out"]]

    def seen_tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.records if not r["held_out"]})

    def train(self, tasks: list[TaskSpec], seeds: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
        """Adapters trained here with the zoo's recipe and init mode (seeds per task), for tasks the zoo lacks."""
        cfg = from_dict(ZooConfig, self.store.manifest["config"])
        todo = [t for t in tasks for _ in range(seeds)]
        gens = lora_init_generators(cfg, [f"reference-{seed}-{i}" for i in range(len(todo))])
        init = init_factors(factor_shapes(self.base, self.spec), gens)
        return train_lora_batched(self.base, self.spec, todo, init, recipe_of(cfg), torch.Generator().manual_seed(seed))[0]


def multitask_adapter(zoo: LoRAZoo, seed: int = 0) -> dict[str, torch.Tensor]:
    """One LoRA trained on the union of every seen task's training data (the zoo's recipe, with as
    many optimiser steps as one task's adapter takes per epoch times the number of tasks)."""
    tasks = [get_task(t) for t in zoo.seen_tasks()]
    xs, ys = zip(*(t.split("train") for t in tasks))
    union = _UnionTask(torch.cat(xs), torch.cat(ys))
    cfg = from_dict(ZooConfig, zoo.store.manifest["config"])
    init = init_factors(factor_shapes(zoo.base, zoo.spec), [torch.Generator().manual_seed(seed)])
    return train_lora_batched(zoo.base, zoo.spec, [union], init, recipe_of(cfg), torch.Generator().manual_seed(seed),
                              metrics=False)[0]


class _UnionTask:
    """A task-like view of pooled training data: all train_lora_batched reads is `split('train')`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def split(self, name: str):
        return self.x, self.y


def mean_gaussian(zoo: LoRAZoo, task: TaskSpec, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The closed-form baseline: ridge map from task code to the mean canonical adapter (fitted on
    the seen tasks' adapters, ridge 1), plus per-coordinate Gaussian noise of the residual std."""
    tm, std, shape = zoo.ridge
    mean = tm(0, task_code(task)[None], std.numel())  # (1, T*D)
    sample = mean + std * torch.randn(n, std.numel(), generator=g)
    return zoo.encoder.decode(sample.view(n, *shape) * zoo.encoder.used)


def retrieval(zoo: LoRAZoo, task: TaskSpec) -> tuple[str, dict[str, torch.Tensor]]:
    """The zoo adapters of the seen task whose code is nearest the task's (never the task itself)."""
    code = task_code(task)
    seen = [t for t in zoo.seen_tasks() if t != task.id]
    nearest = min(seen, key=lambda t: float((task_code(get_task(t)) - code).norm()))
    return nearest, zoo.pick(zoo.rows(nearest))


@torch.no_grad()
def probe_predictions(zoo: LoRAZoo, factors: dict[str, torch.Tensor], task: TaskSpec, chunk: int = 16) -> dict:
    """Predictions of N adapters on the task's probe set, in `functional_novelty`'s form."""
    x, y = probe_set(task)
    model = multi_lora(zoo.base, zoo.spec)
    n = len(next(iter(factors.values())))
    preds = []
    for s in range(0, n, chunk):
        part = {k: v[s : s + chunk].float() for k, v in factors.items()}
        k = len(next(iter(part.values())))
        set_factors(model, part)
        logits = model(pixel_values=images(x.repeat(k, 1))).logits.view(k, len(x), -1)
        preds.append(logits.argmax(-1))
    pred = torch.cat(preds)
    ok = adapters_finite(factors)
    return {"pred": torch.where(ok[:, None], pred, -1), "wrong": (pred != y) & ok[:, None], "ok": ok}


def as_new(zoo: LoRAZoo, factors: dict[str, torch.Tensor], task: TaskSpec) -> float | None:
    """Share of adapters at least as far from the task's zoo adapters as the zoo's leave-one-out median."""
    rows = zoo.rows(task.id)
    if len(rows) < 2:
        return None
    zoo_probe = probe_predictions(zoo, zoo.pick(rows), task)
    loo = functional_novelty(zoo_probe, zoo_probe, leave_one_out=True)["disagreement"]
    f = functional_novelty(probe_predictions(zoo, factors, task), zoo_probe)["disagreement"]
    ok = f.isfinite()
    return (f[ok] >= loo.nanmedian()).double().mean().item() if ok.any() else None



def _group(zoo: LoRAZoo, factors: dict[str, torch.Tensor], task: TaskSpec, zoo_probe: dict | None,
           loo: torch.Tensor | None, itself: bool = False) -> dict:
    """One group of adapters in `weightgen.evaluate`'s report form: accuracy statistics and per-model
    values, and probe novelty against the task's trained adapters."""
    from weightgen.metrics import accuracy_stats

    ok = adapters_finite(factors)
    acc = zoo.accuracy({n: f.nan_to_num() for n, f in factors.items()}, task).masked_fill(~ok, float("nan"))
    novelty = {"as_new": None, "disagreement": None}
    if zoo_probe is not None and ok.any():
        f = functional_novelty(probe_predictions(zoo, factors, task), zoo_probe, leave_one_out=itself)["disagreement"]
        good = f.isfinite()
        novelty["disagreement"] = {"per_model": [None if v != v else v for v in f.tolist()],
                                   "median": f[good].median().item()} if good.any() else None
        if loo is not None and good.any():
            novelty["as_new"] = (f[good] >= loo).double().mean().item()
    return {"stats": accuracy_stats(acc, ok), "acc": [None if a != a else a for a in acc.tolist()], "novelty": novelty}


def evaluate_adapter_samples(zoo: LoRAZoo, factors: dict[str, torch.Tensor], task: TaskSpec,
                             multitask: dict[str, torch.Tensor] | None = None, seed: int = 0) -> dict:
    """Generated adapters of one task beside the five references (module docstring), in the report
    form of `weightgen.evaluate.evaluate_samples` (so `weightgen report` reads it)."""
    notes = []
    rows = zoo.rows(task.id)
    if rows:
        trained = zoo.pick(rows)
    else:
        notes.append(f"the zoo has no adapter of {task.id}: 4 LoRAs were trained on it here with the zoo's recipe")
        trained = zoo.train([task], seeds=4, seed=seed)
    zoo_probe = probe_predictions(zoo, trained, task)
    loo = functional_novelty(zoo_probe, zoo_probe, leave_one_out=True)["disagreement"].nanmedian()
    n = len(next(iter(factors.values())))
    zero = {k: torch.zeros(1, *f.shape[1:]) for k, f in factors.items()}
    near, near_factors = retrieval(zoo, task)
    baselines = {"base": zero, "retrieval": near_factors,
                 "mean+gaussian": mean_gaussian(zoo, task, n, torch.Generator().manual_seed(seed))}
    if multitask is not None:
        baselines["multitask"] = multitask
    report = {
        "task": task.id, "arch": f"LoRA r{zoo.spec.rank} on the zoo's ViT base", "metric": "accuracy", "split": "test",
        "unseen": task.id in zoo.store.held_out or not rows, "retrieval_task": near,
        "generated": _group(zoo, factors, task, zoo_probe, loo),
        "trained": _group(zoo, trained, task, zoo_probe, loo, itself=True),
        "baselines": {k: _group(zoo, v, task, zoo_probe, loo) for k, v in baselines.items()},
        "probe": {"size": len(probe_set(task)[0]), "zoo_error_median": zoo_probe["wrong"].double().mean(1).median().item(),
                  "loo_iou_median": None, "loo_disagreement_median": loo.item(),
                  "as_new_rule": "disagreement with the nearest trained LoRA of the task >= their leave-one-out median"},
        "notes": notes,
    }
    gen, ref = report["generated"]["stats"]["mean"], report["trained"]["stats"]["mean"]
    report["ratio_to_trained"] = None if gen is None or not ref else gen / ref
    report["margins"] = {k: None if gen is None else gen - v["stats"]["mean"] for k, v in report["baselines"].items()}
    return report
