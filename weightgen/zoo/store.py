"""ZooStore: a model zoo on disk, self-describing and readable with no flags.

    zoo.json           format version, resolved config, arch and task tables, held-out tasks, shard plan
    records.jsonl      one line per trained model: id, task, arch, seed, init, held_out, shard, row, metrics
    shards/*.safetensors   models of one arch stacked per parameter, (N, *shape); each shard also carries
                       its own records in its metadata, so records.jsonl can always be rebuilt from shards

Every file is written atomically (temp + rename), and records.jsonl is rewritten whole from the
finished shards, so an interrupted build leaves no partial or duplicate record. Reads are
memory-mapped through `safetensors.safe_open`, so one model can be read without loading its shard.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from weightgen import atomic
from weightgen.errors import ZooError
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec, get_task

ZOO_FORMAT = "weightgen-zoo/1"
SHARD_FORMAT = "weightgen-zoo-shard/1"


class ZooStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    # -- writing ------------------------------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        atomic.write_text(self.root / "zoo.json", json.dumps(manifest, indent=1))
        self.__dict__.pop("manifest", None)

    def write_shard(self, name: str, tensors: dict[str, torch.Tensor], arch: dict, records: list[dict]) -> None:
        """`arch`: the shard's ArchSpec.to_dict(), or for a LoRA zoo what its adapters adapt."""
        meta = {"weightgen_format": SHARD_FORMAT, "arch": json.dumps(arch), "records": json.dumps(records)}
        atomic.write_safetensors(self.shard_dir / name, tensors, meta)

    def shard_records(self, name: str) -> list[dict] | None:
        """The records stored in a finished shard, or None if it is absent or unreadable."""
        try:
            with safe_open(str(self.shard_dir / name), framework="pt") as f:
                meta = f.metadata() or {}
        except (OSError, SafetensorError):
            return None
        if meta.get("weightgen_format") != SHARD_FORMAT:
            return None
        return json.loads(meta["records"])

    def write_records(self, records: list[dict]) -> None:
        records = sorted(records, key=lambda r: r["id"])
        atomic.write_text(self.root / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        self.__dict__.pop("records", None)
        self.__dict__.pop("_by_id", None)

    # -- reading ------------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> dict:
        path = self.root / "zoo.json"
        if not self.root.is_dir():
            raise ZooError(f"no zoo at {self.root}: the folder does not exist")
        if not path.is_file():
            raise ZooError(f"no zoo at {self.root}: zoo.json is missing (build one with `weightgen zoo build`)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ZooError(f"{path} is not valid JSON ({e.msg}); the zoo folder is corrupt") from e
        if manifest.get("format") != ZOO_FORMAT:
            raise ZooError(f"{path} is not a weightgen zoo (format {manifest.get('format')!r}, expected {ZOO_FORMAT})")
        return manifest

    @cached_property
    def records(self) -> list[dict]:
        path = self.root / "records.jsonl"
        self.manifest  # noqa: B018 - validates the folder first, for a clearer error
        if not path.is_file():
            raise ZooError(f"zoo {self.root} is incomplete: records.jsonl is missing (re-run `weightgen zoo build`)")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def check_complete(self) -> None:
        planned = sum(len(s["models"]) for s in self.manifest["shards"])
        if len(self.records) != planned:
            raise ZooError(
                f"zoo {self.root} is incomplete: {len(self.records)} of {planned} models are built; "
                "re-run the same `weightgen zoo build` to finish it"
            )

    @property
    def held_out(self) -> set[str]:
        """Ids of the held-out tasks: no generator trains on their models."""
        return set(self.manifest["held_out"])

    @property
    def held_out_archs(self) -> set[str]:
        """Slugs of the held-out archs: no generator trains on any of their models (zoos from before
        arch hold-out have none)."""
        return set(self.manifest.get("held_out_archs", []))

    @cached_property
    def archs(self) -> dict[str, ArchSpec]:
        return {slug: ArchSpec.from_dict(d) for slug, d in self.manifest["archs"].items()}

    def tasks(self) -> list[TaskSpec]:
        return [get_task(t) for t in self.manifest["tasks"]]

    @cached_property
    def _by_id(self) -> dict[int, dict]:
        return {r["id"]: r for r in self.records}

    def record(self, model_id: int) -> dict:
        by_id = self._by_id  # built once, not per lookup: exporting a whole zoo is N lookups
        if model_id not in by_id:
            raise ZooError(f"zoo {self.root} has no model with id {model_id} (ids run 0..{len(self.records) - 1})")
        return by_id[model_id]

    def _open(self, shard: str):
        path = self.shard_dir / shard
        try:
            return safe_open(str(path), framework="pt")  # memory-mapped
        except (OSError, SafetensorError) as e:
            raise ZooError(f"zoo shard {path} is missing or corrupt; re-run `weightgen zoo build`") from e

    def state_dict(self, model_id: int) -> dict[str, torch.Tensor]:
        """One model's weights, read by slicing its row out of the memory-mapped shard."""
        rec = self.record(model_id)
        with self._open(rec["shard"]) as f:
            return {name: f.get_slice(name)[rec["row"]].clone() for name in f.keys()}

    def load_arch(self, slug: str, include_held_out: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """All models of one arch stacked (N, *shape), with their records in the same order."""
        recs = [r for r in self.records if r["arch"] == slug and (include_held_out or not r["held_out"])]
        by_shard: dict[str, list[dict]] = {}
        for r in recs:
            by_shard.setdefault(r["shard"], []).append(r)
        parts, ordered = [], []
        for shard, rs in by_shard.items():
            with self._open(shard) as f:
                rows = torch.tensor([r["row"] for r in rs])
                parts.append({n: f.get_tensor(n)[rows] for n in f.keys()})
            ordered += rs
        if not parts:
            return {}, []
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}, ordered
