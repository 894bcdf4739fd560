"""Batched zoo training vs a plain per-model nn.Module loop, on identical work.

Both train MLP 64-32-10 on the ten-class digits training split with Adam (lr 0.01), 30 epochs,
batch 64, from the same initial weights. The batched trainer trains `--models` networks at once,
once in fp32 and once with bf16 autocast matmuls (fp32 weights, loss and Adam); the loop trains the
first `--loop-models` of those same networks one at a time in fp32 (its cost per model does not
depend on how many it trains, so a subset measures its rate). Speedups are ratios of rates
measured in this one run. The headline keys describe the faster precision; the other precision's
rate, speedup and accuracy are reported beside them. The last line printed is JSON.

    python benchmarks/bench_zoo.py [--models 1024] [--loop-models 32] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from weightgen.evaluate import evaluate_module
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.trainer import Recipe, train_batched


def train_loop(arch, task, init: dict[str, torch.Tensor], recipe: Recipe, seed: int) -> list[float]:
    """The baseline: one ordinary nn.Module after another, each with its own optimizer and shuffling."""
    x, y = task.split("train")
    g = torch.Generator().manual_seed(seed)
    accs = []
    for i in range(next(iter(init.values())).shape[0]):
        net = arch.build()
        net.load_state_dict({n: p[i] for n, p in init.items()})
        opt = recipe.make_optimizer(net.parameters())
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), recipe.batch_size):
                idx = perm[s : s + recipe.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        accs.append(evaluate_module(net, task, "test")["acc"])
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1024)
    ap.add_argument("--loop-models", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    arch = ArchSpec.parse("MLP 64-32-10, ReLU")
    task = get_task("digits-subset-0-1-2-3-4-5-6-7-8-9")
    init = arch.init_params(args.models, torch.Generator().manual_seed(0))  # independent inits
    for split in ("train", "val", "test"):  # load and cache the data once, outside every timing
        task.split(split)

    batched = {}
    for precision in ("fp32", "bf16"):
        recipe = Recipe(optimizer="adam", lr=0.01, epochs=args.epochs, batch_size=64, precision=precision)
        warm = Recipe(optimizer="adam", lr=0.01, epochs=1, batch_size=64, precision=precision)
        small = {n: p[:8] for n, p in init.items()}
        train_batched(arch, [task] * 8, small, warm, torch.Generator().manual_seed(1))  # untimed warm-up
        t0 = time.perf_counter()
        _, records = train_batched(arch, [task] * args.models, init, recipe, torch.Generator().manual_seed(1))
        batched[precision] = (time.perf_counter() - t0, [r["test_acc"] for r in records])

    n_loop = min(args.loop_models, args.models)
    recipe = Recipe(optimizer="adam", lr=0.01, epochs=args.epochs, batch_size=64)
    t0 = time.perf_counter()
    loop_accs = train_loop(arch, task, {n: p[:n_loop] for n, p in init.items()}, recipe, seed=1)
    t_loop = time.perf_counter() - t0
    loop_rate = n_loop / t_loop

    def mean(xs):
        return round(sum(xs) / len(xs), 4)

    # headline figures: the faster batched precision; the other one is reported beside it
    best = min(batched, key=lambda p: batched[p][0])
    other = "fp32" if best == "bf16" else "bf16"
    t_best, accs = batched[best]
    result = {
        "models": args.models,
        "loop_models": n_loop,
        "arch": arch.describe(),
        "epochs": args.epochs,
        "batch_size": 64,
        "threads": args.threads,
        "batched_precision": best,
        "loop_precision": "fp32",
        "batched_seconds": round(t_best, 2),
        "loop_seconds": round(t_loop, 2),
        "batched_models_per_s": round(args.models / t_best, 2),
        "loop_models_per_s": round(loop_rate, 3),
        "speedup": round(args.models / t_best / loop_rate, 1),
        "acc_batched_mean": mean(accs),
        "acc_batched_same_models_mean": mean(accs[:n_loop]),
        "acc_loop_mean": mean(loop_accs),
        f"{other}_batched_models_per_s": round(args.models / batched[other][0], 2),
        f"{other}_speedup": round(args.models / batched[other][0] / loop_rate, 1),
        f"{other}_acc_batched_mean": mean(batched[other][1]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
