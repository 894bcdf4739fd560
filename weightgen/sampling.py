"""One prompt -> one folder of samples: the library path that `weightgen sample` and the batch script
`sample/sample.py` share (its config, and sample/evaluate.py's, are defined here).

`sample_prompt` takes a loaded generator (`weightgen.home.load_generator`) and writes either MLP
checkpoints (`weightgen.generate.sample_to_folder`) or, for a LoRA generator, PEFT adapter folders
(`weightgen.generate_lora.sample_adapters_to_folder`), evaluated unless asked not to, with the
summary as OUT/report.json. It returns that summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from weightgen.errors import WeightgenError


def is_lora(pipe) -> bool:
    from weightgen.home import LORA_PIPELINES

    return type(pipe).__name__ in LORA_PIPELINES


def default_out(pipe, prompt: str, arch=None) -> Path:
    """runs/samples/TASK-ARCH (TASK-lora for adapters), from how the generator reads the prompt."""
    if is_lora(pipe):
        from weightgen.generators.lora_diffusion import lora_task

        conditioner = getattr(pipe, "denoiser", None) or pipe.prefix  # diffusion or AR: where task_kinds live
        return Path("runs/samples") / f"{lora_task(prompt, conditioner.config.task_kinds).id}-lora"
    req = pipe.resolve(prompt, arch)
    return Path("runs/samples") / f"{req.task.id if req.task else 'prompt'}-{req.arch.slug}"


def sample_prompt(pipe, kind: str, generator_dir, prompt: str, out: Path, arch=None, num_samples: int = 8,
                  seed: int = 0, steps: int | None = None, guidance: float | None = None,
                  temperature: float | None = None, evaluate: bool = True) -> dict:
    """Sample, write and evaluate one prompt into `out`; the summary dict (also OUT/report.json)."""
    if is_lora(pipe):
        from weightgen.generate_lora import sample_adapters_to_folder
        from weightgen.generators.lora_diffusion import lora_task

        if arch is not None:
            raise WeightgenError("--arch (an architecture) does not apply to a LoRA generator: it makes adapters of its own base")
        conditioner = getattr(pipe, "denoiser", None) or pipe.prefix
        lora_task(prompt, conditioner.config.task_kinds)  # fails before sampling, with one sentence
        return sample_adapters_to_folder(pipe, generator_dir, prompt, out, num_samples, seed, steps, guidance,
                                         temperature, evaluate=evaluate)
    from weightgen.generate import sample_to_folder, summary

    req = pipe.resolve(prompt, arch)
    run = sample_to_folder(pipe, kind, generator_dir, prompt, out, arch=req.arch, num_samples=num_samples, seed=seed,
                           steps=steps, guidance=guidance, temperature=temperature, evaluate=evaluate)
    return summary(run, prompt, generator_dir, kind, seed, out)


def folder_name(index: int, prompt: str) -> str:
    """A file-name-safe folder for the index-th prompt of a batch: 003-classify-digits-3-5-and-8."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "prompt"
    return f"{index:03d}-{slug}"


@dataclass(frozen=True)
class SampleConfig:
    """sample/sample.py: many prompts, one generator, one folder per prompt."""

    prompts: tuple[str, ...] = ()  # each as `weightgen sample` takes it, architecture text included
    generator: str = ""  # a generator folder; "" = the one `weightgen quickstart` built
    kind: str = ""  # ar | diffusion, to check the folder (or pick the default); "" = read from the folder
    out: str = "runs/samples/batch"  # OUT/NNN-<prompt>/ per prompt, and OUT/index.json
    num_samples: int = 8
    seed: int = 0  # every prompt draws with this seed, so a prompt's samples do not depend on the split
    steps: int = 0  # diffusion sampling steps; 0 = the generator's default
    guidance: float = -1.0  # classifier-free guidance; < 0 = the generator's default
    temperature: float = -1.0  # < 0 = the generator's default
    evaluate: bool = True


@dataclass(frozen=True)
class ScoreConfig:
    """sample/evaluate.py: score checkpoints (files, hub-style folders, or folders of them)."""

    paths: tuple[str, ...] = ()
    task: str = ""  # a task id or prompt; "" = each checkpoint's own metadata
    zoo: str = ""  # a zoo to compare against (statistics and novelty); "" = none
    baselines: bool = False
    out: str = "runs/samples/report.json"


def optional(value, unset):
    """A config's sentinel for "the generator's default" (0 or a negative number) as None."""
    return None if value == unset or (isinstance(value, (int, float)) and value < 0) else value
