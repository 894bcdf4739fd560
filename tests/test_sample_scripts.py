"""sample/sample.py (a batch of prompts, split across processes) and sample/evaluate.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest
from conftest import ROOT, one_thread
from launching import TWO_PROCESSES, two_process_env

from weightgen.config import load_config
from weightgen.errors import WeightgenError
from weightgen.sampling import SampleConfig, ScoreConfig

PROMPTS = ["classify digits 3, 5 and 8 with an MLP 64-16-3", "classify digits 3, 5 and 8 with an MLP 64-24-3",
           "tell 4s apart from 9s with an MLP 64-16-2"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_weightgen_sample_{name}", ROOT / "sample" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(generator, out):
    return load_config(SampleConfig, ROOT / "configs" / "sample" / "digits.yaml",
                       [f"prompts={json.dumps(PROMPTS)}", f"generator={generator}", f"out={out}", "num_samples=2",
                        "evaluate=false"])


def test_two_processes_split_the_prompts_and_write_what_one_process_writes(debug_set_generator, tmp_path):
    with one_thread():
        _script("sample").main(_config(debug_set_generator, tmp_path / "one"))
    env, ranks = two_process_env(tmp_path)
    sets = [f"prompts={json.dumps(PROMPTS)}", f"generator={debug_set_generator}", f"out={tmp_path / 'two'}",
            "num_samples=2", "evaluate=false"]
    proc = subprocess.run([*TWO_PROCESSES, str(ROOT / "sample" / "sample.py"), str(ROOT / "configs" / "sample" / "digits.yaml"),
                           *[a for s in sets for a in ("--set", s)]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(ranks.read_text().splitlines()) == ["0 2", "1 2"]
    one, two = (json.loads((tmp_path / d / "index.json").read_text())["prompts"] for d in ("one", "two"))
    assert [r["prompt"] for r in two] == PROMPTS and [r["num_finite"] for r in two] == [2, 2, 2]
    for a, b in zip(one, two):
        files = sorted(p.name for p in (tmp_path / "one" / a["folder"].split("/")[-1]).glob("*.safetensors"))
        assert files == ["sample-000.safetensors", "sample-001.safetensors"]
        for f in files:  # the same seed gives the same bytes, whichever process drew the prompt
            assert (tmp_path / "one" / a["folder"].split("/")[-1] / f).read_bytes() == \
                (tmp_path / "two" / b["folder"].split("/")[-1] / f).read_bytes()
    assert not list((tmp_path / "two").glob(".index-*"))

    report = tmp_path / "report.json"
    with one_thread():
        _script("evaluate").main(load_config(ScoreConfig, ROOT / "configs" / "sample" / "evaluate.yaml",
                                             [f"paths=[{tmp_path / 'two'}]", f"out={report}"]))
    scored = json.loads(report.read_text())["checkpoints"]
    assert len(scored) == 3 * 3  # two samples and best/ per prompt
    assert {c["task"] for c in scored} == {"digits-subset-3-5-8", "digits-subset-4-9"}
    assert all(0 <= c["acc"] <= 1 for c in scored)


def test_bad_batches_fail_before_the_generator_loads(tmp_path):
    missing = tmp_path / "no-generator"  # would fail only when loaded: the checks must come first
    with pytest.raises(WeightgenError, match="prompts is empty"):
        _script("sample").main(load_config(SampleConfig, None, [f"generator={missing}", f"out={tmp_path}"]))
    huge, escape = json.dumps(["ok", "a" * 100_000]), json.dumps(["digits \x1b[2J"])
    for bad, match in ((["num_samples=0"], "-n must be"), ([f"prompts={huge}"], "prompt"), ([f"prompts={escape}"], "prompt")):
        with pytest.raises(WeightgenError, match=match):
            _script("sample").main(load_config(SampleConfig, None, [f"generator={missing}", f"out={tmp_path}",
                                                                    'prompts=["classify digits 1 and 2"]', *bad]))
