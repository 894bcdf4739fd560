"""Text-conditioned diffusion over neuron sets: `SetDiffusionPipeline`, which samples any MLP width.

Components (saved by `save_pretrained`, restored by `from_pretrained`):
- `denoiser`: `SetDiT` (weightgen/generators/set_dit.py), which also holds the per-role weight
  statistics (`denoiser.stats`) and the prompt statistics;
- `scheduler`: a diffusers sampler (DDIM by default) built from the DDPM training schedule.
There is no per-architecture component: a request for a width the zoo never had is a set of a
different size. The state a scheduler steps is one flat vector per network: the standardised node
features and edge matrices packed together (`pack` / `unpack`); padding node slots stay zero.

v-prediction and classifier-free guidance as in weightgen/generators/diffusion.py.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from weightgen.errors import ArchError
from weightgen.generators.common import (
    GeneratedWeights,
    WeightPipeline,
    check_range,
    resolve_request,
    sample_generator,
)
from weightgen.generators.diffusion import clean_estimate, with_null_prompt
from weightgen.generators.set_dit import SetDiT
from weightgen.space.neurons import NeuronLayout, check_expressible, neuron_layout, output_classes
from weightgen.specs import ArchSpec
from weightgen.tasks import TASK_CODE_DIM, task_code

TRAIN_HINT = "`python train/train_set_diffusion.py configs/generator/set-diffusion-digits.yaml`"
FILES = {"denoiser": ["config.json", "diffusion_pytorch_model.safetensors"], "scheduler": ["scheduler_config.json"]}


def pack(nodes: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([nodes.flatten(1), *(e.flatten(1) for e in edges)], dim=1)


def unpack(layout: NeuronLayout, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    b, n, f = x.shape[0], layout.num_nodes, layout.feature_dim
    nodes, rest = x[:, : n * f].view(b, n, f), x[:, n * f :]
    edges, sizes = [], layout.arch.sizes
    for lo, hi in zip(sizes[1:-1], sizes[2:]):
        edges.append(rest[:, : hi * lo].view(b, hi, lo))
        rest = rest[:, hi * lo :]
    return nodes, edges


def packed_mask(layout: NeuronLayout) -> torch.Tensor:
    """(D,) bool over the packed vector: False on padding node slots."""
    sizes = layout.arch.sizes
    edges = sum(hi * lo for lo, hi in zip(sizes[1:-1], sizes[2:]))
    return torch.cat([layout.feature_mask.flatten(), torch.ones(edges, dtype=torch.bool)])


def layer_masks(layout: NeuronLayout) -> list[torch.Tensor]:
    """Per layer after the input, (D,) bool over the packed vector: its neurons' real features and
    the weight matrix into it (for a staged model, which samples them one layer after another)."""
    node_layer = layout.meta.depth_in[:, None].expand(-1, layout.feature_dim)
    sizes = layout.arch.sizes
    return [pack(((node_layer == i) & layout.feature_mask)[None],
                 [torch.full((1, hi, lo), i == j + 1) for j, (lo, hi) in enumerate(zip(sizes[1:-1], sizes[2:]))])[0]
            for i in range(len(layout.slices))]


def check_set_arch(arch: ArchSpec, in_dim: int, n_classes: int) -> None:
    """One sentence for an arch a neuron-set generator cannot sample (`check_expressible`, or more
    outputs than the classes it knows)."""
    check_expressible(arch, in_dim)
    if arch.out_dim > n_classes:
        raise ArchError(f"{arch.describe()} has {arch.out_dim} outputs; this generator knows {n_classes} classes")


def arch_notes(arch: ArchSpec, seen: list[ArchSpec]) -> list[str]:
    """'seen' / 'new' and, for a width outside the zoo's range at that depth, a warning."""
    if arch in seen:
        return []
    same_depth = [a for a in seen if len(a.sizes) == len(arch.sizes)]
    if not same_depth:
        return [f"{arch.describe()} is new, and no network of its depth was in the zoo; expect lower quality"]
    notes = [f"{arch.describe()} is new: its widths are sampled from what the zoo's widths taught"]
    for i, w in enumerate(arch.sizes[1:-1]):
        lo, hi = min(a.sizes[i + 1] for a in same_depth), max(a.sizes[i + 1] for a in same_depth)
        if not lo <= w <= hi:
            notes.append(f"hidden layer {i + 1} has {w} neurons, outside the zoo's {lo}..{hi}; this is "
                         "extrapolation, expect lower quality")
    return notes


class SetDiffusionPipeline(WeightPipeline):
    files, train_hint = FILES, TRAIN_HINT

    def __init__(self, denoiser: SetDiT, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler)
        self.text_encoder = None

    @property
    def archs(self) -> list[ArchSpec]:
        """The archs seen in training; any other expressible MLP can be sampled too."""
        return [ArchSpec.from_dict(a) for a in self.denoiser.config.archs or []]

    def resolve(self, prompt: str, arch: ArchSpec | str | None):
        """The request, for any MLP the space can express; the arch must read the generator's inputs."""
        return resolve_request(prompt, arch, self.archs, self.denoiser.config.task_kinds, accept=self._check_arch)

    def _check_arch(self, arch: ArchSpec) -> None:
        check_set_arch(arch, self.denoiser.config.in_dim, self.denoiser.config.n_classes)

    @torch.no_grad()
    def __call__(self, prompt: str, arch: ArchSpec | str | None = None, num_samples: int = 1,
                 num_inference_steps: int = 10, guidance_scale: float = 1.0,
                 generator: torch.Generator | int | None = None, temperature: float = 1.0,
                 batch_size: int = 256, progress: bool = False) -> GeneratedWeights:
        """Sample `num_samples` networks of any MLP arch the space can express (see `resolve`)."""
        check_range("num_samples", num_samples, 1, 1_000_000, integer=True)
        check_range("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps,
                    integer=True)
        check_range("guidance_scale", guidance_scale, 0.0, 20.0)
        check_range("temperature", temperature, 0.0, 2.0)
        req = self.resolve(prompt, arch)
        layout = neuron_layout(req.arch)
        g = sample_generator(generator)
        device, dtype = self.denoiser.device, self.denoiser.dtype
        keep = packed_mask(layout).to(device, dtype)
        noise = torch.randn(num_samples, len(keep), generator=g).to(device, dtype) * keep
        emb = self._text(req.text)
        classes = output_classes(req.arch, req.task)[None].to(device)
        code = None if req.task is None else task_code(req.task, self.denoiser.config.task_code_dim or TASK_CODE_DIM)[None].to(device, dtype)
        layers = [m.to(device, dtype) for m in layer_masks(layout)] if self.denoiser.config.staged else []
        out = []
        for start in self._progress(range(0, num_samples, batch_size), progress):
            x = noise[start : start + batch_size] * (self.scheduler.init_noise_sigma * temperature)
            x = self._denoise(layout, x, keep, emb, classes, code, num_inference_steps, guidance_scale, g)
            for f in range(1, len(layers)):  # staged: keep layers < f, draw the rest again for them
                fixed = sum(layers[:f])
                fresh = torch.randn(x.shape, generator=g).to(device, dtype) * keep * (1 - fixed)
                x = self._denoise(layout, x * fixed + fresh * self.scheduler.init_noise_sigma * temperature, keep,
                                  emb, classes, code, num_inference_steps, guidance_scale, g, fixed=fixed, given=f)
            out.append(x)
        nodes, edges = unpack(layout, torch.cat(out).float())
        nodes, edges = self.denoiser.stats.destandardize(layout, nodes, edges)
        flat = layout.join(nodes, edges).cpu()
        return GeneratedWeights(req.arch, req.task, req.text, flat, flat.isfinite().all(1),
                                notes=arch_notes(req.arch, self.archs))

    def _denoise(self, layout, x, keep, emb, classes, code, steps: int, guidance: float, g,
                 fixed: torch.Tensor | None = None, given: int = 0) -> torch.Tensor:
        """DDIM-style loop over the packed x; `fixed` (D,) 0/1: the slots of the `given` leading
        layers, held at their value in x (clean)."""
        n, device, dtype = len(x), x.device, x.dtype
        held = None if fixed is None else x * fixed
        text = emb.tokens.to(device, dtype).expand(n, -1, -1)
        mask = emb.mask.to(device).expand(n, -1)
        null_code = torch.zeros(n, self.denoiser.config.task_code_dim or TASK_CODE_DIM, device=device, dtype=dtype)
        code = null_code if code is None else code.expand(n, -1)
        if guidance != 1.0:
            null_text, null_mask = with_null_prompt(text, mask, self.denoiser.null_text, torch.ones(n, dtype=torch.bool))
            if guidance == 0.0:
                text, mask, code = null_text, null_mask, null_code
            else:
                text, mask, code = torch.cat([null_text, text]), torch.cat([null_mask, mask]), torch.cat([null_code, code])
        rows = len(text)
        classes = classes.expand(rows, -1)
        given_t = torch.full((rows,), given, device=device) if self.denoiser.config.staged else None
        self_cond, prev = self.denoiser.config.self_cond, None
        self.scheduler.set_timesteps(steps, device=device)
        for t in self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(x, t).repeat(rows // n, 1)
            nodes, edges = unpack(layout, inp)
            out_nodes, out_edges = self.denoiser(layout, nodes, edges, t.expand(rows), text, mask, classes,
                                                 task_code=code if self.denoiser.code_proj is not None else None,
                                                 given=given_t, prev=prev)
            out = pack(out_nodes, out_edges)
            if rows == 2 * n:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            if self_cond:
                x0 = clean_estimate(self.scheduler.alphas_cumprod, inp[:n], out, t,
                                    self.scheduler.config.prediction_type) * keep
                if held is not None:  # the given layers are known exactly, as in training
                    x0 = x0 * (1 - fixed) + held
                prev = unpack(layout, x0.repeat(rows // n, 1))
            x = self.scheduler.step(out, t, x, generator=g).prev_sample * keep
            if held is not None:
                x = x * (1 - fixed) + held
        return x
