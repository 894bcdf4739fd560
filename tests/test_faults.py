"""The fault campaign (issue 17, part 6): a small seeded fuzz run must find no crash, no code
execution and no silent corruption, and every crash a user's fuzzing found has its own regression
test that exercises it (each failed, or hung, before its fix)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faulting import (
    ARCH,
    ROOT,
    assert_one_line_error,
    bench_part,
    checkpoint,
    edit_header,
    load_bench,
    run_main,
    set_meta,
)
from safetensors.torch import save_file

import weightgen
from weightgen.checkpoint import FORMAT, load_state_dict, read_metadata
from weightgen.config import ZooConfig, load_config
from weightgen.errors import ArchError, CheckpointError, TaskError, WeightgenError, ZooError
from weightgen.specs import ArchSpec, ParamLayout
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore


# -- the campaign ---------------------------------------------------------------------------------
def test_small_fuzz_campaign_finds_no_crash(tmp_path):
    result = load_bench().campaign(files=300, seed=0, root=tmp_path, progress=False, abuse=False)
    assert result["files"] == 300
    assert result["crashes"] == 0, result["crash_examples"]
    assert result["code_executions"] == 0
    assert result["silent_corruptions"] == 0, result["silent_examples"]
    assert result["nonfinite_accepted"] == 0
    # the mutations reach both outcomes, and every reader ran
    assert result["refused"] > 500 and result["ok"] > 20
    assert {"load_model", "read_metadata", "cli inspect", "cli eval", "zoo records", "zoo state_dict", "zoo load_arch",
            "cli zoo info"} <= set(result["by_reader"])
    assert all(result["repeatable"].values()), result["repeatable"]


def test_the_pickle_payload_is_a_live_detector(tmp_path):
    """The campaign counts code execution by a marker file; unpickling the payload does create it."""
    marker = tmp_path / "EXECUTED"
    pickle.loads(pickle.dumps(bench_part("faults_files").Payload(marker)))  # noqa: S301 - the point: show the payload is live
    assert marker.exists()
    marker.unlink()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.safetensors"
        path.write_bytes(pickle.dumps({"w": bench_part("faults_files").Payload(marker)}, protocol=protocol))
        for read in (weightgen.load_model, read_metadata):
            with pytest.raises(CheckpointError):
                read(path)
    assert not marker.exists()


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["[" * 50_000 + "]" * 50_000, "[" * 40 + "]" * 40, "9" * 5_000],
                         ids=["recursion", "deep", "huge-int"])
def test_deep_or_huge_metadata_json(tmp_path, value):
    path = edit_header(checkpoint(tmp_path), set_meta("prompt", value))
    for read in (read_metadata, weightgen.load_model):
        with pytest.raises(CheckpointError, match="corrupt weightgen metadata"):
            read(path)


@pytest.mark.parametrize("task_id", [None, ["digits-subset-3-5-8"], 35, {"id": 1}])
def test_task_id_that_is_not_text(tmp_path, task_id):
    path = edit_header(checkpoint(tmp_path), set_meta("task", json.dumps({"id": task_id})))
    with pytest.raises(CheckpointError, match="task id must be text"):
        weightgen.load_model(path)
    with pytest.raises(TaskError):
        get_task(task_id)


@pytest.mark.parametrize("sizes", ["[64, 1000000000, 3]", "[64, Infinity, 3]", "[64, 1e999, 3]",
                                   "[64, " + "9" * 400 + ", 3]", "[64, 8.0, 3]", "[64, true, 3]"])
def test_huge_infinite_or_non_integer_arch_sizes(tmp_path, sizes):
    arch = '{"family": "mlp", "sizes": ' + sizes + ', "activation": "gelu"}'
    path = edit_header(checkpoint(tmp_path), set_meta("arch", arch))
    for read in (read_metadata, weightgen.load_model):
        with pytest.raises(CheckpointError, match="arch"):
            read(path)


def test_size_caps_refuse_before_allocating():
    start = time.perf_counter()
    for sizes in ((64, 10**9, 10), (64, 60_000, 60_000), (64, *[8] * 100, 3)):  # 4e9 or 3.6e9 params; 101 layers
        with pytest.raises(ArchError):
            ArchSpec("mlp", sizes)
    assert time.perf_counter() - start < 1.0  # building any of them would take gigabytes and seconds
    with pytest.raises(ArchError, match="capped"):
        ArchSpec.parse("MLP 64-" + "9" * 5_000 + "-3")  # int() refuses 5,000 digits
    assert ArchSpec("cnn", (4, 8, 10)).num_params == ArchSpec("cnn", (4, 8, 10)).layout().numel


def test_flatten_refuses_stray_leading_dims_and_non_float_dtypes():
    layout = ARCH.layout()
    good = {n: torch.zeros(s) for n, s in zip(layout.names, layout.shapes)}
    assert layout.flatten(good).shape == (layout.numel,)
    for bad in ({**good, "layers.0.weight": torch.zeros(1, 8, 64)},
                {**good, "layers.1.bias": torch.zeros(3, dtype=torch.float8_e4m3fn)},
                {**good, "layers.1.bias": torch.zeros(3, dtype=torch.int32)}):
        with pytest.raises(ArchError):
            layout.flatten(bad)
    batched = {n: t.expand(5, *t.shape) for n, t in good.items()}
    assert layout.flatten(batched).shape == (5, layout.numel)  # a common leading dim is still a batch
    assert isinstance(layout, ParamLayout)


@pytest.mark.parametrize("checksummed", [True, False])
@pytest.mark.parametrize("edit", ["leading-dim", "I32", "U32"])
def test_tensor_header_edits_are_refused(tmp_path, edit, checksummed):
    def change(header):
        t = header["layers.0.weight"]
        if edit == "leading-dim":  # the same bytes as (1, 8, 64): flatten saw a batch of one, load_state_dict crashed
            t["shape"] = [1, *t["shape"]]
        else:  # same width as F32: read as integers the weights would be ~1e9
            t["dtype"] = edit
        if not checksummed:
            header["__metadata__"].pop("sha256")
    path = edit_header(checkpoint(tmp_path), change)
    with pytest.raises(CheckpointError):
        weightgen.load_model(path)


def test_checksum_catches_a_flipped_bit_and_old_files_still_load(tmp_path):
    path = checkpoint(tmp_path)
    assert "sha256" in read_metadata(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # the last tensor's data: a tiny change in one weight, still finite
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        weightgen.load_model(tmp_path / "flipped.safetensors")
    old = edit_header(path, lambda h: h["__metadata__"].pop("sha256"), tmp_path / "old.safetensors")
    sd, meta = load_state_dict(old)  # written before checksums existed: read with every other check
    assert "sha256" not in meta and torch.equal(sd["layers.0.weight"], load_state_dict(path)[0]["layers.0.weight"])


def test_unreadable_paths_are_checkpoint_errors(tmp_path):
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    for path in (tmp_path / ("a" * 300 + ".safetensors"), tmp_path / "/".join(["b" * 200] * 25),
                 tmp_path / "nul\x00.safetensors", tmp_path / "loop.safetensors"):
        for read in (read_metadata, weightgen.load_model):
            with pytest.raises(CheckpointError):
                read(path)


def test_same_model_same_bytes_in_one_process_and_across_two(tmp_path):
    bench = bench_part("faults_cli")
    for name in ("a", "b"):
        bench.save_same(tmp_path / f"{name}.safetensors")
    for name in ("c", "d"):
        subprocess.run([sys.executable, load_bench().__file__, "--save-same", str(tmp_path / f"{name}.safetensors")],
                       check=True, cwd=ROOT, env=bench.child_env(tmp_path))
    data = {name: (tmp_path / f"{name}.safetensors").read_bytes() for name in "abcd"}
    assert data["a"] == data["b"] == data["c"] == data["d"]
    keys = list(bench_part("faults_files").split(data["a"])[0]["__metadata__"])
    assert keys == sorted(keys) and len(keys) > 12


# -- zoos -----------------------------------------------------------------------------------------
def damage(root: Path, what: str) -> None:
    records, manifest = root / "records.jsonl", root / "zoo.json"
    lines = records.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    shard = root / "shards" / recs[0]["shard"]
    if what == "non-utf8":
        records.write_bytes(records.read_bytes()[:100] + b"\xff" + records.read_bytes()[100:])
    elif what == "stray-brace":
        records.write_text("\n".join([lines[0], "{", *lines[1:]]) + "\n")
    elif what == "manifest-list":
        manifest.write_text("[]")
    elif what == "missing-key":
        m = json.loads(manifest.read_text())
        del m["shards"]
        manifest.write_text(json.dumps(m))
    elif what == "record-missing-key":
        del recs[2]["row"]
    elif what in ("row-negative", "row-out-of-range", "row-other"):
        recs[1]["row"] = {"row-negative": -1, "row-out-of-range": 99, "row-other": recs[0]["row"]}[what]
    elif what == "duplicate-line":  # the duplicate hides another model: the count stays right
        lines[3] = lines[2]
        records.write_text("\n".join(lines) + "\n")
    elif what == "swapped-rows":
        recs[0]["row"], recs[1]["row"] = recs[1]["row"], recs[0]["row"]
    elif what == "edited-acc":
        recs[0]["test_acc"] = 1.0 if recs[0]["test_acc"] != 1.0 else 0.0
    elif what == "shard-bit-flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0x10
        shard.write_bytes(bytes(data))
    elif what == "shard-relabel":
        edit_header(shard, lambda h: h[sorted(k for k in h if k != "__metadata__")[0]].update(dtype="I32"))
    elif what == "shard-path-escape":
        recs[0]["shard"] = "../zoo.json"
    if what in ("record-missing-key", "row-negative", "row-out-of-range", "row-other", "swapped-rows", "edited-acc",
                "shard-path-escape"):
        records.write_text("".join(json.dumps(r) + "\n" for r in recs))


ZOO_DAMAGE = ["non-utf8", "stray-brace", "manifest-list", "missing-key", "record-missing-key", "row-negative",
              "row-out-of-range", "row-other", "duplicate-line", "swapped-rows", "edited-acc", "shard-bit-flip",
              "shard-relabel", "shard-path-escape"]


@pytest.mark.parametrize("what", ZOO_DAMAGE)
def test_damaged_zoo_is_a_zoo_error_never_a_wrong_model(debug_zoo, tmp_path, capsys, what):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    damage(root, what)
    store = ZooStore(root)
    with pytest.raises(WeightgenError):  # ZooError, or the TaskError/ArchError of a bad table entry
        store.check_complete()
        for r in debug_zoo.records:
            sd = store.state_dict(r["id"])
            assert all(torch.equal(t, debug_zoo.state_dict(r["id"])[n]) for n, t in sd.items()), r["id"]
        for slug in store.archs:
            store.load_arch(slug, include_held_out=True)
    code, _, err = run_main(["zoo", "info", root], capsys)
    if what.startswith("shard-") and what != "shard-path-escape":
        assert code == 0 and "Traceback" not in err  # info reads records and shard headers, not the weights
    else:
        assert_one_line_error(code, err)


def test_zoo_shard_checksum_and_resume_retrains_a_damaged_shard(debug_zoo, debug_config_path, tmp_path):
    root = shutil.copytree(debug_zoo.root, tmp_path / "zoo")
    damage(root, "shard-bit-flip")
    name = json.loads((root / "records.jsonl").read_text().splitlines()[0])["shard"]
    assert ZooStore(root).shard_records(name) is None  # so a rebuild trains it again
    with pytest.raises(ZooError, match="checksum"):
        ZooStore(root).state_dict(0)
    from weightgen.zoo.build import build_zoo

    build_zoo(load_config(ZooConfig, debug_config_path), root, progress=False)
    assert (root / "shards" / name).read_bytes() == (debug_zoo.root / "shards" / name).read_bytes()


def test_foreign_safetensors_with_an_extra_tensor(tmp_path):
    """load_state_dict(strict) raised a RuntimeError on a tensor the arch does not have."""
    layout = ARCH.layout()
    sd = {n: torch.zeros(s) for n, s in zip(layout.names, layout.shapes)}
    path = tmp_path / "m.safetensors"
    save_file({**sd, "layers.9.weight": torch.zeros(2)}, path,
              metadata={"weightgen_format": FORMAT, "arch": json.dumps(ARCH.to_dict())})
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        weightgen.load_model(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2])
def test_foreign_safetensors_with_weights_that_are_not_float(tmp_path, dtype):
    """Files written by something else, with weightgen's metadata: integer weights were accepted (as
    ~1e9 after an F32 -> I32 relabel), float8 ones crashed torch.cat in ParamLayout.flatten."""
    layout = ARCH.layout()
    sd = {n: torch.zeros(s).to(dtype) for n, s in zip(layout.names, layout.shapes)}
    path = tmp_path / "m.safetensors"
    save_file(sd, path, metadata={"weightgen_format": FORMAT, "arch": json.dumps(ARCH.to_dict())})
    with pytest.raises(CheckpointError, match="floating point"):
        weightgen.load_model(path)
