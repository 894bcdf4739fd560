"""Train the VQ-VAE tokenizer (weight tokens -> ids) on a zoo's non-held-out models.

    python train/train_tokenizer.py configs/encoder/vqvae-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_tokenizer.py CONFIG

Re-running the same command resumes from the newest `OUT/checkpoints/step_N` (accelerate state).
The result is `OUT/` (save_pretrained: config.json + safetensors, normalisation statistics inside)
with the resolved training config beside it as `train_config.json`.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from rich.progress import Progress

from weightgen.encoders.training import (
    TokenizerConfig,
    functional_batch,
    functional_loss,
    load_weights,
    lr_schedule,
    reconstruction_loss,
    resume,
    sample_tokens,
    save_checkpoint,
    save_final,
)
from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.errors import ConfigError
from weightgen.tasks import TASK_CODE_DIM, get_task, task_code


def main(cfg: TokenizerConfig) -> None:
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)  # same init on every process

    if cfg.task_mean and cfg.functional_weight > 0:
        raise ConfigError("task_mean and functional_weight > 0 cannot be combined yet: the functional loss "
                          "decodes whole networks without their task mean")
    # 1. Data: canonicalised weights of non-held-out models (minus their task's mean, with task_mean),
    #    as one table of tokens.
    data = load_weights(cfg)
    codes = {d.arch: torch.stack([task_code(get_task(r["task"])) for r in d.train_records])
             if len(d.train) else torch.zeros(0, TASK_CODE_DIM) for d in data} if cfg.task_mean else {}
    model = WeightVQVAE([d.arch.to_dict() for d in data], width=cfg.width, hidden=cfg.hidden, levels=cfg.levels,
                        groups=cfg.groups, num_quantizers=cfg.num_quantizers, embed_dim=cfg.embed_dim,
                        task_code_dim=TASK_CODE_DIM if cfg.task_mean else 0,
                        max_seen_tasks=max((len(c.unique(dim=0)) for c in codes.values()), default=0))
    for d in data:
        if d.arch in codes and len(d.train):
            model.fit_task_mean(d.arch, d.train, codes[d.arch])
    # what the ids code: the weights, or their residuals around the task mean (also fits the stats)
    table = model.token_table({d.arch: model.residual(d.arch, d.train, codes[d.arch]) if codes else d.train
                               for d in data})
    trainable = [d for d in data if len(d.train)]

    # 2. Optimiser (prepared by accelerate) and a warm-up + cosine schedule.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, cfg.steps)
    # the scheduler stays out of prepare(): accelerate would step it once per process per step
    # (it assumes the data is split across processes); each process here runs all cfg.steps
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)
    codec = accelerator.unwrap_model(model)

    # 3. Resume from the newest complete checkpoint, if any.
    start = resume(accelerator, cfg.out)

    # 4. Train: random tokens (plus whole models when the functional loss is on) -> reconstruction.
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("tokenizer", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            batch = sample_tokens(table, cfg.batch_tokens, step, cfg.seed, accelerator.process_index, accelerator.device)
            n_random = len(batch["tokens"])
            if cfg.functional_weight > 0:
                arch_data = trainable[step % len(trainable)]
                extra, rows = functional_batch(codec, arch_data, cfg.functional_models, step, cfg.seed)
                batch = {k: torch.cat([batch[k], extra[k]]) for k in batch}
            recon, _ = model(batch["tokens"], batch["arch"], batch["meta"])
            loss = reconstruction_loss(recon[:n_random], {k: v[:n_random] for k, v in batch.items()})
            if cfg.functional_weight > 0:
                loss = loss + cfg.functional_weight * functional_loss(codec, arch_data, rows, recon[n_random:], step, cfg.seed)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            progress.update(job, advance=1, description=f"tokenizer loss {loss.item():.4f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(accelerator, cfg.out, step + 1)

    # 5. Save the model and the resolved config beside it.
    save_final(accelerator, codec, cfg)
    accelerator.print(f"saved {cfg.out}: compression {codec.compression:.1f}, {codec.ids_per_token} ids/token")
