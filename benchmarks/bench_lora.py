"""LoRA generation: generated adapters against the five references, and batched zoo-building speed.

    python benchmarks/bench_lora.py --zoo runs/zoo/digits-lora --generator runs/generators/lora-diffusion-digits

Quality (test split, 32 samples per task): every held-out task of the zoo, and `--seen` seen tasks
drawn with `--seed`. Per task, the generated adapters' mean accuracy divided by the mean of the
trained LoRAs of the task (the zoo's own adapters of it; for held-out tasks no generator saw them),
and the accuracies of the base alone, a multitask LoRA on all seen tasks, retrieval (the nearest
seen task's adapters) and `mean+gaussian` (weightgen/evaluate_lora.py), and a sixth, learned one:
`hypernet`, an MLP from the task code to one adapter trained through the task loss on the seen
tasks (weightgen/lora_hypernet.py; `--hypernet-steps`, 0 skips it). Seen tasks also report the
share of samples as new as a fresh LoRA training on the task's probe set. Every task also reports
the generator's ceiling: its trained adapters after a round trip through the generator's encoder
(`through_encoder`; `ceiling_mean` / `ceiling_min` as ratios to trained): a latent space fitted on
the zoo's training adapters cannot express what lies outside their span, and no sampler can then
do better.

Speed: `--speed N` adapters (the zoo's tasks in turn) trained with the zoo's recipe for
`--speed-epochs` epochs, batched (weightgen's MultiLoRA trainer) and one after another with peft
(`get_peft_model` on the base, the same optimiser, batch size and epochs); the ratio of the two wall
times is measured in this one run. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weightgen.config import ZooConfig, from_dict
from weightgen.evaluate_lora import LoRAZoo, as_new, mean_gaussian, retrieval
from weightgen.generate_lora import multitask_reference
from weightgen.lora_hypernet import train_hypernet
from weightgen.tasks import get_task
from weightgen.zoo.build import recipe_of
from weightgen.zoo.lora_adapter import peft_model
from weightgen.zoo.lora_base import images
from weightgen.zoo.lora_trainer import factor_shapes, init_factors, train_lora_batched
from weightgen.zoo.trainer import epoch_order


def per_adapter_peft(zoo: LoRAZoo, tasks, recipe) -> float:
    """Seconds to train the adapters one after another with peft, as a user without weightgen would."""
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        model = peft_model(copy.deepcopy(zoo.base), zoo.store.manifest["lora"])
        model.train()
        opt = recipe.make_optimizer([p for p in model.parameters() if p.requires_grad])
        x, y = task.split("train")
        g = torch.Generator().manual_seed(i)
        for _ in range(recipe.epochs):
            order = epoch_order(torch.tensor([len(x)]), len(x), g)[0]
            for rows in order.split(recipe.batch_size):
                loss = F.cross_entropy(model(pixel_values=images(x[rows])).logits, y[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return time.perf_counter() - start


def speed(zoo: LoRAZoo, n: int, epochs: int) -> dict:
    cfg = from_dict(ZooConfig, zoo.store.manifest["config"])
    recipe = recipe_of(from_dict(ZooConfig, {**zoo.store.manifest["config"], "epochs": epochs}))
    tasks = [get_task(t) for t in (list(cfg.tasks.ids) * n)[:n]]
    init = init_factors(factor_shapes(zoo.base, zoo.spec), [torch.Generator().manual_seed(i) for i in range(n)])
    start = time.perf_counter()
    train_lora_batched(zoo.base, zoo.spec, tasks, init, recipe, torch.Generator().manual_seed(0), metrics=False)
    batched = time.perf_counter() - start
    loop = per_adapter_peft(zoo, tasks, recipe)
    return {"adapters": n, "epochs": epochs, "batched_s": batched, "peft_loop_s": loop, "speedup": loop / batched,
            "batched_adapters_per_s": n / batched, "peft_adapters_per_s": n / loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-lora")
    ap.add_argument("--generator", default="runs/generators/lora-diffusion-digits")
    ap.add_argument("--samples", type=int, default=32, help="samples per task (0: only the build-speed comparison)")
    ap.add_argument("--seen", type=int, default=12, help="seen tasks drawn for the seen-task figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="diffusion sampling steps (default: the pipeline's)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the pipeline's)")
    ap.add_argument("--hypernet-steps", type=int, default=2000, help="training steps of the hypernet reference (0: skip it)")
    ap.add_argument("--speed", type=int, default=64, help="adapters in the build-speed comparison (0: skip it)")
    ap.add_argument("--speed-epochs", type=int, default=3)
    args = ap.parse_args()

    zoo = LoRAZoo.load(args.zoo)
    result = {"zoo": args.zoo, "generator": args.generator, "samples": args.samples}
    if args.samples:
        result.update(quality(zoo, args))
    if args.speed:
        result["build_speed"] = speed(zoo, args.speed, args.speed_epochs)
    print(json.dumps(result))


def quality(zoo: LoRAZoo, args) -> dict:
    from weightgen.home import load_generator

    pipe, kind, _ = load_generator(args.generator, None)
    pipe.check_base()
    codec = getattr(pipe, pipe.codec)
    held = sorted(zoo.store.held_out)
    seen = sorted(random.Random(args.seed).sample(zoo.seen_tasks(), min(args.seen, len(zoo.seen_tasks()))))
    t0 = time.perf_counter()
    multi = multitask_reference(zoo, Path(args.generator), [])  # trained on first use, then kept beside the generator
    multitask_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hyper = None
    if args.hypernet_steps:
        hyper = train_hypernet(zoo.base, zoo.store.manifest["lora"], zoo.pick(zoo.seen_rows()), zoo.seen_tasks(),
                               steps=args.hypernet_steps, seed=args.seed)
    hypernet_s = time.perf_counter() - t0
    rows, sample_s, sampled = [], 0.0, 0
    g = torch.Generator().manual_seed(args.seed)
    for group, tasks in (("held_out", held), ("seen", seen)):
        for tid in tasks:
            task = get_task(tid)
            kw = {} if args.steps is None else {"num_inference_steps": args.steps}
            if args.temperature is not None:
                kw["temperature"] = args.temperature
            start = time.perf_counter()
            out = pipe(task.description, num_samples=args.samples, generator=args.seed, **kw)
            sample_s += time.perf_counter() - start
            sampled += args.samples
            gen = zoo.accuracy(out.factors, task)
            own = zoo.pick(zoo.rows(tid))
            trained = zoo.accuracy(own, task)
            near, near_factors = retrieval(zoo, task)
            zero = {n: torch.zeros(1, *f.shape[1:]) for n, f in zoo.factors.items()}
            row = {
                "task": tid, "group": group, "gen_mean": gen.mean().item(), "gen_min": gen.min().item(),
                "finite": out.num_finite / args.samples, "trained": trained.mean().item(),
                "base": zoo.accuracy(zero, task).item(), "multitask": zoo.accuracy(multi, task).item(),
                "retrieval": zoo.accuracy(near_factors, task).mean().item(), "retrieval_task": near,
                "mean_gaussian": zoo.accuracy(mean_gaussian(zoo, task, args.samples, g), task).mean().item(),
            }
            if hyper is not None:
                row["hypernet"] = zoo.accuracy(hyper.adapters([task]), task).item()
            row["ratio"] = row["gen_mean"] / row["trained"]
            # the generator's ceiling: the task's own trained adapters after its encoder's round trip
            # (a latent space fitted on the zoo cannot express what lies outside its span)
            row["through_encoder"] = zoo.accuracy(codec.decode(codec.encode(own)), task).mean().item()
            if group == "seen":
                row["as_new"] = as_new(zoo, out.factors, task)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    result = {"kind": kind, "multitask_s": multitask_s, "hypernet_s": hypernet_s, "adapters_per_s": sampled / sample_s}
    for group in ("held_out", "seen"):
        rs = [r for r in rows if r["group"] == group]
        ratios = [r["ratio"] for r in rs]
        ceiling = [r["through_encoder"] / r["trained"] for r in rs]
        result[group] = {"tasks": len(rs), "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios),
                         "finite": statistics.mean(r["finite"] for r in rs),
                         "ceiling_mean": statistics.mean(ceiling), "ceiling_min": min(ceiling)}
        for ref in ("base", "multitask", "retrieval", "mean_gaussian", "hypernet", "trained"):
            if ref not in rs[0]:
                continue
            result[group][f"margin_{ref}"] = statistics.mean(r["gen_mean"] - r[ref] for r in rs)
            result[group][f"beats_{ref}"] = sum(r["gen_mean"] > r[ref] for r in rs) / len(rs)
        if "hypernet" in rs[0]:  # the learned reference on the generator's own scale
            hyper_ratios = [r["hypernet"] / r["trained"] for r in rs]
            result[group]["hypernet_ratio_mean"], result[group]["hypernet_ratio_min"] = statistics.mean(hyper_ratios), min(hyper_ratios)
        if group == "seen":
            result[group]["as_new"] = statistics.mean(r["as_new"] for r in rs if r["as_new"] is not None)
    return result


if __name__ == "__main__":
    main()
