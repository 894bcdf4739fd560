"""Sampling speed: checkpoints per second per generator (sampling + decoding, batched), and the time to
generate one model over the time to train one to the same accuracy.

    python benchmarks/bench_sampling.py [--diffusion DIR (default: quickstart's generator)]
        [--ar DIR] [--zoo runs/zoo/digits-mlp] [--samples 256] [--task digits-subset-0-5-8] [--hidden 32]

Each setting samples `--samples` networks in one call (batch 256), after one warm-up call, and
counts the decoded state_dicts' wall time. The training side is the zoo's own recipe on one model
from a random init (`weightgen.baselines.finetune_steps`, stopping when it reaches the generated
samples' mean test accuracy), so the ratio is per model, like for like. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from weightgen.baselines import finetune_steps, zoo_recipe
from weightgen.evaluate import evaluate_flat
from weightgen.generators.set_diffusion import SetDiffusionPipeline
from weightgen.home import load_generator
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore


def timed(pipe, prompt: str, arch: ArchSpec, n: int, **kwargs):
    pipe(prompt, arch=arch, num_samples=min(n, 8), generator=1, **kwargs)  # warm-up: text encoder, caches
    start = time.perf_counter()
    out = pipe(prompt, arch=arch, num_samples=n, generator=0, **kwargs)
    _ = out.state_dicts  # the checkpoints themselves, not only the flat tensor
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffusion", help="a diffusion generator folder (default: the one quickstart cached)")
    ap.add_argument("--ar", help="an AR generator folder (default: none)")
    ap.add_argument("--zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--task", default="digits-subset-0-5-8")
    ap.add_argument("--hidden", type=int, default=32)
    args = ap.parse_args()
    task = get_task(args.task)
    arch = ArchSpec("mlp", (task.in_dim, args.hidden, task.out_dim))
    prompt = f"{task.description} with {arch.article} {arch.describe()}"
    recipe = zoo_recipe(ZooStore(args.zoo))
    pipes = {"diffusion": load_generator(args.diffusion, "diffusion")[0]}
    if args.ar:
        pipes["ar"] = load_generator(args.ar, "ar")[0]
    if isinstance(pipes["diffusion"], SetDiffusionPipeline):  # any width: 10 steps by default
        diffusion = [("10 steps, guidance 1 (defaults)", {}), ("5 steps, guidance 1", {"num_inference_steps": 5})]
    else:  # the arch-indexed latent diffusion
        diffusion = [("10 steps, guidance 1", {"num_inference_steps": 10, "guidance_scale": 1.0}),
                     ("4 steps, guidance 1 (defaults)", {}),
                     ("2 steps, guidance 1", {"num_inference_steps": 2, "guidance_scale": 1.0})]
    settings = [("diffusion", name, kw) for name, kw in diffusion] + ([("ar", "temperature 1", {"temperature": 1.0})]
                                                                      if args.ar else [])
    results = []
    for kind, name, kwargs in settings:
        pipe = pipes[kind]
        out, seconds = timed(pipe, prompt, arch, args.samples, **kwargs)
        acc = evaluate_flat(arch, out.flat, task)["acc"]
        mean_acc = acc[out.finite].mean().item()
        # one model trained with the zoo's recipe until it reaches that accuracy
        start_flat = arch.layout().flatten(arch.init_params(1, torch.Generator().manual_seed(0)))
        t0 = time.perf_counter()
        res = finetune_steps(arch, task, start_flat, recipe, mean_acc, torch.Generator().manual_seed(0))
        train_s = time.perf_counter() - t0
        row = {"generator": kind, "setting": name, "samples": args.samples, "seconds": seconds,
               "per_s": args.samples / seconds, "mean_acc": mean_acc, "train_steps": int(res["steps"][0]),
               "train_seconds": train_s, "generate_over_train": (seconds / args.samples) / train_s}
        results.append(row)
        print(f"{kind:9s} {name:34s} {row['per_s']:7.1f} models/s  acc {mean_acc:.4f}  one model trained to it: "
              f"{row['train_steps']} steps {train_s:.2f} s  generate/train {row['generate_over_train']:.4f}", flush=True)
    print(json.dumps({"task": task.id, "arch": arch.describe(), "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
