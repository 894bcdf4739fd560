"""One prompt -> one folder of samples: the library path that `weightgen sample` and the batch script
`sample/sample.py` share (its config, and sample/evaluate.py's, are defined here).

`sample_prompt` takes a loaded generator (`weightgen.home.load_generator`) and writes either MLP
checkpoints (`weightgen.generate.sample_to_folder`) or, for a LoRA generator, PEFT adapter folders
(`weightgen.generate_lora.sample_adapters_to_folder`), evaluated unless asked not to, with the
summary as OUT/report.json. It returns that summary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from weightgen.errors import GeneratorError, WeightgenError, short

MAX_SAMPLES = 10_000  # per call: every sample is decoded, written as a file and evaluated
MAX_SAMPLE_FLOATS = 2**28  # samples x parameters held at once: 1 GiB of float32
MAX_SEED = 2**32 - 1  # what every seeding API (torch, numpy) accepts
MAX_STEPS = 10_000  # diffusion steps; a pipeline then caps them at its scheduler's training steps


def check_sampling_args(num_samples, seed, steps=None, guidance=None, temperature=None) -> None:
    """Refuse sampling options no generator accepts before one is loaded (that takes up to ~30 s); a
    loaded pipeline checks its own exact ranges again (generators.common.check_range)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(num_samples, int) or num_samples < 1:
        raise GeneratorError(f"-n must be at least 1, got {num_samples}")
    if num_samples > MAX_SAMPLES:
        raise GeneratorError(f"-n must be at most {MAX_SAMPLES:,}, got {num_samples:,}; sample in several runs")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise GeneratorError(f"--seed must be an integer between 0 and {MAX_SEED}, got {short(seed)}")
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        raise GeneratorError(f"--steps must be between 1 and {MAX_STEPS:,}, got {short(steps)}")
    if guidance is not None and not (number(guidance) and 0 <= guidance <= 20):
        raise GeneratorError(f"--guidance must be a number between 0 and 20, got {short(guidance)}")
    if temperature is not None and not (number(temperature) and 0 <= temperature <= 10):
        raise GeneratorError(f"--temperature must be a number between 0 and 10, got {short(temperature)}")


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
