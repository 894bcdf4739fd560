"""A zoo built by two processes under `accelerate launch` equals the zoo built by one process."""

from __future__ import annotations

import json
import subprocess

import torch
from launching import TWO_PROCESSES, two_process_env
from safetensors.torch import load_file


def test_two_process_build_equals_single_process(debug_zoo, debug_config_path, repo_root, tmp_path):
    out = tmp_path / "zoo"
    env, rank_log = two_process_env(tmp_path)
    proc = subprocess.run(
        [*TWO_PROCESSES, "-m", "weightgen.cli", "zoo", "build", str(debug_config_path), "--out", str(out), "--quiet"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # accelerate's own view in each worker: two processes that knew of each other, not two loners
    assert sorted(rank_log.read_text().splitlines()) == ["0 2", "1 2"], "not two cooperating processes"

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
