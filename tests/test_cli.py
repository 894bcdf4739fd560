"""The `weightgen` command line: bad input is one sentence on stderr and status 2; the happy paths work."""

from __future__ import annotations

import json
import pickle
import re
import statistics

import pytest
from safetensors.torch import save_file

import weightgen
from weightgen.checkpoint import FORMAT
from weightgen.specs import ArchSpec


@pytest.fixture(scope="module")
def bad(tmp_path_factory, debug_zoo):
    """name -> (CLI arguments, words the error must contain); the files they name are created here."""
    d = tmp_path_factory.mktemp("bad")
    (d / "unknown-key.yaml").write_text("name: x\nepochz: 3\n")
    (d / "unknown-family.yaml").write_text(
        "tasks: {ids: [iris]}\narchs: [{family: transformer, hidden: [8]}]\n"
    )
    shard = next((debug_zoo.root / "shards").iterdir())
    arch = debug_zoo.archs[debug_zoo.records[0]["arch"]]
    good = weightgen.save_model(debug_zoo.state_dict(0), d / "good.safetensors", arch=arch)
    (d / "truncated.safetensors").write_bytes(good.read_bytes()[:100])
    (d / "foreign.safetensors").write_bytes(shard.read_bytes())  # a zoo shard: safetensors, not a checkpoint
    (d / "model.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    sd = ArchSpec("mlp", (4, 3, 2)).build().state_dict()
    save_file(
        sd,
        d / "bad-arch.safetensors",
        metadata={"weightgen_format": FORMAT, "arch": json.dumps({"family": "transformer", "sizes": [4, 2]})},
    )
    save_file(sd, d / "no-arch.safetensors", metadata={"weightgen_format": FORMAT})
    return {
        "config-unknown-key": (
            ["zoo", "build", d / "unknown-key.yaml", "--out", d / "z1"],
            ["'epochz'", "valid keys"],
        ),
        "config-unknown-family": (
            ["zoo", "build", d / "unknown-family.yaml", "--out", d / "z3"],
            ["'transformer'"],
        ),
        "arch-text": (
            ["parse", "tell 4s apart from 9s", "--arch", "Transformer 12-12"],
            ["Transformer 12-12"],
        ),
        "arch-does-not-fit": (["parse", "tell 4s apart from 9s", "--arch", "MLP 64-16-3"], ["does not fit"]),
        "prompt-no-task": (["parse", "classify cats vs dogs"], ["'cats'", "'dogs'"]),
        "inspect-truncated": (["inspect", d / "truncated.safetensors"], ["truncated"]),
        "inspect-foreign": (["inspect", d / "foreign.safetensors"], ["not a weightgen checkpoint"]),
        "inspect-pickle": (["inspect", d / "model.pkl"], ["pickle"]),
        "inspect-bad-arch": (["inspect", d / "bad-arch.safetensors"], ["'transformer'"]),
        "zoo-info-missing": (["zoo", "info", d / "no-zoo"], ["does not exist"]),
        "override-float-type": (
            ["zoo", "build", "configs/zoo/debug.yaml", "--out", d / "z4", "--set", "lr=abc"],
            ["lr"],
        ),
        "inspect-no-arch": (["inspect", d / "no-arch.safetensors"], ["arch"]),
    }


CASES = [
    "config-unknown-key",
    "config-unknown-family",
    "arch-text",
    "arch-does-not-fit",
    "prompt-no-task",
    "inspect-truncated",
    "inspect-foreign",
    "inspect-pickle",
    "inspect-bad-arch",
    "zoo-info-missing",
    "override-float-type",
    "inspect-no-arch",
]


@pytest.mark.parametrize(
    "case",
    CASES,
)
def test_bad_input_is_one_sentence_and_status_2(bad, run_cli, case):
    args, words = bad[case]
    code, out, err = run_cli(*args)
    assert "Traceback" not in err and "Traceback" not in out
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    message = lines[0].removeprefix("error: ")
    assert not re.search(r"[.!?]\s+[A-Z]", message), "more than one sentence"
    for w in words:
        assert w in message
    assert out == ""


def test_zoo_info(debug_zoo, run_cli):
    code, out, err = run_cli("zoo", "info", debug_zoo.root)
    assert code == 0, err
    assert "28 models" in out and "7 tasks (1 held out)" in out and "held out: digits-subset-3-5-8" in out
    records = debug_zoo.records
    for slug, arch in debug_zoo.manifest["archs"].items():
        line = next(x for x in out.splitlines() if arch["text"] in x)
        seen = [r["test_acc"] for r in records if r["arch"] == slug and not r["held_out"]]
        assert f"{statistics.mean(seen):.3f}" in line  # mean test accuracy of the arch's seen-task models
        held = [r["test_acc"] for r in records if r["arch"] == slug and r["held_out"]]
        if held:
            assert f"{statistics.mean(held):.3f}" in line


def test_zoo_export_and_inspect(debug_zoo, run_cli, tmp_path):
    rec = debug_zoo.records[5]
    out = tmp_path / "hub"  # a hub-style folder; single files are exported in test_store
    code, stdout, err = run_cli("zoo", "export", debug_zoo.root, "--id", rec["id"], "--out", out)
    assert code == 0, err
    assert rec["task"] in stdout
    module = weightgen.load_model(out)
    assert module.task.id == rec["task"] and module.weightgen_meta["zoo_id"] == rec["id"]
    assert module.weightgen_meta["metrics"]["test_acc"] == rec["test_acc"]
    code, stdout, err = run_cli("inspect", out)
    assert code == 0, err
    assert debug_zoo.archs[rec["arch"]].describe() in stdout and rec["task"] in stdout
    assert module.weightgen_meta["prompt"] in stdout


def test_parse(run_cli):
    code, out, err = run_cli("parse", "classify handwritten digits 3, 5 and 8 with an MLP 64-32-3")
    assert code == 0, err
    assert "digits-subset-3-5-8" in out and "MLP 64-32-3, ReLU (prompt)" in out
