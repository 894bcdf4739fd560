"""Kill -9 campaign: interrupt a zoo build, encoder training and generator training at random points,
resume each, and check that it ends where an uninterrupted run ends.

    python benchmarks/bench_kills.py [--kills 8] [--seed 0] [--work runs/bench/kills]

For each job (the debug zoo build with 16 shards; the debug autoencoder and the debug neuron-set
diffusion generator, both with a checkpoint every step) one reference run goes uninterrupted. Then,
`--kills` times, a fresh run is started as a real subprocess (its own process group), killed with
SIGKILL after a random delay drawn from (0, the reference's wall time) (a run that finished first
is not counted as killed; `kills_mid_work` counts kills after it had saved something), and re-run with the same
command until it completes (a re-run may itself be killed again, with probability one half). The
resumed result must match the reference: the zoo bitwise (every shard tensor and records.jsonl),
training runs in their final weights (every tensor equal: the seed fixes them). Also checked: no
temporary file is left behind, and no model is lost or duplicated (records = plan).
The last line is JSON: kills, resumes, identical results, mismatches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def jobs(work: Path) -> dict[str, dict]:
    """name -> {"cmd": out -> argv, "result": out -> comparable dict}. The zoo the trainers read is built first."""
    zoo = work / "zoo-for-training"

    def zoo_cmd(out):
        return [PY, "-m", "weightgen.cli", "zoo", "build", str(ROOT / "configs/zoo/debug.yaml"), "--out", str(out),
                "--quiet", "--set", "models_per_shard=2", "--set", "epochs=60"]

    def encoder_cmd(out):
        return [PY, str(ROOT / "train/train_autoencoder.py"), str(ROOT / "configs/encoder/debug.yaml"),
                "--set", f"zoo={zoo}", "--set", f"out={out}", "--set", "steps=300", "--set", "save_every=1"]

    def generator_cmd(out):
        return [PY, str(ROOT / "train/train_set_diffusion.py"), str(ROOT / "configs/generator/debug-set-diffusion.yaml"),
                "--set", f"zoo={zoo}", "--set", f"out={out}", "--set", "steps=150", "--set", "save_every=1"]

    return {"zoo": {"cmd": zoo_cmd, "result": zoo_result, "setup": None},
            "encoder": {"cmd": encoder_cmd, "result": lambda out: tensors(out / "diffusion_pytorch_model.safetensors"),
                        "setup": lambda: ensure_zoo(zoo, zoo_cmd)},
            "generator": {"cmd": generator_cmd,
                          "result": lambda out: tensors(out / "denoiser" / "diffusion_pytorch_model.safetensors"),
                          "setup": lambda: ensure_zoo(zoo, zoo_cmd)}}


def ensure_zoo(zoo: Path, cmd) -> None:
    if not (zoo / "records.jsonl").is_file():
        subprocess.run(cmd(zoo), cwd=ROOT, check=True, env=env())


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tensors(path: Path) -> dict:
    return {k: v.contiguous().numpy().tobytes() for k, v in load_file(str(path)).items()}


def zoo_result(out: Path) -> dict:
    plan = json.loads((out / "zoo.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    planned = sorted(m[0] for s in plan["shards"] for m in s["models"])
    if sorted(r["id"] for r in records) != planned:
        raise AssertionError("models lost or duplicated")
    shards = {p.name: tensors(p) for p in sorted((out / "shards").glob("*.safetensors"))}
    return {"records": (out / "records.jsonl").read_bytes(), "shards": shards}


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*.tmp")] + [str(p) for p in out.rglob(".partial")]


def progressed(out: Path) -> bool:
    """Whether a run had saved anything (a checkpoint or a shard) when it was killed."""
    return any((out / "checkpoints").glob("step_*/done")) or any((out / "shards").glob("*.safetensors"))


def run(cmd: list[str], kill_after: float | None) -> bool:
    """Run cmd; with kill_after, SIGKILL its process group after that many seconds. True if it completed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed: {proc.stderr.read().decode()[-2000:]}")
    return True


def campaign(name: str, job: dict, work: Path, kills: int, rng: random.Random, window=(0.05, 1.0)) -> dict:
    """`kills` interrupted runs of one job, each killed after a delay drawn from `window` (shares of
    the reference run's wall time) and resumed to the end; what matched the reference."""
    if job["setup"]:
        job["setup"]()
    ref = work / f"{name}-reference"
    shutil.rmtree(ref, ignore_errors=True)
    start = time.perf_counter()
    run(job["cmd"](ref), None)
    wall = time.perf_counter() - start
    expected = job["result"](ref)
    out = {"kills": 0, "kills_mid_work": 0, "resumes": 0, "identical": 0, "mismatches": [], "reference_s": round(wall, 1)}
    for i in range(kills):
        folder = work / f"{name}-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        if not run(job["cmd"](folder), rng.uniform(*window) * wall):
            out["kills"] += 1
            out["kills_mid_work"] += progressed(folder)
        while True:  # resume; sometimes kill the resume too
            again = rng.random() < 0.5
            done = run(job["cmd"](folder), rng.uniform(0.3, 1.0) * wall if again else None)
            out["resumes"] += 1
            if done:
                break
            out["kills"] += 1
            out["kills_mid_work"] += progressed(folder)
        try:
            same = job["result"](folder) == expected and not leftovers(folder)
        except (AssertionError, OSError, ValueError) as e:
            same = False
            out["mismatches"].append(f"{folder}: {e}")
        out["identical"] += same
        if not same and not out["mismatches"]:
            out["mismatches"].append(str(folder))
        print(f"{name} {i + 1}/{kills}: {'identical' if same else 'DIFFERENT'} ({out['kills']} kills so far)", flush=True)
        if same:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=8, help="interrupted runs per job (each killed once or more)")
    ap.add_argument("--only", choices=["zoo", "encoder", "generator"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench/kills")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    results = {name: campaign(name, job, work, args.kills, rng) for name, job in jobs(work).items()
               if args.only in (None, name)}
    total = {k: sum(r[k] for r in results.values()) for k in ("kills", "kills_mid_work", "resumes", "identical")}
    print(json.dumps({"bench": "kills", **total, "runs": args.kills * len(results), "jobs": results}))


if __name__ == "__main__":
    main()
