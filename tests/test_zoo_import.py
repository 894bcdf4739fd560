"""`weightgen zoo export` and `weightgen zoo import`: round trips, foreign files, and bad files skipped."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightgen.errors import ZooError
from weightgen.zoo.importing import read_source, write_zoo
from weightgen.zoo.store import ZooStore


def _strip(records):
    return sorted(({k: v for k, v in r.items() if k not in ("shard", "row")} for r in records), key=lambda r: r["id"])


def test_export_then_import_gives_the_same_records_and_bitwise_weights(debug_zoo, run_cli, tmp_path):
    code, out, err = run_cli("zoo", "export", debug_zoo.root, "--out", tmp_path / "exported", "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "exported").glob("*.safetensors"))) == len(debug_zoo.records)
    code, out, err = run_cli("zoo", "import", tmp_path / "exported", "--out", tmp_path / "zoo")
    assert code == 0, err
    assert f"imported {len(debug_zoo.records)} models" in out and "skipped 0" in out
    back = ZooStore(tmp_path / "zoo")
    back.check_complete()
    assert _strip(back.records) == _strip(debug_zoo.records)
    assert back.held_out == debug_zoo.held_out
    for r in debug_zoo.records:
        mine, theirs = debug_zoo.state_dict(r["id"]), back.state_dict(r["id"])
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_filtered_export(debug_zoo, run_cli, tmp_path):
    code, _, err = run_cli("zoo", "export", debug_zoo.root, "--out", tmp_path / "held", "--split", "held-out", "--quiet")
    assert code == 0, err
    held = [r for r in debug_zoo.records if r["held_out"]]
    assert len(list((tmp_path / "held").iterdir())) == len(held) > 0
    code, _, err = run_cli("zoo", "export", debug_zoo.root, "--out", tmp_path / "held", "--quiet")
    assert code == 2 and "not empty" in err and "Traceback" not in err


class _Marker:
    """Unpickling this would create a file: the import must never run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_foreign_files_import_and_bad_files_are_skipped_with_a_reason(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, src / "plain.safetensors")
    torch.save({"state_dict": seq.state_dict(), "epoch": 3}, src / "trained.pt")
    named = {"fc1.weight": torch.randn(20, 64), "fc1.bias": torch.zeros(20),
             "fc2.weight": torch.randn(2, 20), "fc2.bias": torch.zeros(2)}
    torch.save(named, src / "fc.pth")
    marker = tmp_path / "executed"
    (src / "evil.pt").write_bytes(pickle.dumps({"x": _Marker(str(marker))}))
    (src / "short.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    save_file({"layers.0.weight": torch.ones(3, 64, dtype=torch.int32), "layers.0.bias": torch.ones(3)},
              src / "ints.safetensors")
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, src / "unlabelled.safetensors")
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, src / "wrong-task.safetensors")
    (tmp_path / "labels.csv").write_text(
        "file,task,seed,test_acc\n"
        "plain.safetensors,digits-subset-3-5-8,7,\n"
        "trained.pt,digits-subset-3-5-8,1,0.5\n"
        "fc.pth,digits-subset-4-9,0,\n"
        "evil.pt,digits-subset-3-5-8,0,\n"
        "ints.safetensors,digits-subset-3-5-8,0,\n"
        "wrong-task.safetensors,digits-subset-4-9,0,\n")
    got = read_source(src, tmp_path / "labels.csv")
    assert not marker.exists(), "a pickle in the source folder ran code"
    assert sorted(m["file"] for m in got.models) == ["fc.pth", "plain.safetensors", "trained.pt"]
    why = dict(got.skipped)
    assert set(why) == {"evil.pt", "short.safetensors", "ints.safetensors", "unlabelled.safetensors",
                        "wrong-task.safetensors"}
    assert all("Traceback" not in w and w.count("\n") == 0 for w in why.values())
    assert "no task" in why["unlabelled.safetensors"] and "does not fit task" in why["wrong-task.safetensors"]
    by_file = {m["file"]: m for m in got.models}
    assert by_file["fc.pth"]["arch"].sizes == (64, 20, 2) and by_file["plain.safetensors"]["seed"] == 7
    assert by_file["trained.pt"]["metrics"] == {"test_acc": 0.5}
    from weightgen.zoo.importing import evaluate_missing

    evaluate_missing(got.models)
    assert {"train_acc", "val_acc", "test_acc"} <= by_file["plain.safetensors"]["metrics"].keys()
    store = write_zoo(got, tmp_path / "zoo", "mine", str(src))
    assert len(store.records) == 3 and store.manifest["imported"]["skipped"] == 5
    rec = next(r for r in store.records if r["seed"] == 7)
    assert torch.equal(store.state_dict(rec["id"])["layers.1.weight"], seq[2].weight)
    assert json.loads((tmp_path / "zoo" / "zoo.json").read_text())["archs"]["mlp-64-12-3-relu"]["text"] == "MLP 64-12-3, ReLU"


def test_nothing_importable_is_one_clear_error(tmp_path, run_cli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "junk.pt").write_bytes(b"not a torch file")
    code, _, err = run_cli("zoo", "import", src, "--out", tmp_path / "zoo", "--quiet")
    assert code == 2 and "nothing under" in err and "Traceback" not in err
    assert not (tmp_path / "zoo").exists()
    with pytest.raises(ZooError, match="no zoo was written"):
        write_zoo(read_source(src), tmp_path / "zoo", "x", str(src))


def test_lora_zoo_round_trip_through_peft_folders(debug_lora_zoo, run_cli, tmp_path):
    env = {"WEIGHTGEN_HOME": str(tmp_path / "home")}
    code, _, err = run_cli("zoo", "export", debug_lora_zoo.root, "--out", tmp_path / "adapters", "--quiet", env=env)
    assert code == 0, err
    assert all((p / "adapter_config.json").is_file() for p in (tmp_path / "adapters").iterdir())
    code, _, err = run_cli("zoo", "import", tmp_path / "adapters", "--out", tmp_path / "plain", "--quiet", env=env)
    assert code == 2 and "nothing under" in err  # adapters need their base
    code, out, err = run_cli("zoo", "import", tmp_path / "adapters", "--base", debug_lora_zoo.root / "base",
                             "--out", tmp_path / "zoo", env=env)
    assert code == 0, err
    back = ZooStore(tmp_path / "zoo")
    back.check_complete()
    assert _strip(back.records) == _strip(debug_lora_zoo.records)
    assert back.manifest["lora"] == debug_lora_zoo.manifest["lora"]
    for r in debug_lora_zoo.records:
        mine, theirs = debug_lora_zoo.state_dict(r["id"]), back.state_dict(r["id"])
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
