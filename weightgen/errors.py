"""Errors that carry one readable sentence for the user.

Every failure caused by bad input (a config, a prompt, an architecture text, a file) raises a
subclass of `WeightgenError`; the CLI prints its message and exits with status 2, never a traceback.
"""


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
