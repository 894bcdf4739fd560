"""Issue 15's benchmark: one neuron-set generator on a zoo of many widths, including widths and
tasks it never saw.

    python benchmarks/bench_archs.py --zoo runs/zoo/digits-widths --generator DIR [--samples 32]
        [--pairs 24] [--draw 0] [--finetune 4] [--out runs/bench/archs_rows.json]
        [--steps N] [--sampler ddim|dpm] [--temperature T] [--guidance G] [--cases CASE ...]

Cases, each up to `--pairs` (task, arch) pairs drawn with seed `--draw` (0 = the benchmark's own
draw; later draws are for choosing settings without looking at it). DIR is either neuron-set
generator: SetDiffusionPipeline or SetARPipeline (`--diffusion` is the older name of `--generator`).
- seen: a seen arch on a seen task (ratio to the zoo's median; share of samples as new as a fresh
  training run on the probe, weightgen.novelty);
- unseen_arch_seen_task, unseen_arch_held_task: an arch the zoo config holds out entirely;
- seen_arch_held_task: a held-out task on a trained-on arch.
Every pair gets `--samples` samples (the pipeline's default sampling, or the `--steps`, `--sampler`,
`--temperature` and `--guidance` given: choose those on a later draw, with `--cases` to run only
the cases being tuned) scored by
`weightgen.evaluate.evaluate_samples`. The from-scratch reference of a pair is the zoo's own models
of that (task, arch): trained from scratch with the zoo's recipe and, for held-out tasks and archs,
never seen by the generator. Beside the generator, on every seen-arch pair, the closed-form
baselines `mean` and `mean+gaussian` (they need the arch's seen-task models, so unseen archs have
none: the generator is the only way to get those weights). Also: the prompt check (samples for task
A scored on task B, same k, other digits), fine-tuning speed from generated vs random starts on
`--finetune` unseen-arch held-task pairs, the share of finite samples, and sampling speed. The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from weightgen.evaluate import EvalConfig, evaluate_samples, score_flat
from weightgen.generators.diffusion import SAMPLERS
from weightgen.home import load_generator
from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.zoo.store import ZooStore

CASES = ("seen", "seen_arch_held_task", "unseen_arch_seen_task", "unseen_arch_held_task")


def pairs_by_case(store: ZooStore, n: int, draw: int) -> dict[str, list[tuple[str, str]]]:
    held_t, held_a = store.held_out, store.held_out_archs
    pairs = sorted({(r["task"], r["arch"]) for r in store.records if r["task"].startswith("digits-subset")})
    out = {c: [] for c in CASES}
    for t, a in pairs:
        case = ("unseen_arch_" if a in held_a else "seen_arch_" if t in held_t else "") + (
            "held_task" if t in held_t else "seen_task")
        out[{"seen_task": "seen", "seen_arch_seen_task": "seen"}.get(case, case)].append((t, a))
    rng = random.Random(draw)
    return {c: sorted(rng.sample(p, min(n, len(p)))) for c, p in out.items()}


def other_task(task_id: str, store: ZooStore) -> str:
    """A task B with the same k as A and other digits (the most different of the zoo's tasks)."""
    a = set(get_task(task_id).classes)
    same_k = sorted({r["task"] for r in store.records if r["task"].startswith("digits-subset")
                     and len(get_task(r["task"]).classes) == len(a) and r["task"] != task_id})
    return min(same_k, key=lambda t: (len(a & set(get_task(t).classes)), t))


def _m(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-widths")
    ap.add_argument("--generator", "--diffusion", dest="generator", required=True,
                    help="a trained SetDiffusionPipeline or SetARPipeline folder")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--finetune", type=int, default=4)
    ap.add_argument("--steps", type=int, help="diffusion sampling steps (default: the pipeline's)")
    ap.add_argument("--temperature", type=float, help="initial-noise scale (default: the pipeline's)")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    ap.add_argument("--sampler", choices=("ddim", "dpm"), help="swap the pipeline's scheduler (default: its own)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                    help="run only these cases (for choosing settings on a later --draw)")
    ap.add_argument("--out", default="runs/bench/archs_rows.json")
    args = ap.parse_args()
    start = time.perf_counter()
    store = ZooStore(args.zoo)
    pipe, kind, _ = load_generator(args.generator, None)
    if type(pipe).__name__ not in ("SetDiffusionPipeline", "SetARPipeline"):
        raise SystemExit(f"{args.generator} is not a neuron-set generator; only those sample unseen widths")
    if args.sampler:
        pipe.scheduler = SAMPLERS[args.sampler].from_config(pipe.scheduler.config)
    if (args.steps is not None or args.sampler) and kind != "diffusion":
        raise SystemExit("--steps and --sampler are diffusion settings; the AR generator takes one step per neuron")
    given = {"num_inference_steps": args.steps, "temperature": args.temperature, "guidance_scale": args.guidance}
    sampling = {k: v for k, v in given.items() if v is not None}
    cfg = EvalConfig()
    rows, finite, total = [], 0, 0
    cases = {c: p for c, p in pairs_by_case(store, args.pairs, args.draw).items() if c in args.cases}
    ft_left = args.finetune
    for case, pairs in cases.items():
        for i, (tid, slug) in enumerate(pairs):
            task, arch = get_task(tid), store.archs[slug]
            out = pipe(task.description, arch=arch, num_samples=args.samples, generator=0, **sampling)
            finite, total = finite + out.num_finite, total + len(out.flat)
            seen_arch = not case.startswith("unseen_arch")
            finetune = case == "unseen_arch_held_task" and ft_left > 0
            ft_left -= finetune
            rep = evaluate_samples(arch, out.flat, task, store=store, from_scratch=finetune, finetune=finetune,
                                   baselines=["mean", "mean+gaussian"] if seen_arch else False, cfg=cfg)
            gen, zoo = rep["generated"]["stats"], rep["zoo"]["stats"]
            other = other_task(tid, store)
            acc_b = score_flat(arch, out.flat, get_task(other), cfg.split)["acc"].nanmean().item()
            row = {"case": case, "task": tid, "arch": slug, "acc": gen["mean"], "median": gen["median"],
                   "zoo_mean": zoo["mean"], "zoo_median": zoo["median"], "ratio": gen["mean"] / zoo["mean"],
                   "median_ratio": gen["median"] / zoo["median"], "as_new": rep["generated"]["novelty"]["as_new"],
                   "finite": gen["share_finite"], "other_task": other, "acc_on_other": acc_b,
                   "finetune_speedup": (rep["finetune"] or {}).get("speedup")}
            for name in ("mean", "mean+gaussian"):
                b = (rep["baselines"] or {}).get(name)
                if b:
                    row[name] = {"acc": b["stats"]["mean"], "ratio": b["stats"]["mean"] / zoo["mean"],
                                 "as_new": b["novelty"]["as_new"]}
            rows.append(row)
            extra = " ".join(f"{n} {row[n]['ratio']:.3f}" for n in ("mean", "mean+gaussian") if n in row)
            print(f"[{case} {i + 1}/{len(pairs)}] {tid} {arch.describe()}: ratio {row['ratio']:.3f} as-new "
                  f"{row['as_new']} on {other} {acc_b:.3f} {extra}", flush=True)

    # sampling speed: one call of 512 networks of an unseen width, the pipeline's default settings
    arch = ArchSpec("mlp", (64, 48, 3))
    pipe("classify digits 3, 5 and 8", arch=arch, num_samples=8, generator=1)  # warm-up
    t0 = time.perf_counter()
    pipe("classify digits 3, 5 and 8", arch=arch, num_samples=512, generator=1, **sampling)
    per_s = 512 / (time.perf_counter() - t0)

    summary: dict = {}
    for case in CASES:
        r = [x for x in rows if x["case"] == case]
        if not r:
            continue
        s = {"pairs": len(r), "mean_ratio": _m([x["ratio"] for x in r]), "min_ratio": min(x["ratio"] for x in r),
             "median_ratio_of_medians": statistics.median(x["median_ratio"] for x in r),
             "as_new": _m([x["as_new"] for x in r]),
             "prompt_drop": _m([x["acc"] - x["acc_on_other"] for x in r]),
             "finetune_speedup_median": statistics.median(v) if (v := [x["finetune_speedup"] for x in r
                                                                      if x["finetune_speedup"]]) else None}
        for name in ("mean", "mean+gaussian"):
            b = [x[name] for x in r if name in x]
            if b:
                s[name] = {"mean_ratio": _m([x["ratio"] for x in b]), "min_ratio": min(x["ratio"] for x in b),
                           "as_new": _m([x["as_new"] for x in b])}
        summary[case] = s
    result = {"zoo": args.zoo, "generator": args.generator, "kind": kind, "samples": args.samples, "draw": args.draw,
              "sampling": sampling | ({"sampler": args.sampler} if args.sampler else {}), "cases": summary, "finite_share": finite / max(total, 1),
              "samples_per_s": per_s, "minutes": (time.perf_counter() - start) / 60}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result | {"rows": rows}))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
