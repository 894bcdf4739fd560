"""`weightgen zoo import SRC --out ZOO`: a zoo from a folder of checkpoints trained elsewhere.

Each file under SRC (searched recursively) is read without ever unpickling:
- a weightgen checkpoint (`.safetensors` file or hub-style folder): arch, task, seed and metrics from
  its own metadata;
- a plain safetensors state dict, or a torch file (`.pt`, `.pth`, `.bin`) read with
  `torch.load(weights_only=True)`: the arch comes from `--arch`, or is inferred from the tensor
  shapes (a chain of linear layers: `layers.0.weight`, `0.weight`, `fc1.weight`... in natural key
  order, each with its bias); the task and metrics from the labels file.
Labels (`--labels`, CSV or JSONL) give per file (its path relative to SRC) a `task` and optionally
`seed`, `held_out` and metrics (`test_acc`, `val_loss`, ...). A model with a known task but no
metrics is evaluated by weightgen on that task's splits, as a zoo build would.

A file that cannot be read, or whose arch, task or weights do not fit, is skipped with one sentence;
the rest are imported. Models are stored as a normal zoo (shards per arch, records.jsonl), written
atomically, so every reader, trainer and `weightgen zoo export` treats the result as any zoo.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from weightgen.errors import ArchError, CheckpointError, TaskError, WeightgenError, ZooError
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
MAX_LABEL_BYTES = 64 * 2**20  # a labels file larger than this is refused (it would be read whole)
METRIC_SPLITS = ("train", "val", "test")


@dataclass
class Imported:
    """What an import read: one entry per model, and the files skipped with why."""

    models: list[dict] = field(default_factory=list)  # {"file", "arch", "task", "seed", "held_out", "metrics", "state"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, one sentence)


def candidates(src: Path) -> list[Path]:
    """Checkpoint files and hub-style folders under src, in a stable order."""
    if not src.is_dir():
        raise ZooError(f"{src} is not a folder of checkpoints")
    found = []
    adapters = {q.parent for q in src.rglob("adapter_config.json")}
    for p in sorted(src.rglob("*")):
        if adapters.intersection(p.parents):
            continue  # inside a PEFT adapter folder, which is one candidate
        if p.is_dir() and ((p / "model.safetensors").is_file() or p in adapters):
            found.append(p)
        elif p.is_file() and (p.suffix == ".safetensors" or p.suffix in TORCH_SUFFIXES):
            if p.name == "model.safetensors" and (p.parent / "config.json").is_file():
                continue  # read through its folder
            found.append(p)
    return found


def read_labels(path: Path | None) -> dict[str, dict]:
    """file (relative to SRC, '/'-separated) -> label row, from a CSV with a header or a JSONL file."""
    if path is None:
        return {}
    if not path.is_file():
        raise ZooError(f"no labels file at {path}")
    if path.stat().st_size > MAX_LABEL_BYTES:
        raise ZooError(f"{path} is larger than {MAX_LABEL_BYTES >> 20} MiB; split it or drop unused columns")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
    except (UnicodeDecodeError, ValueError, RecursionError, csv.Error) as e:
        raise ZooError(f"{path} is not a readable {'JSONL' if path.suffix == '.jsonl' else 'CSV'} labels file") from e
    out = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("file"), str):
            raise ZooError(f"{path} row {i} has no 'file' column naming a checkpoint")
        out[row["file"].replace("\\", "/")] = row
    return out


def infer_arch(state: dict[str, torch.Tensor], activation: str = "relu") -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    """An MLP from a chain of linear layers' shapes, and the state renamed to weightgen's names."""
    if set(state) >= {"layers.0.weight", "layers.0.bias"} or any(k.startswith(("convs.", "head.")) for k in state):
        raise ArchError("tensor names look like weightgen's own, but without weightgen metadata; give --arch")
    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.dim() == 2), key=_natural)
    sizes, renamed = [], {}
    for i, key in enumerate(weights):
        w = state[key]
        bias = state.get(key[: -len("weight")] + "bias")
        if bias is None or bias.shape != (w.shape[0],):
            raise ArchError(f"linear layer '{key}' has no bias of {w.shape[0]} values")
        if sizes and sizes[-1] != w.shape[1]:
            raise ArchError(f"layer '{key}' takes {w.shape[1]} inputs after a layer of {sizes[-1]} outputs")
        sizes = sizes or [w.shape[1]]
        sizes.append(w.shape[0])
        renamed[f"layers.{i}.weight"], renamed[f"layers.{i}.bias"] = w, bias
    if len(renamed) != len(state):
        extra = sorted(set(state) - {k for w in weights for k in (w, w[: -len("weight")] + "bias")})
        raise ArchError(f"cannot infer an MLP: tensors {extra[:3]} are not linear layers; give --arch")
    if not weights:
        raise ArchError("no linear layers to infer an arch from; give --arch")
    return ArchSpec("mlp", tuple(sizes), activation), renamed


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def read_one(path: Path, src: Path, labels: dict[str, dict], arch: ArchSpec | None, activation: str) -> dict:
    """One model entry (see `Imported`), or a WeightgenError saying why not."""
    from weightgen.checkpoint import FORMAT, load_state_dict

    rel = path.relative_to(src).as_posix()
    label = labels.get(rel, {})
    meta: dict = {}
    if (path / "adapter_config.json").is_file():
        raise CheckpointError("it is a PEFT adapter folder; import adapters with --base, the base they adapt")
    if path.is_dir() or _is_weightgen(path):
        state, meta = load_state_dict(path)
        found = ArchSpec.from_dict(meta["arch"])
        if arch is not None and arch != found:
            raise ArchError(f"it holds a {found.describe()}, not the --arch {arch.describe()}")
        spec = found
    else:
        state = _read_plain(path)
        if arch is not None:
            spec = arch
            if set(state) != set(arch.layout().names):  # foreign names: map the linear chain onto weightgen's
                state = _rename(state, arch, activation)
        else:
            spec, state = infer_arch(state, activation)
        state = _checked(state, spec)
    task = task_of(label, (meta.get("task") or {}).get("id"))
    if (task.in_dim, task.out_dim) != (spec.in_dim, spec.out_dim):
        raise ArchError(f"a {spec.describe()} does not fit task {task.id} ({task.in_dim} inputs, {task.out_dim} outputs)")
    return {"file": rel, "arch": spec, "task": task.id, **described(label, meta),
            "zoo_id": meta.get("zoo_id") if meta.get("weightgen_format") == FORMAT else None,
            "init": meta.get("init") if isinstance(meta.get("init"), str) else "imported", "state": state}


def task_of(label: dict, own: str | None):
    """A model's task: its labels row's, else the one its own metadata names."""
    task = label.get("task") or own
    if not task:
        raise TaskError("no task: its metadata names none and the labels file has no row for it")
    return get_task(str(task))


def described(label: dict, meta: dict) -> dict:
    """seed, held_out and metrics of one model: from its labels row, else its own metadata. The
    metadata is a file's free JSON, so anything of the wrong type there is ignored, while a bad
    value in the labels file (which the user wrote for this import) is an error."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    try:
        metrics = {k: float(v) for k, v in label.items() if k.endswith(("_acc", "_loss")) and v not in ("", None)}
        seed = int(label["seed"]) if label.get("seed") not in (None, "") else None
    except (TypeError, ValueError) as e:
        raise ZooError(f"its labels row has a value that is not a number ({e})") from None
    if not metrics and isinstance(meta.get("metrics"), dict):
        metrics = {k: float(v) for k, v in meta["metrics"].items() if isinstance(k, str) and number(v)}
    if seed is None:
        seed = meta.get("seed") if isinstance(meta.get("seed"), int) and not isinstance(meta.get("seed"), bool) else 0
    if not 0 <= seed < 2**63:
        raise ZooError(f"its seed {seed} is not a non-negative 64-bit integer")
    held = label.get("held_out", meta.get("held_out", False))
    return {"seed": seed, "held_out": str(held).lower() in ("1", "true", "yes"), "metrics": metrics}


def _is_weightgen(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return "weightgen_format" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError("it is not a valid safetensors file (truncated or corrupt)") from None


def _read_plain(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        # weights_only: tensors and plain containers only; a pickle that would run code is refused
        # (its warning about newer pickle protocols is noise here: the file is refused or read)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read a foreign file is a skip, never a crash
        raise CheckpointError(f"it is not a readable {'safetensors' if path.suffix == '.safetensors' else 'torch weights'} "
                              f"file ({type(e).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # the common {"state_dict": ..., "epoch": ...} layout
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise CheckpointError("it holds no state dict (a mapping of names to tensors)")
    return obj


def _rename(state: dict[str, torch.Tensor], arch: ArchSpec, activation: str) -> dict[str, torch.Tensor]:
    inferred, renamed = infer_arch(state, activation)
    if inferred.sizes != arch.sizes:
        raise ArchError(f"its tensors make a {inferred.describe()}, not the --arch {arch.describe()}")
    return renamed


def _checked(state: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    layout = spec.layout()
    if set(state) != set(layout.names):
        raise ArchError(f"its tensors are not those of a {spec.describe()}")
    for name, shape in zip(layout.names, layout.shapes):
        t = state[name]
        if tuple(t.shape) != shape:
            raise ArchError(f"tensor '{name}' has shape {tuple(t.shape)}, a {spec.describe()} needs {shape}")
        if not t.is_floating_point():
            raise CheckpointError(f"tensor '{name}' is {t.dtype}, not floating point")
        if not t.isfinite().all():
            raise CheckpointError(f"tensor '{name}' holds NaN or inf")
    return {n: state[n].float().contiguous() for n in layout.names}


def read_source(src: Path, labels: Path | None = None, arch: str | None = None, activation: str = "relu",
                on_file=None, paths: list[Path] | None = None) -> Imported:
    """Every model under src (or among `paths`, its `candidates`) that can be imported, and why each
    other file was skipped."""
    spec = ArchSpec.parse(arch) if arch else None
    table = read_labels(labels)
    return import_each(src, candidates(Path(src)) if paths is None else paths,
                       lambda path: read_one(path, Path(src), table, spec, activation), on_file)


def import_each(src: Path, paths: list[Path], read, on_file=None) -> Imported:
    """`read(path)` for each path: its model entry, or the one sentence why it is skipped (also for
    the ways a foreign file can fail to parse)."""
    out = Imported()
    for path in paths:
        try:
            out.models.append(read(path))
        except WeightgenError as e:
            out.skipped.append((path.relative_to(src).as_posix(), str(e)))
        except (ValueError, RecursionError, MemoryError, OSError) as e:
            out.skipped.append((path.relative_to(src).as_posix(), f"it could not be read ({type(e).__name__})"))
        if on_file:
            on_file()
    return out


def evaluate_missing(models: list[dict]) -> None:
    """Score models that came with a task but no metrics, on the task's splits (batched per arch and task)."""
    from weightgen.metrics import score_flat

    groups: dict[tuple, list[dict]] = {}
    for m in models:
        if not m["metrics"]:
            groups.setdefault((m["arch"], m["task"]), []).append(m)
    for (spec, tid), group in groups.items():
        flat = torch.stack([spec.layout().flatten(m["state"]) for m in group])
        for split in METRIC_SPLITS:
            scores = score_flat(spec, flat, get_task(tid), split)
            for m, acc, loss in zip(group, scores["acc"].tolist(), scores["loss"].tolist()):
                m["metrics"][f"{split}_acc"], m["metrics"][f"{split}_loss"] = acc, loss


def write_zoo(imported: Imported, out: Path, name: str, source: str, per_shard: int = 1024,
              lora: dict | None = None, base: Path | None = None):
    """Store the imported models as a zoo at `out` (which must not hold one); returns its ZooStore.
    Model ids are kept when every model brought a distinct one (a zoo's own export), else 0..N-1
    in file order. A task is held out if its models say so. With `lora` (zoo.json's lora entry, from
    `importing_lora.read_adapters`) the models are adapters of the base folder `base`, copied in."""
    import shutil

    from weightgen import atomic
    from weightgen.config import BaseModelConfig, LoRASpec, ZooConfig, to_dict
    from weightgen.zoo.build import LORA_ARCH
    from weightgen.zoo.store import ZOO_FORMAT, ZooStore

    if not imported.models:
        raise ZooError(f"nothing under {source} could be imported, so no zoo was written")
    if (out / "zoo.json").exists():
        raise ZooError(f"{out} already holds a zoo; import into a new folder")
    models = imported.models
    ids = [m["zoo_id"] for m in models]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(len(models)))
    by_arch: dict[str, list[tuple[int, dict]]] = {}
    for i, m in sorted(zip(ids, models), key=lambda x: x[0]):
        by_arch.setdefault(LORA_ARCH if lora else m["arch"].slug, []).append((i, m))
    held = sorted({m["task"] for m in models if m["held_out"]})
    archs = {} if lora else {slug: {**group[0][1]["arch"].to_dict(), "text": group[0][1]["arch"].describe(),
                                    "template": t, "held_out": False} for t, (slug, group) in enumerate(by_arch.items())}
    shards, plan = [], []
    for slug, group in by_arch.items():
        for start in range(0, len(group), per_shard):
            part = group[start : start + per_shard]
            file = f"{len(shards):04d}-{slug}.safetensors"
            shards.append({"file": file, "arch": slug, "models": [[i, m["task"], m["seed"]] for i, m in part]})
            plan.append(part)
    tasks = sorted({m["task"] for m in models})
    config = ZooConfig(name=name, init="lora", lora=LoRASpec(
        base=BaseModelConfig(**lora["base"]), rank=lora["rank"], alpha=lora["alpha"],
        target_modules=tuple(lora["target_modules"]))) if lora else ZooConfig(name=name, init="independent")
    manifest = {"format": ZOO_FORMAT, "name": name, "config": to_dict(config), "archs": archs,
                "tasks": {t: {"description": get_task(t).description, "held_out": t in held} for t in tasks},
                "held_out": held, "held_out_archs": [], "shards": shards,
                "imported": {"source": source, "models": len(models), "skipped": len(imported.skipped)},
                **({"lora": lora} if lora else {})}
    with atomic.atomic_folder(out) as tmp:  # a reader sees no zoo or the whole one
        store = ZooStore(tmp)
        if lora:
            shutil.copytree(base, tmp / "base")
        store.write_manifest(manifest)
        records = []
        for shard, part in zip(shards, plan):
            names = sorted(lora["factors"]) if lora else part[0][1]["arch"].layout().names
            tensors = {n: torch.stack([m["state"][n] for _, m in part]) for n in names}
            arch_meta = {"family": LORA_ARCH, "base_sha256": lora["base_sha256"]} if lora else part[0][1]["arch"].to_dict()
            recs = [{"id": i, "task": m["task"], "arch": shard["arch"], "seed": m["seed"], "init": m["init"],
                     "held_out": m["held_out"], "shard": shard["file"], "row": row, **m["metrics"]}
                    for row, (i, m) in enumerate(part)]
            store.write_shard(shard["file"], tensors, arch_meta, recs)
            records += recs
        store.write_records(records)
    return ZooStore(out)
