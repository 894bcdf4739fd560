"""`weightgen sample` and `weightgen eval` end to end on the debug generators, and their bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

from weightgen import generate
from weightgen.checkpoint import load_model, read_metadata
from weightgen.evaluate import evaluate_module
from weightgen.generators.diffusion import WeightDiffusionPipeline
from weightgen.tasks import get_task

HELD_OUT = "classify digits 3, 5 and 8"  # the debug zoo's held-out task


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_sample_files_load_model_and_eval_agree(debug_generators, run_cli, tmp_path):
    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", HELD_OUT, "--generator", debug_generators["diffusion"], "-n", "3",
                                "--seed", "4", "--out", out, "--json", timeout=300)
    assert code == 0, err
    result = _json(stdout)
    assert result["task"] == "digits-subset-3-5-8" and result["kind"] == "diffusion"
    assert result["num_finite"] == 3 and len(result["files"]) == 3
    report = result["report"]
    assert report["unseen"] is True and report["scratch"]["stats"]["n"] >= 1  # trained on the spot
    assert report["random_init"]["stats"]["n"] >= 1 and len(report["generated"]["acc"]) == 3
    # each file is a plain PyTorch module whose accuracy is the one reported
    task = get_task("digits-subset-3-5-8")
    for path, acc in zip(result["files"], report["generated"]["acc"]):
        assert read_metadata(path)["task"]["id"] == task.id
        assert evaluate_module(load_model(path), task)["acc"] == pytest.approx(acc, abs=1e-6)
    best = load_model(out / "best")
    assert evaluate_module(best, task)["acc"] == pytest.approx(report["generated"]["acc"][report["best_sample"]], abs=1e-6)
    # eval on the folder scores the same files to the same accuracies and writes report.json
    report_path = tmp_path / "report.json"
    code, stdout, err = run_cli("eval", out, "--out", report_path, timeout=300)
    assert code == 0, err
    scored = json.loads(report_path.read_text())
    by_path = {c["path"]: c["acc"] for c in scored["checkpoints"]}
    assert len(by_path) == 4  # 3 samples + best/
    for path, acc in zip(result["files"], report["generated"]["acc"]):
        assert by_path[path] == pytest.approx(acc, abs=1e-6)


def test_eval_with_baselines_scores_every_baseline_on_the_probe(debug_zoo, run_cli, tmp_path):
    from weightgen.checkpoint import save_model

    # two zoo models of a seen task, exported as checkpoints: a copy, so disagreement 0
    arch = debug_zoo.archs["mlp-64-16-3-relu"]
    task = get_task("digits-subset-0-7-8")
    ids = [r["id"] for r in debug_zoo.records if r["task"] == task.id and r["arch"] == arch.slug]
    for i in ids:
        model = arch.build()
        model.load_state_dict(debug_zoo.state_dict(i))
        save_model(model, tmp_path / "ckpt" / f"{i}.safetensors", arch=arch, task=task)
    report_path = tmp_path / "report.json"
    code, stdout, err = run_cli("eval", tmp_path / "ckpt", "--zoo", debug_zoo.root, "--baselines", "--out", report_path,
                                timeout=300)
    assert code == 0, err
    group = json.loads(report_path.read_text())["groups"][0]
    assert set(group["baselines"]) == {"noise", "average", "gaussian", "mean", "mean+gaussian"}
    assert group["scratch"]["stats"]["n"] >= 1  # scratch is scored on a seen task too
    assert group["generated"]["novelty"]["disagreement"]["max"] == 0.0
    assert group["generated"]["novelty"]["probe_iou"]["min"] == 1.0
    assert "mean+gaussian" in stdout and "scratch" in stdout and "as new" in stdout


def test_sample_same_seed_same_files(debug_generators, run_cli, tmp_path):
    args = ["sample", HELD_OUT, "--generator", debug_generators["diffusion"], "-n", "2", "--no-eval", "--json"]
    files = []
    for name in ("a", "b"):
        code, stdout, err = run_cli(*args, "--out", tmp_path / name)
        assert code == 0, err
        files.append([load_model(p).state_dict() for p in _json(stdout)["files"]])
    for a, b in zip(*files):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_ar_kind_and_table_output(debug_generators, run_cli, tmp_path):
    code, stdout, err = run_cli("sample", HELD_OUT + " with a CNN 4-3", "--generator",
                                debug_generators["autoregressive"], "--kind", "ar", "-n", "2", "--out", tmp_path,
                                timeout=300)
    assert code == 0, err
    assert "2 of 2 samples written" in stdout and "random init" in stdout and "trained from scratch" in stdout
    assert len(list(tmp_path.glob("sample-*.safetensors"))) == 2


def test_prompt_without_a_task_still_generates(debug_generators, run_cli, tmp_path):
    code, stdout, err = run_cli("sample", "something useful with an MLP 64-16-3", "--generator",
                                debug_generators["diffusion"], "-n", "2", "--out", tmp_path, "--json")
    assert code == 0, err
    result = _json(stdout)
    assert result["task"] is None and result["report"] is None and len(result["files"]) == 2
    assert any("cannot be evaluated" in n for n in result["notes"])


def test_interrupted_sample_leaves_only_whole_checkpoints(debug_generators, tmp_path, monkeypatch):
    pipe = WeightDiffusionPipeline.from_pretrained(debug_generators["diffusion"])
    real, calls = generate.save_model, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "save_model", failing)
    with pytest.raises(KeyboardInterrupt):
        generate.sample_to_folder(pipe, "diffusion", debug_generators["diffusion"], HELD_OUT, tmp_path,
                                  num_samples=3, evaluate=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample-000.safetensors"]
    load_model(tmp_path / "sample-000.safetensors")


def _bad_cases(gens, tmp_path) -> dict:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 50)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    diff = gens["diffusion"]
    return {
        "empty prompt": (["sample", "  ", "--generator", diff], ["prompt is empty"]),
        "arch it cannot produce": (["sample", HELD_OUT + " with an MLP 64-99-3", "--generator", diff],
                                   ["cannot produce", "MLP 64-16-3"]),
        "missing generator": (["sample", HELD_OUT, "--generator", tmp_path / "nowhere"], ["no generator at"]),
        "no default generator": (["sample", HELD_OUT], ["weightgen quickstart"]),
        "n zero": (["sample", HELD_OUT, "--generator", diff, "-n", "0"], ["-n must be at least 1"]),
        "unwritable out": (["sample", HELD_OUT, "--generator", diff, "--out", blocker / "sub"], ["cannot write"]),
        "corrupt checkpoint": (["eval", corrupt], ["corrupt"]),
    }


@pytest.mark.parametrize("case", ["empty prompt", "arch it cannot produce", "missing generator", "no default generator",
                                  "n zero", "unwritable out", "corrupt checkpoint"])
def test_bad_input_is_one_sentence_and_status_2(case, debug_generators, run_cli, tmp_path):
    args, words = _bad_cases(debug_generators, tmp_path)[case]
    code, out, err = run_cli(*args, env={"WEIGHTGEN_HOME": str(tmp_path / "home")})
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not re.search(r"[.!?]\s+[A-Z]", lines[0]), "more than one sentence"
    for w in words:
        assert w in lines[0], lines[0]


def test_report_writes_markdown_and_readable_pngs(debug_generators, debug_zoo, run_cli, tmp_path):
    code, _, err = run_cli("sample", "classify digits 1, 7 and 9", "--generator", debug_generators["diffusion"],
                           "-n", "4", "--out", tmp_path, timeout=300)
    assert code == 0, err
    code, _, err = run_cli("report", tmp_path)
    assert code == 0, err
    text = (tmp_path / "report.md").read_text()
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["digits-subset-1-7-9-0-accuracy.png", "digits-subset-1-7-9-0-novelty.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a real picture, not an empty canvas
        assert f"]({p.name})" in text
    assert "| generated | 4 |" in text and "| zoo |" in text and "| random_init |" in text
    # eval's report.json feeds report too; a folder without one is one clear error
    code, _, err = run_cli("report", tmp_path / "nothing-here")
    assert code == 2 and err.startswith("error: no report.json")


def test_quickstart_stages_skip_what_is_built_and_run_the_rest(debug_zoo, tmp_path, monkeypatch):
    from weightgen.home import default_generator
    from weightgen.quickstart import Stage, _zoo_complete, run_stages, stages

    monkeypatch.setenv("WEIGHTGEN_HOME", str(tmp_path / "cache"))  # where `sample` looks is where quickstart trains
    assert [stages()[1][k] for k in ("diffusion", "ar")] == [default_generator("diffusion"), default_generator("ar")]
    assert default_generator("ar").is_relative_to(tmp_path / "cache")

    assert _zoo_complete(debug_zoo.root) and not _zoo_complete(tmp_path)
    ran, log = [], []
    fake = [Stage("a", lambda: True, lambda: ran.append("a")), Stage("b", lambda: False, lambda: ran.append("b"))]
    seconds = run_stages(fake, log.append)
    assert ran == ["b"] and seconds["a"] == 0.0 and "skipped" in log[0]
    built, paths = stages(tmp_path)
    assert [p.parent.parent for p in (paths["diffusion"], paths["ar"])] == [tmp_path, tmp_path]
    assert not any(s.done() for s in built)  # an empty cache folder: every stage still to run


def test_quickstart_rebuilds_a_stage_built_with_another_config_and_what_depends_on_it(tmp_path):
    from weightgen.quickstart import Stage, run_stages

    folders = {name: tmp_path / name for name in "abcd"}
    for folder in folders.values():
        folder.mkdir()
        (folder / "old-model").write_text("x")
    ran, log = [], []

    def run(name):
        def go():
            assert not (folders[name] / "old-model").exists()  # removed before training again
            ran.append(name)
        return go

    fake = [Stage("a", lambda: True, run("a"), folder=folders["a"]),
            Stage("b", lambda: True, run("b"), stale=lambda: True, after=("a",), folder=folders["b"]),
            Stage("c", lambda: True, run("c"), after=("b",), folder=folders["c"]),
            Stage("d", lambda: True, run("d"), after=("a",), folder=folders["d"])]
    seconds = run_stages(fake, log.append)
    assert ran == ["b", "c"] and seconds["a"] == seconds["d"] == 0.0
    assert "built with an older config, rebuilding" in log[1] and "b was rebuilt, rebuilding" in log[2]
    assert (folders["a"] / "old-model").exists() and (folders["d"] / "old-model").exists()


def test_built_with_compares_the_saved_train_config_to_todays(tmp_path):
    from weightgen.config import load_config, to_dict
    from weightgen.encoders.training import TokenizerConfig
    from weightgen.quickstart import CONFIGS, built_with

    cfg = load_config(TokenizerConfig, CONFIGS / "encoder" / "vqvae-ar-digits.yaml", [f"out={tmp_path}"])
    saved = to_dict(cfg)
    assert not built_with(tmp_path, cfg)  # nothing saved
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert built_with(tmp_path, cfg)
    # a key the saved run predates counts as its default: unchanged behaviour is not stale ...
    (tmp_path / "train_config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "weight_decay"}))
    assert cfg.weight_decay == TokenizerConfig.weight_decay and built_with(tmp_path, cfg)
    # ... but a default that today's config changes is (task_mean: true since the residual-id AR)
    (tmp_path / "train_config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "task_mean"}))
    assert cfg.task_mean and not built_with(tmp_path, cfg)
    (tmp_path / "train_config.json").write_text(json.dumps({**saved, "steps": 7}))
    assert not built_with(tmp_path, cfg)
    (tmp_path / "train_config.json").write_text("{not json")
    assert not built_with(tmp_path, cfg)
