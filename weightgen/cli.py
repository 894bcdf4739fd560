"""The `weightgen` command line (typer + rich).

Bad input raises a `WeightgenError`; `main()` prints its one sentence and exits with status 2.
Under accelerate: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m weightgen.cli zoo build CONFIG`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from weightgen.cli_checks import (
    ABORTS,
    USAGE_ERRORS,
    check_path,
    check_report_path,
    check_text,
    one_line,
)
from weightgen.errors import WeightgenError, shorten
from weightgen.sampling import check_sampling_args

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generate neural-network weights from text.")
# piped output (logs, CI) gets room for the tables instead of rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 120)


@app.command("parse")
def parse(
    prompt: str = typer.Argument(..., help='A task in plain English, e.g. "tell 4s apart from 9s with an MLP 64-16-2".'),
    arch: str = typer.Option(None, "--arch", help="Architecture text, e.g. 'MLP 64-32-2, ReLU' (overrides the prompt's)."),
    generator: Path = typer.Option(None, "--generator", help="Say whether this generator saw the arch (default: the "
                                   "quickstart diffusion generator, if built)."),
):
    """Show how weightgen reads a prompt: the task, its data, the architecture, and whether a generator
    has seen that architecture or would sample it as a new one."""
    from weightgen.specs import ArchSpec, find_arch
    from weightgen.tasks import TaskSpec

    check_text("the prompt", prompt)
    check_text("--arch", arch)
    task = TaskSpec.from_prompt(prompt)
    spec = ArchSpec.parse(arch) if arch else find_arch(prompt)[0]
    source = "--arch" if arch else "prompt"
    if spec is None:
        spec, source = task.default_arch(), "task default"
    if (spec.in_dim, spec.out_dim) != (task.in_dim, task.out_dim):
        raise WeightgenError(f"{spec.describe()} does not fit task {task.id}, "
                             f"which has {task.in_dim} inputs and {task.out_dim} outputs")
    table = Table(show_header=False)
    table.add_row("task", task.id)
    table.add_row("descriptions", "\n".join(task.descriptions))
    sizes = ", ".join(f"{s} {len(task.split(s)[0])}" for s in ("train", "val", "test"))
    table.add_row("data", f"{task.in_dim} inputs, {task.out_dim} outputs; {sizes}")
    table.add_row("arch", f"{spec.describe()} ({source}), {spec.layout().numel:,} parameters")
    from weightgen.home import arch_status

    status = arch_status(spec, generator)
    if status:
        table.add_row("generator", status)
    console.print(table)


@app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="Checkpoint file or hub-style folder.")):
    """Print a checkpoint's arch, task, prompt and metadata (or a PEFT adapter folder's)."""
    from weightgen.checkpoint import load_state_dict
    from weightgen.specs import ArchSpec
    from weightgen.zoo.lora_adapter import META_NAME, read_adapter

    if check_path(path).is_dir() and (path / META_NAME).is_file():  # a LoRA adapter written by `sample` or `zoo export`
        factors, meta = read_adapter(path)
        table = Table(show_header=False)
        table.add_row("adapter", f"PEFT LoRA, {sum(f.numel() for f in factors.values()):,} numbers in {len(factors)} factors")
        for k, v in sorted(meta.items()):
            table.add_row(k, escape(str(v)))
        console.print(table)
        return
    sd, meta = load_state_dict(path)
    arch = ArchSpec.from_dict(meta["arch"])
    table = Table(show_header=False)
    table.add_row("arch", arch.describe())
    table.add_row("parameters", f"{arch.layout().numel:,} in {len(sd)} tensors")
    task = meta.get("task") or {}
    # metadata is whatever the file says: shown as inert text (no rich markup, no terminal escapes)
    table.add_row("task", _shown(f"{task.get('id', '-')}: {task.get('description', '')}"))
    table.add_row("prompt", _shown(meta.get("prompt") or "-"))
    for k, v in meta.items():
        if k not in ("arch", "task", "prompt"):
            table.add_row(_shown(k), _shown(v))
    console.print(table)


def _shown(value) -> str:
    return escape(shorten(str(value), 2_000))


@app.command("sample")
def sample(
    prompt: str = typer.Argument(..., help='What the network should do, e.g. "classify digits 3, 5 and 8 with an MLP 64-32-3".'),
    arch: str = typer.Option(None, "--arch", help="Architecture text (default: the prompt's, else the task's default)."),
    generator: Path = typer.Option(None, "--generator", help="Generator folder (default: the one `weightgen quickstart` built)."),
    kind: str = typer.Option(None, "--kind", help="ar | diffusion (default: read from --generator, else diffusion)."),
    num_samples: int = typer.Option(8, "-n", "--num-samples", help="How many networks to generate."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same samples."),
    steps: int = typer.Option(None, "--steps", help="Diffusion sampling steps (default: the generator's)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (diffusion, neuron-set AR; default 1 = none)."),
    temperature: float = typer.Option(None, "--temperature", help="AR: softmax temperature; diffusion: starting-noise scale (default 1)."),
    out: Path = typer.Option(None, "--out", help="Folder for the checkpoints (default runs/samples/TASK-ARCH)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Write the checkpoints without evaluating them."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
):
    """Generate networks for a prompt, write them as checkpoints, and evaluate them on the task."""
    import json as _json

    check_text("the prompt", prompt)  # every argument is checked before anything heavy is imported or loaded
    check_text("--arch", arch)
    check_sampling_args(num_samples, seed, steps, guidance, temperature)
    from weightgen.generate import check_writable
    from weightgen.home import load_generator
    from weightgen.sampling import default_out, is_lora, sample_prompt

    if out is not None:
        check_writable(out)  # fail before loading anything
    _quiet_loading()
    pipe, found, path = load_generator(generator, kind)
    if not as_json and not is_lora(pipe) and arch is None and find_arch_in(prompt) is None:
        console.print(f"arch: {pipe.resolve(prompt, None).arch.describe()} (the task's default; pass --arch for another)")
    out = out or default_out(pipe, prompt, arch)
    result = sample_prompt(pipe, found, path, prompt, out, arch=arch, num_samples=num_samples, seed=seed, steps=steps,
                           guidance=guidance, temperature=temperature, evaluate=not no_eval)
    if as_json:
        print(_json.dumps(result, allow_nan=False))
    elif is_lora(pipe):
        _print_adapter_report(result, out)
    else:
        _print_sample_report(result)


def _print_adapter_report(result: dict, out: Path) -> None:
    console.print(f"wrote {result['num_finite']} PEFT adapters of {escape(result['base'])} to {escape(str(out))} "
                  f"(best by validation accuracy: {escape(str(result['best']))})")
    report = result["report"]
    if report:
        table = Table("adapters", "n", "mean acc", "min", "max", "as new")
        for name, g in [("generated", report["generated"]), ("trained LoRA", report["trained"]), *report["baselines"].items()]:
            st = g["stats"]
            table.add_row(name, str(st["n"]), _fmt(st["mean"]), _fmt(st["min"]), _fmt(st["max"]), _fmt(g["novelty"]["as_new"], 2))
        console.print(table)
        console.print(f"generated / trained: {_fmt(report['ratio_to_trained'], 3)}; margins: " + ", ".join(
            f"{k} {v:+.3f}" for k, v in report["margins"].items() if v is not None))
    for note in result["notes"]:
        console.print(f"note: {escape(note)}")


def _quiet_loading() -> None:
    """No per-component loading bars from diffusers / transformers: the CLI shows its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def find_arch_in(prompt: str):
    from weightgen.specs import find_arch

    return find_arch(prompt)[0]


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _print_sample_report(result: dict) -> None:
    report = result["report"]
    console.print(f"{result['num_finite']} of {result['num_samples']} samples written to {result['out']}"
                  + (f"; best: {result['best']}" if result["best"] else ""))
    for note in result["notes"] + (report["notes"] if report else []):
        console.print(f"[yellow]note:[/] {escape(note)}")
    if report is None:
        return
    gen = report["generated"]
    table = Table(title=f"{report['task']} with {report['arch']} ({report['metric']}, {report['split']} split)")
    for col in ("sample", report["metric"], "nearest-zoo distance", "probe wrong-set IoU", "probe disagreement"):
        table.add_column(col, justify="right")
    none = [None] * len(gen["acc"])
    dist = (gen["novelty"]["distance"] or {}).get("per_model") or none
    iou = (gen["novelty"]["probe_iou"] or {}).get("per_model") or none
    dis = (gen["novelty"]["disagreement"] or {}).get("per_model") or none
    for i, (a, d, u, v) in enumerate(zip(gen["acc"], dist, iou, dis)):
        mark = " *" if i == report.get("best_sample") else ""
        table.add_row(f"{i}{mark}", _fmt(a), _fmt(d, 3), _fmt(u, 3), _fmt(v, 3))
    console.print(table)
    summary = Table(title="comparison (mean over models)")
    # medians of novelty: weight distance to the nearest zoo model, disagreement with it on the probe
    for col in ("models", "n", report["metric"], "median", "min", "max", "distance", "disagree", "as new"):
        summary.add_column(col, justify="right" if col != "models" else "left", no_wrap=col == "models")
    rows = [("generated", gen), ("zoo, same task and arch", report.get("zoo")),
            ("trained from scratch here", report.get("scratch")), ("random init", report.get("random_init"))]
    for name, group in rows:
        if group:
            st = group["stats"]
            nov = group["novelty"]
            dist = (nov["distance"] or {}).get("median")
            summary.add_row(name, str(st["n"]), _fmt(st["mean"]), _fmt(st["median"]), _fmt(st["min"]), _fmt(st["max"]),
                            _fmt(dist, 3), _fmt((nov["disagreement"] or {}).get("median"), 3), _fmt(nov["as_new"], 2))
    console.print(summary)
    console.print("* best sample by validation accuracy (saved as best/)")


def _print_groups(report: dict) -> None:
    """Every group of one evaluation (checkpoints, zoo, baselines) side by side: accuracy and probe novelty."""
    from weightgen.report import groups

    table = Table(title=f"{report['task']} with {report['arch']}: accuracy ({report['split']}) and novelty (probe)")
    for col in ("models", "n", report["metric"], "probe max wrong-set IoU", "probe disagreement", "as new"):
        table.add_column(col, justify="right" if col != "models" else "left")
    for name, g in groups(report).items():
        nov = g["novelty"]
        table.add_row("checkpoints" if name == "generated" else name, str(g["stats"]["n"]), _fmt(g["stats"]["mean"]),
                      _fmt((nov["probe_iou"] or {}).get("median"), 3), _fmt((nov["disagreement"] or {}).get("median"), 3),
                      _fmt(nov["as_new"], 2))
    console.print(table)


@app.command("eval")
def eval_cmd(
    paths: list[Path] = typer.Argument(..., help="Checkpoints (.safetensors), hub-style folders, or folders of them."),
    task: str = typer.Option(None, "--task", help="Task id or prompt (default: each checkpoint's metadata)."),
    zoo: Path = typer.Option(None, "--zoo", help="Zoo to compare against (zoo statistics and novelty)."),
    out: Path = typer.Option(Path("report.json"), "--out", help="Where to write the JSON report (`weightgen report` reads its folder)."),
    baselines: bool = typer.Option(False, "--baselines", help="Also score the baselines: noise, average, gaussian, the closed-form mean and mean+gaussian, "
                                   "retrieval (unseen tasks) and models trained from scratch (slower)."),
):
    """Score checkpoints on their task; writes report.json."""
    import json as _json

    check_text("--task", task)
    for path in paths:
        check_path(path)
    check_report_path(out)  # before the evaluation (and its imports), so a bad --out never throws results away
    from weightgen import atomic
    from weightgen.generate import evaluate_paths

    _quiet_loading()
    report = evaluate_paths(paths, task, zoo, baselines)
    atomic.write_text(out, _json.dumps(report, indent=1, allow_nan=False))
    table = Table(title=f"{len(report['checkpoints'])} checkpoints")
    for col in ("checkpoint", "task", "arch", "accuracy"):
        table.add_column(col)
    for c in report["checkpoints"]:
        table.add_row(escape(c["path"]), c["task"], c["arch"], _fmt(c["acc"]))
    console.print(table)
    if zoo is not None:
        for rep in report["groups"]:
            _print_groups(rep)
    console.print(f"report: {out}")


@app.command("quickstart")
def quickstart(
    num_samples: int = typer.Option(16, "-n", "--num-samples", help="Samples drawn for the held-out prompt."),
    out: Path = typer.Option(None, "--out", help="Folder for the samples (default runs/samples/quickstart[-lora])."),
    lora: bool = typer.Option(False, "--lora", help="The LoRA path instead: a LoRA zoo on a ViT base, a generator "
                              "over its adapters, PEFT adapters for a held-out shift."),
):
    """Build the default zoo, train the default generators into the cache folder (WEIGHTGEN_HOME,
    default ~/.cache/weightgen), then sample and evaluate a held-out prompt. Re-run to resume."""
    import time

    from weightgen.generate import check_writable, sample_to_folder, summary
    from weightgen.home import home, load_generator
    from weightgen.quickstart import lora_stages, run_stages, stages
    from weightgen.sampling import sample_prompt
    from weightgen.tasks import get_task
    from weightgen.zoo.store import ZooStore

    check_sampling_args(num_samples, 0)
    out = check_writable(out or Path("runs/samples/quickstart" + ("-lora" if lora else "")))
    start = time.perf_counter()
    _quiet_loading()
    all_stages, paths = lora_stages() if lora else stages()
    console.print(f"weightgen quickstart{' --lora' if lora else ''}: everything goes to {home()} "
                  "(set WEIGHTGEN_HOME to change it)")
    seconds = run_stages(all_stages, lambda line: console.rule(line))
    if lora:
        held = sorted(ZooStore(paths["zoo"]).held_out)
        prompt = get_task(held[0]).description
        console.rule(f"[{len(all_stages) + 1}/{len(all_stages) + 1}] PEFT adapters for a held-out shift: \"{prompt}\"")
        pipe, _, path = load_generator(paths["generator"], None)
        _print_adapter_report(sample_prompt(pipe, "diffusion", path, prompt, out, num_samples=num_samples), out)
        console.print(f"quickstart --lora done in {(time.perf_counter() - start) / 60:.1f} min")
        return
    # a held-out 3-class task: harder than a pair of digits, and the README's running example
    held = sorted(ZooStore(paths["zoo"]).held_out, key=lambda t: (abs(len(get_task(t).classes) - 3), t))
    task = get_task(held[0])
    prompt = task.description
    console.rule(f"[{len(all_stages) + 1}/{len(all_stages) + 1}] sample a held-out task: \"{prompt}\"")
    pipe, kind, path = load_generator(paths["diffusion"], "diffusion")
    run = sample_to_folder(pipe, kind, path, prompt, out, num_samples=num_samples, seed=0)
    _print_sample_report(summary(run, prompt, path, kind, 0, out))
    total = time.perf_counter() - start
    spent = ", ".join(f"{name.split(':')[0]} {s / 60:.1f} min" for name, s in seconds.items() if s)
    took = f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s"
    console.print(f"quickstart done in {took}" + (f" ({spent})" if spent else ""))
    console.print(f"next: weightgen sample \"classify digits 1, 4 and 7\" (uses {paths['diffusion']})")


@app.command("report")
def report_cmd(folder: Path = typer.Argument(..., help="A folder holding report.json (from `sample` or `eval --out`).")):
    """Write report.md and PNG plots (accuracy histogram; accuracy vs novelty) beside report.json."""
    from weightgen.report import write_report

    path = write_report(folder)
    console.print(f"wrote {path} and its plots")


def run_script(script_main, config_cls, argv: list[str]) -> None:
    """Entry point of a train/ script: `SCRIPT CONFIG [--set key=value ...]`, with bad input
    reported as one sentence and exit status 2, like the CLI."""
    from weightgen.config import load_config

    try:
        if not argv or argv[0].startswith("-"):
            raise WeightgenError("usage: SCRIPT CONFIG.yaml [--set key=value ...]")
        overrides = [v for flag, v in zip(argv[1::2], argv[2::2]) if flag == "--set"]
        if len(argv[1:]) != 2 * len(overrides):
            raise WeightgenError("after the config, only --set key=value pairs are accepted")
        script_main(load_config(config_cls, argv[0], overrides))
    except WeightgenError as e:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(one_line(str(e)))}")
        sys.exit(2)


def main() -> None:
    try:
        app(standalone_mode=False)
    except WeightgenError as e:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(one_line(str(e)))}")  # one line
        sys.exit(2)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except ABORTS:
        Console(stderr=True).print("aborted")
        sys.exit(130)


from weightgen.cli_zoo import zoo_app  # noqa: E402  (registers after `console` exists: it prints with it)

app.add_typer(zoo_app, name="zoo")

if __name__ == "__main__":
    main()
