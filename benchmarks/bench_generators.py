"""Generators on the default zoo: finite share and accuracy of samples for seen and held-out tasks.

    python benchmarks/bench_generators.py [--diffusion DIR] [--ar DIR] [--zoo runs/zoo/digits-mlp]
        [--samples 32] [--tasks 5] [--arch-hidden 32] [--guidance 2.0] [--steps 25] [--temperature 1.0]

Without --diffusion / --ar, the generator is trained first with the real training script
(train/train_diffusion.py, train/train_autoregressive.py) and its default config
(configs/generator/*-digits.yaml); the encoder that config names must exist (train/train_*.py with
configs/encoder/). Tasks: `--tasks` seen and `--tasks` held-out digits subset tasks with 3..6
classes, drawn with a fixed seed; each gets `--samples` samples for one arch (MLP 64-H-k). Beside
each task's generated accuracies are the zoo's own models of the same task and arch. This is the
steering benchmark of issue 4; the full evaluation protocol is benchmarks/bench_quality.py.
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import time
from pathlib import Path

import torch

from weightgen.config import load_config
from weightgen.evaluate import evaluate_flat
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore

ROOT = Path(__file__).resolve().parents[1]


def train(script: str, config: str, overrides: list[str]) -> str:
    """Run train/SCRIPT.py's training (its main in weightgen/train/) with configs/generator/CONFIG."""
    module = importlib.import_module(f"weightgen.train.{script.removeprefix('train_')}")
    config_cls = module.DiffusionConfig if script == "train_diffusion" else module.ARConfig
    cfg = load_config(config_cls, ROOT / "configs" / "generator" / config, overrides)
    module.main(cfg)
    return cfg.out


def pick_tasks(store: ZooStore, n: int, held_out: bool) -> list[str]:
    ids = sorted({r["task"] for r in store.records if r["held_out"] == held_out})
    ids = [t for t in ids if t.startswith("digits-subset") and 3 <= len(get_task(t).classes) <= 6]
    return sorted(random.Random(0).sample(ids, min(n, len(ids))))


def measure(sample, store: ZooStore, tasks: list[str], hidden: int, n: int) -> dict:
    rows, finite, total, seconds = [], 0, 0, 0.0
    for tid in tasks:
        task = get_task(tid)
        arch = ArchSpec("mlp", (task.in_dim, hidden, task.out_dim))
        start = time.perf_counter()
        out = sample(f"{task.description} with {arch.article} {arch.describe()}", arch, n)
        seconds += time.perf_counter() - start
        acc = evaluate_flat(arch, out.flat, task)["acc"]
        finite, total = finite + out.num_finite, total + n
        zoo = [r["test_acc"] for r in store.records if r["task"] == tid and r["arch"] == arch.slug]
        good = acc[out.finite]
        rows.append({
            "task": tid,
            "gen_mean": round(good.mean().item(), 4) if len(good) else None,
            "gen_median": round(good.median().item(), 4) if len(good) else None,
            "gen_min": round(good.min().item(), 4) if len(good) else None,
            "zoo_mean": round(statistics.mean(zoo), 4),
            "zoo_median": round(statistics.median(zoo), 4),
        })
    mean = lambda key: round(statistics.mean(r[key] for r in rows if r[key] is not None), 4)  # noqa: E731
    return {"tasks": rows, "finite": finite / total, "gen_mean": mean("gen_mean"), "gen_median": mean("gen_median"),
            "zoo_mean": mean("zoo_mean"), "ratio_mean": round(mean("gen_mean") / mean("zoo_mean"), 4),
            "samples_per_s": round(total / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--diffusion", help="a trained WeightDiffusionPipeline folder (default: train one now)")
    ap.add_argument("--ar", help="a trained WeightARPipeline folder (default: train one now)")
    ap.add_argument("--only", choices=["diffusion", "ar"], help="measure one generator")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--arch-hidden", type=int, default=32)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)

    store = ZooStore(args.zoo)
    seen, held = pick_tasks(store, args.tasks, False), pick_tasks(store, args.tasks, True)
    result = {"seen_tasks": seen, "held_out_tasks": held, "samples": args.samples}
    if args.only != "ar":
        from weightgen.generators.diffusion import WeightDiffusionPipeline

        pipe = WeightDiffusionPipeline.from_pretrained(args.diffusion or train("train_diffusion", "diffusion-digits.yaml", []))
        pipe.set_progress_bar_config(disable=True)

        def sample(prompt, arch, n):
            return pipe(prompt, arch, num_samples=n, num_inference_steps=args.steps, guidance_scale=args.guidance,
                        generator=0)

        result["diffusion"] = {"guidance": args.guidance, "steps": args.steps,
                               "seen": measure(sample, store, seen, args.arch_hidden, args.samples),
                               "held_out": measure(sample, store, held, args.arch_hidden, args.samples)}
    if args.only != "diffusion":
        from weightgen.generators.autoregressive import WeightARPipeline

        pipe = WeightARPipeline.from_pretrained(args.ar or train("train_autoregressive", "ar-digits.yaml", []))
        pipe.set_progress_bar_config(disable=True)

        def sample(prompt, arch, n):
            return pipe(prompt, arch, num_samples=n, temperature=args.temperature, top_k=args.top_k, generator=0)

        result["ar"] = {"temperature": args.temperature, "top_k": args.top_k,
                        "seen": measure(sample, store, seen, args.arch_hidden, args.samples),
                        "held_out": measure(sample, store, held, args.arch_hidden, args.samples)}
    for name in ("diffusion", "ar"):
        if name in result:
            for split in ("seen", "held_out"):
                r = result[name][split]
                print(f"{name:9s} {split:8s} finite {r['finite']:.3f}  generated mean {r['gen_mean']:.4f} "
                      f"median {r['gen_median']:.4f}  zoo mean {r['zoo_mean']:.4f}  ratio {r['ratio_mean']:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
