"""The guards every stage runs before it writes: outputs apart from inputs, reuse only of intact files.

``check_apart`` refuses an output path that is, contains or lies inside one of the stage's
inputs (``reshard --out POOL/shards``, ``filter --out POOL/metadata/x.npz``, ``train --data D
--out D``); stages call it before ``--overwrite`` removes anything.

``file_records`` / ``damaged_file`` record what a finished stage wrote (size and a digest of the
first and last MiB: cheap on large shards, and it catches deletion, truncation and rewrites of
either end) and check it again before the stage's output is reused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import ConfigError

_EDGE = 1 << 20


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(p).expanduser()))


def check_apart(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike] | None]) -> None:
    """ConfigError when ``out`` is, contains or lies inside one of ``inputs`` (name -> path or paths)."""
    o = _real(out)
    for name, value in inputs.items():
        if value is None:
            continue
        paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        for p in paths:
            i = _real(p)
            if o == i:
                how = "is"
            elif i.is_relative_to(o):
                how = "contains"
            elif o.is_relative_to(i):
                how = "lies inside"
            else:
                continue
            raise ConfigError(f"{out}: the output {how} the {name} input {p}; choose an output apart from the inputs")


def _edge_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
        h.update(f.read(_EDGE))
    return h.hexdigest()[:32]


def file_records(root: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, object]]:
    """``{name: {"size", "edges"}}`` for files under ``root``, recorded when a stage finishes."""
    root = Path(root)
    out: dict[str, dict[str, object]] = {}
    for n in sorted(names):
        size = (root / n).stat().st_size
        out[n] = {"size": size, "edges": _edge_digest(root / n, size)}
    return out


def tree_records(root: str | os.PathLike, dirs: Iterable[str]) -> dict[str, dict[str, object]]:
    """:func:`file_records` of every visible regular file below ``root/d`` for each of ``dirs``."""
    root = Path(root)
    names = [str(p.relative_to(root)) for d in dirs if (root / d).is_dir() for p in sorted((root / d).rglob("*"))
             if p.is_file() and not p.is_symlink() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return file_records(root, names)


def damaged_file(root: str | os.PathLike, records: Mapping[str, Mapping[str, object]]) -> str | None:
    """Why the recorded files under ``root`` differ from what was recorded (None when intact)."""
    root = Path(root)
    for n, rec in records.items():
        p = root / n
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != rec.get("size"):
            return f"{p} has {size} bytes, {rec.get('size')} were written"
        if _edge_digest(p, size) != rec.get("edges"):
            return f"{p} has changed since it was written"
    return None
