"""Fine-tuning a trained generator onto another zoo (`init_from`), under accelerate and in-process."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from conftest import ROOT, load_train_script, one_thread
from launching import TWO_PROCESSES, two_process_env
from safetensors.torch import load_file, save_file

from weightgen.config import ZooConfig, load_config
from weightgen.errors import ConfigError, GeneratorError
from weightgen.generators.init_from import init_from_parent
from weightgen.generators.set_dit import SetDiT
from weightgen.zoo.build import build_zoo

CONFIG = ROOT / "configs" / "generator" / "debug-set-diffusion.yaml"
WEIGHTS = "denoiser/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def new_task_zoo(tmp_path_factory):
    """The debug zoo's recipe on tasks it never has (k = 4, and digits 0, 1, 2 held out)."""
    cfg = load_config(ZooConfig, ROOT / "configs" / "zoo" / "debug.yaml",
                      ["tasks.subset_k=[4]", "tasks.ids=[digits-subset-0-1-2]", "held_out=[digits-subset-0-1-2]"])
    with one_thread():
        return build_zoo(cfg, tmp_path_factory.mktemp("zoo") / "new-tasks", progress=False)


def _set_diffusion(zoo, out, *sets):
    script = load_train_script("set_diffusion")
    with one_thread():
        script.main(load_config(script.SetDiffusionConfig, CONFIG, [f"zoo={zoo}", f"out={out}", *sets]))


def _params_and_buffers(folder):
    weights = load_file(folder / WEIGHTS)
    buffers = {"stats.mean", "stats.std", "text_mean", "text_std", "probe_x", "probe_y"}  # SetDiT's statistics
    assert buffers <= weights.keys()
    return {k: v for k, v in weights.items() if k not in buffers}, {k: weights[k] for k in buffers}


def test_finetune_onto_new_tasks_with_two_processes(debug_set_generator, debug_zoo, new_task_zoo, tmp_path):
    """lr = 0, so the fine-tuned weights must be exactly the parent's (nothing else could give them),
    while its statistics are refitted on the new zoo."""
    assert not {r["task"] for r in new_task_zoo.records} & {r["task"] for r in debug_zoo.records}
    out = tmp_path / "finetuned"
    env, ranks = two_process_env(tmp_path)
    sets = [f"zoo={new_task_zoo.root}", f"out={out}", f"init_from={debug_set_generator}", "lr=0", "steps=2"]
    proc = subprocess.run([*TWO_PROCESSES, str(ROOT / "train" / "train_set_diffusion.py"), str(CONFIG),
                           *[a for s in sets for a in ("--set", s)]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(ranks.read_text().splitlines()) == ["0 2", "1 2"], "not two cooperating processes"
    assert f"init_from {debug_set_generator}" in proc.stdout and "100.0% of the weights" in proc.stdout
    parent_params, parent_stats = _params_and_buffers(debug_set_generator)
    params, stats = _params_and_buffers(out)
    assert params.keys() == parent_params.keys()
    for k in params:
        torch.testing.assert_close(params[k], parent_params[k], rtol=0, atol=0)
    assert any(not torch.equal(stats[k], parent_stats[k]) for k in stats), "statistics were not refitted"
    config = json.loads((out / "train_config.json").read_text())
    assert config["init_from"] == str(debug_set_generator) and config["init_stats"] == "refit"
    assert config["parent"]["path"] == str(debug_set_generator.resolve())
    assert config["parent"]["zoo"] == json.loads((debug_set_generator / "train_config.json").read_text())["zoo"]


def test_keep_stats_takes_the_parents_and_resized_tables_start_fresh(debug_set_generator, new_task_zoo, tmp_path,
                                                                       capsys):
    _set_diffusion(new_task_zoo.root, tmp_path / "keep", f"init_from={debug_set_generator}", "init_stats=keep",
                   "steps=1")
    parent_params, parent_stats = _params_and_buffers(debug_set_generator)
    _, stats = _params_and_buffers(tmp_path / "keep")
    for k in stats:
        torch.testing.assert_close(stats[k], parent_stats[k], rtol=0, atol=0)
    assert "statistics kept from the parent" in capsys.readouterr().out
    # twelve classes: the class table grows, keeps its fresh init, and the rest is still copied
    _set_diffusion(new_task_zoo.root, tmp_path / "wider", f"init_from={debug_set_generator}", "n_classes=12",
                   "steps=1", "lr=0")
    said = capsys.readouterr().out
    assert "kept fresh: class_embed.weight" in said
    params, _ = _params_and_buffers(tmp_path / "wider")
    assert params["class_embed.weight"].shape[0] == 13 != parent_params["class_embed.weight"].shape[0]
    torch.testing.assert_close(params["proj_in.weight"], parent_params["proj_in.weight"], rtol=0, atol=0)


def test_bad_parents_and_mixed_runs_are_one_clear_error(debug_set_generator, debug_set_ar, debug_zoo, new_task_zoo,
                                                        tmp_path):
    with pytest.raises(GeneratorError, match="not a trained generator folder"):
        _set_diffusion(new_task_zoo.root, tmp_path / "a", f"init_from={tmp_path}", "steps=1")
    with pytest.raises(GeneratorError, match="not a SetDiT"):
        _set_diffusion(new_task_zoo.root, tmp_path / "b", f"init_from={debug_set_ar}", "steps=1")
    with pytest.raises(GeneratorError, match="blocks differ in size"):
        _set_diffusion(new_task_zoo.root, tmp_path / "c", f"init_from={debug_set_generator}", "attention_head_dim=12",
                       "steps=1")
    with pytest.raises(ConfigError, match="init_stats"):
        _set_diffusion(new_task_zoo.root, tmp_path / "d", f"init_from={debug_set_generator}", "init_stats=maybe",
                       "steps=1")
    # checkpoints of a run on one zoo are not resumed by a run on another (their statistics would return)
    _set_diffusion(debug_zoo.root, tmp_path / "e", "steps=1")
    with pytest.raises(GeneratorError, match="checkpoints of another run"):
        _set_diffusion(new_task_zoo.root, tmp_path / "e", "steps=2")


def test_a_parent_saved_with_a_shorter_task_code_keeps_its_columns(debug_set_generator, tmp_path):
    """The task code only appends sections, so a parent's code projection carries over column by
    column; the entries it never had start with no effect (zero weight), everything else is copied."""
    parent = tmp_path / "short-code"
    shutil.copytree(debug_set_generator, parent)
    weights = load_file(parent / WEIGHTS)
    full = weights["code_proj.weight"]
    weights["code_proj.weight"] = full[:, :100].contiguous()
    save_file(weights, str(parent / WEIGHTS))
    model = SetDiT.from_pretrained(debug_set_generator / "denoiser")
    said = []
    summary = init_from_parent(model, parent, said.append)
    assert summary["extended"] == ["code_proj.weight"] and not summary["fresh"]
    assert "task code grew, the parent's columns kept: code_proj.weight" in said[0]
    got = model.code_proj.weight.detach()
    torch.testing.assert_close(got[:, :100], full[:, :100], rtol=0, atol=0)
    assert not got[:, 100:].any()
    torch.testing.assert_close(model.proj_in.weight.detach(), weights["proj_in.weight"], rtol=0, atol=0)
