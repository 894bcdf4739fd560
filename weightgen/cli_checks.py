"""Checks of command-line arguments, run before anything slow (loading a generator takes up to ~30 s,
an evaluation minutes), so bad input costs nothing and loses nothing already computed. This module
imports nothing heavy (no torch), so a refused command returns in the time Python takes to start;
`generate.draw` runs the same sampling checks for library callers.

Each raises a `WeightgenError` with one sentence; `one_line` keeps any message on one line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import click
import typer

from weightgen.errors import GeneratorError, WeightgenError, short, shorten

# Usage errors (a missing argument, "-n abc") as main() must catch them: typer >= 0.20 raises those of
# the click copy it vendors, which are not click's classes, so catching click's alone let them through
# as tracebacks with exit status 1.
USAGE_ERRORS = (click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))
ABORTS = (click.exceptions.Abort, typer.Abort)

MAX_PROMPT_CHARS = 2_000  # the text encoder reads 256 tokens; a task prompt is one sentence
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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


def check_text(what: str, text: str | None, limit: int = MAX_PROMPT_CHARS) -> None:
    """A prompt or an arch/task text: not empty, not huge, and on one line with no terminal escapes."""
    if text is None:
        return
    if not text.strip():
        raise WeightgenError(f"{what} is empty; describe a task such as 'classify digits 3, 5 and 8'")
    if len(text) > limit:
        raise WeightgenError(f"{what} has {len(text):,} characters, over the limit of {limit:,}")
    if _CONTROL.search(text):
        raise WeightgenError(f"{what} contains control characters (a newline, tab or escape); give it as plain text")


def check_path(path: Path) -> Path:
    """A path the file system can look up: a name over 255 bytes or a loop is one sentence, not an OSError."""
    try:
        path.exists()  # raises for ENAMETOOLONG, EACCES...; a missing file is for the reader to report
    except (OSError, ValueError) as e:
        raise WeightgenError(f"cannot look up {shorten(str(path))} ({getattr(e, 'strerror', None) or e})") from e
    return path


def check_report_path(out: Path) -> Path:
    """Where `eval` will write its report: checked before the evaluation runs, not after it."""
    if check_path(out).is_dir():
        raise WeightgenError(f"--out {shorten(str(out))} is a folder; give a file name such as {shorten(str(out / 'report.json'))}")
    from weightgen.generate import check_writable  # imports torch: only once the cheap checks passed

    check_writable(out.parent)
    return out


def one_line(message: str) -> str:
    """An error message as one line: line breaks become spaces, other control characters escapes."""
    message = " ".join(message.splitlines())
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)
