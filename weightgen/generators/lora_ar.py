"""Autoregressive generation of LoRA adapters with a `transformers` causal LM: `LoRAARPipeline`.

The weight AR pipeline's machinery (GPT-2, prompt + task-code prefix, one vocabulary block per id
slot, a logits processor that keeps every sample decodable) over the ids of
`weightgen.encoders.adapter_quantizer.AdapterQuantizer`: an adapter is one sequence of `components`
ids, one per principal direction of the zoo's adapter deltas. Components: `lm`, `prefix`,
`tokenizer` (the quantizer) and `base` (the frozen model the adapters belong to).
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel

from weightgen.encoders.adapter_quantizer import AdapterQuantizer
from weightgen.generators.autoregressive import WeightARPipeline, WeightARPrefix
from weightgen.generators.common import check_range, sample_generator
from weightgen.generators.lora_diffusion import AdapterPipelineMixin, GeneratedAdapters, lora_task
from weightgen.tasks import TASK_CODE_DIM, task_code
from weightgen.zoo.lora_trainer import adapters_finite

TRAIN_HINT = "`python train/train_autoregressive.py configs/generator/lora-ar-digits.yaml`"


class LoRAARPipeline(AdapterPipelineMixin, WeightARPipeline):
    files = {
        "lm": ["config.json", "model.safetensors"],
        "prefix": ["config.json", "diffusion_pytorch_model.safetensors"],
        "tokenizer": ["config.json", "diffusion_pytorch_model.safetensors"],
        "base": ["config.json", "model.safetensors"],
    }
    train_hint = TRAIN_HINT

    def __init__(self, lm: GPT2LMHeadModel, prefix: WeightARPrefix, tokenizer: AdapterQuantizer, base):
        super().__init__(lm=lm, prefix=prefix, tokenizer=tokenizer)
        self.register_modules(base=base)

    @torch.no_grad()
    def __call__(self, prompt: str, num_samples: int = 1, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | int | None = None, batch_size: int = 256,
                 progress: bool = False) -> GeneratedAdapters:
        """Sample `num_samples` adapters for a prompt; temperature 0 is greedy decoding. The default
        0.7 was chosen on the validation draw (benchmarks/RESULTS.md, issue 16): 1 lost 5-7 points,
        greedy gained 3-8 but gives one adapter per prompt."""
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("temperature", temperature, 0.0, 10.0)
        check_range("top_k", top_k, 0, self.tokenizer.codebook_size, integer=True)
        check_range("top_p", top_p, 1e-6, 1.0)
        task = lora_task(prompt, self.prefix.config.task_kinds)
        g = sample_generator(generator)
        code = task_code(task, self.prefix.config.task_code_dim or TASK_CODE_DIM)[None]
        ids = self._sample_ids(self._text(prompt.strip()), code, 0, self.tokenizer.ids_per_token, num_samples,
                               batch_size, g, temperature, top_k, top_p, progress)
        factors = {n: f.float().cpu() for n, f in self.tokenizer.decode(ids.to(self.tokenizer.device)).items()}
        finite = adapters_finite(factors)
        return GeneratedAdapters(task, prompt.strip(), factors, finite, self.lora)
