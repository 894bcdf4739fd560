"""A zoo built by two processes under `accelerate launch` equals the zoo built by one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# imported at start-up by every Python process that has its folder on PYTHONPATH: the workers that
# `accelerate launch` starts have RANK and WORLD_SIZE set, so they log themselves
RANK_LOGGER = """
import os
if "RANK" in os.environ:
    with open(os.environ["WEIGHTGEN_TEST_RANK_LOG"], "a") as f:
        f.write(os.environ["RANK"] + " " + os.environ["WORLD_SIZE"] + "\\n")
"""


def test_two_process_build_equals_single_process(debug_zoo, debug_config_path, repo_root, tmp_path):
    out = tmp_path / "zoo"
    accelerate = Path(sys.executable).parent / "accelerate"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RANK_LOGGER)
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        "WEIGHTGEN_TEST_RANK_LOG": str(tmp_path / "ranks.log"),
        "TMPDIR": str(tmp_path),  # torch elastic leaves a folder per launch in the temp dir
    }
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "-m",
            "weightgen.cli",
            "zoo",
            "build",
            str(debug_config_path),
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted((tmp_path / "ranks.log").read_text().splitlines()) == ["0 2", "1 2"], (
        "not two worker processes"
    )

    single = debug_zoo.records
    double = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(double) == len(single) == 28
    for a, b in zip(single, double):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert abs(a[key] - b[key]) <= 1e-5, (a["id"], key)
            else:
                assert a[key] == b[key], (a["id"], key)
    assert json.loads((out / "zoo.json").read_text()) == debug_zoo.manifest
    shards = sorted(p.name for p in (debug_zoo.root / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    for name in shards:
        a, b = load_file(debug_zoo.root / "shards" / name), load_file(out / "shards" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)
    assert not list(out.rglob("*.tmp"))
