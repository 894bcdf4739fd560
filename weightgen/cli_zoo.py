"""`weightgen zoo ...`: build, describe and export model zoos (MLP zoos and LoRA zoos alike)."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

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
    store.check_complete()
    m, records = store.manifest, store.records
    tasks = m["tasks"]
    _console().print(
        f"[bold]zoo {escape(m['name'])}[/] at {escape(str(store.root))}: {len(records)} models, "
        f"{len(tasks)} tasks ({len(m['held_out'])} held out), {len(m['archs']) or 1} archs, init {m['config']['init']}"
    )
    table = Table("arch", "models", "tasks", "test acc seen", "test acc held out", "min", "max")
    table.columns[0].no_wrap = True
    texts = {slug: arch["text"] for slug, arch in m["archs"].items()}
    if m.get("lora"):  # a LoRA zoo: every model is an adapter of the one base in ZOO/base
        lora = m["lora"]
        texts["lora"] = f"LoRA r{lora['rank']} ({', '.join(lora['target_modules'])}) on base {lora.get('base_sha256', '')[:12]}"
    for slug, text in texts.items():
        rs = [r for r in records if r["arch"] == slug]
        accs = [r["test_acc"] for r in rs]
        table.add_row(
            text, str(len(rs)), str(len({r["task"] for r in rs})),
            _stats([r["test_acc"] for r in rs if not r["held_out"]]),
            _stats([r["test_acc"] for r in rs if r["held_out"]]),
            f"{min(accs):.3f}", f"{max(accs):.3f}",
        )
    _console().print(table)
    kinds: dict[str, int] = {}
    for task in store.tasks():
        kind = "digits-" + "+".join(s for s, _ in task.shifts) if task.kind == "digits-shift" else task.kind if task.kind != "tabular" else task.id
        kinds[kind] = kinds.get(kind, 0) + 1
    _console().print("tasks: " + ", ".join(f"{k} ×{v}" for k, v in kinds.items()))
    if m["held_out"]:
        shown = ", ".join(m["held_out"][:8]) + (" …" if len(m["held_out"]) > 8 else "")
        _console().print(f"held out: {escape(shown)}")
    if store.held_out_archs:  # every model of these archs is held out, whatever its task
        texts = sorted(m["archs"][slug]["text"] for slug in store.held_out_archs if slug in m["archs"])
        _console().print(f"held-out archs ({len(texts)}): {escape('; '.join(texts))}")


@zoo_app.command("export")
def zoo_export(
    zoo: Path = typer.Argument(..., help="Zoo folder."),
    model_id: int = typer.Option(..., "--id", help="Model id (see records.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file (.safetensors) or folder (hub style); a PEFT "
                             "adapter folder for a LoRA zoo's model."),
):
    """Write one zoo model as a self-describing checkpoint (a PEFT adapter folder for a LoRA zoo)."""
    from weightgen.checkpoint import save_model
    from weightgen.zoo.store import ZooStore

    store = ZooStore(zoo)
    rec = store.record(model_id)
    metrics = {k: v for k, v in rec.items() if k.endswith(("_acc", "_loss"))}
    if store.manifest.get("lora"):
        from weightgen.cli import _quiet_loading
        from weightgen.zoo.lora_adapter import save_adapter

        _quiet_loading()
        path = save_adapter(out, store.state_dict(model_id), store.manifest["lora"], store.root / "base",
                            task=rec["task"], generator="zoo", zoo=store.manifest["name"], zoo_id=model_id,
                            seed=rec["seed"], metrics=metrics)
        _console().print(f"wrote {escape(str(path))}: a PEFT adapter of {escape(str(store.root / 'base'))} for "
                      f"{rec['task']}, test acc {rec['test_acc']:.4f}")
        return
    path = save_model(store.state_dict(model_id), out, arch=store.archs[rec["arch"]], task=rec["task"],
                      generator="zoo", zoo=store.manifest["name"], zoo_id=model_id, seed=rec["seed"],
                      init=rec["init"], metrics=metrics)
    _console().print(f"wrote {escape(str(path))}: {store.archs[rec['arch']].describe()} for {rec['task']}, "
                  f"test acc {rec['test_acc']:.4f}")
