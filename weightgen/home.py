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
PIPELINE_KINDS = {"WeightDiffusionPipeline": "diffusion", "WeightARPipeline": "ar"}


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
    index = Path(path) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    if name not in PIPELINE_KINDS:
        raise GeneratorError(f"{path} is not a weightgen generator folder (no readable model_index.json naming "
                             "WeightDiffusionPipeline or WeightARPipeline)")
    return PIPELINE_KINDS[name]


def load_generator(path: str | Path | None, kind: str | None):
    """The pipeline at `path` (its kind read from the folder; `kind` must agree when given), or the
    cached default of `kind` (diffusion if None). Missing defaults point at `weightgen quickstart`."""
    if path is None:
        path = default_generator(kind or "diffusion")
        if not (path / "model_index.json").is_file():
            raise GeneratorError(f"no default {kind or 'diffusion'} generator in {path.parent}; run `weightgen "
                                 "quickstart` to build one, or pass --generator DIR")
    path = Path(path)
    if not path.is_dir():
        raise GeneratorError(f"no generator at {path}; train one (README, 'Generators') or run `weightgen quickstart`")
    found = generator_kind(path)
    if kind is not None and kind != found:
        raise GeneratorError(f"{path} holds a {found} generator, not {kind}")
    if found == "diffusion":
        from weightgen.generators.diffusion import WeightDiffusionPipeline as cls
    else:
        from weightgen.generators.autoregressive import WeightARPipeline as cls
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe, found, path
