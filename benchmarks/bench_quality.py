"""Issue 14's quality benchmark: both generators beside every baseline, accuracy and probe novelty.

    python benchmarks/bench_quality.py [--diffusion DIR] [--ar DIR] [--zoo runs/zoo/digits-mlp]
        [--seen 20] [--seen-draw 0] [--hidden 32 64] [--samples 32] [--finetune-tasks 10] [--only diffusion|ar]
        [--seen-only] [--temperature T] [--scratch 8] [--out runs/bench/quality_rows.json]

Without --diffusion / --ar each generator is trained first with the real training script and its
default config (configs/generator/*-digits.yaml; its encoder must exist, see README "Generators").
Tasks: every held-out digits subset task of the zoo with k = 3..6 and `--seen` seen ones (fixed
seed), each with every `--hidden` arch (MLP 64-H-k). Every (task, arch) gets `--samples` samples per
generator, scored by `weightgen.evaluate.evaluate_samples`, and beside them, scored the same way:
the zoo's models (leave-one-out), `--scratch` models trained from scratch with the zoo's recipe
(seen and held-out tasks: what a generator that copies nothing looks like), the closed-form
conditional mean (`mean`), `mean+gaussian`, the per-task Gaussian and average, retrieval (held-out),
and per generator the noise baseline matched to its accuracy. Fine-tuning speed on the first
`--finetune-tasks` held-out tasks.

For every generator and every baseline, on seen and held-out tasks: accuracy ratios (seen: median
over pairs of median accuracy / zoo median; held-out: mean and min over pairs of mean accuracy /
from-scratch mean), the probe's max wrong-set IoU and disagreement with the nearest zoo model
(medians), and the share of models as new as a fresh training run (disagreement at least the zoo's
leave-one-out median; `weightgen.novelty`). Per generator a verdict line: accuracy and novelty,
each minus `mean+gaussian`'s, and whether the seen target (ratio >= 0.99 and >= 50% as new) holds.
The last line is JSON with all of it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generators import train  # noqa: E402  (the same trained-with-the-real-script helper)

from weightgen.evaluate import EvalConfig, evaluate_samples  # noqa: E402
from weightgen.specs import ArchSpec  # noqa: E402
from weightgen.tasks import get_task  # noqa: E402
from weightgen.text import TextEncoder  # noqa: E402
from weightgen.zoo.store import ZooStore  # noqa: E402


def subset_tasks(store: ZooStore, held_out: bool) -> list[str]:
    ids = sorted({r["task"] for r in store.records if r["held_out"] == held_out})
    return [t for t in ids if t.startswith("digits-subset") and 3 <= len(get_task(t).classes) <= 6]


def seen_draw(pool: list[str], n: int, draw: int) -> list[str]:
    """The `draw`-th of disjoint random sets of n seen tasks. Draw 0 is the benchmark's own set; the
    later ones are for choosing sampling settings without looking at it (validation)."""
    rest = list(pool)
    for k in range(draw + 1):
        chosen = sorted(random.Random(k).sample(rest, n))
        rest = [t for t in rest if t not in chosen]
    return chosen


def load(kind: str, path: str | None):
    if path:  # any saved pipeline of that kind (the neuron-set SetDiffusionPipeline too), its class read from the folder
        from weightgen.home import load_generator

        return load_generator(path, "diffusion" if kind == "diffusion" else "ar")[0]
    if kind == "diffusion":
        from weightgen.generators.diffusion import WeightDiffusionPipeline as cls

        path = path or train("train_diffusion", "diffusion-digits.yaml", [])
    else:
        from weightgen.generators.autoregressive import WeightARPipeline as cls

        path = path or train("train_autoregressive", "ar-digits.yaml", [])
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stat(group: dict | None, name: str):
    """A statistic of a report group (evaluate_samples) that may be absent."""
    return ((group or {}).get("stats") or {}).get(name)


def _novelty(group: dict | None, name: str):
    """The median of a group's novelty measure ("probe_iou", "disagreement", "distance"), or None."""
    return (((group or {}).get("novelty") or {}).get(name) or {}).get("median")


def _cells(group: dict | None) -> dict | None:
    """What the summary needs of one group of models on one (task, arch)."""
    if not group:
        return None
    nov = group.get("novelty") or {}
    return {"mean": _stat(group, "mean"), "median": _stat(group, "median"), "min": _stat(group, "min"),
            "finite": _stat(group, "share_finite"), "n": _stat(group, "n"),
            "iou": _novelty(group, "probe_iou"), "disagreement": _novelty(group, "disagreement"),
            "distance": _novelty(group, "distance"), "as_new": nov.get("as_new")}


# groups every row carries: the generators, then the references and baselines (scored once per pair;
# the noise baseline is matched to each generator's own accuracy, so it is one per generator)
REFERENCES = ("zoo", "scratch", "mean", "mean+gaussian", "gaussian", "average", "retrieval")


def run(pipes: dict, store: ZooStore, jobs: list[tuple[str, ArchSpec, bool, bool]], n: int, text,
        sampling: dict, cfg: EvalConfig) -> dict:
    rows, seconds = [], dict.fromkeys(pipes, 0.0)
    for i, (tid, arch, held, finetune) in enumerate(jobs):
        task = get_task(tid)
        row = {"task": tid, "arch": arch.slug, "held_out": held, "groups": {}, "finetune_speedup": {}}
        first = True
        for kind, pipe in pipes.items():
            start = time.perf_counter()
            out = pipe(task.description, arch=arch, num_samples=n, generator=0, **sampling)
            seconds[kind] += time.perf_counter() - start
            # every baseline and the from-scratch reference once per pair (with the first generator);
            # the noise baseline again for each generator, matched to its accuracy
            rep = evaluate_samples(arch, out.flat, task, store=store, baselines=True if first else ["noise"],
                                   finetune=finetune, from_scratch=first or finetune, encoder=text, cfg=cfg)
            row["groups"][kind] = _cells(rep["generated"])
            row["groups"][f"noise@{kind}"] = _cells((rep["baselines"] or {}).get("noise"))
            row["finetune_speedup"][kind] = (rep["finetune"] or {}).get("speedup")
            if first:
                row["groups"] |= {name: _cells(rep[name] if name in ("zoo", "scratch") else
                                               (rep["baselines"] or {}).get(name)) for name in REFERENCES}
                row["probe"] = rep["probe"]
            first = False
        rows.append(row)
        line = " ".join(f"{k} {v['mean']:.4f}/{_num(v['disagreement'], 3)}/{_num(v['as_new'], 2)}"
                        for k, v in row["groups"].items() if v and v["mean"] is not None)
        print(f"[{i + 1}/{len(jobs)}] {tid} {arch.describe()} (acc/disagreement/as-new) {line}", flush=True)
    return {"rows": rows, "samples_per_s": {k: len(jobs) * n / s for k, s in seconds.items()}}


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def group_summary(rows: list[dict], name: str) -> dict:
    """One group's figures over the seen and the held-out pairs:
    - seen_ratio: median over pairs of (group median accuracy / zoo median accuracy), the issue's
      seen statistic; seen_mean_ratio: the same with means;
    - held_out_mean_ratio / held_out_min_ratio: mean and min over pairs of group mean / from-scratch mean;
    - iou, disagreement: medians over pairs of the group's median probe IoU and disagreement;
    - as_new: mean over pairs of the share of models as new as a fresh training run."""
    out = {}
    for part, held in (("seen", False), ("held_out", True)):
        pairs = [(r["groups"].get(name), r["groups"]["zoo"], r["groups"]["scratch"]) for r in rows if r["held_out"] == held]
        pairs = [(g, z, s) for g, z, s in pairs if g and g["mean"] is not None]
        if not pairs:
            continue
        if not held:
            out["seen_ratio"] = _med([g["median"] / z["median"] for g, z, _ in pairs if z and z["median"]])
            out["seen_mean_ratio"] = _med([g["mean"] / z["mean"] for g, z, _ in pairs if z and z["mean"]])
            out["seen_ratio_at_or_above_1_share"] = _mean([g["median"] >= z["median"] for g, z, _ in pairs if z and z["median"]])
        ratios = [g["mean"] / s["mean"] for g, _, s in pairs if s and s["mean"]]
        ref = "held_out" if held else "seen_scratch"  # held-out ratios are to from-scratch by definition
        out[f"{ref}_mean_ratio"] = _mean(ratios)
        out[f"{ref}_min_ratio"] = min(ratios) if ratios else None
        out[f"{part}_acc_mean"] = _mean([g["mean"] for g, _, _ in pairs])
        out[f"{part}_iou"] = _med([g["iou"] for g, _, _ in pairs])
        out[f"{part}_disagreement"] = _med([g["disagreement"] for g, _, _ in pairs])
        out[f"{part}_distance"] = _med([g["distance"] for g, _, _ in pairs])
        out[f"{part}_as_new"] = _mean([g["as_new"] for g, _, _ in pairs])
        out[f"{part}_finite"] = _mean([g["finite"] for g, _, _ in pairs])
        out[f"{part}_pairs"] = len(pairs)
    return out


def summarise(rows: list[dict], kinds: list[str]) -> dict:
    names = [n for n in rows[0]["groups"] if n not in kinds and not n.startswith("noise@")] if rows else []
    out: dict = {"groups": {n: group_summary(rows, n) for n in names}}
    for kind in kinds:
        g = group_summary(rows, kind) | {"noise": group_summary(rows, f"noise@{kind}")}
        held = [r for r in rows if r["held_out"]]
        margin = [r["groups"][kind]["mean"] - r["groups"]["retrieval"]["mean"] for r in held
                  if r["groups"].get("retrieval") and r["groups"][kind]["mean"] is not None]
        g["held_out_retrieval_margin"] = _mean(margin)
        g["held_out_beats_retrieval_share"] = _mean([m > 0 for m in margin])
        g["finetune_speedup_median"] = _med([r["finetune_speedup"][kind] for r in held])
        mg = out["groups"].get("mean+gaussian") or {}
        # the verdict: what the generator adds over a closed-form mean plus Gaussian spread
        g["verdict_vs_mean+gaussian"] = {
            key: (g[key] - mg[key]) if g.get(key) is not None and mg.get(key) is not None else None
            for key in ("seen_ratio", "held_out_mean_ratio", "seen_as_new", "held_out_as_new",
                        "seen_disagreement", "held_out_disagreement")}
        g["seen_target_met"] = bool((g.get("seen_ratio") or 0) >= 0.99 and (g.get("seen_as_new") or 0) >= 0.5)
        out[kind] = g
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--diffusion", help="a trained WeightDiffusionPipeline folder (default: train one now)")
    ap.add_argument("--ar", help="a trained WeightARPipeline folder (default: train one now)")
    ap.add_argument("--only", choices=["diffusion", "ar"])
    ap.add_argument("--out", default="runs/bench/quality_rows.json", help="every (task, arch) row, as JSON")
    ap.add_argument("--seen", type=int, default=20)
    ap.add_argument("--seen-draw", type=int, default=0,
                    help="which disjoint draw of seen tasks (0 = the benchmark's; 1, 2, ... for validation)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--finetune-tasks", type=int, default=10)
    ap.add_argument("--max-held-out", type=int, default=0, help="0 = every held-out task")
    ap.add_argument("--seen-only", action="store_true", help="skip the held-out tasks (a quick seen-task run)")
    ap.add_argument("--temperature", type=float, help="sampling temperature of both generators (default: theirs, 1)")
    ap.add_argument("--scratch", type=int, default=8, metavar="N",
                    help="models trained from scratch per (task, arch), seen and held-out (the non-copying reference)")
    args = ap.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    store = ZooStore(args.zoo)
    held = subset_tasks(store, True)
    held = [] if args.seen_only else held[: args.max_held_out] if args.max_held_out else held
    seen = seen_draw(subset_tasks(store, False), args.seen, args.seen_draw)
    ft = set(random.Random(1).sample(held, min(args.finetune_tasks, len(held))))
    jobs = [(t, ArchSpec("mlp", (64, h, get_task(t).out_dim)), t in held, t in ft)
            for t in seen + held for h in args.hidden]
    kinds = [k for k in ("diffusion", "ar") if args.only in (None, k)]
    pipes = {k: load(k, getattr(args, k)) for k in kinds}
    sampling = {} if args.temperature is None else {"temperature": args.temperature}
    res = run(pipes, store, jobs, args.samples, TextEncoder(), sampling, EvalConfig(n_scratch=args.scratch))
    summary = summarise(res["rows"], kinds)
    sc, zoo = summary["groups"]["scratch"], summary["groups"]["zoo"]
    # the metric check on this zoo: fresh trainings against the zoo's leave-one-out (a copy scores
    # IoU 1, disagreement 0 by construction; tests/test_probe.py checks it)
    summary["metric_check"] = {
        "seen_scratch_iou": sc.get("seen_iou"), "seen_scratch_disagreement": sc.get("seen_disagreement"),
        "seen_zoo_loo_iou": zoo.get("seen_iou"), "seen_zoo_loo_disagreement": zoo.get("seen_disagreement"),
        "seen_scratch_as_new": sc.get("seen_as_new"),
        "scratch_iou_at_least_0.10_below_1": (sc.get("seen_iou") or 1.0) <= 0.90,
        "probe_zoo_error_median": _med([(r["probe"] or {}).get("zoo_error_median") for r in res["rows"]]),
        "probe_zoo_error_min": min(((r["probe"] or {}).get("zoo_error_median") or 1.0) for r in res["rows"]),
    }
    result = {"zoo": args.zoo, "samples": args.samples, "seen_tasks": seen, "held_out_tasks": held,
              "archs_hidden": args.hidden, "scratch_per_pair": args.scratch, "sampling": sampling,
              "samples_per_s": res["samples_per_s"], "minutes": (time.perf_counter() - start) / 60, **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result | {"rows": res["rows"]}))
    for kind in kinds:
        v = summary[kind]["verdict_vs_mean+gaussian"]
        print(f"verdict {kind}: accuracy minus mean+gaussian's: seen ratio {v['seen_ratio']:+.4f}, held-out ratio "
              f"{(v['held_out_mean_ratio'] or 0):+.4f}; novelty (as-new share) minus mean+gaussian's: seen "
              f"{(v['seen_as_new'] or 0):+.3f}, held-out {(v['held_out_as_new'] or 0):+.3f}; seen target "
              f"(ratio >= 0.99 and >= 50% as new) {'met' if summary[kind]['seen_target_met'] else 'NOT met'}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
