"""Self-describing checkpoints: safetensors whose metadata says what the weights are.

`save_model(module, "net.safetensors", arch=..., task=..., prompt=...)` writes one file whose
metadata holds `weightgen_format`, `arch` (JSON), `task` (JSON), `prompt` and any extra keys
(`generator`, `seed`, metrics...). `load_model(path)` rebuilds the `nn.Module` from that alone. A
path without the `.safetensors` suffix is a hub-style folder: `config.json` + `model.safetensors`.

Nothing here ever unpickles: a pickle or `torch.save` file is refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from weightgen import atomic
from weightgen.errors import ArchError, CheckpointError, WeightgenError
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec, get_task

FORMAT = "weightgen-checkpoint/1"
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip container


def _as_arch(arch, module) -> ArchSpec:
    if arch is None:
        arch = getattr(module, "arch", None)
    if isinstance(arch, str):
        return ArchSpec.parse(arch)
    if isinstance(arch, dict):
        return ArchSpec.from_dict(arch)
    if isinstance(arch, ArchSpec):
        return arch
    raise ArchError("save_model needs arch= (an ArchSpec or text like 'MLP 64-32-10, ReLU')")


def save_model(module_or_state_dict, path: str | Path, arch=None, task=None, prompt: str = "", **meta) -> Path:
    """Write weights plus everything needed to rebuild them; returns the path of the weights file."""
    is_module = isinstance(module_or_state_dict, nn.Module)
    sd = module_or_state_dict.state_dict() if is_module else dict(module_or_state_dict)
    arch = _as_arch(arch, module_or_state_dict if is_module else None)
    if isinstance(task, str):
        task = get_task(task)
    layout = arch.layout()
    layout.flatten(sd)  # raises a clear ArchError on missing parameters or wrong shapes
    sd = {n: sd[n].detach().float().cpu().contiguous() for n in layout.names}
    bad = [n for n, t in sd.items() if not t.isfinite().all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights (parameter '{bad[0]}' has NaN or inf)")
    if not prompt and isinstance(task, TaskSpec):
        prompt = f"{task.description} with {arch.article} {arch.describe()}"
    header = {
        "weightgen_format": FORMAT,
        "arch": arch.to_dict(),
        "task": task.to_dict() if isinstance(task, TaskSpec) else None,
        "prompt": prompt,
        **meta,
    }
    # every value but the format tag is JSON, so types round-trip ("42" stays a str, 42 an int)
    metadata = {k: v if k == "weightgen_format" else json.dumps(v) for k, v in header.items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        atomic.write_safetensors(path, sd, metadata)
        return path
    # hub-style folder; the weights file still describes itself on its own
    atomic.write_safetensors(path / WEIGHTS_NAME, sd, metadata)
    atomic.write_text(path / CONFIG_NAME, json.dumps(header, indent=2))
    return path / WEIGHTS_NAME


def read_metadata(path: str | Path) -> dict:
    """The decoded metadata of a checkpoint file or folder, after validating it."""
    file = _weights_file(Path(path))
    try:
        with safe_open(str(file), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a valid safetensors file (it is truncated or corrupt)") from e
    if raw.get("weightgen_format") != FORMAT:
        raise CheckpointError(f"{file} is a safetensors file but not a weightgen checkpoint (no weightgen metadata)")
    meta = {"weightgen_format": FORMAT}
    for k, v in raw.items():
        if k != "weightgen_format":
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{file} has corrupt weightgen metadata (key '{k}' is not JSON)") from e
    _check_header(file, meta)
    return meta


def _check_header(file: Path, meta: dict) -> None:
    """Validate the arch and task records, so a malformed header is one clear error."""
    try:
        ArchSpec.from_dict(meta["arch"])
        task = meta.get("task")
        if task is not None:
            get_task(task["id"])
    except (KeyError, TypeError, ValueError, WeightgenError) as e:
        raise CheckpointError(f"{file} has malformed weightgen metadata (arch or task record: {e})") from e


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) of a checkpoint; checks names, shapes and finiteness against its arch."""
    meta = read_metadata(path)
    file = _weights_file(Path(path))
    arch = ArchSpec.from_dict(meta["arch"])
    try:
        with safe_open(str(file), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a valid safetensors file (it is truncated or corrupt)") from e
    try:
        arch.layout().flatten(sd)
    except ArchError as e:
        raise CheckpointError(f"{file} does not hold a {arch.describe()}: {e}") from e
    if any(not t.isfinite().all() for t in sd.values()):
        raise CheckpointError(f"{file} holds non-finite weights (NaN or inf)")
    return sd, meta


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the module a checkpoint describes; needs no other argument and never unpickles.

    The module gets `.arch` (ArchSpec), `.task` (TaskSpec or None) and `.weightgen_meta` (dict)."""
    sd, meta = load_state_dict(path)
    module = ArchSpec.from_dict(meta["arch"]).build()
    module.load_state_dict(sd)
    module.task = get_task(meta["task"]["id"]) if meta.get("task") else None
    module.weightgen_meta = meta
    return module.eval()


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        path = path / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{path.parent} is a folder without {WEIGHTS_NAME}, so not a weightgen checkpoint")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with a little-endian u64 header length, then the JSON header's "{"; check
    # that first, since the length's low byte may itself be 0x80, the pickle magic
    header_len = int.from_bytes(head[:8], "little")
    looks_safetensors = head[8:9] == b"{" and 8 + header_len <= path.stat().st_size
    if not looks_safetensors and head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path} is a pickle/torch.save file; weightgen never unpickles files, use safetensors")
    return path
