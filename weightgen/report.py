"""`weightgen report DIR`: report.md and PNG plots from the report.json that `sample` or `eval` wrote.

Two plots per (task, arch) evaluation: a histogram of accuracy for the generated models beside the
zoo's, the random inits', the from-scratch models' and every baseline's; and accuracy against
novelty, in weights (distance to the nearest zoo model after permutation alignment) and in
behaviour (disagreement with the nearest zoo model on the task's probe set, beside the zoo's
leave-one-out median): a memorising generator sits at ~0 on both, next to the noise baseline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from weightgen import atomic
from weightgen.errors import WeightgenError

# fixed colours, so a group looks the same in every plot and report
COLOURS = {"generated": "#d62728", "zoo": "#1f77b4", "random_init": "#7f7f7f", "scratch": "#2ca02c",
           "noise": "#ff7f0e", "average": "#9467bd", "gaussian": "#8c564b", "retrieval": "#e377c2",
           "mean": "#17becf", "mean+gaussian": "#bcbd22", "trained": "#1f77b4", "base": "#7f7f7f",
           "multitask": "#9467bd"}  # the last three: LoRA reports (trained LoRAs take the zoo's colour)


def load_reports(folder: str | Path) -> list[dict]:
    """The evaluate_samples reports in FOLDER/report.json (written by `sample` or `eval`)."""
    path = Path(folder) / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightgenError(f"no report.json in {folder}; run `weightgen sample` or `weightgen eval` first") from e
    except (OSError, json.JSONDecodeError) as e:
        raise WeightgenError(f"{path} is not a readable JSON report") from e
    if isinstance(data, dict) and "groups" in data:
        reports = data["groups"]
    elif isinstance(data, dict) and "report" in data:
        reports = [data["report"]] if data["report"] else []
    else:
        raise WeightgenError(f"{path} is not a weightgen report (no 'report' or 'groups' key)")
    if not reports:
        raise WeightgenError(f"{path} holds no evaluation (the samples were not evaluated), so there is nothing to plot")
    return reports


def groups(report: dict) -> dict[str, dict]:
    """name -> group of models ({"stats", "acc", "novelty"}) for every group the report holds."""
    out = {name: report.get(name) for name in ("generated", "zoo", "trained", "scratch", "random_init")}
    out.update(report.get("baselines") or {})
    return {k: v for k, v in out.items() if v}


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def plot(report: dict, folder: Path, stem: str) -> list[Path]:
    """Write STEM-accuracy.png and STEM-novelty.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    metric = report.get("metric", "accuracy")
    found = groups(report)
    title = f"{report['task']} — {report['arch']}"
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    every = _finite(v for g in found.values() for v in g["acc"])
    low = min(every) if every else 0.0
    bins = [low + (1.0 - low) * i / 30 for i in range(31)] if low < 1.0 else 30
    for name, g in found.items():
        vals = _finite(g["acc"])
        if vals:
            ax.hist(vals, bins=bins, histtype="step", linewidth=2, color=COLOURS.get(name), label=f"{name} (n={len(vals)})",
                    density=True)
    ax.set_xlabel(f"test {metric}")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    paths.append(_save(fig, folder / f"{stem}-accuracy.png"))
    plt.close(fig)

    # left: distance in weights after alignment; right: disagreement on the probe, with the zoo's
    # leave-one-out median (models right of it are "as new as a fresh training run")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    panels = (("distance", "relative distance to the nearest zoo model (aligned)", None),
              ("disagreement", "disagreement with the nearest zoo model (probe)",
               (report.get("probe") or {}).get("loo_disagreement_median")))
    for ax, (key, label, line) in zip(axes, panels):
        drawn = 0
        for name, g in found.items():
            vals = ((g.get("novelty") or {}).get(key) or {}).get("per_model")
            pairs = [(d, a) for d, a in zip(vals or [], g["acc"]) if d is not None and a is not None]
            if pairs:
                ax.scatter(*zip(*pairs), s=18, alpha=0.7, color=COLOURS.get(name), label=name,
                           marker="*" if name == "generated" else "o")
                drawn += 1
        if line is not None:
            ax.axvline(line, color="#1f77b4", linestyle="--", linewidth=1, label="zoo leave-one-out median")
        ax.set_xlabel(f"novelty: {label}")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no zoo to measure novelty against", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel(f"test {metric}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, folder / f"{stem}-novelty.png"))
    plt.close(fig)
    return paths


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_report(folder: str | Path) -> Path:
    """FOLDER/report.md with one section per evaluation and its two plots beside it."""
    folder = Path(folder)
    lines = ["# weightgen report", ""]
    for i, report in enumerate(load_reports(folder)):
        stem = f"{report['task']}-{i}"
        pngs = plot(report, folder, stem)
        lines += [f"## {report['task']} with {report['arch']}", ""]
        if report.get("unseen"):
            lines += ["The generator never saw this task (held out or absent from its zoo).", ""]
        probe = report.get("probe")
        if probe:
            lines += [f"Probe: {probe['size']} examples; the zoo errs on {_f(probe['zoo_error_median'])} of them "
                      f"(median); zoo leave-one-out: max wrong-set IoU {_f(probe['loo_iou_median'])}, disagreement "
                      f"{_f(probe['loo_disagreement_median'])}. As new as a fresh training run: {probe['as_new_rule']}.", ""]
        lines += [f"| models | n | finite | mean {report['metric']} | median | min | max | nearest-zoo distance "
                  "(median) | probe max wrong-set IoU (median) | probe disagreement (median) | as new |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, g in groups(report).items():
            st, nov = g["stats"], g.get("novelty") or {}
            dist = (nov.get("distance") or {}).get("median")
            iou = (nov.get("probe_iou") or {}).get("median")
            dis = (nov.get("disagreement") or {}).get("median")
            lines.append(f"| {name} | {st['n']} | {_f(st['share_finite'])} | {_f(st['mean'])} | {_f(st['median'])} | "
                         f"{_f(st['min'])} | {_f(st['max'])} | {_f(dist)} | {_f(iou)} | {_f(dis)} | {_f(nov.get('as_new'))} |")
        ft = report.get("finetune")
        if ft:
            lines += ["", f"Fine-tuning to {ft['target']:.4f}: median {ft['generated']['median_steps']:.0f} steps "
                          f"from generated starts vs {ft['random']['median_steps']:.0f} from random "
                          f"(speedup {ft['speedup']:.1f}x)."]
        lines += [""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
        lines += [f"- {n}" for n in report.get("notes", [])] + [""]
    path = folder / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path
