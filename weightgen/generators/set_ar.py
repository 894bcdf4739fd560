"""Autoregressive generation over neuron sets: `SetARPipeline`, which samples any MLP width.

Components (saved by `save_pretrained`, restored by `from_pretrained`):
- `lm`: a `transformers.LlamaModel` run on embeddings with every position id 0 (no order signal but
  the causal mask);
- `heads`: `NeuronAR` (weightgen/generators/neuron_ar.py): the prompt prefix, slot embeddings, the
  quantised tokens (template codebook, per-role bins), the per-role weight statistics and the heads.
One network is sampled one neuron per LM step, in the canonical order of `NeuronAR`, with the LM's
key-value cache; a width the zoo never had is a sequence of another length. Every step draws its
tokens with the Gumbel-max trick from noise of the caller's `torch.Generator` (drawn on the CPU
and moved), so a seed gives the same samples on any device. `transformers`' `generate` is not used:
a step emits a whole neuron (a code and 65 bins, or a bias and one bin per incoming weight), not one
vocabulary id.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LlamaModel

from weightgen.generators.common import (
    GeneratedWeights,
    WeightPipeline,
    check_range,
    resolve_request,
    sample_generator,
)
from weightgen.generators.diffusion import with_null_prompt
from weightgen.generators.neuron_ar import NeuronAR, NeuronTokens, run_lm
from weightgen.generators.set_diffusion import arch_notes, check_set_arch
from weightgen.space.neurons import neuron_layout, output_classes
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, task_code

TRAIN_HINT = "`python train/train_set_ar.py configs/generator/set-ar-digits.yaml`"
FILES = {"lm": ["config.json", "model.safetensors"], "heads": ["config.json", "diffusion_pytorch_model.safetensors"]}


class SetARPipeline(WeightPipeline):
    files, train_hint = FILES, TRAIN_HINT

    def __init__(self, lm: LlamaModel, heads: NeuronAR):
        super().__init__()
        self.register_modules(lm=lm, heads=heads)
        self.text_encoder = None

    @property
    def archs(self) -> list[ArchSpec]:
        """The archs seen in training; any other expressible MLP can be sampled too."""
        return [ArchSpec.from_dict(a) for a in self.heads.config.archs or []]

    def resolve(self, prompt: str, arch: ArchSpec | str | None):
        return resolve_request(prompt, arch, self.archs, self.heads.config.task_kinds,
                               accept=lambda a: check_set_arch(a, self.heads.config.in_dim, self.heads.config.n_classes))

    @torch.no_grad()
    def __call__(self, prompt: str, arch: ArchSpec | str | None = None, num_samples: int = 1,
                 temperature: float = 1.0, guidance_scale: float = 1.0,
                 generator: torch.Generator | int | None = None, batch_size: int = 256,
                 progress: bool = False) -> GeneratedWeights:
        """Sample `num_samples` networks of any MLP arch the space can express; temperature 0 is greedy."""
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("temperature", temperature, 0.0, 10.0)
        check_range("guidance_scale", guidance_scale, 0.0, 20.0)
        req = self.resolve(prompt, arch)
        layout = neuron_layout(req.arch)
        g = sample_generator(generator)
        heads, device = self.heads, self.heads.device
        emb = self._text(req.text)
        classes = output_classes(req.arch, req.task)[None].to(device)
        code = None if req.task is None else task_code(req.task, heads.config.task_code_dim or TASK_CODE_DIM)[None].to(device, heads.dtype)
        out = []
        for start in self._progress(range(0, num_samples, batch_size), progress):
            n = min(batch_size, num_samples - start)
            out.append(self.sample_tokens(layout, n, emb, classes, code, temperature, guidance_scale, g))
        tok = NeuronTokens(*(torch.cat([getattr(t, f) for t in out]) for f in ("code", "residual")),
                           *([torch.cat(parts) for parts in zip(*[getattr(t, f) for t in out])] for f in ("bias", "weight")))
        nodes, edges = heads.stats.destandardize(layout, *heads.to_network(layout, *heads.values(layout, tok)))
        flat = layout.join(nodes.float(), [e.float() for e in edges]).cpu()
        return GeneratedWeights(req.arch, req.task, req.text, flat, flat.isfinite().all(1),
                                notes=arch_notes(req.arch, self.archs))

    def _draw(self, logits: torch.Tensor, temperature: float, guidance: float, n: int, g) -> torch.Tensor:
        """Guided logits (2n or n rows) -> token indices (n, ...), Gumbel-max with noise from g."""
        logits = logits.float()
        if len(logits) == 2 * n:
            uncond, cond = logits.chunk(2)
            logits = uncond + guidance * (cond - uncond)
        if temperature == 0:
            return logits.argmax(-1)
        u = torch.rand(logits.shape, generator=g).to(logits.device).clamp(1e-9, 1 - 1e-9)
        return (logits / temperature - (-u.log()).log()).argmax(-1)

    def sample_tokens(self, layout, n: int, emb, classes, code, temperature: float, guidance: float, g) -> NeuronTokens:
        """n networks as tokens, one neuron per cached LM step; emb: the prompt's TextEncoder output,
        classes (1, k), code (1, F) or None."""
        heads, device, dtype = self.heads, self.heads.device, self.heads.dtype
        text, mask = emb.tokens.to(device, dtype).expand(n, -1, -1), emb.mask.to(device).expand(n, -1)
        codes = None if code is None else code.expand(n, -1)
        if guidance != 1.0:
            null_text, null_mask = with_null_prompt(text, mask, heads.null_text, torch.ones(n, dtype=torch.bool))
            if guidance == 0.0:
                text, mask, codes = null_text, null_mask, None
            else:
                zeros = None if codes is None else torch.zeros_like(codes)
                text, mask = torch.cat([null_text, text]), torch.cat([null_mask, mask])
                codes = None if codes is None else torch.cat([zeros, codes])
        rows = len(text)
        twice = (lambda t: t.repeat(rows // n, *([1] * (t.dim() - 1)))) if rows != n else (lambda t: t)
        prefix, prefix_mask, cond = heads.prefix(text, mask, codes)
        slots = heads.embed_nodes(layout, classes.expand(rows, -1)) + cond[:, None]
        cache = DynamicCache(config=self.lm.config)
        run_lm(self.lm, prefix, prefix_mask, cache)
        seen = prefix_mask.long()
        prev = heads.bos.expand(rows, -1)
        states, contents, acts = [], [], None
        codes_out, residual_out, bias_out, weight_out = [], [], [], []
        last_code = torch.zeros(n, dtype=torch.long, device=device)
        for i, s in enumerate(layout.slices):
            layer = []
            for j in range(s.start, s.stop):
                seen = torch.cat([seen, torch.ones_like(seen[:, :1])], 1)
                h = run_lm(self.lm, (slots[:, j] + prev)[:, None], seen, cache)[:, 0]
                states.append(h)
                if i == 0:
                    logits = heads.code_head(h)
                    logits = logits.masked_fill(torch.arange(logits.shape[-1], device=device) < twice(last_code)[:, None],
                                                float("-inf"))  # codes never decrease: the canonical order
                    c = last_code = self._draw(logits, temperature, guidance, n, g)
                    bins = self._draw(heads.residual_logits(h[:, None], twice(c)[:, None])[:, 0], temperature, guidance, n, g)
                    codes_out.append(c)
                    residual_out.append(bins)
                    row = heads.codebook[c] + heads.dequantise(bins, heads.row_streams())
                    layer.append(row)
                    prev = heads.first_content(twice(row)[:, None])[0][:, 0]
                else:
                    if j == s.start:  # the layer below is complete: its keys, from the states after each neuron
                        below = layout.slices[i - 1]
                        keys = heads.keys(torch.stack(states[below.start + 1 : below.stop + 1], 1), contents[-1])
                    bs, ws = heads.layer_roles(layout, i)
                    wb = self._draw(heads.pair_logits(h[:, None], keys)[:, 0], temperature, guidance, n, g)
                    bb = self._draw(heads.bias_head(h), temperature, guidance, n, g)
                    b, w = heads.dequantise(bb, bs), heads.dequantise(wb, ws)
                    layer.append((b, w, bb, wb))
                    prev = heads.deep_content(twice(b)[:, None], twice(w)[:, None], contents[-1], acts,
                                              (bs, ws))[0][:, 0]
            if i == 0:
                content, acts = heads.first_content(twice(torch.stack(layer, 1)))
            else:
                b, w, bb, wb = (torch.stack(x, 1) for x in zip(*layer))
                bias_out.append(bb)
                weight_out.append(wb)
                content, acts = heads.deep_content(twice(b), twice(w), contents[-1], acts, (bs, ws))
            contents.append(content)
        return NeuronTokens(torch.stack(codes_out, 1), torch.stack(residual_out, 1), bias_out, weight_out)
