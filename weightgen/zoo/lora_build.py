"""What a LoRA zoo adds to the zoo plan: its adapter table in zoo.json, and its base inside the folder.

A LoRA zoo (`init: lora`) is a zoo like any other (zoo.json, records.jsonl, shards) whose models are
rank-r adapters of one frozen base: every shard stacks the adapters' factors (`<module>.lora_A`
(N, r, in), `<module>.lora_B` (N, out, r)) and every record's arch is `lora`. zoo.json's `lora`
entry names the rank, alpha, target modules, factor shapes, the base's config and the sha256 of its
weights; the base itself is saved in `ZOO/base/` (transformers' `save_pretrained`), so the zoo is
self-contained and a reader never depends on the cache that built it.
"""

from __future__ import annotations

import shutil

from weightgen import atomic
from weightgen.config import ZooConfig, to_dict
from weightgen.errors import ConfigError, ZooError
from weightgen.tasks import TaskSpec
from weightgen.zoo.lora_base import base_sha256, ensure_base, load_base, vit_config
from weightgen.zoo.lora_trainer import factor_shapes
from weightgen.zoo.store import ZooStore


def lora_manifest(cfg: ZooConfig, tasks: list[TaskSpec]) -> dict:
    """zoo.json's `lora` entry (the base's sha256 is added when the base exists: `place_base`)."""
    from transformers import ViTForImageClassification

    spec = cfg.lora
    if spec.init not in ("shared", "independent"):
        raise ConfigError(f"lora.init must be shared or independent, got '{spec.init}'")
    if spec.rank < 1 or spec.alpha <= 0:
        raise ConfigError(f"lora.rank must be >= 1 and lora.alpha > 0, got {spec.rank} and {spec.alpha}")
    for t in tasks:
        if not t.kind.startswith("digits-") or t.kind == "digits-image":
            raise ConfigError(f"a LoRA zoo adapts a digits classifier; task {t.id} is not a digits classification task")
    skeleton = ViTForImageClassification(vit_config(spec.base))  # shapes only: the weights are not used
    return {"base": to_dict(spec.base), "rank": spec.rank, "alpha": spec.alpha, "target_modules": list(spec.target_modules),
            "factors": {n: list(s) for n, s in factor_shapes(skeleton, spec).items()}}


def place_base(cfg: ZooConfig, store: ZooStore, state) -> str:
    """Copy the cached base for cfg.lora.base into ZOO/base (pretraining it first if needed) and
    return its sha256; a zoo that already holds a base keeps it (a resumed build)."""
    folder = store.root / "base"
    if state.is_main_process and not (folder / "model.safetensors").is_file():
        cached = ensure_base(cfg.lora.base)
        shutil.rmtree(folder, ignore_errors=True)
        with atomic.atomic_folder(folder) as tmp:
            shutil.copytree(cached, tmp)
    state.wait_for_everyone()
    sha = base_sha256(folder)
    store.__dict__.pop("manifest", None)  # another process may have written it
    known = (store.manifest.get("lora") or {}).get("base_sha256")
    if known not in (None, sha):
        raise ZooError(f"{folder} is not the base this zoo's adapters were trained on (sha256 differs); "
                       "rebuild the zoo into a new --out")
    if state.is_main_process:
        manifest = dict(store.manifest)
        manifest["lora"] = {**manifest["lora"], "base_sha256": sha}
        store.write_manifest(manifest)
    state.wait_for_everyone()
    return sha


def zoo_base(store: ZooStore):
    """The frozen base of a LoRA zoo, checked against the sha256 in its zoo.json."""
    lora = store.manifest.get("lora")
    if not lora:
        raise ZooError(f"{store.root} is not a LoRA zoo (its zoo.json has no lora entry)")
    return load_base(store.root / "base", lora.get("base_sha256"))
