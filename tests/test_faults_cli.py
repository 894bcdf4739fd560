"""The fault campaign's CLI and config cases (see tests/test_faults.py): bad arguments, prompts and
configs get one sentence and exit status 2, before anything loads, within time and memory bounds."""


from __future__ import annotations

import time

import pytest
import torch
from faulting import (
    ARCH,
    assert_one_line_error,
    bench_part,
    checkpoint,
    edit_header,
    run_main,
    set_meta,
)

import weightgen
from weightgen.config import ZooConfig, load_config
from weightgen.errors import ConfigError


# -- the CLI --------------------------------------------------------------------------------------
def test_inspect_shows_markup_and_escapes_as_text(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    sd = {n: torch.randn(s, generator=g) for n, s in zip(ARCH.layout().names, ARCH.layout().shapes)}
    path = weightgen.save_model(sd, tmp_path / "m.safetensors", arch=ARCH, prompt="[/bold] \x1b[2J wipe", note=["[red]"])
    code, out, err = run_main(["inspect", path], capsys)
    assert code == 0, err
    assert "[/bold]" in out and "\x1b" not in out and "[red]" in out


@pytest.mark.parametrize("case", ["relabelled", "deep", "task-null", "huge-size", "long-path", "usage"])
def test_inspect_and_eval_bad_files_exit_2(tmp_path, capsys, case):
    path = checkpoint(tmp_path)
    edits = {"relabelled": lambda h: h["layers.0.weight"].update(dtype="I32"),
             "deep": set_meta("prompt", "[" * 50_000 + "]" * 50_000),
             "task-null": set_meta("task", '{"id": null}'),
             "huge-size": set_meta("arch", '{"family": "mlp", "sizes": [64, 1e999, 3]}')}
    if case in edits:
        edit_header(path, edits[case])
    elif case == "long-path":
        path = tmp_path / ("a" * 300)
    for argv in (["inspect", path], ["eval", path, "--out", tmp_path / "r.json"]):
        if case == "usage":  # typer's own usage errors (its vendored click) were tracebacks, status 1
            code, _, err = run_main(argv[:1], capsys)
            assert code == 2 and "Traceback" not in err and "Missing argument" in err, err
            continue
        code, out, err = run_main(argv, capsys)
        assert_one_line_error(code, err)
        assert not (tmp_path / "r.json").exists()


NOWHERE = "/nonexistent/generator"


SAMPLING_ABUSE = {
    "n-huge": (["-n", "100000"], ["-n", "at most"]), "n-zero": (["-n", "0"], ["-n must be at least 1"]),
    "seed-huge": (["--seed", "99999999999999999999999"], ["--seed"]), "seed-negative": (["--seed", "-1"], ["--seed"]),
    "steps-zero": (["--steps", "0"], ["--steps"]), "steps-huge": (["--steps", "100000000"], ["--steps"]),
    "temperature-nan": (["--temperature", "nan"], ["--temperature"]),
    "temperature-negative": (["--temperature", "-1"], ["--temperature"]),
    "guidance-inf": (["--guidance", "inf"], ["--guidance"]), "guidance-nan": (["--guidance", "nan"], ["--guidance"]),
}


@pytest.mark.parametrize("args,words", SAMPLING_ABUSE.values(), ids=SAMPLING_ABUSE.keys())
def test_sampling_arguments_are_checked_before_the_generator_loads(tmp_path, capsys, args, words):
    """With a generator that does not exist, the message names the bad argument, not the generator:
    so the argument was checked first (loading a real generator takes ~30 s)."""
    out = tmp_path / "out"
    code, stdout, err = run_main(["sample", "classify digits 3, 5 and 8", "--generator", NOWHERE, "--out", out, *args],
                                 capsys)
    assert_one_line_error(code, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("prompt,words", [("x" * 1_000_000, ["characters"]), ("digits\n3 and 5", ["control"]),
                                          ("\x1b[31mdigits 3 and 5", ["control"]), ("   ", ["empty"])],
                         ids=["1MB", "newline", "escape", "blank"])
def test_prompts_are_checked_before_anything_loads(capsys, prompt, words):
    for argv in (["sample", prompt, "--generator", NOWHERE], ["parse", prompt]):
        code, _, err = run_main(argv, capsys)
        assert_one_line_error(code, err, *words)


def test_eval_out_folder_is_refused_before_evaluating(tmp_path, capsys):
    """--out is an existing folder AND the checkpoint is corrupt: the folder is reported, so --out was
    checked first (it used to be checked only when writing, after the evaluation ran)."""
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 50)
    (tmp_path / "existing").mkdir()
    code, _, err = run_main(["eval", corrupt, "--out", tmp_path / "existing"], capsys)
    assert_one_line_error(code, err, "is a folder")
    assert list((tmp_path / "existing").iterdir()) == []


def test_cli_refusals_in_a_real_process_are_fast_and_one_line(run_cli, tmp_path):
    start = time.perf_counter()
    code, out, err = run_cli("sample", "classify digits 3, 5 and 8", "--generator", NOWHERE, "-n", "100000")
    assert_one_line_error(code, err, "-n")
    assert out == "" and time.perf_counter() - start < 30


# -- configs --------------------------------------------------------------------------------------
def test_yaml_anchor_bomb_is_refused_fast_with_a_short_message(tmp_path):
    bench = bench_part("faults_cli")
    for where in ("seeds", "held_out", "tasks"):  # an int (the message formatted it whole), a list, a section
        path = tmp_path / f"{where}.yaml"
        path.write_text(bench.BOMB.replace("seeds:", f"{where}:"))
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="values once YAML anchors are expanded") as e:
            load_config(ZooConfig, path)
        assert time.perf_counter() - start < 2 and len(str(e.value)) < 300


@pytest.mark.parametrize("override,words", [("seeds=1000000000", "seeds"), ("seed=99999999999999999999999", "64 bits"),
                                            ("lr=nan", "finite"), ("lr=" + "9" * 400, "finite"), ("lr=[", "YAML"),
                                            ("held_out=[" + "x, " * 20_000 + "]", "items"),
                                            ("tasks.subsets_per_k=1000", "models")])
def test_absurd_config_values_are_refused_without_allocating(debug_config_path, override, words):
    extra = ["tasks.subset_k=[2,3,4,5,6,7,8]", "seeds=5000"] if "subsets_per_k" in override else []
    with pytest.raises(ConfigError, match=words):
        load_config(ZooConfig, debug_config_path, [override, *extra])

