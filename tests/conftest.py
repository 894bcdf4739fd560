"""Shared fixtures: the debug zoo (built once per session) and a runner for the `weightgen` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
