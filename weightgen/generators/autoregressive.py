"""Autoregressive generation of VQ ids with a `transformers` causal LM: `WeightARPipeline`.

One network is one sequence: [BOS] [ARCH] then its tokens' VQ ids in layout order, `ids_per_token`
ids per weight token. Each id slot j of a token has its own block of the vocabulary (code c of
slot j is token `code_offset + j * codebook_size + c`), so the LM always knows which kind of id
comes next, and a `LogitsProcessor` can restrict each step to the block it must come from: every
sampled sequence has the right length and kinds for the requested arch, so every sample decodes.

The prompt enters as prefix embeddings: MiniLM token states, padded or cut to `prefix_len`,
projected to the LM width by `WeightARPrefix` and placed before [BOS] (padding masked out). With
`task_code_dim > 0` the prompt's task structure (`weightgen.tasks.task_code`) is projected too and
added to every prefix position: a direct signal of which digit each output is, which the LM did not
learn to read from the text alone on a CPU budget (benchmarks/RESULTS.md).
The LM is a GPT-2 (learned absolute positions suit sequences whose position fixes which weight it
describes). Components, saved and loaded together through diffusers' pipeline container:
- `lm`: `transformers.GPT2LMHeadModel`;
- `prefix`: `WeightARPrefix` (prompt projection + vocabulary layout + what the generator knows);
- `tokenizer`: the `WeightVQVAE` that turns ids back into weights.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from transformers import GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.generators.common import (
    GeneratedWeights,
    TextStatsMixin,
    WeightPipeline,
    check_range,
    resolve_request,
    sample_generator,
)
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, task_code

TRAIN_HINT = "`python train/train_autoregressive.py configs/generator/ar-digits.yaml`"
FILES = {
    "lm": ["config.json", "model.safetensors"],
    "prefix": ["config.json", "diffusion_pytorch_model.safetensors"],
    "tokenizer": ["config.json", "diffusion_pytorch_model.safetensors"],
}
PAD, BOS = 0, 1


class WeightARPrefix(ModelMixin, ConfigMixin, TextStatsMixin):
    """Prompt -> prefix embeddings, and the vocabulary layout shared by training and sampling."""

    @register_to_config
    def __init__(
        self,
        text_dim: int = 384,
        hidden_size: int = 128,
        prefix_len: int = 32,
        n_archs: int = 1,
        ids_per_token: int = 4,
        codebook_size: int = 256,
        task_kinds: list[str] | None = None,  # kinds trained on (others are refused); None = any
        task_code_dim: int = 0,  # > 0: the task code joins the prefix (see the module docstring)
    ):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.code_proj = nn.Linear(task_code_dim, hidden_size) if task_code_dim else None
        self._register_text_stats(text_dim)

    @property
    def code_offset(self) -> int:
        return 2 + self.config.n_archs

    @property
    def vocab_size(self) -> int:
        return self.code_offset + self.config.ids_per_token * self.config.codebook_size

    def to_sequence(self, ids: torch.Tensor, arch_index: int) -> torch.Tensor:
        """VQ ids (N, T, I) -> LM tokens (N, 2 + T*I): [BOS] [ARCH] codes."""
        n, _, i = ids.shape
        slots = torch.arange(i, device=ids.device) * self.config.codebook_size
        codes = (ids + slots + self.code_offset).flatten(1)
        head = torch.tensor([BOS, 2 + arch_index], device=ids.device).expand(n, 2)
        return torch.cat([head, codes], 1)

    def to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Generated code tokens (N, T*I) -> VQ ids (N, T, I)."""
        i = self.config.ids_per_token
        ids = (codes - self.code_offset).view(len(codes), -1, i)
        return ids - torch.arange(i, device=codes.device) * self.config.codebook_size

    def embed(self, lm: GPT2LMHeadModel, text: torch.Tensor, text_mask: torch.Tensor, tokens: torch.Tensor,
              task_code: torch.Tensor | None = None):
        """(inputs_embeds (B, prefix_len + S, H), attention_mask) for prompt token states (B, L, D)
        followed by LM tokens (B, S); the prompt is cut or zero-padded to prefix_len, padding masked.
        task_code (B, task_code_dim), zeros or None = no known task."""
        p = self.config.prefix_len
        text, text_mask = text[:, :p], text_mask[:, :p]
        pad = p - text.shape[1]
        text = nn.functional.pad(text, (0, 0, 0, pad))
        text_mask = nn.functional.pad(text_mask, (0, pad))
        text = self.standardize_text(text.to(self.dtype))
        prefix = self.proj(text)
        if self.code_proj is not None:
            if task_code is None:
                task_code = torch.zeros(len(text), self.config.task_code_dim, device=text.device)
            prefix = prefix + self.code_proj(task_code.to(prefix.dtype))[:, None]
        prefix = prefix * text_mask[..., None]
        embeds = torch.cat([prefix.to(lm.dtype), lm.get_input_embeddings()(tokens)], 1)
        mask = torch.cat([text_mask.long(), torch.ones_like(tokens)], 1)
        return embeds, mask


class ArchLayoutProcessor(LogitsProcessor):
    """Allows, at generated step s, only codes of id slot s mod ids_per_token: any sampled
    sequence of num_tokens * ids_per_token steps is a valid id grid for the arch."""

    def __init__(self, prefix: WeightARPrefix, generated_start: int):
        self.prefix, self.start = prefix, generated_start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cfg = self.prefix.config
        slot = (input_ids.shape[1] - self.start) % cfg.ids_per_token
        low = self.prefix.code_offset + slot * cfg.codebook_size
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, low : low + cfg.codebook_size] = 0
        return scores + allowed


class WeightARPipeline(WeightPipeline):
    files, train_hint, codec = FILES, TRAIN_HINT, "tokenizer"

    def __init__(self, lm: GPT2LMHeadModel, prefix: WeightARPrefix, tokenizer: WeightVQVAE):
        super().__init__()
        self.register_modules(lm=lm, prefix=prefix, tokenizer=tokenizer)
        self.text_encoder = None  # loaded on first use; not a saved component

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        arch: ArchSpec | str | None = None,
        num_samples: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | int | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ) -> GeneratedWeights:
        """Sample `num_samples` networks; temperature 0 is greedy decoding, top_k 0 and top_p 1 are off.
        The same seed gives identical samples (for the same batch_size)."""
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("temperature", temperature, 0.0, 10.0)
        check_range("top_k", top_k, 0, self.tokenizer.codebook_size, integer=True)
        check_range("top_p", top_p, 1e-6, 1.0)
        req = resolve_request(prompt, arch, self.archs, self.prefix.config.task_kinds)
        g = sample_generator(generator)
        arch_index = self.tokenizer.stats.index[req.arch.slug]
        steps = self.tokenizer.stats.layout(req.arch).num_tokens * self.prefix.config.ids_per_token
        emb = self._text(req.text)
        code = None if req.task is None else task_code(req.task, self.prefix.config.task_code_dim or TASK_CODE_DIM)[None]
        ids = self._sample_ids(emb, code, arch_index, steps, num_samples, batch_size, g, temperature, top_k, top_p,
                               progress)
        # a tokenizer with a task mean adds the task's mean network back (the arch's mean for no task)
        flat = self.tokenizer.decode(ids.to(self.tokenizer.device), req.arch,
                                     None if code is None else code.to(self.tokenizer.device)).float().cpu()
        return GeneratedWeights(req.arch, req.task, req.text, flat, flat.isfinite().all(1))

    def _sample_ids(self, emb, code, arch_index: int, steps: int, num_samples: int, batch_size: int, g,
                    temperature: float, top_k: int, top_p: float, progress: bool) -> torch.Tensor:
        """`steps` generated ids per sample after [BOS] [ARCH], as the tokenizer's id grid (N, T, I)."""
        device = self.lm.device
        head = torch.tensor([[BOS, 2 + arch_index]], device=device)
        code = None if code is None else code.to(device)
        ids = []
        for start in self._progress(range(0, num_samples, batch_size), progress):
            n = min(batch_size, num_samples - start)
            embeds, mask = self.prefix.embed(self.lm, emb.tokens.to(device).expand(n, -1, -1),
                                             emb.mask.to(device).expand(n, -1), head.expand(n, -1),
                                             None if code is None else code.expand(n, -1))
            seed = int(torch.randint(2**62, (1,), generator=g))
            # generate() samples from the global RNG: seed it from our generator, and restore it after
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None,
                            "top_p": top_p} if temperature > 0 else {"do_sample": False}
                codes = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps,
                                         min_new_tokens=steps, pad_token_id=PAD, eos_token_id=None,
                                         logits_processor=LogitsProcessorList([ArchLayoutProcessor(self.prefix, 0)]),
                                         **sampling)
            ids.append(self.prefix.to_ids(codes[:, -steps:]))
        return torch.cat(ids)
