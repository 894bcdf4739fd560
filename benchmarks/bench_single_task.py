"""Issue 15's single-task case: a generator trained on one task's independent-seed zoo
(configs/zoo/digits-single-independent.yaml: 200 MLPs 64-32-10 on all ten digits).

    python benchmarks/bench_single_task.py --zoo runs/zoo/digits-single-independent --diffusion DIR [--samples 64]

With one task there is no task structure to lean on: the generator must model the spread of
independently trained networks, whose per-coordinate statistics are meaningless before alignment.
Scored by `weightgen.evaluate.evaluate_samples` beside the baselines that need no generator: the
closed-form `mean` (of the aligned zoo; one network), `mean+gaussian`, the per-coordinate
`gaussian` and the aligned `average` of 16 models. Target: mean sample accuracy >= 0.97 of the
zoo's mean accuracy. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from weightgen.evaluate import evaluate_samples
from weightgen.generators.set_diffusion import SetDiffusionPipeline
from weightgen.zoo.store import ZooStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-single-independent")
    ap.add_argument("--diffusion", required=True)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    start = time.perf_counter()
    store = ZooStore(args.zoo)
    (task,), (arch,) = store.tasks(), list(store.archs.values())
    pipe = SetDiffusionPipeline.from_pretrained(args.diffusion)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(task.description, arch=arch, num_samples=args.samples, generator=0)
    rep = evaluate_samples(arch, out.flat, task, store=store, from_scratch=False,
                           baselines=["mean", "mean+gaussian", "gaussian", "average"])
    zoo = rep["zoo"]["stats"]["mean"]

    def row(group: dict) -> dict:
        s = group["stats"]
        return {"acc": s["mean"], "ratio": s["mean"] / zoo, "min": s["min"], "finite": s["share_finite"],
                "as_new": group["novelty"]["as_new"]}

    result = {"zoo": args.zoo, "task": task.id, "arch": arch.describe(), "zoo_models": rep["zoo"]["stats"]["n"],
              "zoo_acc": zoo, "generated": row(rep["generated"]),
              "baselines": {k: row(v) for k, v in (rep["baselines"] or {}).items()},
              "target_met": row(rep["generated"])["ratio"] >= 0.97, "minutes": (time.perf_counter() - start) / 60}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
