"""What both generator pipelines share: reading a request, checking arguments, the text encoder,
loading a saved folder, and the output type.

A request is a prompt plus (optionally) an arch. The task is parsed from the prompt when it names one
(a prompt that names no known task still generates, only without a task to check against); the arch
comes from the `arch` argument, else from the prompt, else from the task's default. The generator
refuses an arch it was not trained on, and a task kind it never saw, naming what it can produce.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from weightgen.errors import ArchError, GeneratorError, TaskError
from weightgen.specs import ArchSpec, find_arch
from weightgen.tasks import TaskSpec, parse_prompt
from weightgen.text import TextEncoder


class TextStatsMixin:
    """Per-dimension standardisation of prompt token states, for an nn.Module. Prompts of different
    tasks differ by little in raw MiniLM space, so the states are standardised before they condition
    anything; the statistics are buffers (saved with the weights), fitted once on the training prompts."""

    def _register_text_stats(self, text_dim: int) -> None:
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_std", torch.ones(text_dim))

    @torch.no_grad()
    def set_text_stats(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Fit on the training prompts' token states (P, L, D) + mask (P, L)."""
        real = tokens[mask]
        self.text_mean.copy_(real.mean(0))
        self.text_std.copy_(real.std(0).clamp_min(1e-4))

    def standardize_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens - self.text_mean) / self.text_std


@dataclass
class GeneratedWeights:
    """Samples of one request, decoded. Non-finite samples are kept and flagged, never dropped."""

    arch: ArchSpec
    task: TaskSpec | None  # None when the prompt names no task weightgen knows
    prompt: str  # the text the generator was conditioned on
    flat: torch.Tensor  # (N, P) weights in the arch's ParamLayout order
    finite: torch.Tensor  # (N,) bool: every weight of sample i is finite
    notes: list[str] = field(default_factory=list)  # e.g. "the arch is new", an extrapolation warning

    @property
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One state_dict per sample, loadable into `arch.build()`."""
        params = self.arch.layout().unflatten(self.flat)
        return [{k: v[i].clone() for k, v in params.items()} for i in range(len(self.flat))]

    @property
    def num_finite(self) -> int:
        return int(self.finite.sum())


@dataclass(frozen=True)
class Request:
    task: TaskSpec | None
    arch: ArchSpec
    text: str  # conditioning text: the prompt, with the arch appended if it did not name one


def resolve_request(prompt: str, arch: ArchSpec | str | None, archs: list[ArchSpec],
                    task_kinds: list[str] | None = None, accept=None) -> Request:
    """Check a prompt + arch against what a generator was trained on (see the module docstring).
    `accept(arch)`, when given, serves any arch beyond `archs` that it does not raise ArchError on
    (a width-agnostic generator); with no arch named, the task's default arch is then taken."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError("the prompt is empty; describe a task such as 'classify digits 3, 5 and 8'")
    prompt = prompt.strip()
    try:
        task = parse_prompt(prompt)
    except TaskError:
        task = None
    if task is not None and task_kinds is not None and task.kind not in task_kinds:
        raise TaskError(f"this generator was trained on {', '.join(task_kinds)} tasks only, so it cannot produce "
                        f"'{task.id}'")
    in_prompt, _ = find_arch(prompt)
    if isinstance(arch, str):
        arch = ArchSpec.parse(arch)
    if arch is not None and not isinstance(arch, ArchSpec):
        raise ArchError(f"arch must be an ArchSpec or a text such as 'MLP 64-32-3', got {arch!r}")
    if arch is not None and in_prompt is not None and arch != in_prompt:
        raise ArchError(f"the prompt asks for {in_prompt.article} {in_prompt.describe()} but the arch argument "
                        f"is {arch.describe()}; give one of them")
    arch = arch or in_prompt
    if arch is None:
        if task is None:
            raise TaskError(f"'{prompt}' names no task weightgen knows and no architecture; add one, e.g. "
                            f"'with {archs[0].article} {archs[0].describe()}'")
        fitting = [a for a in archs if a.out_dim == task.out_dim and a.in_dim == task.in_dim]
        arch = (task.default_arch() if task.default_arch() in fitting or accept is not None
                else fitting[0] if fitting else task.default_arch())
    if accept is not None:
        accept(arch)
    elif arch not in archs:
        raise ArchError(f"this generator cannot produce {arch.article} {arch.describe()}; it was trained on "
                        f"{describe_archs(archs)}")
    if task is not None:
        if (task.in_dim, task.out_dim) != (arch.in_dim, arch.out_dim):
            raise ArchError(f"task {task.id} needs {task.in_dim} inputs and {task.out_dim} outputs, but "
                            f"{arch.describe()} has {arch.in_dim} and {arch.out_dim}")
    text = prompt if in_prompt is not None else f"{prompt} with {arch.article} {arch.describe()}"
    return Request(task, arch, text)


def describe_archs(archs: list[ArchSpec]) -> str:
    return "; ".join(a.describe() for a in archs)


def check_range(name: str, value, low, high, integer: bool = False) -> None:
    """One clear error for an argument outside [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise GeneratorError(f"{name} must be {kind} between {low} and {high}, got {value!r}")


@functools.cache
def shared_text_encoder(name_or_path: str | None = None) -> TextEncoder:
    """One frozen MiniLM per process (loading takes a second; every pipeline reuses it)."""
    return TextEncoder(name_or_path)


# Written by every pipeline's save_pretrained as FORMAT_FILE. 2: the neuron-set weight space (issue
# 15) arrived; folders saved before it carry no format and are refused with the reason, not half-loaded.
GENERATOR_FORMAT = "weightgen-generator/2"
FORMAT_FILE = "weightgen.json"


def saved_format(path: str | Path) -> str | None:
    """The generator format a saved folder declares (None: none, i.e. saved before formats existed)."""
    try:
        return json.loads((Path(path) / FORMAT_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def check_folder(path: str | Path, components: dict[str, list[str]], train_hint: str) -> Path:
    """A saved pipeline folder must hold model_index.json and each component's files, and have been
    saved in this version's generator format."""
    path = Path(path)
    if not path.is_dir():
        raise GeneratorError(f"no generator at {path}; train one with {train_hint}")
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    missing += [f"{sub}/{f}" for sub, files in components.items() for f in files if not (path / sub / f).is_file()]
    if missing:
        raise GeneratorError(f"generator folder {path} is incomplete (missing {', '.join(missing)}); it was "
                             f"probably interrupted while saving, so train it again with {train_hint}")
    found = saved_format(path)
    if found != GENERATOR_FORMAT:
        raise GeneratorError(f"generator folder {path} was saved in format {found or 'weightgen-generator/1'}, and "
                             f"this weightgen reads {GENERATOR_FORMAT} (the weight space changed: generators are no "
                             f"longer keyed to architecture indices); train it again with {train_hint}")
    return path


def sample_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A torch.Generator from a seed, a generator, or None (a fresh random seed)."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is None:
        g.seed()
    else:
        g.manual_seed(int(generator))
    return g


class WeightPipeline(DiffusionPipeline):
    """What both pipelines share: checked loading, the archs they can produce, the lazily loaded
    text encoder. Subclasses set `files` (component -> required files), `train_hint` and `codec`
    (the component that encodes and decodes weights)."""

    files: dict[str, list[str]] = {}
    train_hint: str = ""
    codec: str = ""

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Load a folder written by `save_pretrained` (local folders only; errors name what is missing)."""
        return super().from_pretrained(str(check_folder(path, cls.files, cls.train_hint)), **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """diffusers' save, plus the generator format (FORMAT_FILE) that `from_pretrained` checks."""
        super().save_pretrained(save_directory, **kwargs)
        (Path(save_directory) / FORMAT_FILE).write_text(json.dumps({"format": GENERATOR_FORMAT}) + "\n")

    @property
    def archs(self) -> list[ArchSpec]:
        """What this generator can produce."""
        return list(getattr(self, self.codec).arch_specs)

    def resolve(self, prompt: str, arch: ArchSpec | str | None) -> Request:
        """The request this pipeline would serve, or one clear error (`resolve_request`)."""
        return resolve_request(prompt, arch, self.archs)

    def _text(self, text: str):
        """The conditioning text's embedding; `self.text_encoder` may be set to another TextEncoder."""
        if getattr(self, "text_encoder", None) is None:
            self.text_encoder = shared_text_encoder()
        return self.text_encoder.encode([text])

    def _progress(self, iterable, show: bool):
        return self.progress_bar(iterable) if show else iterable
