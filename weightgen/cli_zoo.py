"""`weightgen zoo ...`: build, describe and export model zoos (MLP zoos and LoRA zoos alike)."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from weightgen.errors import WeightgenError

zoo_app = typer.Typer(no_args_is_help=True, help="Build and read model zoos.")


def _console():
    from weightgen.cli import console

    return console


@zoo_app.command("build")
def zoo_build(
    config: Path = typer.Argument(..., help="Zoo config YAML, e.g. configs/zoo/digits-mlp.yaml."),
    out: Path = typer.Option(None, "--out", help="Zoo folder (default runs/zoo/NAME)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set epochs=5 --set tasks.subsets_per_k=3."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary."),
):
    """Train a zoo of many small networks at once; re-running resumes an interrupted build."""
    from weightgen.cli import _quiet_loading
    from weightgen.config import ZooConfig, load_config
    from weightgen.zoo.build import build_zoo

    _quiet_loading()
    cfg = load_config(ZooConfig, config, overrides)
    out = out or Path("runs/zoo") / cfg.name
    store = build_zoo(cfg, out, progress=not quiet)
    from accelerate import PartialState

    if not quiet and PartialState().is_main_process:
        _print_info(store)


@zoo_app.command("info")
def zoo_info(zoo: Path = typer.Argument(..., help="Zoo folder.")):
    """Tasks, archs, model counts and accuracy statistics of a zoo."""
    from weightgen.zoo.store import ZooStore

    _print_info(ZooStore(zoo))


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{sd:.3f}"


def _print_info(store) -> None:
    # ZooStore has checked zoo.json and every record against its plan; what is shown is still text
    # from a file, so it is escaped (a "[/]" in a name would be rich markup) and a record may lack
    # test metrics (it then counts as a model, without an accuracy)
    store.check_complete()
    m, records = store.manifest, store.records
    tasks = m["tasks"]
    _console().print(
        f"[bold]zoo {escape(m['name'])}[/] at {escape(str(store.root))}: {len(records)} models, "
        f"{len(tasks)} tasks ({len(m['held_out'])} held out), {len(m['archs']) or 1} archs, init {escape(m['config']['init'])}"
    )
    table = Table("arch", "models", "tasks", "test acc seen", "test acc held out", "min", "max")
    table.columns[0].no_wrap = True
    texts = {slug: arch["text"] for slug, arch in m["archs"].items()}
    if m.get("lora"):  # a LoRA zoo: every model is an adapter of the one base in ZOO/base
        lora = m["lora"]
        texts["lora"] = f"LoRA r{lora['rank']} ({', '.join(lora['target_modules'])}) on base {(lora.get('base_sha256') or '')[:12]}"
    for slug, text in texts.items():
        rs = [r for r in records if r["arch"] == slug]
        accs = [r["test_acc"] for r in rs if isinstance(r.get("test_acc"), (int, float))]
        table.add_row(
            escape(text), str(len(rs)), str(len({r["task"] for r in rs})),
            _stats([r["test_acc"] for r in rs if not r["held_out"] and isinstance(r.get("test_acc"), (int, float))]),
            _stats([r["test_acc"] for r in rs if r["held_out"] and isinstance(r.get("test_acc"), (int, float))]),
            f"{min(accs):.3f}" if accs else "-", f"{max(accs):.3f}" if accs else "-",
        )
    _console().print(table)
    kinds: dict[str, int] = {}
    for task in store.tasks():
        kind = "digits-" + "+".join(s for s, _ in task.shifts) if task.kind == "digits-shift" else task.kind if task.kind != "tabular" else task.id
        kinds[kind] = kinds.get(kind, 0) + 1
    _console().print("tasks: " + escape(", ".join(f"{k} ×{v}" for k, v in kinds.items())))
    if m["held_out"]:
        shown = ", ".join(m["held_out"][:8]) + (" …" if len(m["held_out"]) > 8 else "")
        _console().print(f"held out: {escape(shown)}")
    if store.held_out_archs:  # every model of these archs is held out, whatever its task
        texts = sorted(m["archs"][slug]["text"] for slug in store.held_out_archs if slug in m["archs"])
        _console().print(f"held-out archs ({len(texts)}): {escape('; '.join(texts))}")


@zoo_app.command("export")
def zoo_export(
    zoo: Path = typer.Argument(..., help="Zoo folder."),
    out: Path = typer.Option(..., "--out", help="With --id: a checkpoint file (.safetensors) or folder (a PEFT adapter "
                             "folder for a LoRA zoo). Otherwise a folder that gets one checkpoint per model."),
    model_id: int = typer.Option(None, "--id", help="Export this one model (see records.jsonl)."),
    tasks: list[str] = typer.Option([], "--task", help="Only models of this task (repeatable)."),
    archs: list[str] = typer.Option([], "--arch", help="Only models of this arch slug, e.g. mlp-64-32-3-relu (repeatable)."),
    split: str = typer.Option("all", "--split", help="all | seen | held-out."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Write zoo models as self-describing checkpoints (PEFT adapter folders for a LoRA zoo): one with
    --id, else every model that matches the filters, which `weightgen zoo import` reads back."""
    from weightgen.cli import _quiet_loading
    from weightgen.zoo.exporting import export_many, export_one, select
    from weightgen.zoo.store import ZooStore

    _quiet_loading()
    store = ZooStore(zoo)
    if model_id is not None:
        rec = store.record(model_id)
        path = export_one(store, rec, out)
        what = (f"a PEFT adapter of {store.root / 'base'}" if store.manifest.get("lora")
                else store.manifest["archs"][rec["arch"]]["text"])
        _console().print(f"wrote {escape(str(path))}: {escape(what)} for {escape(rec['task'])}, "
                         f"test acc {rec.get('test_acc', float('nan')):.4f}")
        return
    records = select(store, tasks=tasks, archs=archs, split=split)
    if out.exists() and any(out.iterdir()):
        raise WeightgenError(f"{out} is not empty; export into a new folder")
    from rich.progress import Progress

    with Progress(disable=quiet) as bar:
        job = bar.add_task("exporting", total=len(records))
        export_many(store, records, out, on_model=lambda: bar.advance(job))
    _console().print(f"wrote {len(records)} models of zoo {escape(store.manifest['name'])} to {escape(str(out))}")


@zoo_app.command("import")
def zoo_import(
    src: Path = typer.Argument(..., help="Folder of checkpoints: weightgen or plain safetensors, torch .pt/.pth/.bin "
                               "(read with weights_only=True)."),
    out: Path = typer.Option(..., "--out", help="New zoo folder."),
    labels: Path = typer.Option(None, "--labels", help="CSV or JSONL: file (relative to SRC), task, and optionally "
                                "seed, held_out and metrics such as test_acc."),
    arch: str = typer.Option(None, "--arch", help="Architecture of every file, e.g. 'MLP 64-32-10' (default: from "
                             "weightgen metadata, else inferred from the tensor shapes)."),
    activation: str = typer.Option("relu", "--activation", help="Activation of inferred MLPs: relu | gelu | tanh."),
    name: str = typer.Option(None, "--name", help="Zoo name (default: the folder name of --out)."),
    base: Path = typer.Option(None, "--base", help="PEFT adapters: the weightgen base folder they adapt (a LoRA "
                              "zoo's ZOO/base); SRC then holds adapter folders and a LoRA zoo is written."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary."),
):
    """Build a zoo from checkpoints trained elsewhere. Unreadable or unfitting files are skipped with
    a reason; models without metrics are evaluated on their task."""
    from rich.progress import Progress

    from weightgen.zoo.importing import candidates, evaluate_missing, read_source, write_zoo

    if activation not in ("relu", "gelu", "tanh"):
        raise WeightgenError(f"--activation must be relu, gelu or tanh, got '{activation}'")
    if (out / "zoo.json").exists():
        raise WeightgenError(f"{out} already holds a zoo; import into a new folder")
    lora = None
    with Progress(disable=quiet) as bar:
        job = bar.add_task("reading", total=None)
        if base is not None:  # a LoRA zoo from PEFT adapter folders (weightgen/zoo/importing_lora.py)
            from weightgen.cli import _quiet_loading
            from weightgen.zoo.importing_lora import evaluate_missing_adapters, read_adapters

            _quiet_loading()
            imported, lora = read_adapters(src, base, labels, on_file=lambda: bar.advance(job))
            if lora:
                evaluate_missing_adapters(imported.models, base, lora)
        else:
            paths = candidates(src)
            bar.update(job, total=len(paths))
            imported = read_source(src, labels, arch, activation, on_file=lambda: bar.advance(job), paths=paths)
            evaluate_missing(imported.models)
    store = write_zoo(imported, out, name or out.name, str(src), lora=lora, base=base)
    if quiet:
        return
    _console().print(f"imported {len(imported.models)} models into {escape(str(out))}; skipped {len(imported.skipped)}")
    if imported.skipped:
        table = Table("skipped file", "why")
        for file, why in imported.skipped[:50]:
            table.add_row(escape(file), escape(why))
        _console().print(table)
        if len(imported.skipped) > 50:
            _console().print(f"… and {len(imported.skipped) - 50} more")
    _print_info(store)
