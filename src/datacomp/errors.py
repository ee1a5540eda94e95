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


def describe_os_error(e: OSError, writing: object = None) -> str:
    """One line for an error from the world outside (exists, is a directory, read-only, no space):
    the path (``writing``, the stage's output, when the error names none), the problem, and what
    became of the work (units already finished are kept)."""
    where = e.filename if e.filename is not None else (f"writing {writing}" if writing is not None else "")
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    what = e.strerror or " ".join(str(e).split()) or type(e).__name__
    head = f"{where}: {what}" if where else what
    return f"{head}; finished units are kept, fix this and re-run the same command to resume"
