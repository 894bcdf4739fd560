"""Typed configs: dataclasses whose defaults are documented where declared; YAML files only override.

`load_config(ZooConfig, "configs/zoo/debug.yaml", ["epochs=3", "tasks.subsets_per_k=2"])` reads the
YAML, applies dotted `key=value` overrides (values parsed as YAML), and builds the dataclass. An
unknown key is an error that names the key and the valid ones. Configs are never mutated after load.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from weightgen.errors import ConfigError


@dataclass(frozen=True)
class ArchTemplate:
    """An architecture whose input and output sizes come from each task it is trained on."""

    family: str = "mlp"  # mlp | cnn | inr
    hidden: tuple[int, ...] = (32,)  # hidden widths (mlp, inr) or conv channels (cnn)
    activation: str = "relu"  # relu | gelu | tanh
    held_out: bool = False  # every model of this template is held out: an arch no generator trains on


@dataclass(frozen=True)
class TaskSelection:
    """Which tasks a zoo covers: explicit ids plus digits subset tasks drawn at random."""

    ids: tuple[str, ...] = ()  # explicit task ids, e.g. digits-rotate-30, iris
    subset_k: tuple[int, ...] = ()  # draw digits subset tasks with these numbers of classes
    subsets_per_k: int = 0  # at most this many for each k (0, or more than exist = every subset)


@dataclass(frozen=True)
class BaseModelConfig:
    """The frozen base of a LoRA zoo: a tiny `transformers` ViTForImageClassification on the 8x8
    digits (patches of 4x4 pixels), pretrained by weightgen on all ten digits and cached
    (weightgen.zoo.lora_base); the same config always names the same cached base."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 64
    patch_size: int = 4  # 4 patches + [CLS]: 2x2-pixel patches cost 3.4x the compute for no gain on shifts
    epochs: int = 40  # pretraining on the train split of all ten digits
    lr: float = 0.003
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class LoRASpec:
    """init=lora: every model is a rank-`rank` LoRA adapter (peft's parametrisation: W + alpha/r B A)
    of the frozen base, trained with the zoo's optimizer, lr, epochs and batch size."""

    base: BaseModelConfig = BaseModelConfig()
    rank: int = 4
    alpha: float = 8.0
    # attention query/value (the LoRA paper's choice) plus the classifier head: on shift tasks the head
    # added 4-5 points on rotations and inversion for 10 x (48 + r) more numbers (benchmarks/RESULTS.md)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "classifier")
    # shared: every adapter starts from one A (B = 0, as peft); independent: a fresh A per adapter. From
    # independent starts, adapters of one task end in unrelated subspaces (benchmarks/RESULTS.md, issue 16)
    init: str = "shared"


@dataclass(frozen=True)
class ZooConfig:
    name: str = "zoo"  # recorded in zoo.json
    tasks: TaskSelection = TaskSelection()
    held_out: tuple[str, ...] = ()  # task ids never shown to a generator (their models are still trained)
    held_out_fraction: float = 0.0  # further tasks held out, drawn at random with `seed`
    archs: tuple[ArchTemplate, ...] = (ArchTemplate(),)
    seeds: int = 4  # models per (task, arch)
    init: str = "shared"  # independent (fresh init per model) | shared (one init per arch) | base | lora
    base_checkpoint: str = ""  # init=base: fine-tune every model from this checkpoint
    lora: LoRASpec = LoRASpec()  # init=lora: adapters of a frozen transformers base (archs are not used)
    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 64
    precision: str = "fp32"  # fp32 | bf16: matmuls under bf16 autocast (~1.5x faster on CPUs with AVX512-BF16)
    models_per_shard: int = 512  # models trained together and stored in one shard file
    seed: int = 0  # drives task sampling, hold-out, inits and data order


class _Loader(yaml.SafeLoader):
    """YAML with only true / false as booleans (as YAML 1.2): PyYAML's 1.1 rules read
    `mixed_precision: no` as False, and a string setting could not then be given the value "no"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def load_config(cls, path: str | Path | None = None, overrides: typing.Sequence[str] = ()):
    """Build `cls` from a YAML file (or defaults when path is None) plus dotted overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. epochs=5)")
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[leaf] = _load_yaml(value)
    return from_dict(cls, raw, where=str(path) if path else "config")


def from_dict(cls, raw, where: str = "config"):
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in {where}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()})


def _coerce(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted for floats
        try:
            if not isinstance(value, bool) and isinstance(value, (int, float, str)):
                return float(value)
        except ValueError:
            pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    """Plain, YAML/JSON-ready dict of a config (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


__all__ = ["ArchTemplate", "BaseModelConfig", "LoRASpec", "TaskSelection", "ZooConfig", "load_config", "from_dict", "to_dict"]
