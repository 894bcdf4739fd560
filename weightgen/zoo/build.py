"""Building a zoo: a deterministic shard plan from the config, then batched training shard by shard.

The plan (tasks, held-out tasks, archs, and which models go into which shard) depends only on the
config, so a rebuild after an interruption finds the same shards, skips the finished ones and trains
the rest. Under `accelerate launch` with N processes, process r trains shards r, r+N, r+2N, ...;
every shard's init and data order are seeded by the shard itself, so the zoo is the same whichever
process trains it.
"""

from __future__ import annotations

import random
import zlib
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from weightgen import atomic
from weightgen.config import ArchTemplate, ZooConfig, from_dict, to_dict
from weightgen.devices import native_precision
from weightgen.errors import ConfigError, WeightgenError, ZooError
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec, all_subset_tasks, get_task
from weightgen.zoo.lora_base import load_base
from weightgen.zoo.lora_build import lora_manifest, place_base
from weightgen.zoo.lora_trainer import factor_shapes, init_factors, train_lora_batched
from weightgen.zoo.store import ZOO_FORMAT, ZooStore
from weightgen.zoo.trainer import Recipe, train_batched

INIT_MODES = {"independent", "shared", "base", "lora"}
LORA_ARCH = "lora"  # the records' arch of a LoRA zoo: every model is an adapter of the zoo's one base


def arch_for_task(template: ArchTemplate, task: TaskSpec) -> ArchSpec:
    """The concrete arch of a template on a task: input and output sizes come from the task."""
    if template.family == "inr" and task.kind != "digits-image":
        raise ConfigError(f"inr archs fit images (digits-image-* tasks), not {task.id}")
    if template.family != "inr" and task.kind == "digits-image":
        raise ConfigError(f"task {task.id} fits an image and needs an inr arch, not {template.family}")
    if template.family == "cnn":
        if task.in_dim != 64:
            raise ConfigError(f"cnn archs read 8x8 digits images, but task {task.id} has {task.in_dim} features")
        return ArchSpec("cnn", (*template.hidden, task.out_dim), template.activation)
    return ArchSpec(template.family, (task.in_dim, *template.hidden, task.out_dim), template.activation)


def select_tasks(cfg: ZooConfig) -> tuple[list[TaskSpec], list[str]]:
    """The zoo's tasks in plan order, and the ids of the held-out ones."""
    rng = random.Random(cfg.seed)
    tasks = [get_task(t) for t in cfg.tasks.ids]
    for k in cfg.tasks.subset_k:
        pool = all_subset_tasks(k)
        n = min(cfg.tasks.subsets_per_k or len(pool), len(pool))  # k=2 has only 45 subsets
        tasks += sorted(rng.sample(pool, n), key=lambda t: t.classes)
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ConfigError("the config selects no tasks; set tasks.ids or tasks.subset_k")
    ids = [t.id for t in tasks]
    held = [get_task(t).id for t in cfg.held_out]
    missing = [t for t in held if t not in ids]
    if missing:
        raise ConfigError(f"held_out task {missing[0]} is not among the zoo's tasks")
    rest = [t for t in ids if t not in held]
    n_more = round(cfg.held_out_fraction * len(ids)) - len(held)
    held += random.Random(cfg.seed + 1).sample(rest, max(0, n_more))
    return tasks, [t for t in ids if t in set(held)]


def recipe_of(cfg: ZooConfig) -> Recipe:
    return Recipe(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.precision)


def make_manifest(cfg: ZooConfig) -> dict:
    if cfg.init not in INIT_MODES:
        raise ConfigError(f"unknown init mode '{cfg.init}'; known: {', '.join(sorted(INIT_MODES))}")
    if cfg.init == "base" and not cfg.base_checkpoint:
        raise ConfigError("init=base needs base_checkpoint: the checkpoint every model is fine-tuned from")
    recipe_of(cfg)  # validates the training recipe before any work starts
    tasks, held = select_tasks(cfg)
    if cfg.init == "lora":
        return _manifest(cfg, tasks, held, {LORA_ARCH: [(t.id, s) for t in tasks for s in range(cfg.seeds)]}, {}, [],
                         lora=lora_manifest(cfg, tasks))
    groups: dict[ArchSpec, list[tuple[str, int]]] = {}
    templates: dict[str, int] = {}
    held_archs: dict[str, bool] = {}
    for ti, template in enumerate(cfg.archs):
        for task in tasks:
            arch = arch_for_task(template, task)
            if held_archs.setdefault(arch.slug, template.held_out) != template.held_out:
                raise ConfigError(f"{arch.describe()} comes from two arch templates, one held out and one not")
            templates[arch.slug] = ti
            groups.setdefault(arch, []).extend((task.id, s) for s in range(cfg.seeds))
    archs = {a.slug: {**a.to_dict(), "text": a.describe(), "template": templates[a.slug], "held_out": held_archs[a.slug]}
             for a in groups}
    return _manifest(cfg, tasks, held, {a.slug: models for a, models in groups.items()}, archs,
                     [slug for slug, h in held_archs.items() if h])


def _manifest(cfg: ZooConfig, tasks: list[TaskSpec], held: list[str], groups: dict[str, list[tuple[str, int]]],
              archs: dict, held_archs: list[str], **extra) -> dict:
    """zoo.json: the shard plan (each arch's (task, seed) models in chunks of models_per_shard) and the tables."""
    shards, next_id = [], 0
    for slug, models in groups.items():
        for start in range(0, len(models), cfg.models_per_shard):
            chunk = models[start : start + cfg.models_per_shard]
            entries = [[next_id + i, t, s] for i, (t, s) in enumerate(chunk)]
            next_id += len(chunk)
            shards.append({"file": f"{len(shards):04d}-{slug}.safetensors", "arch": slug, "models": entries})
    return {
        "format": ZOO_FORMAT,
        "name": cfg.name,
        "config": to_dict(cfg),
        "archs": archs,
        "tasks": {t.id: {"description": t.description, "held_out": t.id in held} for t in tasks},
        "held_out": held,
        "held_out_archs": held_archs,
        "shards": shards,
        **extra,
    }


def _seed(cfg: ZooConfig, *parts) -> int:
    return zlib.crc32("/".join(map(str, (cfg.seed, *parts))).encode())


def _init(cfg: ZooConfig, arch: ArchSpec, template: int, ids: list[int]) -> dict[str, torch.Tensor]:
    k = len(ids)
    if cfg.init == "base":
        from weightgen.checkpoint import load_state_dict

        sd, meta = load_state_dict(cfg.base_checkpoint)
        if ArchSpec.from_dict(meta["arch"]) != arch:
            raise ConfigError(f"base_checkpoint is a {ArchSpec.from_dict(meta['arch']).describe()}, the zoo needs {arch.describe()}")
        return {n: t.float().unsqueeze(0).expand(k, *t.shape) for n, t in sd.items()}
    if cfg.init == "shared":
        # seeded by the template, and hidden layers are drawn first, so archs of one template that
        # differ only in output size (digits subsets of different k) share their hidden-layer init
        g = torch.Generator().manual_seed(_seed(cfg, "init", template))
        return {n: t.expand(k, *t.shape[1:]) for n, t in arch.init_params(1, g).items()}
    parts = [arch.init_params(1, torch.Generator().manual_seed(_seed(cfg, "init", template, i))) for i in ids]
    return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}


def lora_init_generators(cfg: ZooConfig, ids: list) -> list[torch.Generator]:
    """The generators LoRA adapters `ids` draw their A from: one seed for all (lora.init shared),
    else one per id. Adapters trained later with the zoo's recipe pass ids no zoo model has."""
    return [torch.Generator().manual_seed(_seed(cfg, "init", "lora" if cfg.lora.init == "shared" else i)) for i in ids]


def _saved_config(store: ZooStore) -> dict | None:
    """The config a zoo folder was built from, with keys added since then at their defaults (so a
    zoo from an older weightgen resumes), or None if it is not a zoo config at all."""
    try:
        return to_dict(from_dict(ZooConfig, store.manifest.get("config"), where=f"{store.root}/zoo.json config"))
    except WeightgenError:
        return None


def build_zoo(cfg: ZooConfig, out: str | Path, progress: bool = True) -> ZooStore:
    """Build (or finish building) the zoo described by `cfg` in folder `out`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState() alone ignores ACCELERATE_USE_CPU (only Accelerator reads it): on a machine without
    # a GPU, two launched processes would each think they were alone and both build every shard
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    store = ZooStore(out)
    manifest = make_manifest(cfg)
    if (store.root / "zoo.json").is_file() and _saved_config(store) != manifest["config"]:
        raise ZooError(f"{store.root} holds a zoo built from another config; choose a new --out or delete it")
    if cfg.init == "lora" and (store.root / "zoo.json").is_file():  # a resumed build keeps the base it started with
        manifest["lora"]["base_sha256"] = (store.manifest.get("lora") or {}).get("base_sha256")
    if state.is_main_process:
        atomic.remove_leftovers(store.root)
        atomic.remove_leftovers(store.shard_dir)
        store.write_manifest(manifest)
    state.wait_for_everyone()

    if cfg.init == "lora":  # the base is pretrained (or taken from the cache) and copied into the zoo first
        manifest["lora"]["base_sha256"] = place_base(cfg, store, state)
    # each process trains on its accelerator (state.device); bf16 only where that device runs it natively
    recipe = recipe_of(cfg)
    recipe = replace(recipe, precision=native_precision(recipe.precision, state.device, "fp32",
                                                        say=state.is_main_process))
    held, held_archs = set(manifest["held_out"]), set(manifest["held_out_archs"])
    mine = manifest["shards"][state.process_index :: state.num_processes]
    done = {s["file"]: store.shard_records(s["file"]) for s in manifest["shards"]}
    todo = [s for s in mine if done[s["file"]] is None]
    total = sum(len(s["models"]) for s in todo)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=not progress or not state.is_local_main_process)
    with bar if progress else nullcontext():
        job = bar.add_task(f"zoo {cfg.name}: training", total=total)
        finished = 0
        for shard in todo:
            ids = [m[0] for m in shard["models"]]
            tasks = [get_task(m[1]) for m in shard["models"]]
            g = torch.Generator().manual_seed(_seed(cfg, "data", shard["file"]))
            n = len(ids)

            def step(i, steps, base=finished, n=n):
                bar.update(job, completed=base + n * i / max(steps, 1))

            if cfg.init == "lora":
                frozen = load_base(store.root / "base", manifest["lora"]["base_sha256"])
                init = init_factors(factor_shapes(frozen, cfg.lora), lora_init_generators(cfg, ids))
                params, metrics = train_lora_batched(frozen, cfg.lora, tasks, init, recipe, g, on_step=step,
                                                     device=state.device)
                arch_meta = {"family": LORA_ARCH, "base_sha256": manifest["lora"]["base_sha256"]}
            else:
                arch_meta = manifest["archs"][shard["arch"]]
                arch = ArchSpec.from_dict(arch_meta)
                init = _init(cfg, arch, arch_meta["template"], ids)
                params, metrics = train_batched(arch, tasks, init, recipe, g, on_step=step, device=state.device)
                arch_meta = arch.to_dict()
            records = [
                {"id": mid, "task": tid, "arch": shard["arch"], "seed": seed, "init": cfg.init,
                 "held_out": tid in held or shard["arch"] in held_archs, "shard": shard["file"], "row": row, **m}
                for row, ((mid, tid, seed), m) in enumerate(zip(shard["models"], metrics))
            ]
            store.write_shard(shard["file"], params, arch_meta, records)
            done[shard["file"]] = records
            finished += n
            bar.update(job, completed=finished)
            if state.num_processes == 1:  # keep records.jsonl current during a long single-process build
                store.write_records([r for rs in done.values() if rs for r in rs])
    state.wait_for_everyone()
    if state.is_main_process:
        records = [store.shard_records(s["file"]) for s in manifest["shards"]]
        if any(r is None for r in records):
            raise ZooError(f"zoo {store.root} is incomplete after the build; re-run it to finish")
        store.write_records([r for rs in records for r in rs])
    state.wait_for_everyone()
    return ZooStore(out)
