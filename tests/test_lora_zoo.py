"""LoRA zoos: the ViT base, batched adapter training, zoo building and resume, PEFT adapters out."""

from __future__ import annotations

import json

import pytest
import torch

from weightgen.config import LoRASpec, ZooConfig, load_config
from weightgen.errors import CheckpointError
from weightgen.tasks import get_task
from weightgen.zoo.build import build_zoo
from weightgen.zoo.lora_adapter import load_adapter, read_adapter, save_adapter
from weightgen.zoo.lora_base import base_sha256, images
from weightgen.zoo.lora_build import zoo_base
from weightgen.zoo.lora_trainer import (
    adapter_logits,
    evaluate_adapters,
    factor_shapes,
    init_factors,
    multi_lora,
    train_lora_batched,
)
from weightgen.zoo.trainer import Recipe

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def spec_of(store) -> LoRASpec:
    lora = store.manifest["lora"]
    return LoRASpec(rank=lora["rank"], alpha=lora["alpha"], target_modules=tuple(lora["target_modules"]))


def test_zoo_layout_records_and_base(debug_lora_zoo):
    store = debug_lora_zoo
    store.check_complete()
    lora = store.manifest["lora"]
    assert lora["base_sha256"] == base_sha256(store.root / "base")
    assert {r["arch"] for r in store.records} == {"lora"} and len(store.records) == 10
    assert {r["task"] for r in store.records if r["held_out"]} == {"digits-rotate-30"}
    sd = store.state_dict(0)
    assert {n: tuple(t.shape) for n, t in sd.items()} == {n: tuple(s) for n, s in lora["factors"].items()}
    assert "vit.layers.0.attention.q_proj.lora_A" in sd and "classifier.lora_B" in sd
    # the records' accuracies are the adapters' own: re-evaluate two of them
    recs = store.records[:2]
    m = evaluate_adapters(zoo_base(store), spec_of(store), {n: torch.stack([store.state_dict(r["id"])[n] for r in recs])
                                                            for n in sd}, [get_task(r["task"]) for r in recs])
    assert m["acc"].tolist() == pytest.approx([r["test_acc"] for r in recs], abs=1e-6)


def test_batched_adapters_train_as_if_alone(debug_lora_zoo):
    """Two adapters trained together end where each ends trained alone with the same data order."""
    base, spec = zoo_base(debug_lora_zoo), spec_of(debug_lora_zoo)
    tasks = [get_task("digits-invert"), get_task("digits-rotate-15")]
    init = init_factors(factor_shapes(base, spec), [torch.Generator().manual_seed(i) for i in (1, 2)])
    recipe = Recipe(lr=0.01, epochs=1, batch_size=64)
    both, _ = train_lora_batched(base, spec, tasks, init, recipe, torch.Generator().manual_seed(0))
    # alone: replay the same per-model permutations (epoch_order draws one randperm per model in order)
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(len(t.split("train")[0]), generator=g) for t in tasks]
    for i, t in enumerate(tasks):
        gi = torch.Generator()
        gi.set_state(_state_before(perms, i, tasks))
        alone, _ = train_lora_batched(base, spec, [t], {n: v[i : i + 1] for n, v in init.items()}, recipe, gi)
        for n in alone:
            assert torch.allclose(alone[n][0], both[n][i], atol=1e-5), n
    assert not torch.allclose(both["classifier.lora_B"][0], both["classifier.lora_B"][1])


def _state_before(perms, i, tasks) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    for t in tasks[:i]:
        torch.randperm(len(t.split("train")[0]), generator=g)
    return g.get_state()


def test_training_moves_accuracy_off_the_base(debug_lora_zoo):
    store = debug_lora_zoo
    base, spec = zoo_base(store), spec_of(store)
    rec = next(r for r in store.records if r["task"] == "digits-invert")
    zero = {n: torch.zeros(1, *s) for n, s in factor_shapes(base, spec).items()}
    base_acc = evaluate_adapters(base, spec, zero, [get_task("digits-invert")])["acc"].item()
    assert base_acc < 0.1 and rec["test_acc"] > base_acc + 0.1  # the base reads inverted digits below chance


def test_peft_round_trip_gives_the_same_logits(debug_lora_zoo, tmp_path):
    from peft import PeftModel
    from transformers import ViTForImageClassification

    store = debug_lora_zoo
    sd = store.state_dict(4)
    folder = save_adapter(tmp_path / "adapter", sd, store.manifest["lora"], store.root / "base", task="digits-invert")
    assert {"adapter_config.json", "adapter_model.safetensors", "weightgen_adapter.json"} <= {p.name for p in folder.iterdir()}
    plain = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(store.root / "base"), str(folder)).eval()
    x = get_task("digits-invert").split("test")[0][:64]
    with torch.no_grad():
        theirs = plain(pixel_values=images(x)).logits
        ours = adapter_logits(multi_lora(zoo_base(store), spec_of(store)), {n: v[None] for n, v in sd.items()}, x[None])[0]
        checked = load_adapter(folder, store.root / "base")(pixel_values=images(x)).logits
    assert torch.allclose(theirs, ours, atol=1e-5) and torch.allclose(checked, ours, atol=1e-5)
    factors, meta = read_adapter(folder)
    assert meta["task"] == "digits-invert" and all(torch.equal(factors[n], sd[n]) for n in sd)


def test_adapter_refuses_another_base_and_non_finite_factors(debug_lora_zoo, tmp_path):
    store = debug_lora_zoo
    sd = store.state_dict(0)
    folder = save_adapter(tmp_path / "a", sd, store.manifest["lora"], store.root / "base")
    meta = json.loads((folder / "weightgen_adapter.json").read_text())
    (folder / "weightgen_adapter.json").write_text(json.dumps({**meta, "base_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="another base"):
        load_adapter(folder, store.root / "base")
    bad = {**sd, "classifier.lora_B": torch.full_like(sd["classifier.lora_B"], float("nan"))}
    with pytest.raises(CheckpointError, match="non-finite"):
        save_adapter(tmp_path / "b", bad, store.manifest["lora"], store.root / "base")
    assert not (tmp_path / "b").exists()
    with pytest.raises(CheckpointError):
        read_adapter(tmp_path)  # not an adapter folder


def test_resume_rebuilds_a_lost_shard_bitwise(debug_lora_zoo, tmp_path, repo_root, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    monkeypatch.setenv("WEIGHTGEN_HOME", str(tmp_path / "home"))
    copy = tmp_path / "zoo"
    shutil.copytree(debug_lora_zoo.root, copy)
    shard = sorted((copy / "shards").iterdir())[1]
    before = load_file(str(shard))
    shard.unlink()
    cfg = load_config(ZooConfig, repo_root / "configs" / "zoo" / "debug-lora.yaml")
    store = build_zoo(cfg, copy, progress=False)
    after = load_file(str(shard))
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert store.records == debug_lora_zoo.records
    assert not (tmp_path / "home" / "bases").exists()  # the zoo's own base was used, not a fresh one


def test_cli_info_and_export_of_a_lora_zoo(debug_lora_zoo, run_cli, tmp_path):
    code, out, err = run_cli("zoo", "info", debug_lora_zoo.root)
    assert code == 0, err
    assert "LoRA r2" in out and "digits-rotate+noise" in out
    code, out, err = run_cli("zoo", "export", debug_lora_zoo.root, "--id", 3, "--out", tmp_path / "ad")
    assert code == 0, err
    assert (tmp_path / "ad" / "adapter_config.json").is_file() and "PEFT adapter" in out


def test_lora_zoo_config_errors(repo_root, tmp_path):
    from weightgen.errors import ConfigError

    cfg = load_config(ZooConfig, repo_root / "configs" / "zoo" / "debug-lora.yaml", ["tasks.ids=[iris]", "held_out=[]"])
    with pytest.raises(ConfigError, match="digits"):
        build_zoo(cfg, tmp_path / "z", progress=False)
    cfg = load_config(ZooConfig, repo_root / "configs" / "zoo" / "debug-lora.yaml", ["lora.target_modules=[nothing]"])
    with pytest.raises(ConfigError, match="target_modules"):
        build_zoo(cfg, tmp_path / "z2", progress=False)
