"""`weightgen quickstart`: build the default zoo, train the default encoders and generators into the
cache folder (`weightgen.home`), then sample and evaluate a held-out prompt.

Each stage is the real entry point with the repository's default config (`configs/`), pointed at
the cache folder: `build_zoo` for configs/zoo/digits-mlp.yaml, then the `main(cfg)` of
train/train_autoencoder.py, train_tokenizer.py, train_diffusion.py and train_autoregressive.py.
A stage whose output is complete is skipped, and an interrupted one resumes (the zoo skips finished
shards; the train scripts restart from their newest accelerate checkpoint), so re-running the
command after Ctrl-C finishes the job.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightgen.config import ZooConfig, load_config
from weightgen.errors import WeightgenError
from weightgen.home import default_generator, home

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[], bool]
    run: Callable[[], None]


def train_script(name: str):
    """The module of train/train_NAME.py (they are scripts, not package modules)."""
    key = f"weightgen_train_{name}"
    if key not in sys.modules:
        path = ROOT / "train" / f"train_{name}.py"
        if not path.is_file():
            raise WeightgenError(f"{path} is missing; quickstart runs from a weightgen source checkout")
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses in the script look themselves up here
        spec.loader.exec_module(module)
    return sys.modules[key]


def _config(path: Path, cls, **overrides):
    return load_config(cls, path, [f"{k}={v}" for k, v in overrides.items()])


def stages(root: Path | None = None) -> tuple[list[Stage], dict[str, Path]]:
    """The quickstart stages and the folders they fill, under `root` (default: the cache folder)."""
    root = root or home()
    paths = {"zoo": root / "zoo" / "digits-mlp", "autoencoder": root / "encoders" / "autoencoder",
             "tokenizer": root / "encoders" / "tokenizer",
             "diffusion": default_generator("diffusion", root), "ar": default_generator("ar", root)}

    def zoo():
        from weightgen.zoo.build import build_zoo

        build_zoo(load_config(ZooConfig, CONFIGS / "zoo" / "digits-mlp.yaml"), paths["zoo"])

    def encoder(script: str, config: str, key: str):
        module = train_script(script)
        cls = module.TokenizerConfig if script == "tokenizer" else module.AutoencoderConfig
        return lambda: module.main(_config(CONFIGS / "encoder" / config, cls, zoo=paths["zoo"], out=paths[key]))

    def generator(script: str, config: str, key: str, encoder_key: str, field: str):
        module = train_script(script)
        cls = module.DiffusionConfig if script == "diffusion" else module.ARConfig
        return lambda: module.main(_config(CONFIGS / "generator" / config, cls, out=paths[key],
                                           **{field: paths[encoder_key]}))

    def complete(key: str, marker: str) -> Callable[[], bool]:
        return lambda: (paths[key] / marker).is_file() and (paths[key] / "train_config.json").is_file()

    return [
        Stage("zoo: 5,148 MLPs on 429 digits tasks", lambda: _zoo_complete(paths["zoo"]), zoo),
        Stage("autoencoder (diffusion latents)", complete("autoencoder", "config.json"),
              encoder("autoencoder", "autoencoder-digits.yaml", "autoencoder")),
        Stage("VQ tokenizer (AR ids)", complete("tokenizer", "config.json"),
              encoder("tokenizer", "vqvae-ar-digits.yaml", "tokenizer")),
        Stage("diffusion generator", complete("diffusion", "model_index.json"),
              generator("diffusion", "diffusion-digits.yaml", "diffusion", "autoencoder", "encoder")),
        Stage("autoregressive generator", complete("ar", "model_index.json"),
              generator("autoregressive", "ar-digits.yaml", "ar", "tokenizer", "tokenizer")),
    ], paths


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
    """Run each incomplete stage in order; returns seconds per stage (0 for skipped ones)."""
    seconds = {}
    for i, stage in enumerate(all_stages, 1):
        if stage.done():
            log(f"[{i}/{len(all_stages) + 1}] {stage.name}: already built, skipped")
            seconds[stage.name] = 0.0
            continue
        log(f"[{i}/{len(all_stages) + 1}] {stage.name}")
        start = time.perf_counter()
        stage.run()
        seconds[stage.name] = time.perf_counter() - start
    return seconds
