"""The fault campaign's process-level checks (benchmarks/bench_faults.py, parts c and d): byte-identical
files from the same seed in one process and across two, and the CLI fed abusive arguments in real
subprocesses (time, memory and leftover-file bounds)."""


from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from faults_files import MAX_CHILD_RSS_MB, MAX_CHILD_SECONDS, ROOT, Payload, join, split
from typer.testing import CliRunner

import weightgen
from weightgen.cli import app
from weightgen.errors import WeightgenError
from weightgen.specs import ArchSpec
from weightgen.zoo.store import ZooStore


def cli(args: list[str]):
    """A `weightgen` command in-process, with main()'s semantics: WeightgenError propagates (main
    prints it and exits 2), as does any crash; CliRunner only captures the output."""
    result = CliRunner().invoke(app, [str(a) for a in args], standalone_mode=False)
    if result.exception is not None and not (isinstance(result.exception, SystemExit) and not result.exception.code):
        raise result.exception
    return result.output


# -- (c) repeatability ------------------------------------------------------------------------------
def save_same(path: str | Path) -> None:
    """One fixed model with many metadata keys (their order used to change between processes)."""
    spec = ArchSpec.parse("MLP 64-8-3, GELU")
    g = torch.Generator().manual_seed(42)
    sd = {n: torch.randn(s, generator=g) for n, s in zip(spec.layout().names, spec.layout().shapes)}
    weightgen.save_model(sd, path, arch=spec, task="digits-subset-3-5-8", generator="gen", seed=3,
                         **{f"key{i}": i for i in range(12)})


def repeatability(root: Path) -> dict:
    """Byte-identical files for the same input: twice in this process, once in each of two processes."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"same-{i}.safetensors" for i in range(4)]
    for p in paths[:2]:
        save_same(p)
    for p in paths[2:]:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_faults.py"), "--save-same", str(p)], check=True,
                       cwd=ROOT, env=child_env(root))
    data = [p.read_bytes() for p in paths]
    store = ZooStore(root / "zoo")
    tensors = {"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(1))}
    shard_bytes = []
    for _ in range(2):
        store.write_shard("s.safetensors", tensors, {"family": "mlp"}, [{"id": i, "b": 1, "a": 2} for i in range(4)])
        shard_bytes.append((store.shard_dir / "s.safetensors").read_bytes())
    return {"in_process": data[0] == data[1], "across_processes": data[2] == data[3],
            "process_vs_subprocess": data[0] == data[2], "zoo_shard": shard_bytes[0] == shard_bytes[1]}


# -- (d) CLI abuse --------------------------------------------------------------------------------
# billion laughs under a real key: nine anchors, each nine copies of the last, 9**9 values once expanded
BOMB = "name: bomb\nseeds:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def child_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    return {**env, "OMP_NUM_THREADS": "1", "WEIGHTGEN_HOME": str(root / "home")}


def run_child(args: list, root: Path, timeout: float = 120) -> tuple[int, str, str, float, float]:
    """`python -m weightgen.cli ARGS`: (exit code, stdout, stderr, seconds, peak RSS in MB). The peak is
    polled from /proc (VmHWM): a forked child's rusage reports at least its parent's size."""
    start, peak = time.perf_counter(), 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "weightgen.cli", *map(str, args)], cwd=ROOT, env=child_env(root),
                                stdout=out, stderr=err)
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) / 1024)
            except (OSError, IndexError, ValueError):  # exiting, or not Linux
                pass
            if time.perf_counter() > start + timeout:
                proc.kill()
            time.sleep(0.01)
        out.seek(0), err.seek(0)
        return (proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                time.perf_counter() - start, peak)


def abuse_cases(fix: dict, root: Path) -> dict[str, tuple[list, list[str], Path | None]]:
    """name -> (CLI arguments, words the one-line error must contain, a folder that must stay empty)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bomb.yaml").write_text(BOMB)
    (root / "existing-dir").mkdir(exist_ok=True)
    good = root / "good.safetensors"
    good.write_bytes(fix["bases"]["mlp"][0])
    relabelled = root / "relabelled.safetensors"  # F32 -> I32 in the header: weights near 1e9 when read as ints
    header, body = split(fix["bases"]["mlp"][0])
    header["layers.0.weight"]["dtype"] = "I32"
    relabelled.write_bytes(join(header, body))
    zoo = root / "zoo-row"
    shutil.rmtree(zoo, ignore_errors=True)
    shutil.copytree(fix["zoo"], zoo)
    lines = (zoo / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    rec["row"] = -1  # read the last model of the shard instead of this one
    (zoo / "records.jsonl").write_text("\n".join([*lines[:3], json.dumps(rec), *lines[4:]]) + "\n")
    out, nowhere = root / "out", root / "no-generator"
    sample = ["sample", "classify digits 3, 5 and 8", "--generator", nowhere, "--out", out]
    return {
        "prompt-100kB": (["sample", "digits " * 17_000, "--generator", nowhere, "--out", out], ["characters"], out),
        "prompt-escape": (["sample", "\x1b[31mclassify digits 3 and 5", "--generator", nowhere, "--out", out], ["control"], out),
        "prompt-newline": (["sample", "classify\ndigits 3 and 5", "--generator", nowhere, "--out", out], ["control"], out),
        "parse-100kB": (["parse", "tell 4s from 9s " * 7_000], ["characters"], None),
        "n-huge": ([*sample, "-n", "100000"], ["-n", "at most"], out),
        "n-zero": ([*sample, "-n", "0"], ["-n"], out),
        "steps-zero": ([*sample, "--steps", "0"], ["--steps"], out),
        "steps-huge": ([*sample, "--steps", "1000000000"], ["--steps"], out),
        "temperature-nan": ([*sample, "--temperature", "nan"], ["--temperature"], out),
        "temperature-negative": ([*sample, "--temperature", "-1"], ["--temperature"], out),
        "guidance-inf": ([*sample, "--guidance", "inf"], ["--guidance"], out),
        "seed-huge": ([*sample, "--seed", "99999999999999999999999"], ["--seed"], out),
        "yaml-bomb": (["zoo", "build", root / "bomb.yaml", "--out", root / "bomb-zoo", "--quiet"], ["anchor"], root / "bomb-zoo"),
        "billion-seeds": (["zoo", "build", ROOT / "configs/zoo/debug.yaml", "--set", "seeds=1000000000", "--out",
                           root / "seeds-zoo", "--quiet"], ["seeds"], root / "seeds-zoo"),
        "eval-out-dir": (["eval", good, "--out", root / "existing-dir"], ["folder"], root / "existing-dir"),
        "eval-relabelled": (["eval", relabelled, "--out", root / "r" / "report.json"], ["floating point"], root / "r"),
        "inspect-long-path": (["inspect", root / ("a" * 300)], ["cannot look up"], None),
        "inspect-pickle": (["inspect", fix["root"] / "payload.pkl"], ["pickle"], None),
        "zoo-info-row": (["zoo", "info", zoo], ["row"], None),
    }


def cli_abuse(fix: dict, root: Path, progress: bool = True) -> dict:
    """Each case in a real subprocess: exit 2, one 'error:' line, no traceback, bounded time and memory,
    nothing left behind. Then a 1 MB prompt in-process (too long for one argv string)."""
    (fix["root"] / "payload.pkl").write_bytes(pickle.dumps(Payload(fix["marker"])))
    failures, peak, slowest = [], 0.0, 0.0
    cases = abuse_cases(fix, root)
    for name, (args, words, must_stay_empty) in cases.items():
        code, out, err, seconds, rss = run_child(args, root)
        peak, slowest = max(peak, rss), max(slowest, seconds)
        lines = err.strip().splitlines()
        left = [p for p in must_stay_empty.rglob("*")] if must_stay_empty and must_stay_empty.exists() else []
        problems = [p for p, bad in (
            (f"exit {code}", code != 2), ("traceback", "Traceback" in err), (f"{len(lines)} lines", len(lines) != 1),
            ("no 'error:'", not err.startswith("error: ")), (f"missing {words}", not all(w in err for w in words)),
            (f"{seconds:.0f} s", seconds > MAX_CHILD_SECONDS), (f"{rss:.0f} MB", rss > MAX_CHILD_RSS_MB),
            (f"left {len(left)} files", bool(left)), ("stdout", bool(out.strip()))) if bad]
        if problems:
            failures.append(f"{name}: {', '.join(problems)}: {err.strip()[:160]}")
        if progress:
            print(f"  cli {name}: {'ok' if not problems else 'FAIL'} ({seconds:.1f} s, {rss:.0f} MB)", file=sys.stderr)
    in_process = 0
    for args in (["sample", "x" * 1_000_000, "--generator", root / "no-generator"], ["parse", "y" * 1_000_000]):
        try:
            cli(args)
            failures.append(f"in-process {args[0]} with a 1 MB prompt was accepted")
        except WeightgenError:
            in_process += 1
    return {"cases": len(cases) + 2, "passed": len(cases) + in_process - len(failures), "failures": failures,
            "max_child_rss_mb": round(peak), "slowest_child_s": round(slowest, 1)}


# -- main -------------------------------------------------------------------------------------------
