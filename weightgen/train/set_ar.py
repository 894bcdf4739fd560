"""Train the autoregressive generator over neuron sets (one model for every MLP width) on a zoo's
non-held-out models.

    python train/train_set_ar.py configs/generator/set-ar-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_set_ar.py CONFIG

No encoder and no alignment: every model becomes a neuron set (weightgen/space/neurons.py),
standardised per role, sorted into the canonical order and quantised (weightgen/generators/neuron_ar.py:
the template codebook and bins are fitted once on the training models), then a causal LM learns
next-neuron prediction given the prompt. Re-running the same command resumes from the newest
`OUT/checkpoints/step_N` (accelerate state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.progress import Progress
from transformers import LlamaConfig, LlamaModel

from weightgen.errors import ConfigError
from weightgen.generators.diffusion import with_null_prompt
from weightgen.generators.init_from import keep_parent_stats
from weightgen.generators.neuron_ar import NeuronAR, NeuronTokens, teacher_forced_loss
from weightgen.generators.set_ar import SetARPipeline
from weightgen.generators.training import (
    GeneratorTrainConfig,
    drop_mask,
    end_step,
    make_accelerator,
    prepare_training,
    probe_inputs,
    sample_set_batch,
    save_with_ema,
    set_training_data,
)
from weightgen.tasks import TASK_CODE_DIM


@dataclass(frozen=True)
class SetARConfig(GeneratorTrainConfig):
    out: str = "runs/generators/set-ar"
    zoo: str = "runs/zoo/digits-mlp"
    hidden_size: int = 128  # the LM's width
    num_layers: int = 4
    num_attention_heads: int = 4
    prefix_len: int = 32
    n_bins: int = 64  # quantisation bins per role
    codebook_size: int = 256  # first-layer neuron templates
    probe_size: int = 0  # > 0: a neuron's content includes its class-mean output on this many training inputs
    cond_dropout: float = 0.1  # share of prompts dropped (classifier-free guidance)
    task_code: bool = True
    n_classes: int = 10
    depth_weight: float = 1.0  # batch share of an arch: its models x this per hidden layer beyond the first


class SetARModel(torch.nn.Module):
    """LM + heads as one module, so DDP sees one forward that returns the loss."""

    def __init__(self, lm: LlamaModel, heads: NeuronAR):
        super().__init__()
        self.lm, self.heads = lm, heads

    def forward(self, layout, tok: NeuronTokens, text, text_mask, task_code, classes) -> torch.Tensor:
        return teacher_forced_loss(self.lm, self.heads, layout, tok, text, text_mask, task_code, classes)


def main(cfg: SetARConfig) -> None:
    if not cfg.depth_weight > 0:
        raise ConfigError(f"depth_weight must be above 0, got {cfg.depth_weight}")
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)

    # 1. Data: every training model as neuron-set tokens in canonical order; every prompt embedded once.
    data, table, in_dim, kinds = set_training_data(cfg.zoo, accelerator.print)
    heads = NeuronAR(in_dim=in_dim, n_classes=cfg.n_classes, hidden_size=cfg.hidden_size,
                     text_dim=table.tokens.shape[-1], prefix_len=cfg.prefix_len,
                     task_code_dim=TASK_CODE_DIM if cfg.task_code else 0, task_kinds=kinds,
                     archs=[d.layout.arch.to_dict() for d in data], n_bins=cfg.n_bins, codebook_size=cfg.codebook_size, probe_size=cfg.probe_size)
    kept = keep_parent_stats(heads, cfg, accelerator.print)  # init_from + init_stats: keep
    if not kept:
        heads.set_text_stats(table.tokens, table.mask)
        if cfg.probe_size:
            heads.set_probe(*probe_inputs([r["task"] for d in data for r in d.records], cfg.probe_size, cfg.n_classes))
        heads.stats.fit([(d.layout, d.nodes, d.edges) for d in data])
    for d in data:
        d.nodes, d.edges = heads.stats.standardize(d.layout, d.nodes, d.edges)
    if not kept:  # the neuron templates (codebook) are statistics of the zoo too
        heads.fit_tokens([(d.layout, d.nodes, d.edges) for d in data], seed=cfg.seed)
    for d in data:
        d.tokens = heads.tokenize(d.layout, d.nodes, d.edges)
    lm = LlamaModel(LlamaConfig(vocab_size=1, hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                                num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=1,
                                bos_token_id=None, eos_token_id=None, pad_token_id=None))

    # 2. Optimiser, schedule and EMA over both trained parts, resumed from the newest checkpoint if any.
    model = SetARModel(lm, heads)
    model, opt, sched, ema, start = prepare_training(accelerator, cfg, model)
    parts = accelerator.unwrap_model(model)

    # 3. Train: next-neuron prediction on [prompt prefix] neurons, every token scored.
    rank, device = accelerator.process_index, accelerator.device
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("set AR", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            for micro in range(cfg.grad_accum):
                key = step * cfg.grad_accum + micro
                d, rows, prompt, _ = sample_set_batch(data, cfg.batch_size, key, cfg.seed, rank, cfg.depth_weight)
                drop = drop_mask(len(rows), cfg.cond_dropout, key, cfg.seed, rank)
                text, mask = with_null_prompt(table.tokens[prompt], table.mask[prompt], parts.heads.null_text, drop)
                codes = (d.task_codes[rows] * ~drop[:, None]).to(device) if cfg.task_code else None
                t = d.tokens
                tok = NeuronTokens(t.code[rows].to(device), t.residual[rows].to(device),
                                   [b[rows].to(device) for b in t.bias], [w[rows].to(device) for w in t.weight])
                with accelerator.accumulate(model):
                    loss = model(d.layout, tok, text.to(device), mask.to(device), codes, d.classes[rows].to(device))
                    accelerator.backward(loss)
                    opt.step()
                    opt.zero_grad()
            end_step(accelerator, cfg, step, sched, ema, parts.parameters(), progress, job, "set AR", loss)

    # 4. Save the pipeline with the EMA weights, and the resolved config beside it.
    save_with_ema(accelerator, cfg, ema, parts.parameters(), lambda: SetARPipeline(lm=parts.lm, heads=parts.heads))
