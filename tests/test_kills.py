"""The kill -9 campaign, small: a generator training run killed mid-way resumes to the same weights
(benchmarks/bench_kills.py runs the full campaign over zoo build, encoder and generator training)."""

from __future__ import annotations

import importlib.util
import random

from conftest import ROOT


def test_killed_generator_training_resumes_to_the_same_weights(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_kills", ROOT / "benchmarks" / "bench_kills.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # killed between 40% and 70% of the reference run's time: past start-up, before the end
    result = bench.campaign("generator", bench.jobs(tmp_path)["generator"], tmp_path, 1, random.Random(0), (0.4, 0.7))
    assert result["kills"] >= 1 and result["resumes"] >= 1
    assert result["identical"] == 1, result["mismatches"]
