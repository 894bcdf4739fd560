"""Train the text-conditioned latent diffusion generator on a zoo's non-held-out models.

    python train/train_diffusion.py configs/generator/diffusion-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_diffusion.py CONFIG

Needs a trained autoencoder (train/train_autoencoder.py); its latents of every training model are
computed once, standardised per slot, and the WeightDiT learns to denoise them given the prompt.
With a LoRA zoo as `zoo` (configs/generator/lora-diffusion-digits.yaml) no encoder is needed: the
adapters' canonical tokens (weightgen/encoders/adapter.py) are diffused instead, and the result is a
LoRADiffusionPipeline that samples PEFT adapters.
Re-running the same command resumes from the newest `OUT/checkpoints/step_N` (accelerate state);
`--set init_from=DIR` fine-tunes a trained generator instead (weightgen/generators/init_from.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from rich.progress import Progress

from weightgen.encoders.adapter_factors import AdapterFactorTokens
from weightgen.encoders.adapter_quantizer import AdapterPCA
from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.errors import ConfigError
from weightgen.generators.diffusion import SAMPLERS, WeightDiffusionPipeline, clean_estimate, with_null_prompt
from weightgen.generators.dit import WeightDiT
from weightgen.generators.init_from import check_parent_encoder, keep_parent_stats, parent_component
from weightgen.generators.lora_diffusion import LoRADiffusionPipeline
from weightgen.generators.lora_training import is_lora_zoo, load_lora_zoo
from weightgen.generators.task_loss import AdapterTaskLoss, check_task_loss
from weightgen.generators.training import (
    TEXT_ONLY_SALT,
    GeneratorTrainConfig,
    drop_mask,
    end_step,
    jitter_levels,
    load_encoded_zoo,
    load_encoder,
    make_accelerator,
    noised,
    prepare_training,
    sample_batch,
    save_with_ema,
    task_kinds,
)
from weightgen.tasks import TASK_CODE_DIM
from weightgen.zoo.lora_build import zoo_base
from weightgen.zoo.store import ZooStore


@dataclass(frozen=True)
class DiffusionConfig(GeneratorTrainConfig):
    out: str = "runs/generators/diffusion"
    encoder: str = "runs/encoders/autoencoder-digits"  # a trained WeightAutoencoder folder
    num_layers: int = 4  # transformer blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    pooled_conditioning: bool = True  # also feed the mean prompt state to the adaptive norms
    prediction_type: str = "v_prediction"  # epsilon | sample | v_prediction (why v: generators/diffusion.py)
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    cond_dropout: float = 0.1  # share of examples trained with the null prompt (classifier-free guidance)
    text_dropout: float = 0.0  # share of examples whose prompt text is nulled but whose task code is kept
    code_jitter: float = 0.0  # std of noise on the task code's shift levels (generators/training.jitter_levels)
    sampler: str = "ddim"  # ddim | dpm: the scheduler saved in the pipeline for few-step sampling
    conditional_mean: bool = True  # diffuse the residual around a task-code ridge mean (generators/dit.py)
    mean_ridge: float = 1.0  # ridge penalty of that mean
    task_offsets: bool = True  # seen tasks also keep their own (shrunk) offset from it (generators/dit.py)
    latent_components: int = 0  # LoRA zoos: > 0 diffuses this many principal coefficients of the deltas
    latent_per_token: int = 8  # LoRA zoos: coefficients per denoiser token
    adapter_tokens: str = "delta"  # LoRA zoos: delta (rows of B A) | factors (canonical A, B: encoders/adapter_factors.py)
    task_loss: float = 0.0  # LoRA zoos, factor tokens: weight of the predicted adapters' task cross-entropy
    task_examples: int = 32  # training examples per row for that loss
    code_hidden: int = 0  # LoRA zoos: > 0 feeds the task code through a two-hidden-layer MLP (generators/dit.py)
    snr_gamma: float = 0.0  # > 0: min-SNR-gamma weights on the denoising loss (denoising_weights below)


def denoising_weights(noise_sched: DDPMScheduler, t: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """(n,) weights of each row's denoising loss: ones, or with `snr_gamma` the min-SNR-gamma
    weights of Hang et al. (2023), as diffusers' training examples compute them. Why: sampling from a
    factor-token generator is one step from t = T, where the denoising loss alone pulls the output
    towards the zoo's adapters of the prompt's task; between seen tasks that blend is a poor adapter.
    The weights fade the denoising loss out as the SNR falls (v-prediction, cosine schedule, gamma 5:
    min(SNR, gamma) / (SNR + 1) is 0.49 at t = 500 of 1,000, 0.006 at 950 and 2e-9 at T), so near
    t = T the task loss decides, as in Text-to-LoRA's SFT training."""
    if not cfg.snr_gamma:
        return torch.ones(len(t))
    snr = compute_snr(noise_sched, t)
    capped = snr.clamp(max=cfg.snr_gamma)
    if cfg.prediction_type == "v_prediction":
        return capped / (snr + 1)
    return capped / snr.clamp_min(1e-12) if cfg.prediction_type == "epsilon" else capped


def main(cfg: DiffusionConfig) -> None:
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{cfg.sampler}'")
    if cfg.prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ConfigError(f"prediction_type must be epsilon, sample or v_prediction, got '{cfg.prediction_type}'")
    for name in ("cond_dropout", "text_dropout"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"{name} is a share of examples, from 0 to 1; got {getattr(cfg, name)}")
    if not cfg.snr_gamma >= 0:
        raise ConfigError(f"snr_gamma is 0 (off) or a positive SNR cap; got {cfg.snr_gamma}")
    if not cfg.code_jitter >= 0:
        raise ConfigError(f"code_jitter is a standard deviation, 0 or more; got {cfg.code_jitter}")
    lora = is_lora_zoo(cfg.zoo)
    if cfg.task_loss and not lora:
        raise ConfigError("task_loss needs a LoRA zoo as zoo (MLP zoos: the set diffusion generator's task_loss)")
    check_adapter_options(cfg)
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)  # same init on every process

    # 1. Data: autoencoder latents (or adapter tokens) of every non-held-out model, every training
    #    prompt embedded once, and the denoiser shaped for them.
    encoder, data, table, denoiser = (lora_setup if lora else weight_setup)(cfg)
    kept = keep_parent_stats(denoiser, cfg, accelerator.print)  # init_from + init_stats: keep
    if not kept:
        denoiser.set_text_stats(table.tokens, table.mask)
    for d in data:  # the denoiser works on per-slot standardised latents (residuals of the task mean)
        if not kept:
            denoiser.set_latent_stats(d.index, d.codes, d.task_codes, ridge=cfg.mean_ridge)
        d.codes = denoiser.standardize(d.codes, d.index, d.task_codes)
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                prediction_type=cfg.prediction_type, clip_sample=False)

    # 2-3. Optimiser, schedule and EMA (`prepare_training`), resumed from the newest checkpoint if any.
    model, opt, sched, ema, start = prepare_training(accelerator, cfg, denoiser)
    base = zoo_base(ZooStore(cfg.zoo)) if lora else None  # read once: the task loss and the saved pipeline
    task_loss = AdapterTaskLoss(base, encoder.config.lora, [r["task"] for r in data[0].records],
                                cfg.task_examples).to(accelerator.device) if cfg.task_loss else None
    used = encoder.used.to(accelerator.device) if cfg.task_loss else None
    # the denoising loss's weight at every timestep, computed once and indexed per batch
    weight_of_t = denoising_weights(noise_sched, torch.arange(cfg.num_train_timesteps), cfg).to(accelerator.device)

    # 4. Train: noise a batch of standardised latents at random timesteps, predict the target.
    rank = accelerator.process_index
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("diffusion", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            for micro in range(cfg.grad_accum):
                key = step * cfg.grad_accum + micro
                d, x0, text, mask, codes, rows = sample_batch(data, table, cfg.batch_size, key, cfg.seed, rank)
                n = len(x0)
                drop = drop_mask(n, cfg.cond_dropout, key, cfg.seed, rank)
                text_only = drop_mask(n, cfg.text_dropout, key, cfg.seed, rank, salt=TEXT_ONLY_SALT)
                text, mask = with_null_prompt(text, mask, accelerator.unwrap_model(model).null_text, drop | text_only)
                codes = codes * ~drop[:, None]  # the null prompt has no task either
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 7919 + key + 1)
                codes = jitter_levels(codes, cfg.code_jitter, g)
                noise = torch.randn(x0.shape, generator=g)
                t = torch.randint(cfg.num_train_timesteps, (n,), generator=g)
                noisy, target = noised(noise_sched, x0, noise, t, cfg.prediction_type)
                meta = (encoder.metadata if lora else encoder.stats.layout(d.arch).metadata).expand(n, -1, -1)
                with accelerator.accumulate(model):
                    out = model(noisy.to(accelerator.device), t.to(accelerator.device), text.to(accelerator.device),
                                mask.to(accelerator.device), torch.full((n,), d.index, device=accelerator.device),
                                meta.to(accelerator.device), task_code=codes.to(accelerator.device))
                    err = (out.float() - target.to(accelerator.device)).pow(2).flatten(1).mean(1)
                    loss = (err * weight_of_t[t.to(accelerator.device)]).mean()
                    if task_loss is not None and not drop.all():  # the null prompt has no task to score
                        keep = (~drop).to(accelerator.device)
                        x0_hat = clean_estimate(noise_sched.alphas_cumprod, noisy.to(accelerator.device), out.float(),
                                                t, cfg.prediction_type)[keep]
                        x0_hat = accelerator.unwrap_model(model).destandardize(x0_hat, 0)
                        factors = encoder.decode(x0_hat * used)
                        tasks = [d.records[int(r)]["task"] for r, k in zip(rows, keep.tolist()) if k]
                        loss = loss + cfg.task_loss * task_loss(factors, tasks, g).mean()
                    accelerator.backward(loss)
                    opt.step()
                    opt.zero_grad()
            end_step(accelerator, cfg, step, sched, ema, accelerator.unwrap_model(model).parameters(), progress, job,
                     "diffusion", loss)

    # 5. Save the pipeline with the EMA weights, and the resolved config beside it.
    final = accelerator.unwrap_model(model)
    scheduler = SAMPLERS[cfg.sampler].from_config(noise_sched.config)
    save_with_ema(accelerator, cfg, ema, final.parameters(), lambda: LoRADiffusionPipeline(
        denoiser=final, scheduler=scheduler, encoder=encoder, base=base) if lora
        else WeightDiffusionPipeline(denoiser=final, scheduler=scheduler, encoder=encoder))


def check_adapter_options(cfg: DiffusionConfig) -> None:
    if cfg.adapter_tokens not in ("delta", "factors"):
        raise ConfigError(f"adapter_tokens must be delta or factors, got '{cfg.adapter_tokens}'")
    if cfg.adapter_tokens == "factors" and cfg.latent_components:
        raise ConfigError("latent_components (principal coefficients of the deltas) needs adapter_tokens: delta")
    check_task_loss(cfg)
    if cfg.task_loss and cfg.adapter_tokens != "factors":
        raise ConfigError("task_loss needs adapter_tokens: factors (decoding deltas takes an SVD that changes the "
                          "adapter the loss would score)")


def lora_setup(cfg: DiffusionConfig):
    """Adapter tokens of a LoRA zoo, and a denoiser over them (one 'arch': the base; a token's layer is
    its module, its position its row in that module)."""
    encoder, data, table = load_lora_zoo(cfg.zoo)
    if cfg.adapter_tokens == "factors":  # canonical factors, decoded without an SVD
        factors = encoder.decode(data[0].codes)
        encoder = AdapterFactorTokens(encoder.config.lora)
        data[0].codes = encoder.encode(factors)
    elif cfg.latent_components:  # a closed-form linear encoder (weightgen/encoders/adapter_quantizer.py)
        factors = encoder.decode(data[0].codes)
        encoder = parent_component(cfg, "encoder", AdapterPCA) or AdapterPCA(
            encoder.config.lora, components=cfg.latent_components, per_token=cfg.latent_per_token).fit(factors)
        data[0].codes = encoder.encode(factors)
    denoiser = WeightDiT(latent_dim=encoder.token_dim, n_archs=1, n_layers=int(encoder.metadata[:, 0].max()) + 1,
                         n_positions=encoder.num_positions, num_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
                         text_dim=table.tokens.shape[-1], max_tokens=encoder.num_tokens, task_kinds=task_kinds(data),
                         pooled_conditioning=cfg.pooled_conditioning, task_code_dim=TASK_CODE_DIM,
                         conditional_mean=cfg.conditional_mean, code_hidden=cfg.code_hidden,
                         max_seen_tasks=len(data[0].task_codes.unique(dim=0))
                         if cfg.conditional_mean and cfg.task_offsets else 0)
    return encoder, data, table, denoiser


def weight_setup(cfg: DiffusionConfig):
    """Autoencoder latents of a weight zoo, and a denoiser over them."""
    check_parent_encoder(cfg, "encoder")
    encoder = load_encoder(cfg.encoder, WeightAutoencoder)
    data, table = load_encoded_zoo(cfg, encoder, cfg.encoder, lambda flat, arch, _: encoder.encode(flat, arch))
    denoiser = WeightDiT(latent_dim=encoder.config.latent_dim, n_archs=len(encoder.arch_specs),
                         n_layers=int(encoder.meta_embed.layer.num_embeddings),
                         n_positions=int(encoder.meta_embed.position.num_embeddings),
                         num_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                         attention_head_dim=cfg.attention_head_dim, text_dim=table.tokens.shape[-1],
                         max_tokens=max(d.codes.shape[1] for d in data), task_kinds=task_kinds(data),
                         pooled_conditioning=cfg.pooled_conditioning,
                         task_code_dim=TASK_CODE_DIM if cfg.conditional_mean else 0,
                         max_seen_tasks=max(len(d.task_codes.unique(dim=0)) for d in data)
                         if cfg.conditional_mean and cfg.task_offsets else 0)
    return encoder, data, table, denoiser
