"""Self-describing checkpoints: save/load round trips, metadata, and refusal of everything else."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import weightgen
from weightgen.checkpoint import CONFIG_NAME, FORMAT, WEIGHTS_NAME, load_state_dict, read_metadata
from weightgen.errors import ArchError, CheckpointError, WeightgenError
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task

ARCH = ArchSpec("mlp", (64, 8, 3), "gelu")
TASK = get_task("digits-subset-3-5-8")


def trained_like_module(arch: ArchSpec = ARCH, seed: int = 0) -> torch.nn.Module:
    module = arch.build()
    g = torch.Generator().manual_seed(seed)
    module.load_state_dict({n: torch.randn(t.shape, generator=g) for n, t in module.state_dict().items()})
    return module


def read_raw_metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def assert_same_function(a: torch.nn.Module, b: torch.nn.Module, arch: ArchSpec = ARCH):
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb)
    x = torch.randn(5, arch.in_dim)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", ["net.safetensors", "hub-folder"])
def test_round_trip(tmp_path, name):
    module = trained_like_module()
    path = weightgen.save_model(module, tmp_path / name, task=TASK, seed=7)  # arch read from module.arch
    loaded = weightgen.load_model(tmp_path / name)
    assert_same_function(module, loaded)
    assert loaded.arch == ARCH and loaded.task == TASK and not loaded.training
    if name == "hub-folder":
        assert path == tmp_path / name / WEIGHTS_NAME
        config = json.loads((tmp_path / name / CONFIG_NAME).read_text())
        assert config["arch"] == ARCH.to_dict() and config["task"]["id"] == TASK.id
        # the weights file inside the folder also describes itself on its own
        assert_same_function(module, weightgen.load_model(path))


@pytest.mark.parametrize(
    "arch", [ArchSpec("cnn", (4, 8, 10), "relu"), ArchSpec("inr", (2, 16, 1), "tanh")], ids=lambda a: a.slug
)
def test_round_trip_other_families(tmp_path, arch):
    module = trained_like_module(arch)
    weightgen.save_model(module.state_dict(), tmp_path / "m.safetensors", arch=arch.describe())
    loaded = weightgen.load_model(tmp_path / "m.safetensors")
    assert loaded.arch == arch and loaded.task is None
    assert_same_function(module, loaded, arch)


def test_metadata_round_trip(tmp_path):
    extra = {
        "generator": "zoo",
        "seed": 3,
        "metrics": {"test_acc": 0.75, "test_loss": 0.5},
        "tags": ["a", "b"],
    }
    path = weightgen.save_model(
        trained_like_module(),
        tmp_path / "m.safetensors",
        arch=ARCH,
        task=TASK.id,
        prompt="digits 3, 5 and 8, please",
        **extra,
    )
    meta = read_metadata(path)
    assert meta["weightgen_format"] == FORMAT
    assert meta["arch"] == ARCH.to_dict()
    assert meta["task"] == {"id": TASK.id, "description": TASK.description}
    assert meta["prompt"] == "digits 3, 5 and 8, please"
    for key, value in extra.items():
        assert meta[key] == value
    sd, meta2 = load_state_dict(path)
    assert meta2 == meta and sorted(sd) == sorted(ARCH.layout().names)


def test_default_prompt_names_task_and_arch(tmp_path):
    path = weightgen.save_model(trained_like_module(), tmp_path / "m.safetensors", arch=ARCH, task=TASK)
    assert read_metadata(path)["prompt"] == f"{TASK.description} with an {ARCH.describe()}"


def test_string_metadata_that_looks_like_json_round_trips(tmp_path):
    path = weightgen.save_model(
        trained_like_module(), tmp_path / "m.safetensors", arch=ARCH, run="42", flag="true"
    )
    meta = read_metadata(path)
    assert (meta["run"], meta["flag"]) == ("42", "true")


def test_header_length_whose_low_byte_is_the_pickle_magic(tmp_path):
    """A safetensors file starts with its header length (u64 LE); a length of 128 mod 256 starts with 0x80,
    the pickle magic. safetensors pads headers to 8 bytes, so 32 prompt lengths cover every low byte."""
    module, starts = trained_like_module(), set()
    for n in range(0, 256, 8):
        path = weightgen.save_model(module, tmp_path / f"m{n}.safetensors", arch=ARCH, prompt="x" * n)
        starts.add(path.read_bytes()[0])
        assert_same_function(module, weightgen.load_model(path))
    assert 0x80 in starts


def test_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this would create `marker`
            return (open, (str(marker), "w"))

    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.safetensors"
        path.write_bytes(pickle.dumps({"weights": Payload()}, protocol=protocol))
        for load in (weightgen.load_model, load_state_dict, read_metadata):
            with pytest.raises(CheckpointError):
                load(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torch_save_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save(trained_like_module().state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        weightgen.load_model(path)
    path = tmp_path / f"plain{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        weightgen.load_model(path)


def test_truncated_and_garbage_files(tmp_path):
    good = weightgen.save_model(trained_like_module(), tmp_path / "good.safetensors", arch=ARCH, task=TASK)
    data = good.read_bytes()
    for n in (0, 3, 8, 20, len(data) // 2, len(data) - 1):
        path = tmp_path / f"trunc{n}.safetensors"
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            weightgen.load_model(path)
    for i, junk in enumerate(
        [b"hello world" * 20, bytes(range(256)) * 4, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"]
    ):
        path = tmp_path / f"junk{i}.safetensors"
        path.write_bytes(junk)
        with pytest.raises(CheckpointError):
            weightgen.load_model(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        weightgen.load_model(tmp_path / "missing.safetensors")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        weightgen.load_model(tmp_path / "empty-folder")


def test_foreign_safetensors(tmp_path):
    sd = trained_like_module().state_dict()
    save_file(sd, tmp_path / "plain.safetensors")
    save_file(sd, tmp_path / "other.safetensors", metadata={"format": "pt"})
    for name in ("plain.safetensors", "other.safetensors"):
        with pytest.raises(CheckpointError, match="not a weightgen checkpoint"):
            weightgen.load_model(tmp_path / name)


def test_non_finite_weights_refused(tmp_path):
    module = trained_like_module()
    with torch.no_grad():
        module.layers[1].bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="layers.1.bias"):
        weightgen.save_model(module, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    # a file written by something else with valid metadata but an inf
    good = weightgen.save_model(trained_like_module(), tmp_path / "good.safetensors")
    sd = {k: v.clone() for k, v in trained_like_module().state_dict().items()}
    sd["layers.0.weight"][0, 0] = float("inf")
    save_file(sd, tmp_path / "inf.safetensors", metadata=read_raw_metadata(good))
    with pytest.raises(CheckpointError, match="non-finite"):
        weightgen.load_model(tmp_path / "inf.safetensors")


def test_wrong_shapes_refused(tmp_path):
    with pytest.raises(ArchError):
        weightgen.save_model(trained_like_module(), tmp_path / "m.safetensors", arch="MLP 64-16-3, GELU")
    with pytest.raises(ArchError, match="layers.1.weight"):
        weightgen.save_model(
            {"layers.0.weight": torch.zeros(8, 64), "layers.0.bias": torch.zeros(8)},
            tmp_path / "m.safetensors",
            arch=ARCH,
        )
    good = weightgen.save_model(trained_like_module(), tmp_path / "good.safetensors")
    sd = trained_like_module(ArchSpec("mlp", (64, 9, 3), "gelu")).state_dict()
    save_file(sd, tmp_path / "wrong.safetensors", metadata=read_raw_metadata(good))
    with pytest.raises(CheckpointError, match="does not hold"):
        weightgen.load_model(tmp_path / "wrong.safetensors")


def test_save_needs_an_arch(tmp_path):
    with pytest.raises(ArchError):
        weightgen.save_model(trained_like_module().state_dict(), tmp_path / "m.safetensors")


GOOD_ARCH = json.dumps(ARCH.to_dict())


@pytest.mark.parametrize(
    "metadata",
    [
        {"weightgen_format": FORMAT, "arch": json.dumps({"family": "transformer", "sizes": [64, 8, 3]})},
        {"weightgen_format": FORMAT, "arch": "MLP 64-8-3, GELU"},
        {"weightgen_format": FORMAT, "arch": json.dumps({"sizes": [64, 8, 3]})},
        {"weightgen_format": FORMAT, "arch": GOOD_ARCH, "task": json.dumps({"id": "cats-vs-dogs"})},
        {"weightgen_format": FORMAT},
        {"weightgen_format": FORMAT, "arch": json.dumps({"family": "mlp", "sizes": ["a", 3]})},
        {"weightgen_format": FORMAT, "arch": GOOD_ARCH, "task": "digits-subset-3-5-8"},
    ],
    ids=[
        "unknown-family",
        "arch-as-text",
        "arch-without-family",
        "unknown-task",
        "no-arch",
        "non-int-sizes",
        "task-as-text",
    ],
)
def test_malformed_metadata_is_a_weightgen_error(tmp_path, metadata):
    path = tmp_path / "m.safetensors"
    save_file(trained_like_module().state_dict(), path, metadata=metadata)
    with pytest.raises(WeightgenError):
        weightgen.load_model(path)
