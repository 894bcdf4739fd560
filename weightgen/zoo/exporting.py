"""`weightgen zoo export`: zoo models back out as files that plain PyTorch (or peft) loads.

An MLP/CNN zoo's model becomes a self-describing weightgen checkpoint (`weightgen.checkpoint`) that
carries its zoo id, task, seed, init, held-out flag and metrics, so `weightgen zoo import` rebuilds
the same records and bitwise-identical weights from a folder of them. A LoRA zoo's model becomes a
PEFT adapter folder of the zoo's base.
"""

from __future__ import annotations

from pathlib import Path

from weightgen.errors import ZooError
from weightgen.zoo.store import ZooStore


def select(store: ZooStore, ids: list[int] | None = None, tasks: list[str] | None = None,
           archs: list[str] | None = None, split: str = "all") -> list[dict]:
    """The records to export: every model, or those with the given ids, tasks, arch slugs and split
    (seen | held-out | all)."""
    if split not in ("all", "seen", "held-out"):
        raise ZooError(f"--split must be all, seen or held-out, got '{split}'")
    records = store.records
    if ids:
        known = {r["id"] for r in records}
        missing = sorted(set(ids) - known)
        if missing:
            raise ZooError(f"zoo {store.root} has no model {missing[0]}")
        records = [r for r in records if r["id"] in set(ids)]
    if tasks:
        records = [r for r in records if r["task"] in set(tasks)]
    if archs:
        records = [r for r in records if r["arch"] in set(archs)]
    if split != "all":
        records = [r for r in records if r["held_out"] == (split == "held-out")]
    if not records:
        raise ZooError(f"no model of zoo {store.root} matches the filters")
    return records


def export_one(store: ZooStore, rec: dict, out: Path) -> Path:
    """Write one zoo model to `out` (a .safetensors file or a folder); returns what was written."""
    metrics = {k: v for k, v in rec.items() if k.endswith(("_acc", "_loss"))}
    common = {"generator": "zoo", "zoo": store.manifest["name"], "zoo_id": rec["id"], "seed": rec["seed"],
              "held_out": rec["held_out"], "metrics": metrics}
    if store.manifest.get("lora"):
        from weightgen.zoo.lora_adapter import save_adapter

        return save_adapter(out, store.state_dict(rec["id"]), store.manifest["lora"], store.root / "base",
                            task=rec["task"], **common)
    from weightgen.checkpoint import save_model

    return save_model(store.state_dict(rec["id"]), out, arch=store.archs[rec["arch"]], task=rec["task"],
                      init=rec["init"], **common)


def export_many(store: ZooStore, records: list[dict], folder: Path, on_model=None) -> list[Path]:
    """Each record's model into `folder`, named ID-TASK-ARCH (.safetensors, or a folder for adapters)."""
    suffix = "" if store.manifest.get("lora") else ".safetensors"
    written = []
    for rec in records:
        written.append(export_one(store, rec, folder / f"{rec['id']:06d}-{rec['task']}-{rec['arch']}{suffix}"))
        if on_model:
            on_model()
    return written
