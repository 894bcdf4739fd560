"""Where weightgen keeps what `weightgen quickstart` builds: the default zoo, encoders and generators.

The cache folder is `$WEIGHTGEN_HOME` if set, else `~/.cache/weightgen`. `weightgen sample` without
`--generator` loads the default generator of the requested kind from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from weightgen.errors import GeneratorError

KINDS = ("diffusion", "ar")
# pipeline class -> kind; the neuron-set diffusion pipeline is a diffusion generator (same sampling options)
PIPELINE_KINDS = {"WeightDiffusionPipeline": "diffusion", "SetDiffusionPipeline": "diffusion", "WeightARPipeline": "ar",
                  "SetARPipeline": "ar", "LoRADiffusionPipeline": "diffusion", "LoRAARPipeline": "ar"}
LORA_PIPELINES = {"LoRADiffusionPipeline", "LoRAARPipeline"}  # sample PEFT adapters of a base, not MLP checkpoints
ANY_WIDTH = {"SetDiffusionPipeline": "denoiser", "SetARPipeline": "heads"}  # neuron-set pipelines: component with `archs`


def home() -> Path:
    return Path(os.environ.get("WEIGHTGEN_HOME") or Path.home() / ".cache" / "weightgen")


def default_generator(kind: str, root: Path | None = None) -> Path:
    """The folder `weightgen quickstart` trains the default `kind` generator into (under `root`,
    default the cache folder)."""
    if kind not in KINDS:
        raise GeneratorError(f"unknown generator kind '{kind}'; use one of {', '.join(KINDS)}")
    return (root or home()) / "generators" / kind


def generator_kind(path: str | Path) -> str:
    """'diffusion' or 'ar', read from a saved pipeline's model_index.json."""
    return PIPELINE_KINDS[pipeline_class(path)]


def pipeline_class(path: str | Path) -> str:
    """The pipeline class named by a saved folder's model_index.json."""
    index = Path(path) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    if name not in PIPELINE_KINDS:
        raise GeneratorError(f"{path} is not a weightgen generator folder (no readable model_index.json naming "
                             f"{', '.join(PIPELINE_KINDS)})")
    return name


def generator_archs(path: str | Path) -> tuple[list, bool]:
    """(the archs a saved generator trained on, whether it samples other widths too), read from its
    config files without loading any weights."""
    from weightgen.specs import ArchSpec

    cls = pipeline_class(path)
    if cls in LORA_PIPELINES:
        return [], False  # it makes adapters of its base; no MLP arch is seen or new to it
    component = ANY_WIDTH.get(cls) or {"WeightDiffusionPipeline": "encoder", "WeightARPipeline": "tokenizer"}[cls]
    try:
        archs = json.loads((Path(path) / component / "config.json").read_text()).get("archs") or []
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise GeneratorError(f"{path}/{component}/config.json is missing or unreadable; the generator folder is "
                             "incomplete") from e
    return [ArchSpec.from_dict(a) for a in archs], cls in ANY_WIDTH


def arch_status(spec, generator: Path | None) -> str | None:
    """'seen' / 'new' (and why) for an arch against a generator folder (default: the quickstart
    diffusion generator); None when there is no generator to ask. What `weightgen parse` prints."""
    from weightgen.errors import ArchError
    from weightgen.generators.set_diffusion import arch_notes
    from weightgen.space.neurons import check_expressible

    if generator is None:
        generator = default_generator("diffusion")
        if not (generator / "model_index.json").is_file():
            return None
    if pipeline_class(generator) in LORA_PIPELINES:
        return (f"{generator} makes LoRA adapters of its own base model, not MLPs: ask it for the task alone "
                "(no architecture), and it writes PEFT adapters")
    archs, any_width = generator_archs(generator)
    if spec in archs:
        return f"seen: {generator} trained on {spec.describe()}"
    if not any_width:
        return f"new, and {generator} serves only the archs it trained on, so it cannot sample it"
    try:
        check_expressible(spec, archs[0].sizes[0] if archs else None)
    except ArchError as e:
        return f"cannot be sampled by {generator}: {e}"
    return "; ".join(arch_notes(spec, archs))


def load_generator(path: str | Path | None, kind: str | None):
    """The pipeline at `path` (its kind read from the folder; `kind` must agree when given), or the
    cached default of `kind` (diffusion if None). Missing defaults point at `weightgen quickstart`."""
    if path is None:
        path = default_generator(kind or "diffusion")
        if not (path / "model_index.json").is_file():
            if kind == "ar":
                raise GeneratorError(f"no default ar generator in {path.parent}: quickstart builds the diffusion "
                                     "generator only; pass --generator DIR with an AR generator you trained "
                                     "(README, 'Generators')")
            raise GeneratorError(f"no default {kind or 'diffusion'} generator in {path.parent}; run `weightgen "
                                 "quickstart` to build one, or pass --generator DIR")
    path = Path(path)
    if not path.is_dir():
        raise GeneratorError(f"no generator at {path}; train one (README, 'Generators') or run `weightgen quickstart`")
    found = generator_kind(path)
    if kind is not None and kind != found:
        raise GeneratorError(f"{path} holds a {found} generator, not {kind}")
    if pipeline_class(path) == "LoRADiffusionPipeline":
        from weightgen.generators.lora_diffusion import LoRADiffusionPipeline as cls
    elif pipeline_class(path) == "LoRAARPipeline":
        from weightgen.generators.lora_ar import LoRAARPipeline as cls
    elif pipeline_class(path) == "SetDiffusionPipeline":
        from weightgen.generators.set_diffusion import SetDiffusionPipeline as cls
    elif pipeline_class(path) == "SetARPipeline":
        from weightgen.generators.set_ar import SetARPipeline as cls
    elif found == "diffusion":
        from weightgen.generators.diffusion import WeightDiffusionPipeline as cls
    else:
        from weightgen.generators.autoregressive import WeightARPipeline as cls
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe, found, path
