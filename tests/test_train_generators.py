"""The generator train scripts, run as users run them: two steps on the debug zoo with the debug
encoders (trained in-process once, see conftest.py), resume, two processes under `accelerate launch`,
and bad input reported as one line with exit status 2. Plus the shared training helpers."""

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

from weightgen.cli import run_script
from weightgen.config import load_config
from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.encoders.training import latest_checkpoint
from weightgen.generators.autoregressive import WeightARPipeline
from weightgen.generators.diffusion import WeightDiffusionPipeline
from weightgen.generators.training import encoder_settings, load_encoded_zoo, sample_batch, task_kinds
from weightgen.tasks import get_task, task_code

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models on busy shared cores

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "generator"
# script name -> (debug config, the config key naming its encoder, which debug encoder, pipeline class)
SCRIPTS = {
    "diffusion": ("debug-diffusion.yaml", "encoder", "autoencoder", WeightDiffusionPipeline),
    "autoregressive": ("debug-ar.yaml", "tokenizer", "tokenizer", WeightARPipeline),
}
# the weights of the trained part of each pipeline, and the modules EMA tracked (in EMA's order)
TRAINED = {"diffusion": ("denoiser/diffusion_pytorch_model.safetensors", ("denoiser",)),
           "autoregressive": ("lm/model.safetensors", ("lm", "prefix"))}
HELD_OUT = "digits-subset-3-5-8"



def _run(name: str, encoder, out: Path, *sets: str, launch: list[str] | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python train/train_NAME.py CONFIG --set ENCODER_KEY=ENCODER --set out=OUT --set ...`."""
    config, key = SCRIPTS[name][:2]
    args = [f"train/train_{name}.py", str(CONFIGS / config), "--set", f"{key}={encoder}", "--set", f"out={out}"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run([*(launch or [sys.executable]), *args], cwd=ROOT, env=env or script_env(out.parent),
                          capture_output=True, text=True, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


def _assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def _assert_complete_folder(name: str, out: Path, steps: int) -> None:
    """What a finished run leaves: the pipeline (model_index.json last), the resolved config beside
    it, no half-written .partial folder, and a complete checkpoint of the last step."""
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == SCRIPTS[name][3].__name__
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["steps"] == steps and train_config["out"] == str(out)
    assert not (out / ".partial").exists()
    assert latest_checkpoint(out) == (out / "checkpoints" / f"step_{steps}", steps)


def _assert_loads_holds_ema_and_generates(name: str, out: Path, step: int, zoo) -> None:
    """The folder loads; it holds the EMA weights of the step_N checkpoint (the second object
    registered for checkpointing, after the LR schedule); it knows every arch of the zoo and its
    samples load into the arch's module. (Every arch decoding: test_generators.py.)"""
    pipe = SCRIPTS[name][3].from_pretrained(out)
    ema = torch.load(out / "checkpoints" / f"step_{step}" / "custom_checkpoint_1.pkl", weights_only=False)
    assert ema["optimization_step"] == step
    params = [p for module in TRAINED[name][1] for p in getattr(pipe, module).parameters()]
    assert len(params) == len(ema["shadow_params"])
    for saved, shadow in zip(params, ema["shadow_params"]):
        assert torch.equal(saved.detach(), shadow)
    assert sorted(a.slug for a in pipe.archs) == sorted(zoo.archs)
    kwargs = {"num_inference_steps": 2} if name == "diffusion" else {}
    result = pipe("tell 4s apart from 9s with a CNN 4-2", num_samples=2, generator=0, **kwargs)
    assert result.flat.shape == (2, 170) and result.arch.describe() == "CNN 4-2, ReLU"
    for state_dict in result.state_dicts:
        result.arch.build().load_state_dict(state_dict, strict=True)


@pytest.fixture(scope="module")
def runs(debug_encoders, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every single-process script run of this module, job -> (process, OUT), two at a time (one thread
    each). `NAME_resume` continues a copy of NAME's 2-step run to 3 steps."""
    tmp = tmp_path_factory.mktemp("generator_runs")
    two = ["steps=2", "save_every=1"]

    def resume(name: str):
        if (first := jobs[name].result()).returncode:
            return first  # so the resume test reports why
        shutil.copytree(tmp / name, tmp / f"{name}_resume")
        return _run(name, debug_encoders[SCRIPTS[name][2]], tmp / f"{name}_resume", "steps=3", "save_every=1")

    with ThreadPoolExecutor(2) as pool:  # dependants are submitted after what they wait for
        jobs = {name: pool.submit(_run, name, debug_encoders[SCRIPTS[name][2]], tmp / name, *two) for name in SCRIPTS}
        jobs["bad_prediction_type"] = pool.submit(_run, "diffusion", debug_encoders["autoencoder"],
                                                  tmp / "bad_prediction_type", "prediction_type=noise")
        for name in SCRIPTS:
            jobs[f"{name}_resume"] = pool.submit(resume, name)
    return {name: (job.result(), tmp / name) for name, job in jobs.items()}


@pytest.mark.parametrize("name", SCRIPTS)
def test_two_step_run_saves_pipeline_config_and_checkpoints(name, runs, debug_encoders, debug_zoo):
    proc, out = runs[name]
    _ok(proc)
    assert f"saved {out}" in proc.stdout and "resumed from" not in proc.stdout
    _assert_complete_folder(name, out, 2)
    train_config = json.loads((out / "train_config.json").read_text())
    key, encoder = SCRIPTS[name][1], debug_encoders[SCRIPTS[name][2]]
    assert train_config[key] == str(encoder) and train_config["save_every"] == 1
    for step in (1, 2):
        assert json.loads((out / "checkpoints" / f"step_{step}" / "done").read_text()) == {"step": step}
    _assert_loads_holds_ema_and_generates(name, out, 2, debug_zoo)


@pytest.mark.parametrize("name", SCRIPTS)
def test_rerun_with_more_steps_resumes(name, runs, debug_zoo):
    proc, out = runs[f"{name}_resume"]
    _ok(proc)
    assert f"resumed from {out / 'checkpoints' / 'step_2'} (step 2)" in proc.stdout
    assert (out / "checkpoints" / "step_3" / "done").is_file()
    _assert_complete_folder(name, out, 3)
    weights = TRAINED[name][0]
    before, after = load_file(runs[name][1] / weights), load_file(out / weights)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the third step trained
    _assert_loads_holds_ema_and_generates(name, out, 3, debug_zoo)


def test_bad_prediction_type_is_one_line_error(runs):
    proc, out = runs["bad_prediction_type"]
    _assert_one_line_error(proc, "prediction_type must be epsilon, sample or v_prediction, got 'noise'")
    assert not out.exists()


# -- two processes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_processes(debug_encoders, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, list]]:
    """Each script for 2 steps under `accelerate launch` with two CPU processes, one after the other;
    name -> (process, OUT, ranks logged by its workers)."""
    results = {}
    for name in SCRIPTS:
        tmp = tmp_path_factory.mktemp(f"two_processes_{name}")
        env, log = two_process_env(tmp)
        out = tmp / "out"
        proc = _run(name, debug_encoders[SCRIPTS[name][2]], out, "steps=2", "save_every=1", launch=TWO_PROCESSES,
                    env=env)
        results[name] = (proc, out, sorted(log.read_text().splitlines()) if log.is_file() else [])
    return results


@pytest.mark.parametrize("name", SCRIPTS)
def test_two_process_launch_trains_and_saves(name, two_processes, runs, debug_zoo):
    proc, out, ranks = two_processes[name]
    _ok(proc)
    assert ranks == ["0 2", "1 2"], "not two worker processes"
    assert proc.stdout.count("saved ") == 1  # only the main process reports (and saves)
    _assert_complete_folder(name, out, 2)
    for step in (1, 2):
        ckpt = out / "checkpoints" / f"step_{step}"
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
        sched = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
        assert sched["last_epoch"] == step  # one LR step per optimiser step, not one per process
    _assert_loads_holds_ema_and_generates(name, out, 2, debug_zoo)
    # rank 0 draws what the single-process run draws; had rank 1 drawn the same batches, the
    # averaged gradients, and so the weights, would equal the single-process run's
    _ok(runs[name][0])
    weights = TRAINED[name][0]
    one, two = load_file(runs[name][1] / weights), load_file(out / weights)
    assert any(not torch.equal(one[k], two[k]) for k in one)


# -- in-process: bit-exact resume, errors, helpers -----------------------------------------------


def _main(train_script, name: str, encoder, out: Path, *sets: str) -> None:
    script = train_script(name)
    config_cls = script.DiffusionConfig if name == "diffusion" else script.ARConfig
    config, key = SCRIPTS[name][:2]
    script.main(load_config(config_cls, CONFIGS / config, [f"{key}={encoder}", f"out={out}", *sets]))


@pytest.mark.parametrize("name", SCRIPTS)
def test_interrupted_run_resumes_bit_exactly(name, train_script, debug_encoders, tmp_path, capsys):
    """A 3-step run cut short after step 2 (only its step_2 checkpoint kept) ends where the
    uninterrupted run ended: model, optimiser, LR schedule, EMA and batch draws are all restored."""
    encoder = debug_encoders[SCRIPTS[name][2]]
    _main(train_script, name, encoder, tmp_path / "full", "steps=3", "save_every=1")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_2", tmp_path / "cut" / "checkpoints" / "step_2")
    capsys.readouterr()
    _main(train_script, name, encoder, tmp_path / "cut", "steps=3", "save_every=1")
    assert f"resumed from {tmp_path / 'cut' / 'checkpoints' / 'step_2'} (step 2)" in capsys.readouterr().out
    for folder in TRAINED[name][1]:  # every trained component
        for file in (tmp_path / "full" / folder).glob("*.safetensors"):
            full, cut = load_file(file), load_file(tmp_path / "cut" / folder / file.name)
            assert full.keys() == cut.keys()
            for k in full:
                assert torch.equal(full[k], cut[k]), k


def _script_exit(train_script, name: str, capsys, *sets: str) -> tuple[int | None, list[str]]:
    """run_script (what `python train/train_NAME.py` runs) in-process: (exit status or None, stderr lines)."""
    script = train_script(name)
    config_cls = script.DiffusionConfig if name == "diffusion" else script.ARConfig
    capsys.readouterr()
    try:
        run_script(script.main, config_cls, [str(CONFIGS / SCRIPTS[name][0]), *[a for s in sets for a in ("--set", s)]])
        code = None
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_encoder_folder_is_one_line_error(name, train_script, tmp_path, capsys):
    code, lines = _script_exit(train_script, name, capsys, f"{SCRIPTS[name][1]}={tmp_path / 'no-encoder'}",
                               f"out={tmp_path / 'out'}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and str(tmp_path / "no-encoder") in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_encoder_without_train_config_is_one_line_error(name, train_script, debug_encoders, tmp_path, capsys):
    encoder = tmp_path / "encoder"
    shutil.copytree(debug_encoders[SCRIPTS[name][2]], encoder, ignore=shutil.ignore_patterns("checkpoints"))
    (encoder / "train_config.json").unlink()
    code, lines = _script_exit(train_script, name, capsys, f"{SCRIPTS[name][1]}={encoder}", f"out={tmp_path / 'out'}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and f"{encoder} has no train_config.json" in lines[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_zoo_override_that_does_not_exist_is_one_line_error(name, train_script, debug_encoders, tmp_path, capsys):
    encoder = debug_encoders[SCRIPTS[name][2]]
    code, lines = _script_exit(train_script, name, capsys, f"{SCRIPTS[name][1]}={encoder}", f"out={tmp_path / 'out'}",
                               f"zoo={tmp_path / 'no-zoo'}")
    assert code == 2 and len(lines) == 1, lines
    assert f"no zoo at {tmp_path / 'no-zoo'}" in lines[0]


@pytest.mark.parametrize(("name", "wrong"), [("diffusion", "tokenizer"), ("autoregressive", "autoencoder")])
def test_encoder_of_the_wrong_kind_is_one_line_error(name, wrong, train_script, debug_encoders, tmp_path, capsys):
    code, lines = _script_exit(train_script, name, capsys, f"{SCRIPTS[name][1]}={debug_encoders[wrong]}",
                               f"out={tmp_path / 'out'}", "steps=1")
    assert code == 2 and len(lines) == 1, lines
    assert str(debug_encoders[wrong]) in lines[0]


def test_encoded_zoo_holds_every_arch_without_held_out_models(train_script, debug_encoders, debug_zoo):
    script = train_script("diffusion")
    cfg = load_config(script.DiffusionConfig, CONFIGS / "debug-diffusion.yaml",
                      [f"encoder={debug_encoders['autoencoder']}"])
    assert encoder_settings(cfg.encoder)["zoo"] == str(debug_zoo.root)  # cfg.zoo is "": the encoder's zoo
    encoder = WeightAutoencoder.from_pretrained(cfg.encoder).eval()
    data, table = load_encoded_zoo(cfg, encoder, cfg.encoder, lambda flat, arch, _: encoder.encode(flat, arch))
    assert sorted(d.arch.slug for d in data) == sorted(debug_zoo.archs)
    train = [r for r in debug_zoo.records if not r["held_out"]]
    assert sum(len(d.records) for d in data) == len(train) and len(train) < len(debug_zoo.records)
    assert list(task_kinds(data)) == ["digits-subset"]
    assert len(table.texts) == len(set(table.texts)) == table.tokens.shape[0] == table.mask.shape[0]
    for d in data:
        assert d.index == encoder.stats.index[d.arch.slug]
        assert d.codes.shape[:2] == (len(d.records), encoder.stats.layout(d.arch).num_tokens)
        assert d.prompts.shape[0] == len(d.records)
        for record, row, code in zip(d.records, d.prompts.tolist(), d.task_codes):
            assert record["task"] != HELD_OUT and record["arch"] == d.arch.slug
            assert torch.equal(code, task_code(get_task(record["task"])))
            texts = [table.texts[i] for i in row if i >= 0]
            expected = [f"{t} with {d.arch.article} {d.arch.describe()}" for t in get_task(record["task"]).descriptions]
            assert texts == expected
    assert not any(t.startswith(tuple(get_task(HELD_OUT).descriptions)) for t in table.texts)

    # batches are reproducible from (seed, rank, step) and differ between ranks and steps
    a, b = sample_batch(data, table, 6, 5, 0, 0), sample_batch(data, table, 6, 5, 0, 0)
    assert a[0] is b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    assert a[1].shape[0] == a[2].shape[0] == a[3].shape[0] == a[4].shape[0] == 6
    others = [sample_batch(data, table, 6, 5, 0, 1), sample_batch(data, table, 6, 6, 0, 0)]
    for other in others:
        assert other[0] is not a[0] or not torch.equal(other[1], a[1])


def test_resuming_a_checkpoint_of_another_shape_is_one_clear_error(debug_zoo, train_script, tmp_path, repo_root):
    """A run whose checkpoints were saved by a differently shaped model (another config, or a weightgen
    whose task code was shorter) is refused with the reason, not a load_state_dict traceback."""
    from weightgen.errors import ConfigError

    script = train_script("set_diffusion")
    config = repo_root / "configs" / "generator" / "debug-set-diffusion.yaml"
    out = tmp_path / "gen"
    script.main(load_config(script.SetDiffusionConfig, config, [f"zoo={debug_zoo.root}", f"out={out}", "steps=1"]))
    assert latest_checkpoint(out)[0] is not None
    wider = load_config(script.SetDiffusionConfig, config, [f"zoo={debug_zoo.root}", f"out={out}", "steps=2",
                                                            "attention_head_dim=12"])
    with pytest.raises(ConfigError, match="another shape"):
        script.main(wider)
