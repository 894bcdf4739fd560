"""Fine-tuning a trained generator onto a zoo of new tasks (`init_from`), against training one there
from scratch.

    python benchmarks/bench_finetune.py --parent DIR [--parent-zoo runs/zoo/digits-mlp] [--parent-steps 6000]
        [--zoo runs/zoo/digits-new-tasks] [--steps 1800] [--fraction 3] [--samples 16] [--work runs/bench/finetune]

DIR is a generator trained with the default config (configs/generator/set-diffusion-digits.yaml)
on the default zoo (k = 2..6 classes); without --parent one is trained first on --parent-zoo for
--parent-steps (a parent trained only the default's 1,800 steps brings about half as much:
benchmarks/RESULTS.md, issue 17). The new
zoo (configs/zoo/digits-new-tasks.yaml: k = 7 and 8, built if missing) has no task of the parent's.
With the real training script and the default config, on the new zoo:
- scratch: `--steps` steps from a fresh model;
- fine-tuned: `--steps / --fraction` steps with `init_from: DIR` (`--init-stats`: refit or keep);
- the parent as it is (zero steps), for what the fine-tuning adds.
Each generator samples `--samples` networks for every (task, arch) of the new zoo, seen and held-out
tasks, and a pair's ratio is the samples' mean accuracy on `--split` (test; val to choose settings)
over the mean of the zoo's models of that pair on it (the same reference for all three). Generators
already trained in `--work` are reused. The last line is JSON: mean / min ratios per generator and
split, training seconds, and whether the fine-tuned run reached the scratch run's mean on both splits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from weightgen.home import load_generator
from weightgen.metrics import score_flat
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "generator" / "set-diffusion-digits.yaml"


def run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def train(zoo: str, out: Path, steps: int, *extra: str) -> float:
    """Train with the real script (a folder that already holds a finished generator is kept: 0 s)."""
    if (out / "model_index.json").is_file():
        return 0.0
    sets = [f"zoo={zoo}", f"out={out}", f"steps={steps}", *extra]
    return run(str(ROOT / "train" / "train_set_diffusion.py"), str(CONFIG), *[a for s in sets for a in ("--set", s)])


def score(generator: Path, store: ZooStore, samples: int, split: str) -> dict:
    pipe, _, _ = load_generator(str(generator), None)
    by_pair: dict[tuple[str, str], list[float]] = {}
    for r in store.records:
        by_pair.setdefault((r["task"], r["arch"]), []).append(r[f"{split}_acc"])
    out = {"seen": [], "held_out": []}
    held = {r["task"] for r in store.records if r["held_out"]}
    for (tid, slug), zoo_accs in sorted(by_pair.items()):
        task, arch = get_task(tid), store.archs[slug]
        flat = pipe(task.description, arch=arch, num_samples=samples, generator=0).flat
        acc = score_flat(arch, flat, task, split)["acc"].nan_to_num(0.0).mean().item()
        out["held_out" if tid in held else "seen"].append(acc / statistics.mean(zoo_accs))
    return {split: {"pairs": len(v), "mean": statistics.mean(v), "min": min(v)} for split, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent")
    ap.add_argument("--parent-zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--parent-steps", type=int, default=6000)
    ap.add_argument("--zoo", default="runs/zoo/digits-new-tasks")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--fraction", type=int, default=3)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--init-stats", default="refit", choices=["refit", "keep"])
    ap.add_argument("--split", default="test", help="val: for choosing settings without looking at test")
    ap.add_argument("--work", default="runs/bench/finetune")
    args = ap.parse_args()
    work = Path(args.work)
    if not (Path(args.zoo) / "records.jsonl").is_file():
        run("-m", "weightgen.cli", "zoo", "build", str(ROOT / "configs" / "zoo" / "digits-new-tasks.yaml"),
            "--out", args.zoo, "--quiet")
    seconds = {}
    parent = Path(args.parent) if args.parent else work / "parent"
    if not args.parent:
        seconds["parent"] = train(args.parent_zoo, parent, args.parent_steps)
    short = args.steps // args.fraction
    seconds["scratch"] = train(args.zoo, work / "scratch", args.steps)
    tuned = work / f"finetuned{'-keep' if args.init_stats == 'keep' else ''}-{short}"
    seconds["finetuned"] = train(args.zoo, tuned, short, f"init_from={parent}", f"init_stats={args.init_stats}")
    store = ZooStore(args.zoo)
    results = {"scratch": score(work / "scratch", store, args.samples, args.split),
               "finetuned": score(tuned, store, args.samples, args.split),
               "parent": score(parent, store, args.samples, args.split)}
    for name, res in results.items():
        print(name, " ".join(f"{s}: {v['mean']:.3f} / {v['min']:.3f}" for s, v in res.items()), flush=True)
    reached = all(results["finetuned"][s]["mean"] >= results["scratch"][s]["mean"] for s in ("seen", "held_out"))
    print(json.dumps({"bench": "finetune", "split": args.split, "init_stats": args.init_stats,
                      "steps_scratch": args.steps, "steps_finetuned": short,
                      "results": results, "train_seconds": seconds, "finetuned_reaches_scratch": reached}))


if __name__ == "__main__":
    main()
