"""What the generator training scripts share: typed configs, the zoo data and prompt table, batches,
EMA, and an interruption-safe final save.

The scripts (`train/train_diffusion.py`, `train/train_autoregressive.py`) stay one `main(cfg)` each.
Both train on the zoo's non-held-out models only, encoded by a frozen encoder trained earlier on the
same zoo, and both condition on `training_prompt`-style text: one of the task's paraphrases, drawn
at random every time a model is used, plus the arch description.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from weightgen.config import to_dict
from weightgen.encoders.training import save_checkpoint
from weightgen.errors import ConfigError, GeneratorError
from weightgen.generators.common import shared_text_encoder
from weightgen.space.dataset import zoo_weights
from weightgen.specs import ArchSpec
from weightgen.tasks import LEVEL_ENTRIES, get_task, task_code
from weightgen.zoo.store import ZooStore


@dataclass(frozen=True)
class GeneratorTrainConfig:
    out: str = "runs/generators/generator"  # save_pretrained folder; checkpoints/ inside it for resume
    zoo: str = ""  # "" = the zoo the encoder was trained on (its train_config.json)
    steps: int = 3000  # optimiser steps; the LR schedule spans these
    batch_size: int = 32  # models per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-3  # peak learning rate of the warm-up + cosine schedule
    weight_decay: float = 0.0
    ema_decay: float = 0.999  # EMA of the weights (with warm-up); the EMA weights are what is saved
    mixed_precision: str = "no"  # accelerate's flag: no | bf16 | fp16
    save_every: int = 500  # accelerator.save_state interval, in steps
    seed: int = 0
    init_from: str = ""  # a trained generator folder to fine-tune from (weightgen/generators/init_from.py)
    init_stats: str = "refit"  # with init_from: refit the statistics on this zoo, or keep the parent's


@dataclass
class ArchData:
    arch: ArchSpec
    index: int  # the arch's index in the encoder (and generator) tables
    codes: torch.Tensor  # (N, T, ...) encoded non-held-out models: latents or ids
    prompts: torch.Tensor  # (N, max paraphrases) rows into the prompt table, -1 = none
    records: list[dict]
    task_codes: torch.Tensor  # (N, TASK_CODE_DIM) weightgen.tasks.task_code of each model's task


@dataclass
class PromptTable:
    tokens: torch.Tensor  # (P, L, D) MiniLM token embeddings, zero-padded
    mask: torch.Tensor  # (P, L) bool
    texts: list[str]


def load_encoder(path: str | Path, cls):
    """A trained encoder folder of the expected kind (WeightAutoencoder or WeightVQVAE), frozen."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise GeneratorError(f"no trained encoder at {path}; train one with train/train_autoencoder.py "
                             "(diffusion) or train/train_tokenizer.py (autoregressive)")
    try:
        kind = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise GeneratorError(f"{config} is not a readable encoder config") from e
    if kind != cls.__name__:
        raise GeneratorError(f"{path} holds a {kind}, but this generator needs a {cls.__name__}")
    encoder_settings(path)  # fail before loading if the zoo it was trained on is unknown
    return cls.from_pretrained(str(path)).eval().requires_grad_(False)


def encoder_settings(encoder_dir: str | Path) -> dict:
    """The zoo and canonical flag an encoder was trained with (its train_config.json)."""
    path = Path(encoder_dir) / "train_config.json"
    if not path.is_file():
        raise GeneratorError(f"{encoder_dir} has no train_config.json, so the zoo it was trained on is unknown; "
                             "train it with train/train_autoencoder.py or train/train_tokenizer.py")
    return json.loads(path.read_text())


def load_encoded_zoo(cfg: GeneratorTrainConfig, encoder, encoder_dir: str, encode) -> tuple[list[ArchData], PromptTable]:
    """Every arch of the zoo the encoder knows: its non-held-out models encoded with `encode(flat,
    arch, task_codes)`, and a table of every training prompt (all paraphrases x archs), embedded once."""
    settings = encoder_settings(encoder_dir)
    store = ZooStore(cfg.zoo or settings["zoo"])
    slugs = [a.slug for a in encoder.arch_specs]
    missing = [s for s in slugs if s not in store.archs]
    if missing:
        raise GeneratorError(f"zoo {store.root} has no models of {', '.join(missing)}, which the encoder expects")
    weights = zoo_weights(store, canonical=settings.get("canonical", True), archs=slugs)
    texts: dict[str, int] = {}
    data = []
    for w in weights:
        if not len(w.train):
            continue
        rows = []
        for r in w.train_records:
            descs = get_task(r["task"]).descriptions
            rows.append([texts.setdefault(f"{d} with {w.arch.article} {w.arch.describe()}", len(texts)) for d in descs])
        width = max(len(r) for r in rows)
        prompts = torch.tensor([r + [-1] * (width - len(r)) for r in rows])
        codes = torch.stack([task_code(get_task(r["task"])) for r in w.train_records])
        data.append(ArchData(w.arch, encoder.stats.index[w.arch.slug], encode(w.train, w.arch, codes), prompts,
                             w.train_records, codes))
    if not data:
        raise GeneratorError(f"zoo {store.root} has no non-held-out models to train on")
    return data, embed_prompts(list(texts))


def task_kinds(data: list[ArchData]) -> list[str]:
    """The task kinds a generator sees in training (it refuses requests for others)."""
    return list(sorted({get_task(r["task"]).kind for d in data for r in d.records}))


def embed_prompts(texts: list[str], chunk: int = 256) -> PromptTable:
    """The frozen text encoder's states of every prompt (the bundled MiniLM, or WEIGHTGEN_TEXT_MODEL:
    pipelines load the same one when sampling). The process's shared encoder keeps what it embedded,
    so a second generator trained in the same process (`weightgen quickstart`) reuses it."""
    encoder = shared_text_encoder()
    by_length = sorted(texts, key=len)  # a chunk of similar lengths pads less (~12% faster)
    for i in range(0, len(by_length), chunk):
        encoder.encode(by_length[i : i + chunk])
    embedded = encoder.encode(texts)  # all cached now: just the table, in the prompts' order
    return PromptTable(embedded.tokens, embedded.mask, texts)


def sample_batch(data: list[ArchData], table: PromptTable, n: int, step: int, seed: int, rank: int):
    """n models of one arch (drawn in proportion to each arch's share of the zoo), each with one of its
    prompts at random. Seeded by (seed, rank, step), so a resumed run draws the same batches.
    Returns (arch data, codes (n, T, ...), text tokens (n, L, D), text mask (n, L), task codes (n, F),
    rows (n,) into the arch data)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step)
    sizes = torch.tensor([len(d.codes) for d in data], dtype=torch.float)
    d = data[int(torch.multinomial(sizes, 1, generator=g))]
    rows = torch.randint(len(d.codes), (n,), generator=g)
    choices = d.prompts[rows]
    count = (choices >= 0).sum(1)
    pick = (torch.rand(n, generator=g) * count).long()
    prompt = choices[torch.arange(n), pick]
    return d, d.codes[rows], table.tokens[prompt], table.mask[prompt], d.task_codes[rows], rows


def make_accelerator(cfg: GeneratorTrainConfig):
    """The Accelerator of a generator script. DDP looks for unused parameters: weight-space models
    leave some out on some batches by design (the hidden-to-hidden pair head on one-hidden-layer
    nets, the self-conditioning and staged inputs on batches without them). bf16 only where the
    device runs it natively (weightgen/devices.py), else fp32."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from weightgen.devices import native_mixed_precision

    return Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                       mixed_precision=native_mixed_precision(cfg.mixed_precision),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def prepare_training(accelerator, cfg: GeneratorTrainConfig, model: torch.nn.Module):
    """What every generator script sets up before its loop: the parent's weights with `init_from`,
    AdamW, the warm-up + cosine schedule and an EMA of `model`'s weights; model and optimiser
    prepared by accelerate (the LR schedule stays out of prepare(): see train_autoencoder.py),
    schedule and EMA registered for checkpointing, and the newest complete checkpoint of this run
    loaded. Returns (prepared model, optimiser, schedule, EMA, start step)."""
    from diffusers.training_utils import EMAModel

    from weightgen.encoders.training import lr_schedule, resume
    from weightgen.generators.init_from import check_run, init_from_parent, zoo_fingerprint

    zoo = cfg.zoo or encoder_settings(getattr(cfg, "encoder", "") or getattr(cfg, "tokenizer", ""))["zoo"]
    check_run(cfg.out, {"zoo": zoo_fingerprint(zoo), "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from
                        else ""}, accelerator.is_main_process)
    if cfg.init_from:  # before the EMA copies the weights; a resumed run's load_state then overrides them
        init_from_parent(model, cfg.init_from, accelerator.print)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, cfg.steps)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    prepared, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched, ema)
    start = resume(accelerator, cfg.out)
    ema.to(accelerator.device)  # the shadows follow the model (load_state brings them back on the host)
    return prepared, opt, sched, ema, start


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str):
    """(noisy input, training target) of a diffusers DDPM scheduler for epsilon, sample or v prediction."""
    target = {"epsilon": noise, "sample": x0}.get(prediction_type)
    target = scheduler.get_velocity(x0, noise, t) if target is None else target
    return scheduler.add_noise(x0, noise, t), target


TEXT_ONLY_SALT = 700_001  # drop_mask's salt for `text_dropout` (prompt text nulled, task code kept)


def drop_mask(n: int, p: float, step: int, seed: int, rank: int, salt: int = 500_009) -> torch.Tensor:
    """Which rows of a batch get the null prompt (classifier-free guidance training); another `salt`
    draws an independent mask for the same step."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step + salt)
    return torch.rand(n, generator=g) < p


def jitter_levels(codes: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Task codes (n, F) with Gaussian noise of `std` added to the shift levels they hold
    (weightgen.tasks.LEVEL_ENTRIES, where non-zero). A zoo has a few levels per shift, and a
    denoiser that sees each exactly can key its output to them and fall apart between them; seen
    with jitter, nearby levels must give nearby adapters, which is what an unseen level needs."""
    if not std:
        return codes
    idx = torch.tensor([i for i in LEVEL_ENTRIES if i < codes.shape[1]], dtype=torch.long)
    noise = torch.randn(len(codes), len(idx), generator=g) * std
    out = codes.clone()
    out[:, idx] += noise.to(codes) * (codes[:, idx] != 0)
    return out


def save_pipeline(pipeline, cfg, extra: dict | None = None) -> None:
    """save_pretrained into cfg.out without ever leaving a loadable-looking half folder: everything
    is written to OUT/.partial, moved into place, and model_index.json (what marks a complete
    folder) is moved last. The resolved config goes beside it as train_config.json."""
    out = Path(cfg.out)
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    (out / "model_index.json").unlink(missing_ok=True)
    pipeline.save_pretrained(str(partial))
    (partial / "train_config.json").write_text(json.dumps({**to_dict(cfg), **(extra or {})}, indent=1))
    for item in sorted(partial.iterdir(), key=lambda p: p.name == "model_index.json"):
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    partial.rmdir()


@dataclass
class SetArchData:
    """One arch's training models as neuron sets (weightgen/space/neurons.py), raw (not standardised)."""

    layout: object  # NeuronLayout
    nodes: torch.Tensor  # (N, nodes, F)
    edges: list[torch.Tensor]  # [(N, n_l, n_{l-1})]
    classes: torch.Tensor  # (N, k) long: the class each output neuron scores
    prompts: torch.Tensor  # (N, max paraphrases) rows into the prompt table, -1 = none
    task_codes: torch.Tensor  # (N, TASK_CODE_DIM)
    records: list[dict]


def load_set_zoo(store: ZooStore) -> tuple[list[SetArchData], PromptTable, list[str]]:
    """Every expressible arch of a zoo as neuron sets: its non-held-out models (held-out tasks and
    held-out archs never reach a generator), no canonicalisation (the model is equivariant), and the
    table of every training prompt (task paraphrase + arch text), embedded once. Also returns the
    archs skipped because neuron sets cannot express them (CNNs), for the script to say so."""
    from weightgen.errors import ArchError
    from weightgen.space.neurons import check_expressible, neuron_layout, output_classes

    texts: dict[str, int] = {}
    data, skipped, expressible = [], [], []
    for slug, arch in store.archs.items():
        try:
            check_expressible(arch)
            expressible.append(slug)
        except ArchError:
            skipped.append(arch.describe())
    for w in zoo_weights(store, canonical=False, archs=expressible):
        if not len(w.train):
            continue
        layout = neuron_layout(w.arch)
        tasks = [get_task(r["task"]) for r in w.train_records]
        rows = [[texts.setdefault(f"{d} with {w.arch.article} {w.arch.describe()}", len(texts)) for d in t.descriptions]
                for t in tasks]
        width = max(len(r) for r in rows)
        nodes, edges = layout.split(w.train)
        data.append(SetArchData(layout, nodes, edges, torch.stack([output_classes(w.arch, t) for t in tasks]),
                                torch.tensor([r + [-1] * (width - len(r)) for r in rows]),
                                torch.stack([task_code(t) for t in tasks]), w.train_records))
    if not data:
        raise GeneratorError(f"zoo {store.root} has no non-held-out MLP models to train on")
    return data, embed_prompts(list(texts)), skipped


def set_training_data(zoo: str, say=print) -> tuple[list[SetArchData], PromptTable, int, list[str]]:
    """`load_set_zoo` for a neuron-set training script: (data, prompt table, the networks' input
    size, the task kinds trained on). Says which archs it skips; one generator serves one input size."""
    data, table, skipped = load_set_zoo(ZooStore(zoo))
    if skipped:
        say(f"skipping {', '.join(skipped)}: neuron sets express MLPs only")
    in_dims = {d.layout.in_dim for d in data}
    if len(in_dims) > 1:
        raise ConfigError(f"zoo {zoo} mixes input sizes {sorted(in_dims)}; one generator serves one input size")
    return data, table, in_dims.pop(), sorted({get_task(r["task"]).kind for d in data for r in d.records})


def sample_set_batch(data, n: int, step: int, seed: int, rank: int, depth_weight: float = 1.0):
    """n models of one arch of `load_set_zoo` data, one prompt each; seeded by (seed, rank, step), so
    a resumed run draws the same batches. The arch is drawn in proportion to its share of the zoo
    times `depth_weight` per hidden layer beyond the first: deeper nets have layers that must fit
    together, and with a weight above 1 they get more of the batches than their model count gives."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + step)
    sizes = torch.tensor([len(d.nodes) * depth_weight ** (len(d.layout.arch.sizes) - 3) for d in data],
                         dtype=torch.float)
    d = data[int(torch.multinomial(sizes, 1, generator=g))]
    rows = torch.randint(len(d.nodes), (n,), generator=g)
    choices = d.prompts[rows]
    pick = (torch.rand(n, generator=g) * (choices >= 0).sum(1)).long()
    return d, rows, choices[torch.arange(n), pick], g


def probe_inputs(task_ids: list[str], size: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` training inputs, as even over the classes as the zoo's tasks allow (round robin over
    the classes present), and their class (a subset task's label mapped back to its digit)."""
    per_class: dict[int, list[torch.Tensor]] = {}
    for tid in sorted(set(task_ids)):
        if len(per_class) == n_classes and all(sum(len(t) for t in v) >= size for v in per_class.values()):
            break  # every class is full: reading the remaining tasks' splits changes nothing
        task = get_task(tid)
        x, y = task.split("train")
        labels = torch.tensor(task.classes)[y] if getattr(task, "classes", ()) else y
        for c in labels.unique().tolist():
            have = per_class.setdefault(c, [])
            if sum(len(t) for t in have) < size:
                have.append(x[labels == c])
    pools = {c: torch.cat(v) for c, v in sorted(per_class.items())}
    order = [(c, r) for r in range(size) for c in pools if r < len(pools[c])][:size]
    if len(order) < size:
        raise ConfigError(f"the zoo's tasks hold {len(order)} training inputs, fewer than probe_size={size}")
    return torch.stack([pools[c][r] for c, r in order]), torch.tensor([c for c, _ in order])


def end_step(accelerator, cfg, step: int, sched, ema, params, progress, job, label: str, loss) -> None:
    """What ends every generator training step: the LR schedule, the EMA of `params` (an iterable of
    the unwrapped model's parameters), the progress bar, and an accelerate checkpoint every
    `save_every` steps and at the last one (what `resume` restarts from)."""
    sched.step()
    ema.step(params)
    progress.update(job, advance=1, description=f"{label} loss {loss.item():.4f}")
    if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
        save_checkpoint(accelerator, cfg.out, step + 1)


def save_with_ema(accelerator, cfg, ema, params, make_pipeline) -> None:
    """On the main process, copy the EMA weights into `params` and save the pipeline that
    `make_pipeline()` then builds (with `save_pipeline`, the resolved config beside it)."""
    from weightgen.generators.init_from import parent_record

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema.copy_to(params)
        save_pipeline(make_pipeline(), cfg, {"parent": parent_record(cfg.init_from)} if cfg.init_from else None)
    accelerator.print(f"saved {cfg.out}")
