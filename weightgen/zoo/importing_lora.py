"""`weightgen zoo import SRC --base BASE --out ZOO` for PEFT adapters: a LoRA zoo from adapter folders.

BASE is a weightgen base folder (`weightgen_base.json` beside `config.json` + `model.safetensors`:
a LoRA zoo's `ZOO/base`, or the cached one under `$WEIGHTGEN_HOME/bases/`). Each adapter folder
(`adapter_config.json` + `adapter_model.safetensors`) is read with safetensors only:
- a weightgen adapter (`weightgen_adapter.json`) says its task, seed, metrics and base sha256, which
  must be BASE's;
- a plain PEFT adapter gets its task (and optionally seed, metrics) from the labels file.
Every adapter must share the first one's rank, alpha and target modules, and have the factor shapes
they give on BASE. Adapters without metrics are evaluated on their task's splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weightgen.errors import CheckpointError, TaskError, WeightgenError, ZooError
from weightgen.tasks import get_task
from weightgen.zoo.importing import METRIC_SPLITS, Imported, described, import_each, read_labels, task_of


def is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


def _lora_of(folder: Path) -> tuple[int, float, tuple[str, ...]]:
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        targets = cfg["target_modules"]
        targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
        return int(cfg["r"]), float(cfg["lora_alpha"]), targets
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
        raise CheckpointError("its adapter_config.json is unreadable or lacks r, lora_alpha or target_modules") from e


def read_adapters(src: Path, base: Path, labels: Path | None = None, on_file=None) -> tuple[Imported, dict]:
    """Every adapter folder under src that fits BASE, and zoo.json's `lora` entry for them."""
    from weightgen.config import BaseModelConfig, LoRASpec, from_dict, to_dict
    from weightgen.zoo.lora_adapter import META_NAME, peft_factors
    from weightgen.zoo.lora_base import base_sha256, load_base
    from weightgen.zoo.lora_trainer import factor_shapes

    try:
        base_cfg = from_dict(BaseModelConfig, json.loads((base / "weightgen_base.json").read_text())["config"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, WeightgenError) as e:
        raise ZooError(f"{base} is not a weightgen base folder (weightgen_base.json is missing or unreadable)") from e
    sha, frozen = base_sha256(base), load_base(base)
    if not src.is_dir():
        raise ZooError(f"{src} is not a folder of adapters")
    table = read_labels(labels)
    order = [n for n, _ in frozen.named_modules()]
    lora = None

    def read(folder: Path) -> dict:
        nonlocal lora
        meta = {}
        if (folder / META_NAME).is_file():
            meta = json.loads((folder / META_NAME).read_text())
            if not isinstance(meta, dict) or meta.get("base_sha256") != sha:
                raise CheckpointError(f"it was trained on another base than {base} (sha256 differs)")
        rank, alpha, targets = _lora_of(folder)
        # peft stores target_modules as a set; take them in the base's module order, as zoos list them
        targets = tuple(sorted(targets, key=lambda t: next((i for i, n in enumerate(order)
                                                             if n == t or n.endswith("." + t)), len(order))))
        spec = LoRASpec(base=base_cfg, rank=rank, alpha=alpha, target_modules=targets)
        shapes = {n: list(s) for n, s in factor_shapes(frozen, spec).items()}
        lora = lora or {"base": to_dict(base_cfg), "rank": rank, "alpha": alpha, "target_modules": list(targets),
                        "factors": shapes, "base_sha256": sha}
        if (rank, alpha, list(targets)) != (lora["rank"], lora["alpha"], lora["target_modules"]):
            raise CheckpointError("its rank, alpha or target modules differ from the first adapter's")
        factors = {n: f.float() for n, f in peft_factors(folder).items()}
        if {n: list(f.shape) for n, f in factors.items()} != shapes:
            raise CheckpointError("its factor shapes are not those of its LoRA config on this base")
        label = table.get(folder.relative_to(src).as_posix(), {})
        task = task_of(label, meta.get("task") if isinstance(meta.get("task"), str) else None)
        if not task.kind.startswith("digits-") or task.kind == "digits-image":
            raise TaskError(f"task {task.id} is not a digits classification task, which the base solves")
        return {"file": folder.relative_to(src).as_posix(), "task": task.id, **described(label, meta),
                "state": factors, "zoo_id": meta.get("zoo_id"), "init": "lora"}

    out = import_each(src, sorted(p for p in src.rglob("*") if is_adapter(p)), read, on_file)
    return out, lora


def evaluate_missing_adapters(models: list[dict], base: Path, lora: dict) -> None:
    """Score adapters that came with a task but no metrics on their task's splits, on BASE (batched)."""
    from weightgen.config import BaseModelConfig, LoRASpec
    from weightgen.zoo.lora_base import load_base
    from weightgen.zoo.lora_trainer import evaluate_adapters

    todo = [m for m in models if not m["metrics"]]
    if not todo:
        return
    spec = LoRASpec(base=BaseModelConfig(**lora["base"]), rank=lora["rank"], alpha=lora["alpha"],
                    target_modules=tuple(lora["target_modules"]))
    factors = {n: torch.stack([m["state"][n] for m in todo]) for n in lora["factors"]}
    tasks = [get_task(m["task"]) for m in todo]
    frozen = load_base(base)
    for split in METRIC_SPLITS:
        res = evaluate_adapters(frozen, spec, factors, tasks, split)
        for m, acc, loss in zip(todo, res["acc"].tolist(), res["loss"].tolist()):
            m["metrics"][f"{split}_acc"], m["metrics"][f"{split}_loss"] = acc, loss
