"""Checks of command-line arguments, run before anything slow (loading a generator takes up to ~30 s,
an evaluation minutes), so bad input costs nothing and loses nothing already computed. This module
imports nothing heavy (no torch), so a refused command returns in the time Python takes to start.
The sampling options' checks live with the library (`weightgen.sampling.check_sampling_args`, run
again by `generate.draw`), since library callers need them too.

Each raises a `WeightgenError` with one sentence; `one_line` keeps any message on one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer

from weightgen.errors import WeightgenError, shorten

# Usage errors (a missing argument, "-n abc") as main() must catch them: typer >= 0.20 raises those of
# the click copy it vendors, which are not click's classes, so catching click's alone let them through
# as tracebacks with exit status 1.
USAGE_ERRORS = (click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))
ABORTS = (click.exceptions.Abort, typer.Abort)

MAX_PROMPT_CHARS = 2_000  # the text encoder reads 256 tokens; a task prompt is one sentence
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
