"""The zoo on disk: layout, records vs plan, reading models back exactly, and resuming interrupted builds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import weightgen
from weightgen.cli_zoo import zoo_export
from weightgen.config import ZooConfig, load_config, to_dict
from weightgen.errors import ConfigError, ZooError
from weightgen.evaluate import evaluate_module
from weightgen.tasks import SPLITS, get_task
from weightgen.zoo.build import build_zoo
from weightgen.zoo.store import ZooStore

N_MODELS = 28  # debug.yaml: 7 tasks x 2 arch templates x 2 seeds


def read_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]


def assert_same_records(a: list[dict], b: list[dict], tol: float):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float):
                assert abs(value - rb[key]) <= tol, (ra["id"], key)
            else:
                assert value == rb[key], (ra["id"], key)


def assert_same_shards(a: Path, b: Path, atol: float):
    names = sorted(p.name for p in (a / "shards").iterdir())
    assert names == sorted(p.name for p in (b / "shards").iterdir())
    for name in names:
        ta, tb = load_file(a / "shards" / name), load_file(b / "shards" / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            torch.testing.assert_close(ta[key], tb[key], atol=atol, rtol=0)


def test_files_exist(debug_zoo, debug_config_path):
    root = debug_zoo.root
    assert (root / "zoo.json").is_file() and (root / "records.jsonl").is_file()
    manifest = json.loads((root / "zoo.json").read_text())
    assert manifest["format"] == "weightgen-zoo/1" and manifest["name"] == "debug"
    assert manifest["config"] == to_dict(load_config(ZooConfig, debug_config_path))  # the resolved config
    shards = sorted(p.name for p in (root / "shards").iterdir())
    assert shards == sorted(s["file"] for s in manifest["shards"]) and len(shards) == 4
    assert not list(root.rglob("*.tmp"))


def test_records_match_plan(debug_zoo):
    records, manifest = debug_zoo.records, debug_zoo.manifest
    assert [r["id"] for r in records] == list(range(N_MODELS))
    assert sum(len(s["models"]) for s in manifest["shards"]) == N_MODELS
    debug_zoo.check_complete()
    by_id = {r["id"]: r for r in records}
    for shard in manifest["shards"]:
        assert len(shard["models"]) <= 8  # models_per_shard
        for row, (mid, tid, seed) in enumerate(shard["models"]):
            r = by_id[mid]
            assert (r["task"], r["seed"], r["shard"], r["row"], r["arch"]) == (
                tid,
                seed,
                shard["file"],
                row,
                shard["arch"],
            )
            assert r["init"] == "shared"
        # every shard carries its own records, so records.jsonl can be rebuilt from the shards
        assert debug_zoo.shard_records(shard["file"]) == [by_id[m[0]] for m in shard["models"]]
    # every (task, arch template, seed) once
    template = {slug: a["template"] for slug, a in manifest["archs"].items()}
    combos = {(r["task"], template[r["arch"]], r["seed"]) for r in records}
    assert len(combos) == N_MODELS == len(manifest["tasks"]) * 2 * 2
    for r in records:
        assert set(SPLITS) <= {k.rsplit("_", 1)[0] for k in r if k.endswith("_acc")}
        assert 0.0 <= r["test_acc"] <= 1.0


def test_held_out_tasks(debug_zoo):
    manifest = debug_zoo.manifest
    assert manifest["held_out"] == ["digits-subset-3-5-8"]
    assert debug_zoo.held_out == {"digits-subset-3-5-8"}
    assert {t for t, d in manifest["tasks"].items() if d["held_out"]} == {"digits-subset-3-5-8"}
    for r in debug_zoo.records:
        assert r["held_out"] == (r["task"] == "digits-subset-3-5-8")
    assert sum(r["held_out"] for r in debug_zoo.records) == 4  # 2 archs x 2 seeds


def test_state_dict_reads_one_row(debug_zoo):
    for r in debug_zoo.records[::5]:
        shard = load_file(debug_zoo.root / "shards" / r["shard"])
        sd = debug_zoo.state_dict(r["id"])
        assert sorted(sd) == sorted(debug_zoo.archs[r["arch"]].layout().names)
        for name, t in sd.items():
            assert torch.equal(t, shard[name][r["row"]])
    with pytest.raises(ZooError, match="999"):
        debug_zoo.state_dict(999)


def test_load_arch(debug_zoo):
    slug = "mlp-64-16-3-relu"
    params, recs = debug_zoo.load_arch(slug)
    assert len(recs) == 6 and not any(r["held_out"] for r in recs)  # 3 seen 3-class tasks x 2 seeds
    assert params["layers.0.weight"].shape == (6, 16, 64)
    params_all, recs_all = debug_zoo.load_arch(slug, include_held_out=True)
    assert len(recs_all) == 8 and {r["arch"] for r in recs_all} == {slug}  # and the held-out task
    for i, r in enumerate(recs_all):
        sd = debug_zoo.state_dict(r["id"])
        assert all(torch.equal(params_all[n][i], sd[n]) for n in sd)
    assert debug_zoo.load_arch("mlp-1-1-relu") == ({}, [])


def test_every_model_reproduces_recorded_metrics(debug_zoo):
    """Rebuilt as an ordinary nn.Module, every zoo model has exactly its recorded accuracies."""
    for r in debug_zoo.records:
        module = debug_zoo.archs[r["arch"]].build()
        module.load_state_dict(debug_zoo.state_dict(r["id"]))
        for split in SPLITS:
            assert evaluate_module(module, get_task(r["task"]), split)["acc"] == r[f"{split}_acc"], (
                r["id"],
                split,
            )


def test_every_exported_model_loads_and_reproduces_test_acc(debug_zoo, tmp_path):
    for r in debug_zoo.records:
        for out in (tmp_path / f"{r['id']}.safetensors", tmp_path / f"hub-{r['id']}"):
            zoo_export(debug_zoo.root, out, model_id=r["id"], tasks=[], archs=[], split="all", quiet=True)  # in-process
            module = weightgen.load_model(out)
            assert module.task == get_task(r["task"]) and module.arch == debug_zoo.archs[r["arch"]]
            assert module.weightgen_meta["zoo_id"] == r["id"]
            assert evaluate_module(module, module.task, "test")["acc"] == r["test_acc"], r["id"]


def test_resume_after_lost_shard(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    before = read_records(root)
    lost = root / "shards" / "0001-mlp-64-16-2-relu.safetensors"
    kept = {p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir() if p != lost}
    lost.unlink()
    (root / "records.jsonl").unlink()
    with pytest.raises(ZooError, match="records.jsonl"):
        ZooStore(root).check_complete()
    build_zoo(load_config(ZooConfig, debug_config_path), root, progress=False)
    assert (
        read_records(root) == before
    )  # no duplicates, same metrics: the lost shard is retrained identically
    assert {
        p.name: p.stat().st_mtime_ns for p in (root / "shards").iterdir() if p != lost
    } == kept  # not retrained
    assert_same_shards(root, debug_zoo.root, atol=0)


def test_resume_removes_leftover_shard_tmp_files(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    leftover = root / "shards" / ".0002-cnn-4-3-relu.safetensors.99999.tmp"
    leftover.write_bytes(b"partial")
    build_zoo(load_config(ZooConfig, debug_config_path), root, progress=False)
    assert not leftover.exists()


def test_resume_removes_leftover_root_tmp_files(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    leftover = root / ".records.jsonl.99999.tmp"
    leftover.write_text('{"id": 0}\n')
    build_zoo(load_config(ZooConfig, debug_config_path), root, progress=False)
    assert not leftover.exists()


def test_resume_after_kill(debug_config_path, repo_root, tmp_path):
    """SIGKILL a real build just after its first shard lands, finish it, compare with an uninterrupted one."""
    overrides = ["epochs=30"]  # slow enough to be killed half-way
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "weightgen.cli",
            "zoo",
            "build",
            str(debug_config_path),
            "--out",
            str(out),
            "--quiet",
            *(a for o in overrides for a in ("--set", o)),
        ],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not list((out / "shards").glob("*.safetensors")):
            assert proc.poll() is None, f"the build ended before writing a shard: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no shard after 180 s"
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    n_done = len(list((out / "shards").glob("*.safetensors")))
    assert 1 <= n_done < 4, "the build was not interrupted half-way"

    cfg = load_config(ZooConfig, debug_config_path, overrides)
    build_zoo(cfg, out, progress=False)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == N_MODELS
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(set(ids)) == list(range(N_MODELS))
    # a leftover in the zoo root is the bug of test_resume_removes_leftover_root_tmp_files; here only shards/
    assert not list((out / "shards").glob("*.tmp"))
    ZooStore(out).check_complete()

    ref = tmp_path / "uninterrupted"
    build_zoo(cfg, ref, progress=False)
    assert_same_records(read_records(out), read_records(ref), tol=1e-6)
    assert_same_shards(out, ref, atol=1e-6)


def test_held_out_archs_never_reach_a_generator(debug_config_path, tmp_path):
    from weightgen.space.dataset import zoo_weights

    archs = ["{family: mlp, hidden: [16]}", "{family: mlp, hidden: [12], held_out: true}"]
    cfg = load_config(ZooConfig, debug_config_path, [f"archs=[{', '.join(archs)}]", "epochs=1"])
    store = build_zoo(cfg, tmp_path / "zoo", progress=False)
    held = {slug for slug, a in store.manifest["archs"].items() if a["held_out"]}
    assert held == store.held_out_archs and held and all("-12-" in slug for slug in held)
    for r in store.records:  # a held-out arch's models are held out whatever their task
        assert r["held_out"] == (r["arch"] in held or r["task"] in store.held_out)
    for w in zoo_weights(store):
        assert (len(w.train) == 0) == (w.arch.slug in held)
    # the evaluation treats a held-out arch as unseen, and compares with no model of it
    from weightgen.evaluate import evaluate_samples

    slug = sorted(held)[0]
    params, records = store.load_arch(slug, include_held_out=True)
    task = get_task(records[0]["task"])
    flat = store.archs[slug].layout().flatten(params)[:1]
    report = evaluate_samples(store.archs[slug], flat, task, store, baselines=False, from_scratch=False)
    assert report["unseen_arch"] is True and report["unseen"] is True
    assert report["generated"]["novelty"]["distance"] is None  # no seen model of this arch to memorise
    # one arch from two templates, one of them held out, is a contradiction
    bad = load_config(ZooConfig, debug_config_path, [f"archs=[{archs[0]}, {{family: mlp, hidden: [16], held_out: true}}]"])
    with pytest.raises(ConfigError, match="held out"):
        build_zoo(bad, tmp_path / "bad", progress=False)


def test_the_widths_zoos_hold_out_whole_archs(repo_root):
    from weightgen.zoo.build import make_manifest

    for name in ("digits-widths", "digits-widths-independent"):
        m = make_manifest(load_config(ZooConfig, repo_root / "configs" / "zoo" / f"{name}.yaml"))
        hidden = {tuple(a["sizes"][1:-1]) for a in m["archs"].values()}
        held = {tuple(m["archs"][s]["sizes"][1:-1]) for s in m["held_out_archs"]}
        assert held == {(20,), (48,), (48, 24)} and held < hidden
        assert min(h[0] for h in hidden) == 16 and max(h[0] for h in hidden) == 64
        assert {len(h) for h in hidden} == {1, 2} and m["held_out"]


def test_a_zoo_from_before_a_config_key_existed_resumes(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    manifest = json.loads((root / "zoo.json").read_text())
    for a in manifest["config"]["archs"]:
        del a["held_out"]  # as written by a weightgen without arch hold-out
    (root / "zoo.json").write_text(json.dumps(manifest))
    build_zoo(load_config(ZooConfig, debug_config_path), root, progress=False)  # no "another config" error


def test_build_into_zoo_of_another_config_fails(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    manifest = (root / "zoo.json").read_text()
    with pytest.raises(ZooError, match="another config"):
        build_zoo(load_config(ZooConfig, debug_config_path, ["epochs=2"]), root, progress=False)
    assert (root / "zoo.json").read_text() == manifest


def test_missing_and_foreign_zoo_folders(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        ZooStore(tmp_path / "nothing").manifest  # noqa: B018
    with pytest.raises(ZooError, match="zoo.json is missing"):
        ZooStore(tmp_path).records  # noqa: B018
    (tmp_path / "zoo.json").write_text('{"format": "something-else"}')
    with pytest.raises(ZooError, match="not a weightgen zoo"):
        ZooStore(tmp_path).manifest  # noqa: B018
