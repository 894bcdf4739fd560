"""Shared fixtures: the debug zoo (built once per session) and a runner for the `weightgen` CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightgen.config import ZooConfig, load_config
from weightgen.zoo.build import build_zoo

ROOT = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = ROOT / "configs" / "zoo" / "debug.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def debug_config_path() -> Path:
    return DEBUG_CONFIG


@pytest.fixture(scope="session")
def debug_zoo(tmp_path_factory):
    """The debug zoo (28 models, 4 shards), built in-process once; tests must not modify it."""
    cfg = load_config(ZooConfig, DEBUG_CONFIG)
    return build_zoo(cfg, tmp_path_factory.mktemp("zoo") / "debug", progress=False)


@pytest.fixture(scope="session")
def debug_lora_zoo(tmp_path_factory):
    """The debug LoRA zoo (10 rank-2 adapters of a briefly pretrained ViT base), built once; the
    base is cached in a temporary WEIGHTGEN_HOME, never the user's. Tests must not modify it."""
    cfg = load_config(ZooConfig, ROOT / "configs" / "zoo" / "debug-lora.yaml")
    home = tmp_path_factory.mktemp("lora-home")
    old = os.environ.get("WEIGHTGEN_HOME")
    os.environ["WEIGHTGEN_HOME"] = str(home)
    try:
        with one_thread():
            return build_zoo(cfg, tmp_path_factory.mktemp("zoo") / "debug-lora", progress=False)
    finally:
        if old is None:
            os.environ.pop("WEIGHTGEN_HOME")
        else:
            os.environ["WEIGHTGEN_HOME"] = old


def _run_cli(*args, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run `python -m weightgen.cli ARGS` from the repo root; returns (returncode, stdout, stderr).

    The child gets this environment without the variables that change rich's layout or colours
    (COLUMNS, LINES, FORCE_COLOR), plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    proc = subprocess.run(
        [sys.executable, "-m", "weightgen.cli", *map(str, args)],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def run_cli():
    return _run_cli


@contextlib.contextmanager
def one_thread():
    """torch on one thread for a while: the debug models are tiny, and on busy shared cores several
    threads per op spend their time waiting for each other (seconds per LM sampling step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_one_thread():
    """`one_thread()` for a whole test module (use with `pytestmark = pytest.mark.usefixtures(...)`)."""
    with one_thread():
        yield


def load_train_script(name: str):
    """The training module behind `train/train_NAME.py` (weightgen/train/NAME.py: its main and
    config), so tests can call `main(cfg)` in-process."""
    import importlib

    return importlib.import_module(f"weightgen.train.{name}")


@pytest.fixture(scope="session")
def train_script():
    """`train_script(NAME)`: the module of train/train_NAME.py, for calling its `main(cfg)` in-process."""
    return load_train_script


@pytest.fixture(scope="session")
def debug_encoders(debug_zoo, tmp_path_factory) -> dict[str, Path]:
    """The debug autoencoder and VQ tokenizer (configs/encoder/debug.yaml; the tokenizer with
    task_mean, as configs/encoder/vqvae-ar-digits.yaml) trained in-process once on the debug zoo:
    {"autoencoder": folder, "tokenizer": folder}. Tests must not modify them."""
    from weightgen.encoders.training import AutoencoderConfig, TokenizerConfig

    root = tmp_path_factory.mktemp("encoders")
    config = ROOT / "configs" / "encoder" / "debug.yaml"
    out = {}
    for name, cls in (("autoencoder", AutoencoderConfig), ("tokenizer", TokenizerConfig)):
        out[name] = root / name
        # the tokenizer as the default one: coding residuals around each task's mean
        extra = ["task_mean=true"] if name == "tokenizer" else []
        cfg = load_config(cls, config, [f"zoo={debug_zoo.root}", f"out={out[name]}", *extra])
        with one_thread():
            load_train_script(name).main(cfg)
    return out


@pytest.fixture(scope="session")
def debug_generators(debug_encoders, tmp_path_factory) -> dict[str, Path]:
    """The debug diffusion and autoregressive generators (configs/generator/debug-*.yaml, 2 steps)
    trained in-process once: {"diffusion": folder, "autoregressive": folder}. Do not modify them."""
    root = tmp_path_factory.mktemp("generators")
    diffusion, autoregressive = load_train_script("diffusion"), load_train_script("autoregressive")
    out = {"diffusion": root / "diffusion", "autoregressive": root / "autoregressive"}
    with one_thread():
        diffusion.main(load_config(diffusion.DiffusionConfig, ROOT / "configs" / "generator" / "debug-diffusion.yaml",
                                   [f"encoder={debug_encoders['autoencoder']}", f"out={out['diffusion']}"]))
        autoregressive.main(load_config(autoregressive.ARConfig, ROOT / "configs" / "generator" / "debug-ar.yaml",
                                        [f"tokenizer={debug_encoders['tokenizer']}", f"out={out['autoregressive']}"]))
    return out


def _train_debug(tmp_path_factory, script: str, config_cls: str, config: str, zoo: Path, name: str) -> Path:
    """Run train/train_SCRIPT.py's main in-process on `zoo` with configs/generator/CONFIG (one thread)."""
    module = load_train_script(script)
    out = tmp_path_factory.mktemp("generators") / name
    with one_thread():
        module.main(load_config(getattr(module, config_cls), ROOT / "configs" / "generator" / config,
                                [f"zoo={zoo}", f"out={out}"]))
    return out


@pytest.fixture(scope="session")
def debug_set_generator(debug_zoo, tmp_path_factory) -> Path:
    """The debug neuron-set diffusion generator (configs/generator/debug-set-diffusion.yaml, 2 steps)
    trained in-process once on the debug zoo's MLPs. Do not modify it."""
    return _train_debug(tmp_path_factory, "set_diffusion", "SetDiffusionConfig", "debug-set-diffusion.yaml", debug_zoo.root, "set-diffusion")


@pytest.fixture(scope="session")
def debug_set_ar(debug_zoo, tmp_path_factory) -> Path:
    """The debug neuron-set AR generator (configs/generator/debug-set-ar.yaml, 2 steps) trained
    in-process once on the debug zoo's MLPs. Do not modify it."""
    return _train_debug(tmp_path_factory, "set_ar", "SetARConfig", "debug-set-ar.yaml", debug_zoo.root, "set-ar")


@pytest.fixture(scope="session")
def debug_lora_generator(debug_lora_zoo, tmp_path_factory) -> Path:
    """The debug LoRA diffusion generator (configs/generator/debug-lora-diffusion.yaml, 4 steps) trained
    in-process once on the debug LoRA zoo, through the same train script as weight generators."""
    return _train_debug(tmp_path_factory, "diffusion", "DiffusionConfig", "debug-lora-diffusion.yaml", debug_lora_zoo.root, "lora-diffusion")


@pytest.fixture(scope="session")
def debug_lora_ar(debug_lora_zoo, tmp_path_factory) -> Path:
    """The debug LoRA AR generator (configs/generator/debug-lora-ar.yaml, 3 steps), through the same
    train script as the weight AR generator."""
    return _train_debug(tmp_path_factory, "autoregressive", "ARConfig", "debug-lora-ar.yaml", debug_lora_zoo.root, "lora-ar")
