"""Text-conditioned diffusion over LoRA adapters of a frozen base: `LoRADiffusionPipeline`.

The same denoiser (`WeightDiT`), schedulers and classifier-free guidance as the weight pipeline, on
tokens of the adapters. The task code (which shifts, and their levels) joins the adaptive norms,
and no closed-form mean is used: the denoiser carries the whole prompt -> adapter map.

Components: `denoiser`, `scheduler`, `encoder` (tokens <-> factors) and `base` (the frozen
transformers model the adapters belong to, saved with `save_pretrained`). The encoder is one of:
- `AdapterFactorTokens`, the default: canonical factors, one token per rank-1 component, for a
  generator trained through the task loss (weightgen/generators/task_loss.py); sampled in one step;
- `AdapterEncoder`: rows of the deltas B A;
- `AdapterPCA` (`latent_components`): principal coefficients of the deltas.
Samples come back as factors, which `weightgen.zoo.lora_adapter.save_adapter` writes as PEFT
adapter folders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from weightgen.encoders.adapter import AdapterEncoder
from weightgen.encoders.adapter_factors import AdapterFactorTokens
from weightgen.encoders.adapter_quantizer import AdapterPCA
from weightgen.errors import ArchError, TaskError
from weightgen.generators.common import check_range, sample_generator
from weightgen.generators.diffusion import WeightDiffusionPipeline
from weightgen.generators.dit import WeightDiT
from weightgen.specs import find_arch
from weightgen.tasks import TASK_CODE_DIM, TaskSpec, parse_prompt, task_code
from weightgen.zoo.lora_base import state_sha256
from weightgen.zoo.lora_trainer import adapters_finite

TRAIN_HINT = "`python train/train_diffusion.py configs/generator/lora-diffusion-digits.yaml`"


@dataclass
class GeneratedAdapters:
    """Samples of one prompt: LoRA factors of the pipeline's base. Non-finite samples are flagged."""

    task: TaskSpec
    prompt: str
    factors: dict[str, torch.Tensor]  # `<module>.lora_A` (N, r, in), `<module>.lora_B` (N, out, r)
    finite: torch.Tensor  # (N,) bool
    lora: dict  # the zoo's LoRA description (rank, alpha, target_modules, base_sha256, ...)

    def adapter(self, i: int) -> dict[str, torch.Tensor]:
        return {n: f[i].clone() for n, f in self.factors.items()}

    @property
    def num_finite(self) -> int:
        return int(self.finite.sum())


def lora_task(prompt: str, task_kinds: list[str] | None) -> TaskSpec:
    """The task a LoRA generator is asked for; an adapter needs one, and has no architecture to name."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError("the prompt is empty; describe a shift such as 'digits rotated by 25 degrees'")
    arch, _ = find_arch(prompt)
    if arch is not None:
        raise ArchError(f"this generator makes LoRA adapters of its ViT base; the prompt asks for {arch.article} "
                        f"{arch.describe()}, so drop the architecture (or use an MLP generator)")
    task = parse_prompt(prompt)
    if task_kinds is not None and task.kind not in task_kinds:
        raise TaskError(f"this generator was trained on {', '.join(task_kinds)} tasks only, so it cannot produce '{task.id}'")
    return task


class AdapterPipelineMixin:
    """What both LoRA pipelines share: no MLP archs, the zoo's LoRA description (read from the
    component named by `codec`), and the base check."""

    @property
    def archs(self) -> list:
        return []  # no MLP archs: every sample is an adapter of `base`

    @property
    def lora(self) -> dict:
        return getattr(self, self.codec).config.lora

    def check_base(self) -> None:
        """Refuse to run on a base other than the one the zoo's adapters were trained on."""
        if state_sha256(self.base.state_dict()) != self.lora["base_sha256"]:
            raise ArchError("this generator's base model is not the one its adapters were trained on (sha256 differs)")


class LoRADiffusionPipeline(AdapterPipelineMixin, WeightDiffusionPipeline):
    files = {
        "denoiser": ["config.json", "diffusion_pytorch_model.safetensors"],
        "encoder": ["config.json", "diffusion_pytorch_model.safetensors"],
        "scheduler": ["scheduler_config.json"],
        "base": ["config.json", "model.safetensors"],
    }
    train_hint = TRAIN_HINT

    def __init__(self, denoiser: WeightDiT, scheduler: SchedulerMixin,
                 encoder: AdapterEncoder | AdapterPCA | AdapterFactorTokens, base):
        if self._one_step(encoder) and scheduler.config.get("timestep_spacing") != "trailing":
            # one step must start at t = T (`default_sampling`); the default spacing would start at t = 0
            scheduler = type(scheduler).from_config(scheduler.config, timestep_spacing="trailing")
        super().__init__(denoiser=denoiser, scheduler=scheduler, encoder=encoder)
        self.register_modules(base=base)

    @staticmethod
    def _one_step(encoder) -> bool:
        """Factor tokens mean a generator trained through the task loss, sampled in one step."""
        return isinstance(encoder, AdapterFactorTokens)

    def default_sampling(self) -> tuple[int, float]:
        """(steps, temperature) of a call that does not say, chosen on a validation draw of tasks in
        no zoo (benchmarks/RESULTS.md, issue 16). Factor tokens (a generator trained through the
        task loss): one step from t = T (the pipeline keeps its scheduler at trailing spacing), the
        denoiser's own prediction from noise at 0.7; more steps hand the sample to the low-noise
        end, which only the denoising loss trained, and lost 15-19 points; temperature 1 / 0.5
        moved new tasks -1.5 / +0.7 points, with more / less spread between samples. Delta tokens
        and principal coefficients: 50 DDIM steps from noise at 0.7 (temperature 0.5 / 1 traded 0.5
        points on new tasks against 2 on seen ones; 10 steps lost 0.5-1)."""
        return (1, 0.7) if self._one_step(self.encoder) else (50, 0.7)

    @torch.no_grad()
    def __call__(self, prompt: str, num_samples: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float = 1.0, generator: torch.Generator | int | None = None,
                 temperature: float | None = None, batch_size: int = 256, progress: bool = False) -> GeneratedAdapters:
        """Sample `num_samples` adapters for a prompt such as 'digits rotated by 25 degrees'; the
        same seed gives identical samples. Steps and temperature default to `default_sampling()`."""
        steps, temp = self.default_sampling()
        num_inference_steps = steps if num_inference_steps is None else num_inference_steps
        temperature = temp if temperature is None else temperature
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps,
                    integer=True)
        check_range("guidance_scale", guidance_scale, 0.0, 20.0)
        check_range("temperature", temperature, 0.0, 2.0)
        task = lora_task(prompt, self.denoiser.config.task_kinds)
        g = sample_generator(generator)
        device, dtype = self.denoiser.device, self.denoiser.dtype
        meta = self.encoder.metadata.to(device)
        shape = (num_samples, self.encoder.num_tokens, self.encoder.token_dim)
        noise = torch.randn(shape, generator=g, dtype=torch.float32).to(device, dtype)  # drawn up front
        emb = self._text(prompt.strip())
        code = task_code(task, self.denoiser.config.task_code_dim or TASK_CODE_DIM)[None].to(device)
        out = []
        for start in self._progress(range(0, num_samples, batch_size), progress):
            x = noise[start : start + batch_size] * (self.scheduler.init_noise_sigma * temperature)
            out.append(self._denoise(x, emb, code, 0, meta, num_inference_steps, guidance_scale, g))
        tokens = self.denoiser.destandardize(torch.cat(out).float(), 0) * self.encoder.used.to(device)
        factors = {n: f.float().cpu() for n, f in self.encoder.decode(tokens).items()}
        finite = adapters_finite(factors)
        return GeneratedAdapters(task, prompt.strip(), factors, finite, self.lora)
