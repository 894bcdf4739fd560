"""The encoder train scripts, run as users run them: a couple of steps on the debug zoo, resume
(bit-exact after an interruption), the functional loss, two processes under `accelerate launch`,
and bad input reported as one line with exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from launching import TWO_PROCESSES, script_env, two_process_env
from safetensors.torch import load_file

from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.encoders.training import latest_checkpoint
from weightgen.encoders.vqvae import WeightVQVAE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "encoder" / "debug.yaml"
SCRIPTS = {"tokenizer": WeightVQVAE, "autoencoder": WeightAutoencoder}
WEIGHTS = "diffusion_pytorch_model.safetensors"  # save_pretrained's file name



def _run(
    name: str,
    zoo,
    out: Path,
    *sets: str,
    config: Path = CONFIG,
    launch: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python train/train_NAME.py CONFIG --set zoo=ZOO --set out=OUT --set ...` from the repo root."""
    args = [f"train/train_{name}.py", str(config), "--set", f"zoo={zoo}", "--set", f"out={out}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(
        [*(launch or [sys.executable]), *args],
        cwd=ROOT,
        env=env or script_env(out.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / WEIGHTS)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_loads_and_encodes(cls, out: Path, zoo) -> None:
    model = cls.from_pretrained(out).eval()
    rec = zoo.records[0]
    arch = zoo.archs[rec["arch"]]
    flat = arch.layout().flatten(zoo.state_dict(rec["id"]))[None].float()
    code = model.encode(flat, arch)
    assert code.shape[:2] == (1, model.stats.layout(arch).num_tokens)
    assert model.decode(code, arch).shape == flat.shape


@pytest.fixture(scope="module")
def runs(debug_zoo, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every single-process script run of this module, job name -> (process, OUT), run once and
    two at a time (each process uses one thread). `resume` continues a copy of `tokenizer`'s
    2-step run to 4 steps; `interrupted` restarts from `autoencoder`'s step_1 checkpoint, with its
    step_2 checkpoint copied without the `done` marker (as if cut short while saving it)."""
    tmp = tmp_path_factory.mktemp("runs")
    zoo = debug_zoo.root
    bad_config = tmp / "bad.yaml"
    bad_config.write_text(CONFIG.read_text() + "bogus_key: 3\n")
    two = ["steps=2", "save_every=1"]

    def resume():
        if (first := jobs["tokenizer"].result()).returncode:
            return first  # so the resume test reports why
        shutil.copytree(tmp / "tokenizer", tmp / "resume")
        return _run("tokenizer", zoo, tmp / "resume", "steps=4", "save_every=1")

    def interrupted():
        if (full := jobs["autoencoder"].result()).returncode:
            return full
        for step in (1, 2):
            shutil.copytree(
                tmp / "autoencoder" / "checkpoints" / f"step_{step}",
                tmp / "interrupted" / "checkpoints" / f"step_{step}",
            )
        (tmp / "interrupted" / "checkpoints" / "step_2" / "done").unlink()
        return _run("autoencoder", zoo, tmp / "interrupted", *two)

    with ThreadPoolExecutor(2) as pool:  # dependants are submitted after what they wait for
        jobs = {
            "tokenizer": pool.submit(_run, "tokenizer", zoo, tmp / "tokenizer", *two),
            "autoencoder": pool.submit(_run, "autoencoder", zoo, tmp / "autoencoder", *two),
            "functional": pool.submit(
                _run,
                "tokenizer",
                zoo,
                tmp / "functional",
                "steps=2",
                "functional_weight=0.1",
                "functional_models=2",
            ),
            "unknown_key": pool.submit(_run, "tokenizer", zoo, tmp / "unknown_key", config=bad_config),
            "task_mean_functional": pool.submit(_run, "tokenizer", zoo, tmp / "task_mean_functional",
                                                "task_mean=true", "functional_weight=0.1"),
            "missing_zoo": pool.submit(_run, "autoencoder", tmp / "no-zoo", tmp / "missing_zoo"),
        }
        jobs["resume"] = pool.submit(resume)
        jobs["interrupted"] = pool.submit(interrupted)
    return {name: (job.result(), tmp / name) for name, job in jobs.items()}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_two_step_run_saves_model_config_and_checkpoints(name, runs, debug_zoo):
    proc, out = runs[name]
    _ok(proc)
    assert f"saved {out}" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == SCRIPTS[name].__name__
    assert (config["hidden"], config["embed_dim"]) == (32, 16)  # from configs/encoder/debug.yaml
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["steps"] == 2 and train_config["save_every"] == 1
    assert train_config["zoo"] == str(debug_zoo.root) and train_config["out"] == str(out)
    for step in (1, 2):
        ckpt = out / "checkpoints" / f"step_{step}"
        assert json.loads((ckpt / "done").read_text()) == {"step": step}
        assert (ckpt / "model.safetensors").is_file()
    assert latest_checkpoint(out) == (out / "checkpoints" / "step_2", 2)
    _assert_same_weights(_weights(out), load_file(out / "checkpoints" / "step_2" / "model.safetensors"))
    _assert_loads_and_encodes(SCRIPTS[name], out, debug_zoo)


def test_rerun_with_more_steps_resumes(runs):
    proc, out = runs["resume"]
    _ok(proc)
    assert f"resumed from {out / 'checkpoints' / 'step_2'} (step 2)" in proc.stdout
    for step in (3, 4):
        assert (out / "checkpoints" / f"step_{step}" / "done").is_file()
    assert json.loads((out / "train_config.json").read_text())["steps"] == 4
    _assert_same_weights(_weights(out), load_file(out / "checkpoints" / "step_4" / "model.safetensors"))
    first = _weights(runs["tokenizer"][1])
    assert not torch.equal(_weights(out)["decoder.0.weight"], first["decoder.0.weight"])


def test_interrupted_run_resumes_from_last_complete_checkpoint_bit_exactly(runs):
    """A run cut short after step 1, while step 2 was being saved, ends where the uninterrupted
    run ended: resume restores model, optimiser, schedule, RNG (the autoencoder's training noise)
    and token draws."""
    proc, out = runs["interrupted"]
    _ok(proc)
    assert f"resumed from {out / 'checkpoints' / 'step_1'} (step 1)" in proc.stdout
    _assert_same_weights(_weights(out), _weights(runs["autoencoder"][1]))


def test_latest_checkpoint_skips_folders_without_done_marker(tmp_path):
    assert latest_checkpoint(tmp_path) == (None, 0)  # no checkpoints/ at all
    folder = tmp_path / "checkpoints"
    for name, done in [
        ("step_2", True),
        ("step_9", True),
        ("step_10", True),
        ("step_11", False),
        ("step_12.tmp", True),
        ("other", True),
    ]:
        (folder / name).mkdir(parents=True)
        if done:
            (folder / name / "done").write_text("{}")
    assert latest_checkpoint(tmp_path) == (folder / "step_10", 10)  # numeric order; 11 was cut short
    (folder / "step_11" / "done").write_text("{}")
    assert latest_checkpoint(tmp_path) == (folder / "step_11", 11)
    for name in ("step_2", "step_9", "step_10", "step_11"):
        (folder / name / "done").unlink()
    assert latest_checkpoint(tmp_path) == (None, 0)


def test_tokenizer_with_functional_loss_runs(runs, debug_zoo):
    proc, out = runs["functional"]
    _ok(proc)
    assert json.loads((out / "train_config.json").read_text())["functional_weight"] == 0.1
    _assert_loads_and_encodes(WeightVQVAE, out, debug_zoo)


@pytest.fixture(scope="module")
def two_processes(debug_zoo, tmp_path_factory):
    """train_tokenizer.py for 4 steps (checkpoints every 2) under `accelerate launch` with two CPU
    processes; returns (process, OUT, ranks logged by the workers)."""
    tmp = tmp_path_factory.mktemp("two_processes")
    env, log = two_process_env(tmp)
    out = tmp / "out"
    proc = _run("tokenizer", debug_zoo.root, out, "steps=4", "save_every=2", launch=TWO_PROCESSES, env=env)
    ranks = sorted(log.read_text().splitlines()) if log.is_file() else []
    return proc, out, ranks


def test_two_process_launch_trains_and_saves(two_processes, debug_zoo):
    proc, out, ranks = two_processes
    _ok(proc)
    assert ranks == ["0 2", "1 2"], "not two worker processes"
    assert proc.stdout.count("saved ") == 1  # only the main process reports (and saves)
    assert (out / "config.json").is_file() and (out / "train_config.json").is_file()
    for step in (2, 4):
        ckpt = out / "checkpoints" / f"step_{step}"
        assert (ckpt / "done").is_file()
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    _assert_same_weights(_weights(out), load_file(out / "checkpoints" / "step_4" / "model.safetensors"))
    _assert_loads_and_encodes(WeightVQVAE, out, debug_zoo)


def test_two_process_learning_rate_schedule_advances_once_per_step(two_processes):
    proc, out, _ = two_processes
    _ok(proc)
    # registered with accelerator.register_for_checkpointing, so saved as a custom checkpoint
    sched = torch.load(out / "checkpoints" / "step_2" / "custom_checkpoint_0.pkl", weights_only=False)
    assert sched["last_epoch"] == 2  # one scheduler step per optimiser step, not one per process


def test_unknown_config_key_is_one_line_error(runs):
    proc, out = runs["unknown_key"]
    _assert_one_line_error(proc, "unknown key 'bogus_key'")
    assert not out.exists()


def test_task_mean_with_functional_loss_is_one_line_error(runs):
    proc, out = runs["task_mean_functional"]
    _assert_one_line_error(proc, "task_mean and functional_weight > 0 cannot be combined")
    assert not out.exists()


def test_missing_zoo_is_one_line_error(runs):
    proc, out = runs["missing_zoo"]
    _assert_one_line_error(proc, f"no zoo at {out.parent / 'no-zoo'}: the folder does not exist")
    assert not out.exists()


def _assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
