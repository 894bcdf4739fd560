"""Train the neuron-set diffusion generator (one model for every MLP width) on a zoo's non-held-out models.

    python train/train_set_diffusion.py configs/generator/set-diffusion-widths.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_set_diffusion.py CONFIG

No encoder and no canonicalisation: every model of every arch becomes a neuron set
(weightgen/space/neurons.py), standardised per role, and the permutation-equivariant SetDiT learns
to denoise it given the prompt. Re-running the same command resumes from the newest
`OUT/checkpoints/step_N` (accelerate state); `--set init_from=DIR` fine-tunes a trained generator
on this zoo instead of starting fresh (weightgen/generators/init_from.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from rich.progress import Progress

from weightgen.errors import ConfigError
from weightgen.generators.diffusion import SAMPLERS, clean_estimate, with_null_prompt
from weightgen.generators.init_from import keep_parent_stats
from weightgen.generators.set_diffusion import (
    SetDiffusionPipeline,
    layer_masks,
    pack,
    packed_mask,
    unpack,
)
from weightgen.generators.set_dit import SetDiT
from weightgen.generators.task_loss import NetworkTaskLoss, check_task_loss
from weightgen.generators.training import (
    GeneratorTrainConfig,
    drop_mask,
    end_step,
    make_accelerator,
    noised,
    prepare_training,
    probe_inputs,
    sample_set_batch,
    save_with_ema,
    set_training_data,
)
from weightgen.tasks import TASK_CODE_DIM


@dataclass(frozen=True)
class SetDiffusionConfig(GeneratorTrainConfig):
    out: str = "runs/generators/set-diffusion"
    zoo: str = "runs/zoo/digits-widths"
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    edge_channels: int = 0  # > 0: per-weight features updated every block (SetDiT's EdgeStream)
    staged: bool = False  # also learn each layer given the layers before it clean; sample layer by layer
    staged_share: float = 0.5  # share of a staged batch with some leading layers given clean
    probe_size: int = 0  # > 0: neurons see their class-mean outputs on this many training inputs (SetDiT)
    self_cond: float = 0.0  # > 0: self-conditioning; share of batches that first estimate x0 (no grad) and feed it back
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    cond_dropout: float = 0.1
    sampler: str = "ddim"
    task_code: bool = True  # the task's structure (weightgen.tasks.task_code) joins the adaptive norms
    n_classes: int = 10
    depth_weight: float = 1.0  # batch share of an arch: its models x this per hidden layer beyond the first
    task_loss: float = 0.0  # weight of the predicted networks' loss on their tasks' training data (generators/task_loss.py)
    task_examples: int = 32  # training examples per row for that loss


def network_loss(task_loss: NetworkTaskLoss, denoiser: SetDiT, d, rows, drop, noisy, out, t, clean, x0, noise_sched,
                 cfg: SetDiffusionConfig, g: torch.Generator) -> torch.Tensor:
    """The task loss of the networks the denoiser's output implies (rows with a prompt only); slots
    given clean in a staged batch keep their true value."""
    device = out.device
    keep = (~drop).to(device)
    x0_hat = clean_estimate(noise_sched.alphas_cumprod, noisy.to(device), out.float(), t.to(device), cfg.prediction_type)
    if clean is not None:
        x0_hat = torch.where(clean.to(device), x0.to(device), x0_hat)
    nodes, edges = denoiser.stats.destandardize(d.layout, *unpack(d.layout, (x0_hat * d.keep.to(device))[keep]))
    tasks = [d.records[int(r)]["task"] for r, k in zip(rows, keep.tolist()) if k]
    return task_loss(d.layout.arch, d.layout.join(nodes, edges), tasks, g).mean()


def main(cfg: SetDiffusionConfig) -> None:
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{cfg.sampler}'")
    if cfg.prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ConfigError(f"prediction_type must be epsilon, sample or v_prediction, got '{cfg.prediction_type}'")
    if not cfg.depth_weight > 0:
        raise ConfigError(f"depth_weight must be above 0, got {cfg.depth_weight}")
    check_task_loss(cfg)
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)

    # 1. Data: every training model as a neuron set, standardised per role; every prompt embedded once.
    data, table, in_dim, kinds = set_training_data(cfg.zoo, accelerator.print)
    denoiser = SetDiT(in_dim=in_dim, n_classes=cfg.n_classes, num_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
                      text_dim=table.tokens.shape[-1], task_code_dim=TASK_CODE_DIM if cfg.task_code else 0,
                      task_kinds=kinds, archs=[d.layout.arch.to_dict() for d in data],
                      edge_channels=cfg.edge_channels, staged=cfg.staged, probe_size=cfg.probe_size,
                      self_cond=cfg.self_cond > 0)
    if not keep_parent_stats(denoiser, cfg, accelerator.print):  # init_from + init_stats: keep
        denoiser.set_text_stats(table.tokens, table.mask)
        denoiser.stats.fit([(d.layout, d.nodes, d.edges) for d in data])
        if cfg.probe_size:
            denoiser.set_probe(*probe_inputs([r["task"] for d in data for r in d.records], cfg.probe_size,
                                            cfg.n_classes))
    for d in data:
        d.nodes, d.edges = denoiser.stats.standardize(d.layout, d.nodes, d.edges)
        d.packed = pack(d.nodes, d.edges)
        d.keep = packed_mask(d.layout)
        d.layers = torch.stack(layer_masks(d.layout))  # (n_layers, D)
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                prediction_type=cfg.prediction_type, clip_sample=False)

    # 2. Optimiser, schedule and EMA (`prepare_training`), resumed from the newest checkpoint if any.
    model, opt, sched, ema, start = prepare_training(accelerator, cfg, denoiser)
    task_loss = NetworkTaskLoss([r["task"] for d in data for r in d.records], cfg.task_examples).to(accelerator.device) \
        if cfg.task_loss else None

    # 3. Train: noise a batch of one arch's packed sets at random timesteps, predict the target.
    rank, device = accelerator.process_index, accelerator.device
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("set diffusion", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            for micro in range(cfg.grad_accum):
                key = step * cfg.grad_accum + micro
                d, rows, prompt, g = sample_set_batch(data, cfg.batch_size, key, cfg.seed, rank, cfg.depth_weight)
                n = len(rows)
                drop = drop_mask(n, cfg.cond_dropout, key, cfg.seed, rank)
                text, mask = with_null_prompt(table.tokens[prompt], table.mask[prompt],
                                              accelerator.unwrap_model(model).null_text, drop)
                codes = d.task_codes[rows] * ~drop[:, None]
                x0 = d.packed[rows]
                noise = torch.randn(x0.shape, generator=g) * d.keep
                t = torch.randint(cfg.num_train_timesteps, (n,), generator=g)
                noisy, target = noised(noise_sched, x0, noise, t, cfg.prediction_type)
                weight, given = d.keep.expand(n, -1), None
                if cfg.staged:  # some rows: layers < f clean (no loss there), the rest noisy at t
                    n_layers = len(d.layers)
                    given = torch.randint(1, n_layers, (n,), generator=g)
                    given = given * (torch.rand(n, generator=g) < cfg.staged_share)
                    clean = (torch.arange(n_layers)[None] < given[:, None]).float() @ d.layers.float() > 0
                    noisy, weight = torch.where(clean, x0, noisy), weight & ~clean
                    given = given.to(device)
                nodes, edges = unpack(d.layout, noisy.to(device))
                args = (d.layout, nodes, edges, t.to(device), text.to(device), mask.to(device),
                        d.classes[rows].to(device))
                kw = {"task_code": codes.to(device) if cfg.task_code else None, "given": given, "prev": None}
                if cfg.self_cond and torch.rand((), generator=g) < cfg.self_cond:
                    with torch.no_grad():  # the estimate sampling would feed back, from a first pass
                        first = pack(*model(*args, **kw))
                    x0_hat = clean_estimate(noise_sched.alphas_cumprod, noisy.to(device), first.float(),
                                            t.to(device), cfg.prediction_type) * d.keep.to(device)
                    if given is not None:  # the clean leading layers are known exactly
                        x0_hat = torch.where(clean.to(device), x0.to(device), x0_hat)
                    kw["prev"] = unpack(d.layout, x0_hat)
                with accelerator.accumulate(model):
                    out_nodes, out_edges = model(*args, **kw)
                    out = pack(out_nodes, out_edges)
                    weight = weight.to(device)
                    loss = ((out.float() - target.to(device)) ** 2 * weight).sum() / weight.sum()
                    if task_loss is not None and not drop.all():  # the null prompt has no task to score
                        loss = loss + cfg.task_loss * network_loss(task_loss, accelerator.unwrap_model(model), d, rows,
                                                                   drop, noisy, out, t, clean if cfg.staged else None,
                                                                   x0, noise_sched, cfg, g)
                    accelerator.backward(loss)
                    opt.step()
                    opt.zero_grad()
            end_step(accelerator, cfg, step, sched, ema, accelerator.unwrap_model(model).parameters(), progress, job,
                     "set diffusion", loss)

    # 4. Save the pipeline with the EMA weights, and the resolved config beside it.
    final = accelerator.unwrap_model(model)
    save_with_ema(accelerator, cfg, ema, final.parameters(), lambda: SetDiffusionPipeline(
        denoiser=final, scheduler=SAMPLERS[cfg.sampler].from_config(noise_sched.config)))
