"""One exception family for every user-facing error.

Messages name the file (or the name) and what is wrong, on one line; the CLI prints the message
and exits 2 without a traceback.
"""
from __future__ import annotations


class DatacompError(Exception):
    """Base class of every error a user can cause with bad input or configuration."""

    exit_code = 2


class InputError(DatacompError):
    """An input file or directory is missing, unreadable or malformed."""


class FormatError(InputError):
    """A file exists but does not follow the format it must have."""


class ConfigError(DatacompError):
    """A name (scale, recipe, task, op) or parameter does not exist or is invalid."""


class StageConflictError(DatacompError):
    """An output directory holds a different, complete result and --overwrite was not given."""
