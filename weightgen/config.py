"""Typed configs: dataclasses whose defaults are documented where declared; YAML files only override.

`load_config(ZooConfig, "configs/zoo/debug.yaml", ["epochs=3", "tasks.subsets_per_k=2"])` reads the
YAML, applies dotted `key=value` overrides (values parsed as YAML), and builds the dataclass. An
unknown key is an error that names the key and the valid ones. Configs are never mutated after load.

Size guards come before any work: a config file is at most MAX_CONFIG_BYTES, holds at most
MAX_VALUES values once YAML anchors are expanded (a "billion laughs" bomb is a few lines that expand
to 10^9 values), lists have at most MAX_ITEMS items, integers fit in 64 bits, and messages quote
values through `errors.short`, so reporting a bad value never formats a huge one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from weightgen.errors import ConfigError, short, shorten

MAX_CONFIG_BYTES = 1_000_000  # the largest config in configs/ is under 2 KB
MAX_VALUES = 100_000  # values in one config, anchors expanded
MAX_ITEMS = 10_000  # items in one list (1,013 digits subset tasks exist in all)
MAX_SEEDS = 10_000  # models per (task, arch)
MAX_MODELS = 1_000_000  # models in one zoo (the largest in configs/zoo has 8,532)


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

    def __post_init__(self):
        # checked here, before build plans one entry per model: `seeds=1000000000` must not allocate
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise ConfigError(f"seeds must be between 1 and {MAX_SEEDS:,}, got {short(self.seeds)}")
        if self.models_per_shard < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("models_per_shard and batch_size must be at least 1 and epochs at least 0")
        if self.planned_models > MAX_MODELS:
            raise ConfigError(f"the config plans up to {self.planned_models:,} models, over the cap of {MAX_MODELS:,}")

    @property
    def planned_models(self) -> int:
        """An upper bound on the zoo's model count, by arithmetic (k-class subsets of the ten digits)."""
        subsets = sum(min(self.tasks.subsets_per_k or math.comb(10, k), math.comb(10, k))
                      for k in self.tasks.subset_k if 0 <= k <= 10)
        archs = 1 if self.init == "lora" else len(self.archs)
        return (len(self.tasks.ids) + subsets) * archs * self.seeds


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
        name = shorten(str(path))
        if not path.is_file():
            raise ConfigError(f"config file {name} does not exist")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {name} is over {MAX_CONFIG_BYTES:,} bytes; configs only override a few keys")
        raw = _parse(path.read_bytes(), f"config file {name}") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {name} must hold a mapping of keys to values")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {short(item)} must look like key=value (e.g. epochs=5)")
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {short(item)}: {short(p)} is not a section")
        node[leaf] = _parse(value, f"override {short(item)}")
    _check_size(raw)
    return from_dict(cls, raw, where=shorten(str(path)) if path else "config")


def _parse(text: str | bytes, what: str):
    """YAML text -> Python values, every failure (bad syntax or encoding, nesting past the stack) one ConfigError."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} is over {MAX_CONFIG_BYTES:,} bytes")
    try:
        return _load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML ({shorten(str(e).splitlines()[0], 120)})") from e
    except (UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{what} is not readable YAML (not UTF-8 text, or nested too deeply)") from e


def _check_size(raw) -> None:
    """Count values as a reader would see them (anchors expanded), stopping at MAX_VALUES: an anchor
    bomb is refused after at most that many steps, and nothing is ever expanded in memory."""
    seen, stack = 0, [raw]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"the config holds over {MAX_VALUES:,} values once YAML anchors are expanded "
                              "(an anchor bomb?)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def from_dict(cls, raw, where: str = "config"):
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {short(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {short(unknown[0])} in {where}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()})


def _coerce(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(items) > MAX_ITEMS:
            raise ConfigError(f"{where} has {len(items):,} items, over the cap of {MAX_ITEMS:,}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string, so numeric strings are accepted for floats
        try:
            if not isinstance(value, bool) and isinstance(value, (int, float, str)) and math.isfinite(float(value)):
                return float(value)
        except (ValueError, OverflowError):  # OverflowError: an integer beyond float range
            pass
        raise ConfigError(f"{where} must be a finite number, got {short(value)}")
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {tp.__name__}, got {short(value)}")
    if tp is int and not -(2**63) <= value < 2**63:  # seeds reach torch.manual_seed, which takes 64 bits
        raise ConfigError(f"{where} must fit in 64 bits, got {short(value)}")
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
