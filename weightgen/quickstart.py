"""`weightgen quickstart`: build the default zoo, train the default generator into the cache folder
(`weightgen.home`), then sample and evaluate a held-out prompt.

Each stage is the real entry point with the repository's default config (`configs/`), pointed at
the cache folder: `build_zoo` for configs/zoo/digits-mlp.yaml, then the `main(cfg)` of
train/train_set_diffusion.py (configs/generator/set-diffusion-digits.yaml): the neuron-set
diffusion generator, which needs no encoder and no closed-form mean, and samples any MLP width.
The older arch-indexed generators (train_diffusion.py, train_autoregressive.py) generate only with
their closed-form task mean switched on, so quickstart no longer builds them.
`weightgen quickstart --lora` runs the LoRA path instead (`lora_stages`): the LoRA zoo of
configs/zoo/digits-lora-quickstart.yaml (its ViT base is pretrained and cached first) and the
diffusion generator over its adapters (train/train_diffusion.py with
configs/generator/lora-diffusion-digits.yaml, shortened to fit the budget), then PEFT adapters for a
held-out shift. A stage whose output is complete is skipped, and an interrupted one resumes (the zoo skips finished
shards; the train scripts restart from their newest accelerate checkpoint), so re-running the
command after Ctrl-C finishes the job. A complete stage that was trained with another config than
today's default (a cache folder from an older weightgen), or on an upstream stage that was just
rebuilt, is removed and trained again: otherwise an upgrade would keep serving the old models.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightgen.config import ZooConfig, load_config, to_dict
from weightgen.errors import WeightgenError
from weightgen.generators.common import GENERATOR_FORMAT, saved_format
from weightgen.home import default_generator, home

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[], bool]
    run: Callable[[], None]
    stale: Callable[[], bool] = lambda: False  # complete, but built with another config than today's
    after: tuple[str, ...] = ()  # names of the stages it is trained on: their rebuild makes it stale
    folder: Path | None = None  # what a rebuild removes first


def built_with(folder: Path, cfg) -> bool:
    """Whether the run saved in `folder` used `cfg`: every key of cfg agrees with its
    train_config.json, a key the saved run predates counting as that key's default."""
    try:
        saved = json.loads((folder / "train_config.json").read_text())
    except (OSError, ValueError):
        return False
    if (folder / "model_index.json").is_file() and saved_format(folder) != GENERATOR_FORMAT:
        return False  # a generator saved in an older format: loading would refuse it, so rebuild
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    return all(saved.get(k, json.loads(json.dumps(defaults.get(k)))) == v for k, v in to_dict(cfg).items())


def train_script(name: str):
    """The training module of a generator (weightgen/train/NAME.py: its main and config), which the
    script train/train_NAME.py wraps."""
    return importlib.import_module(f"weightgen.train.{name}")


def _config(path: Path, cls, **overrides):
    return load_config(cls, path, [f"{k}={v}" for k, v in overrides.items()])


def stages(root: Path | None = None) -> tuple[list[Stage], dict[str, Path]]:
    """The quickstart stages and the folders they fill, under `root` (default: the cache folder)."""
    root = root or home()
    paths = {"zoo": root / "zoo" / "digits-mlp", "diffusion": default_generator("diffusion", root),
             "ar": default_generator("ar", root)}

    def zoo():
        from weightgen.zoo.build import build_zoo

        build_zoo(load_config(ZooConfig, CONFIGS / "zoo" / "digits-mlp.yaml"), paths["zoo"])

    def trained(name: str, script: str, config_cls: str, config: Path, key: str, marker: str, after: str,
                **overrides) -> Stage:
        """The stage that runs weightgen/train/SCRIPT.py's main with CONFIG (read as its CONFIG_CLS) into paths[key]."""
        module = train_script(script)
        cfg = _config(config, getattr(module, config_cls), out=paths[key], **overrides)
        folder = paths[key]
        return Stage(name, lambda: (folder / marker).is_file() and (folder / "train_config.json").is_file(),
                     lambda: module.main(cfg), lambda: not built_with(folder, cfg), (after,), folder)

    zoo_stage = "zoo: 5,148 MLPs on 429 digits tasks"
    return [
        Stage(zoo_stage, lambda: _zoo_complete(paths["zoo"]), zoo),
        trained("neuron-set diffusion generator", "set_diffusion", "SetDiffusionConfig",
                CONFIGS / "generator" / "set-diffusion-digits.yaml", "diffusion", "model_index.json", zoo_stage,
                zoo=paths["zoo"]),
    ], paths


def lora_stages(root: Path | None = None) -> tuple[list[Stage], dict[str, Path]]:
    """The LoRA path's stages (module docstring) and the folders they fill."""
    root = root or home()
    paths = {"zoo": root / "zoo" / "digits-lora-quickstart", "generator": root / "generators" / "lora-diffusion"}
    zoo_cfg = load_config(ZooConfig, CONFIGS / "zoo" / "digits-lora-quickstart.yaml")
    module = train_script("diffusion")
    cfg = _config(CONFIGS / "generator" / "lora-diffusion-digits.yaml", module.DiffusionConfig, zoo=paths["zoo"],
                  out=paths["generator"], steps=LORA_QUICKSTART_STEPS)
    zoo_stage = f"LoRA zoo: {len(zoo_cfg.tasks.ids) * zoo_cfg.seeds} adapters of a ViT base on {len(zoo_cfg.tasks.ids)} shift tasks"
    folder = paths["generator"]
    return [
        Stage(zoo_stage, lambda: _zoo_complete(paths["zoo"]), lambda: _build(zoo_cfg, paths["zoo"])),
        Stage("LoRA diffusion generator", lambda: (folder / "model_index.json").is_file(), lambda: module.main(cfg),
              lambda: not built_with(folder, cfg), (zoo_stage,), folder),
    ], paths


LORA_QUICKSTART_STEPS = 1000  # what fits the LoRA path's 5-minute budget on 2 CPU cores with the task loss (RESULTS.md, issue 16)


def _build(cfg: ZooConfig, out: Path) -> None:
    from weightgen.zoo.build import build_zoo

    build_zoo(cfg, out)


def _zoo_complete(path: Path) -> bool:
    from weightgen.zoo.store import ZooStore

    if not (path / "records.jsonl").is_file():
        return False
    try:
        ZooStore(path).check_complete()
    except WeightgenError:
        return False  # build_zoo finishes it
    return True


def run_stages(all_stages: list[Stage], log: Callable[[str], None]) -> dict[str, float]:
    """Run each incomplete or out-of-date stage in order (module docstring); returns seconds per
    stage (0 for skipped ones)."""
    seconds, rebuilt = {}, set()
    for i, stage in enumerate(all_stages, 1):
        done = stage.done()
        upstream = [name for name in stage.after if name in rebuilt]
        if done and not upstream and not stage.stale():
            log(f"[{i}/{len(all_stages) + 1}] {stage.name}: already built, skipped")
            seconds[stage.name] = 0.0
            continue
        if done:  # complete but out of date: train it again from scratch, not from its checkpoints
            why = f"{upstream[0].split(':')[0]} was rebuilt" if upstream else "built with an older config"
            log(f"[{i}/{len(all_stages) + 1}] {stage.name}: {why}, rebuilding")
            shutil.rmtree(stage.folder)
        else:
            log(f"[{i}/{len(all_stages) + 1}] {stage.name}")
        rebuilt.add(stage.name)
        start = time.perf_counter()
        stage.run()
        seconds[stage.name] = time.perf_counter() - start
    return seconds
