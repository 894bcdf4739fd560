"""Train the autoregressive generator (a GPT-2 over VQ ids) on a zoo's non-held-out models.

    python train/train_autoregressive.py configs/generator/ar-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_autoregressive.py CONFIG

Needs a trained VQ tokenizer (train/train_tokenizer.py); every training model's ids are computed once.
With a LoRA zoo as `zoo` (configs/generator/lora-ar-digits.yaml) the tokenizer is an AdapterQuantizer
fitted here in closed form (weightgen/encoders/adapter_quantizer.py), and the result is a
LoRAARPipeline that samples PEFT adapters.
Re-running the same command resumes from the newest `OUT/checkpoints/step_N` (accelerate state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.progress import Progress
from transformers import GPT2Config, GPT2LMHeadModel

from weightgen.encoders.adapter_quantizer import AdapterQuantizer
from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.generators.autoregressive import WeightARPipeline, WeightARPrefix
from weightgen.generators.init_from import check_parent_encoder, keep_parent_stats, parent_component
from weightgen.generators.lora_ar import LoRAARPipeline
from weightgen.generators.lora_training import is_lora_zoo, load_lora_zoo
from weightgen.generators.training import (
    GeneratorTrainConfig,
    end_step,
    load_encoded_zoo,
    load_encoder,
    make_accelerator,
    prepare_training,
    sample_batch,
    save_with_ema,
    task_kinds,
)
from weightgen.tasks import TASK_CODE_DIM
from weightgen.zoo.lora_build import zoo_base
from weightgen.zoo.store import ZooStore


@dataclass(frozen=True)
class ARConfig(GeneratorTrainConfig):
    out: str = "runs/generators/ar"
    tokenizer: str = "runs/encoders/vqvae-ar-digits"  # a trained WeightVQVAE folder
    hidden_size: int = 128  # GPT-2 width
    num_layers: int = 4
    num_attention_heads: int = 4
    prefix_len: int = 32  # prompt token states kept as prefix embeddings
    dropout: float = 0.0
    task_code: bool = True  # the task's structure joins the prompt prefix (generators/autoregressive.py)
    components: int = 64  # LoRA zoos: principal directions of the adapter deltas, one id each
    bins: int = 32  # LoRA zoos: uniform bins per direction (the LM's vocabulary is components x bins)


class ARModel(torch.nn.Module):
    """Prefix projection + LM as one module, so DDP sees one forward that returns the loss."""

    def __init__(self, lm: GPT2LMHeadModel, prefix: WeightARPrefix):
        super().__init__()
        self.lm, self.prefix = lm, prefix

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, seq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-id loss over the codes of seq ([BOS] [ARCH] codes); prefix and head are not scored."""
        embeds, attention = self.prefix.embed(self.lm, text, text_mask, seq, codes)
        skip = torch.full((len(seq), embeds.shape[1] - seq.shape[1] + 2), -100, device=seq.device)
        return self.lm(inputs_embeds=embeds, attention_mask=attention, labels=torch.cat([skip, seq[:, 2:]], 1)).loss


def main(cfg: ARConfig) -> None:
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)  # same init on every process

    # 1. Data: VQ ids (or adapter ids) of every non-held-out model, and every training prompt embedded once.
    lora = is_lora_zoo(cfg.zoo)
    if lora:
        tokens, data, table = load_lora_zoo(cfg.zoo)
        factors = tokens.decode(data[0].codes)  # the zoo adapters (canonical factors of the same deltas)
        tokenizer = parent_component(cfg, "tokenizer", AdapterQuantizer) or AdapterQuantizer(
            tokens.config.lora, components=cfg.components, bins=cfg.bins).fit(factors)
        data[0].codes = tokenizer.encode(factors)
    else:
        check_parent_encoder(cfg, "tokenizer")
        tokenizer = load_encoder(cfg.tokenizer, WeightVQVAE)
        data, table = load_encoded_zoo(cfg, tokenizer, cfg.tokenizer, tokenizer.encode)
    prefix = WeightARPrefix(text_dim=table.tokens.shape[-1], hidden_size=cfg.hidden_size, prefix_len=cfg.prefix_len,
                            n_archs=1 if lora else len(tokenizer.arch_specs), ids_per_token=tokenizer.ids_per_token,
                            codebook_size=tokenizer.codebook_size, task_kinds=task_kinds(data),
                            task_code_dim=TASK_CODE_DIM if cfg.task_code else 0)
    if not keep_parent_stats(prefix, cfg, accelerator.print):  # init_from + init_stats: keep
        prefix.set_text_stats(table.tokens, table.mask)
    longest = max(d.codes.shape[1] for d in data) * tokenizer.ids_per_token + 2
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=prefix.vocab_size, n_positions=cfg.prefix_len + longest,
                                    n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_attention_heads,
                                    resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                                    bos_token_id=1, eos_token_id=None, pad_token_id=0))
    for d in data:
        d.codes = prefix.to_sequence(d.codes, d.index)  # (N, 2 + T*I) LM tokens

    # 2-3. Optimiser, schedule and EMA over both trained parts (prefix projection + LM), resumed from
    # the newest checkpoint if any.
    model = ARModel(lm, prefix)
    model, opt, sched, ema, start = prepare_training(accelerator, cfg, model)
    parts = accelerator.unwrap_model(model)

    # 4. Train: next-id prediction on [prompt prefix] [BOS] [ARCH] codes; only the codes are scored.
    rank, device = accelerator.process_index, accelerator.device
    with Progress(disable=not accelerator.is_local_main_process) as progress:
        job = progress.add_task("autoregressive", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            for micro in range(cfg.grad_accum):
                _, seq, text, mask, codes, _ = sample_batch(data, table, cfg.batch_size, step * cfg.grad_accum + micro,
                                                     cfg.seed, rank)
                seq = seq.to(device)
                with accelerator.accumulate(model):
                    loss = model(text.to(device), mask.to(device), seq, codes.to(device))
                    accelerator.backward(loss)
                    opt.step()
                    opt.zero_grad()
            end_step(accelerator, cfg, step, sched, ema, parts.parameters(), progress, job, "autoregressive", loss)

    # 5. Save the pipeline with the EMA weights, and the resolved config beside it.
    save_with_ema(accelerator, cfg, ema, parts.parameters(), lambda: LoRAARPipeline(
        lm=parts.lm, prefix=parts.prefix, tokenizer=tokenizer, base=zoo_base(ZooStore(cfg.zoo))) if lora
        else WeightARPipeline(lm=parts.lm, prefix=parts.prefix, tokenizer=tokenizer))
