"""Fine-tuning a trained generator: `init_from: DIR` in any generator training config.

The script builds its model for the new zoo as usual (tables sized by the new zoo's tasks and
archs, statistics fitted on its models), then `init_from_parent` copies in the parent generator's
trained weights before the optimiser and the EMA are made:
- a tensor whose name and shape match is copied;
- a tensor whose shape differs (a table that grew with new task kinds or classes) keeps its fresh
  initialisation, and the script says which, in one line; a parent of another model class, or one
  whose blocks differ in size, is refused, because then almost nothing would carry over; the one
  exception is the task-code projection of a parent saved when the code was shorter (the code only
  appends sections): its columns are copied, and the new ones start at zero;
- statistics (every buffer: prompt-token, weight and latent statistics, probe inputs, task means,
  codebooks, and a closed-form encoder such as the LoRA PCA) are refitted on the new zoo with
  `init_stats: refit`, or taken whole from the parent with `keep` (`keep_parent_stats`, before the
  script would fit them), which then standardises the new zoo the way the parent saw its own.

A run is tied to its zoo and parent: `OUT/checkpoints/run.json` records them, and resuming into a
folder whose checkpoints came from another zoo or parent is refused, instead of silently bringing
back the other run's statistics (accelerate's `load_state` restores every buffer). The saved
generator's `train_config.json` records the parent, so a fine-tuned run and a resumed run differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from weightgen.errors import ConfigError, GeneratorError

STATS_MODES = ("refit", "keep")
MIN_CARRIED = 0.9  # share of the model's parameters (by count) the parent must supply


def parent_state(parent: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parent pipeline's weights under `model`'s names: the component saved with `model`'s class
    (the denoiser), or, for a wrapper of several parts (the AR scripts' `lm` + `prefix`), each part
    from the component of the same name and class."""
    parent = Path(parent)
    index_file = parent / "model_index.json"
    if not index_file.is_file():
        raise GeneratorError(f"init_from: {parent} is not a trained generator folder (no model_index.json)")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeneratorError(f"init_from: {index_file} is not readable JSON") from e
    classes = {k: v[1] for k, v in index.items() if isinstance(v, list) and len(v) == 2}
    own = type(model).__name__
    if own in classes.values():
        parts = {"": next(k for k, c in classes.items() if c == own)}
    else:
        parts = {f"{name}.": name for name, child in model.named_children() if classes.get(name) == type(child).__name__}
    if not parts:
        kinds = ", ".join(sorted(set(classes.values()))) or "nothing"
        raise GeneratorError(f"init_from: {parent} holds {kinds}, not a {own}; fine-tune a generator of the same kind")
    state = {}
    for prefix, component in parts.items():
        files = sorted((parent / component).glob("*.safetensors"))
        if len(files) != 1:
            raise GeneratorError(f"init_from: {parent / component} should hold one safetensors weights file")
        try:
            state.update({prefix + k: v for k, v in load_file(str(files[0])).items()})
        except (SafetensorError, OSError) as e:
            raise GeneratorError(f"init_from: {files[0]} is not a readable safetensors file") from e
    return state


def keep_parent_stats(model: torch.nn.Module, cfg, say=print) -> bool:
    """With `init_from` and `init_stats: keep`, copy every buffer of the parent into `model` and
    return True: the script then skips fitting its statistics and standardises the new zoo with the
    parent's. False (nothing done) otherwise. The parent's statistics must fit this model whole."""
    if not cfg.init_from:
        return False
    if cfg.init_stats not in STATS_MODES:
        raise ConfigError(f"init_stats must be one of {', '.join(STATS_MODES)}, got '{cfg.init_stats}'")
    if cfg.init_stats == "refit":
        return False
    theirs = parent_state(cfg.init_from, model)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            src = theirs.get(name)
            if src is None or src.shape != buf.shape:
                raise GeneratorError(f"init_stats: keep needs the parent's statistics to fit this zoo, but '{name}' "
                                     f"differs ({None if src is None else tuple(src.shape)} vs {tuple(buf.shape)}); "
                                     "use init_stats: refit")
            buf.copy_(src)
    say(f"init_from {cfg.init_from}: statistics kept from the parent")
    return True


def init_from_parent(model: torch.nn.Module, parent: str | Path, say=print) -> dict:
    """Copy the parent's weights (parameters; statistics are `keep_parent_stats`'s) into `model` in
    place; returns {"copied": names, "extended": task-code projections whose input grew (`code_grew`),
    "fresh": names of new or resized tensors kept fresh}."""
    theirs = parent_state(parent, model)
    params = dict(model.named_parameters())
    summary = {"copied": [], "fresh": [], "extended": []}
    for name, tensor in params.items():
        src = theirs.get(name)
        same = src is not None and src.shape == tensor.shape
        summary["copied" if same else "extended" if code_grew(name, src, tensor) else "fresh"].append(name)
    carried = sum(theirs[n].numel() for n in summary["copied"] + summary["extended"]) / max(
        1, sum(p.numel() for p in params.values()))
    if carried < MIN_CARRIED:
        raise GeneratorError(f"init_from: {parent} supplies only {carried:.0%} of this model's weights; its "
                             "blocks differ in size, so use the parent's num_layers, heads and widths")
    with torch.no_grad():
        for name in summary["copied"]:
            params[name].copy_(theirs[name])
        for name in summary["extended"]:  # the parent's columns; the new code sections start with no effect
            params[name].zero_()[:, : theirs[name].shape[1]].copy_(theirs[name])
    fresh = f"; new or resized, kept fresh: {', '.join(summary['fresh'])}" if summary["fresh"] else ""
    grown = (f"; task code grew, the parent's columns kept: {', '.join(summary['extended'])}"
             if summary["extended"] else "")
    say(f"init_from {parent}: {len(summary['copied'])} weight tensors copied ({carried:.1%} of the weights)"
        f"{grown}{fresh}")
    return summary


def code_grew(name: str, src: torch.Tensor | None, tensor: torch.Tensor) -> bool:
    """Whether `name` is a task-code projection's weight whose input grew: the task code only appends
    sections (weightgen.tasks.TASK_CODE_DIM), so a parent saved with a shorter code read the same
    entries through its columns, and those carry over as they are."""
    return (name.endswith("code_proj.weight") and src is not None and src.ndim == tensor.ndim == 2
            and src.shape[0] == tensor.shape[0] and src.shape[1] < tensor.shape[1])


def parent_component(cfg, name: str, cls):
    """The parent's saved component `name` (a closed-form encoder such as AdapterPCA) when its
    statistics are kept, else None: the script then fits its own."""
    if not cfg.init_from or cfg.init_stats != "keep":
        return None
    folder = Path(cfg.init_from) / name
    if not (folder / "config.json").is_file():
        raise GeneratorError(f"init_stats: keep needs the parent's {name}, but {folder} holds none")
    return cls.from_pretrained(str(folder)).eval()


def check_parent_encoder(cfg, name: str) -> None:
    """A generator over a learned encoder's latents (autoencoder, VQ tokenizer) only makes sense with
    the encoder it was trained with: with `init_from`, the config's encoder must hold the same weights
    as the parent's saved component `name`."""
    if not cfg.init_from:
        return
    mine, theirs = Path(getattr(cfg, name)), Path(cfg.init_from) / name
    if _tensors(mine) != _tensors(theirs):
        raise GeneratorError(f"init_from: {cfg.init_from} was trained on another {name} than {mine}; set {name} "
                             f"to the one it was trained with (its train_config.json names it)")


def _tensors(folder: Path) -> dict[str, bytes] | None:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        return None
    try:
        return {k: v.contiguous().numpy().tobytes() for k, v in load_file(str(files[0])).items()}
    except (SafetensorError, OSError, TypeError):
        return None


def parent_record(parent: str | Path) -> dict:
    """What a fine-tuned generator's train_config.json says about its parent."""
    parent = Path(parent)
    record = {"path": str(parent.resolve())}
    config = parent / "train_config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            cfg = {}
        if isinstance(cfg, dict):
            record.update({k: cfg[k] for k in ("zoo", "steps", "init_from", "parent") if k in cfg})
    return record


def zoo_fingerprint(zoo: str | Path) -> str:
    """sha256 of a zoo's manifest and records: two zoos with the same models give the same value."""
    h = hashlib.sha256()
    for name in ("zoo.json", "records.jsonl"):
        path = Path(zoo) / name
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()


def check_run(out: str | Path, run: dict, is_main: bool) -> None:
    """Refuse to resume OUT/checkpoints written by a run on another zoo or parent; record this run's
    zoo and parent there otherwise (main process only)."""
    path = Path(out) / "checkpoints" / "run.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = None
        if before != run:
            raise GeneratorError(f"{path.parent} holds checkpoints of another run (another zoo or init_from); "
                                 "train into a new out folder, or use init_from to start from a trained generator")
        return
    if is_main:
        from weightgen import atomic

        atomic.write_text(path, json.dumps(run, indent=1, sort_keys=True))
