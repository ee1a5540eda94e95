"""The files a user names as a stage's input table: paths, directories of them, one rule.

``download --metadata`` (``metadata_fetch.py``) and ``byod --table`` (``byod.py``) both take a
path or a list of paths; a directory stands for its files with one of the stage's endings, in
name order, hidden ones (``.name``: temporaries, editor files) left out. What a named file may be
(a parquet, a ``.txt`` list of paths, any table) is the caller's rule.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InputError

Source = str | os.PathLike | Sequence[str | os.PathLike]


def is_data_file(name: str, endings: tuple[str, ...]) -> bool:
    """A directory entry that counts as one of the stage's files: not hidden, one of ``endings``."""
    return not name.startswith(".") and name.endswith(endings)


def input_files(source: Source, endings: tuple[str, ...], what: str,
                named: Callable[[Path], list[Path]]) -> list[Path]:
    """Every file of ``source``, in order: a directory's data files (none: InputError '{dir}: no
    {what} files'); any other path goes to ``named``, which returns its files or raises."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if is_data_file(q.name, endings))
            if not found:
                raise InputError(f"{p}: no {what} files")
            files += found
        else:
            files += named(p)
    return files


def check_distinct_names(names: Iterable[str], what: str) -> None:
    """InputError listing the names given twice (files that would land on one another)."""
    names = list(names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{what} must have distinct names: " + ", ".join(twice))
