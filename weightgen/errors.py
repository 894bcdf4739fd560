"""Errors that carry one readable sentence for the user.

Every failure caused by bad input (a config, a prompt, an architecture text, a file) raises a
subclass of `WeightgenError`; the CLI prints its message and exits with status 2, never a traceback.
`short` and `shorten` quote user values in messages without ever formatting a huge one.
"""

import os
import reprlib


class WeightgenError(Exception):
    """Bad input: the message is one sentence addressed to the user."""


class ConfigError(WeightgenError):
    """A config file or override that cannot be read or names unknown keys."""


class ArchError(WeightgenError):
    """An architecture text or spec that weightgen cannot build."""


class TaskError(WeightgenError):
    """A task id or prompt that names no known task."""


class CheckpointError(WeightgenError):
    """A file that is not a readable weightgen checkpoint."""


class ZooError(WeightgenError):
    """A zoo folder that is missing, incomplete or built from another config."""


class GeneratorError(WeightgenError):
    """A generator folder that is missing or incomplete, or a request it cannot serve."""


class _BoundedRepr(reprlib.Repr):
    """reprlib, but a huge integer is described instead of converted (str() of a 10**100000 refuses)."""

    def repr_int(self, x, level):
        return repr(x) if x.bit_length() <= 128 else f"<an integer of {x.bit_length()} bits>"


_REPR = _BoundedRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 4, 4, 4
_REPR.maxstring, _REPR.maxother = 60, 60


def short(value, limit: int = 80) -> str:
    """A repr of `value` for an error message, at most `limit` characters.

    Messages quote what the user gave; formatting it whole would let a YAML anchor bomb (gigabytes
    once expanded) or a 5,000-digit integer take the process down while reporting it. reprlib looks
    at only a few items per level, and repr escapes control characters, so the result is one line."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(text: str | os.PathLike, limit: int = 200) -> str:
    """`text` (a path, a name) cut in the middle to at most `limit` characters, on one line."""
    text = os.fspath(text)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-(limit // 2 - 1):]
