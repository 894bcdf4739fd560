"""Train the weight autoencoder (weight tokens -> continuous latents) on a zoo's non-held-out models.

    python train/train_autoencoder.py configs/encoder/autoencoder-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_autoencoder.py CONFIG

Re-running the same command resumes from the newest `OUT/checkpoints/step_N` (accelerate state).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from rich.progress import Progress

from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.encoders.training import (
    AutoencoderConfig,
    load_weights,
    lr_schedule,
    reconstruction_loss,
    resume,
    sample_tokens,
    save_checkpoint,
    save_final,
)


def main(cfg: AutoencoderConfig) -> None:
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)  # same init on every process

    # 1. Data: canonicalised weights of non-held-out models, as one table of tokens.
    data = load_weights(cfg)
    model = WeightAutoencoder([d.arch.to_dict() for d in data], width=cfg.width, hidden=cfg.hidden,
                              latent_dim=cfg.latent_dim, embed_dim=cfg.embed_dim, noise_std=cfg.noise_std)
    table = model.token_table({d.arch: d.train for d in data})  # also fits the normalisation stats

    # 2. Optimiser (prepared by accelerate) and a warm-up + cosine schedule.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, cfg.steps)
    # the scheduler stays out of prepare(): accelerate would step it once per process per step
    # (it assumes the data is split across processes); each process here runs all cfg.steps
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)

    # 3. Resume from the newest complete checkpoint, if any.
    start = resume(accelerator, cfg.out)

    # 4. Train: reconstruct random tokens from noise-perturbed latents; keep latents near unit scale.
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("autoencoder", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            batch = sample_tokens(table, cfg.batch_tokens, step, cfg.seed, accelerator.process_index, accelerator.device)
            recon, z = model(batch["tokens"], batch["arch"], batch["meta"])
            loss = reconstruction_loss(recon, batch) + cfg.latent_l2 * z.pow(2).mean()
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            progress.update(job, advance=1, description=f"autoencoder loss {loss.item():.4f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(accelerator, cfg.out, step + 1)

    # 5. Save the model and the resolved config beside it.
    save_final(accelerator, accelerator.unwrap_model(model), cfg)
    accelerator.print(f"saved {cfg.out}")
