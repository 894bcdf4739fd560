"""Atomic writes: write to a temporary file beside the target, fsync, then rename over it.

A reader (or a resumed job after `kill -9`) sees either the old file or the complete new one, never
a partial file. Temporary names end in `.tmp` so a resumed job can recognise and remove leftovers.

Safetensors files are also reproducible and checksummed: the header is written with sorted keys
(the safetensors library emits its metadata in a per-process random hash order, so the same seed
gave different bytes), and `write_safetensors` adds `SHA256_KEY`, a digest of the other metadata and
of every tensor, which readers (weightgen.checkpoint, weightgen.zoo.store) check with `sha256_of`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save

from weightgen.errors import WeightgenError

SHA256_KEY = "sha256"  # metadata key; its value is a JSON string, so every other value may be JSON too


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # some writers (safetensors) create 0600 files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yields a temporary folder beside `folder` to fill; on success it takes `folder`'s place (an
    existing folder is moved aside first and deleted after), on error it is removed. A reader sees
    the old folder or the complete new one, never a half-written one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (folder.with_name(f".{folder.name}.{os.getpid()}.{s}") for s in ("tmp", "old.tmp"))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_of(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Hex sha256 over the metadata (all but SHA256_KEY) and every tensor's name, dtype, shape and
    bytes, in sorted order: any flipped bit, relabelled dtype or reshaped tensor changes it."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != SHA256_KEY):
        h.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, whatever the dtype (bf16 has no numpy)
    return h.hexdigest()


def header_tensors(f) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (safetensors dtype name, shape) of every tensor in an open `safe_open` file, read from
    the header alone, so a reader can check a file before loading any tensor."""
    out = {}
    for name in f.keys():
        view = f.get_slice(name)
        out[name] = (view.get_dtype(), tuple(view.get_shape()))
    return out


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors plus metadata and its SHA256_KEY; the same tensors and metadata always give
    the same bytes, in one process or across processes."""
    if SHA256_KEY in metadata:
        raise WeightgenError(f"metadata key '{SHA256_KEY}' is reserved for the file's checksum")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**metadata, SHA256_KEY: json.dumps(sha256_of(tensors, metadata))}
    data = save(tensors, metadata=metadata)
    # re-emit the header sorted; the tensors' byte layout is already deterministic (by dtype, then name)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads its header to 8 bytes, keeping tensors aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.write(memoryview(data)[8 + n :])


def remove_leftovers(folder: str | Path) -> None:
    """Delete temporary files an interrupted job left behind."""
    for p in Path(folder).glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
