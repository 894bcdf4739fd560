"""Running the train scripts as subprocesses in tests: a quiet environment, and `accelerate launch`
with two CPU processes whose workers log their rank (imported by the test modules; pytest puts
this folder on sys.path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# imported at start-up by every Python process with its folder on PYTHONPATH: each worker that
# `accelerate launch` starts (RANK is set) logs, at exit, the process index and count that accelerate
# itself gave it, so a worker that ran alone (num_processes 1) shows up even though RANK was set
RANK_LOGGER = """
import atexit, os

def _log_rank():
    from accelerate.state import PartialState
    state = PartialState._shared_state
    with open(os.environ["WEIGHTGEN_TEST_RANK_LOG"], "a") as f:
        f.write(f"{state.get('process_index')} {state.get('num_processes')}\\n")

if "RANK" in os.environ:
    atexit.register(_log_rank)
"""
TWO_PROCESSES = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]


def script_env(tmp: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    # one thread per process: tiny models on shared cores; torch elastic leaves a folder in TMPDIR
    return {**base, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), **extra}


def two_process_env(tmp: Path) -> tuple[dict[str, str], Path]:
    """The environment for TWO_PROCESSES on CPU, and the file its workers log "RANK WORLD_SIZE" to."""
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(RANK_LOGGER)
    log = tmp / "ranks.log"
    env = script_env(tmp, ACCELERATE_USE_CPU="1",
                     PYTHONPATH=os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", "")]),
                     WEIGHTGEN_TEST_RANK_LOG=str(log))
    return env, log
