"""Atomic file writes: a temporary name in the same directory, then an os.replace.

A crash leaves either the old file or the new one, never half of one. Files get the mode the
user's umask gives (0644 by default), not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def replaced_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``path``; swap it in for ``path`` if the block succeeds.

    A failing block leaves the old ``path`` as it was (write aside, then swap): ``--overwrite``
    never removes a finished output before its replacement is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
    new.chmod(0o777 & ~_UMASK)
    old = path.with_name(f".{path.name}.old")
    try:
        yield new
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that look at it
    (``np.save`` appends ``.npy`` to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; the file gets what the user's umask gives
            tmp_path.chmod(0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def link_file(src: str | os.PathLike, dst: str | os.PathLike, copy: bool = True) -> None:
    """``dst`` holds ``src``'s bytes, atomically: a hard link (no copy of a large checkpoint), else
    a copy (``copy=False``: the link's OSError is raised instead). Nothing to do when ``dst``
    already is ``src`` — renaming a hard link onto another name of the same file does nothing, and
    would leave the temporary name behind."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            if not copy:
                raise
            shutil.copyfile(src, tmp)


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|new)(\..*)?$")  # what atomic_path / replaced_dir name


def sweep_temps(directory: str | os.PathLike, names: Iterable[str] | None = None) -> int:
    """Remove the temporaries that killed writers left in ``directory`` (only those of ``names``
    when given); a stage calls this as it finishes, when no writer of its own is running. -> count."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    prefixes = tuple(f".{n}." for n in names) if names is not None else None
    n = 0
    for p in d.iterdir():
        if _TEMP.match(p.name) and (prefixes is None or p.name.startswith(prefixes)):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            n += 1
    return n


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
