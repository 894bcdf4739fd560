"""Self-describing checkpoints: safetensors whose metadata says what the weights are.

`save_model(module, "net.safetensors", arch=..., task=..., prompt=...)` writes one file whose
metadata holds `weightgen_format`, `arch` (JSON), `task` (JSON), `prompt` and any extra keys
(`generator`, `seed`, metrics...). `load_model(path)` rebuilds the `nn.Module` from that alone. A
path without the `.safetensors` suffix is a hub-style folder: `config.json` + `model.safetensors`.

Nothing here ever unpickles: a pickle or `torch.save` file is refused with a clear error.

Integrity: the metadata also holds `sha256`, a digest of the other metadata and every tensor (name,
dtype, shape, bytes; `weightgen.atomic.sha256_of`), checked on every load, so a flipped bit or a
relabelled dtype is a CheckpointError rather than wrong weights. Checkpoints written before the
digest existed have none and are still read, with every other check (names, float dtypes, shapes,
finiteness); saving them again adds it. The format tag stays `weightgen-checkpoint/1`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from weightgen import atomic
from weightgen.atomic import SHA256_KEY
from weightgen.errors import ArchError, CheckpointError, WeightgenError, short, shorten
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec, get_task

FORMAT = "weightgen-checkpoint/1"
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip container
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names of the dtypes weights may have
MAX_DEPTH = 32  # nesting of a metadata value; weightgen writes at most 3


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
    layout.flatten(sd)  # raises a clear ArchError on missing parameters, wrong shapes or non-float dtypes
    wrong = [n for n, shape in zip(layout.names, layout.shapes) if tuple(sd[n].shape) != shape]
    if wrong:  # a batch of one network would flatten, but not load back
        raise ArchError(f"parameter '{wrong[0]}' has shape {tuple(sd[wrong[0]].shape)}, expected "
                        f"{layout.shapes[layout.names.index(wrong[0])]}; save one network per checkpoint")
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
    """The decoded metadata of a checkpoint file or folder, after validating it. Reads the header
    only, so it is cheap and does not check the checksum; `load_state_dict` and `load_model` do."""
    file = _weights_file(Path(path))
    with _reading(file) as f:
        raw = f.metadata() or {}
    return _decode(file, raw)


def _decode(file: Path, raw: dict[str, str]) -> dict:
    if raw.get("weightgen_format") != FORMAT:
        raise CheckpointError(f"{shorten(file)} is a safetensors file but not a weightgen checkpoint (no weightgen metadata)")
    meta = {"weightgen_format": FORMAT}
    for k, v in raw.items():
        if k != "weightgen_format":
            try:
                meta[k] = json.loads(v)
            except (ValueError, RecursionError) as e:  # bad JSON, an int of 5,000 digits, nesting past the stack
                raise CheckpointError(f"{shorten(file)} has corrupt weightgen metadata (key {short(k)} is not JSON)") from e
            if _depth(meta[k]) > MAX_DEPTH:  # whoever prints or walks it would recurse as deep
                raise CheckpointError(f"{shorten(file)} has corrupt weightgen metadata (key {short(k)} nests deeper "
                                      f"than {MAX_DEPTH} levels)")
    _check_header(file, meta)
    return meta


def _depth(value) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, (list, dict)) and d <= MAX_DEPTH:
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _check_header(file: Path, meta: dict) -> None:
    """Validate the arch and task records, so a malformed header is one clear error."""
    task = meta.get("task")
    try:
        ArchSpec.from_dict(meta.get("arch"))
        if task is not None:
            if not isinstance(task, dict) or "id" not in task:
                raise CheckpointError(f"a task record is an object with an id, got {short(task)}")
            get_task(task["id"])
    except WeightgenError as e:
        raise CheckpointError(f"{shorten(file)} has malformed weightgen metadata (arch or task record: {e})") from e
    for key in ("prompt", SHA256_KEY):
        if not isinstance(meta.get(key, ""), str):
            raise CheckpointError(f"{shorten(file)} has malformed weightgen metadata ({key} is not text)")


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) of a checkpoint; checks names, dtypes, shapes, finiteness and the
    checksum against its metadata. Weights come back as float32, whatever float type was stored."""
    file = _weights_file(Path(path))
    with _reading(file) as f:
        raw = f.metadata() or {}
        meta = _decode(file, raw)
        arch = ArchSpec.from_dict(meta["arch"])
        # names, dtypes and shapes from the header first, so nothing is read for a file that cannot fit
        stored = atomic.header_tensors(f)
        _check_tensors(file, arch, stored)
        sd = {k: f.get_tensor(k) for k in stored}
    checksum = meta.get(SHA256_KEY)
    # a checksum mismatch is checked last: a specific reason (NaN, wrong shape) says more
    weights = {k: t.float() for k, t in sd.items()}  # a float64 too large for float32 becomes inf here
    bad = [k for k, t in weights.items() if not t.isfinite().all()]
    if bad:
        raise CheckpointError(f"{shorten(file)} holds non-finite weights (NaN or inf in {short(bad[0])})")
    if checksum is not None and checksum != atomic.sha256_of(sd, raw):
        raise CheckpointError(f"{shorten(file)} is corrupt: its weights or metadata do not match the checksum "
                              "written with them")
    return weights, meta


def _check_tensors(file: Path, arch: ArchSpec, stored: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    layout = arch.layout()
    expected = dict(zip(layout.names, layout.shapes))
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        which = f"lacks {short(missing)}" if missing else f"has unexpected tensors {short(extra)}"
        raise CheckpointError(f"{shorten(file)} does not hold a {arch.describe()}: it {which}")
    for name, (dtype, shape) in stored.items():
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{shorten(file)} stores {short(name)} as {short(dtype)}; weights must be "
                                  f"floating point ({', '.join(FLOAT_DTYPES)})")
        if shape != expected[name]:
            raise CheckpointError(f"{shorten(file)} does not hold a {arch.describe()}: {short(name)} has shape "
                                  f"{short(shape)}, expected {expected[name]}")


@contextlib.contextmanager
def _reading(file: Path):
    """safe_open, with a damaged file (bad header, truncated data, unknown dtype) as one CheckpointError."""
    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{shorten(file)} is not a valid safetensors file (it is truncated or corrupt)") from e


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
    try:
        return _find_weights(path)
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte, no permission
        raise CheckpointError(f"cannot read a checkpoint at {shorten(path)} ({getattr(e, 'strerror', None) or e})") from e


def _find_weights(path: Path) -> Path:
    if path.is_dir():
        path = path / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{shorten(path.parent)} is a folder without {WEIGHTS_NAME}, so not a weightgen checkpoint")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {shorten(path)}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with a little-endian u64 header length, then the JSON header's "{"; check
    # that first, since the length's low byte may itself be 0x80, the pickle magic
    header_len = int.from_bytes(head[:8], "little")
    looks_safetensors = head[8:9] == b"{" and 8 + header_len <= path.stat().st_size
    if not looks_safetensors and head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{shorten(path)} is a pickle/torch.save file; weightgen never unpickles files, use safetensors")
    return path

