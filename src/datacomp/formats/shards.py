"""Webdataset shards in img2dataset's layout.

Each sample is ``<key>.jpg``, ``<key>.txt`` (caption) and ``<key>.json`` (img2dataset's record,
with the pool's ``uid``) in ``{shard:08d}.tar``; beside each tar, img2dataset writes
``{shard:08d}.parquet`` (one row per attempted sample) and ``{shard:08d}_stats.json`` (with
``successes``, which the reference resharder reads). Keys are 8-digit shard id + 4-digit index.

Tars are written deterministically (fixed mtime, owner and mode) to a temporary name and renamed,
so a re-run produces the same bytes and a crash never leaves a torn tar.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FormatError, InputError
from .atomic import atomic_path, write_json
from .tar import TarSamples, member_order

SHARD_FORMAT = "{:08d}.tar"
STATS_FORMAT = "{:08d}_stats.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def sample_key(shard_id: int, index: int, oom_samples: int = 4) -> str:
    return f"{shard_id:08d}{index:0{oom_samples}d}"


def stats_path(tar_path: str | os.PathLike) -> Path:
    p = Path(tar_path)
    return p.with_name(p.stem + "_stats.json")


@dataclass
class Sample:
    key: str
    files: dict[str, bytes]  # extension -> bytes (jpg, txt, json, ...)

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.files["json"]) if "json" in self.files else {}

    @property
    def text(self) -> str:
        return self.files.get("txt", b"").decode("utf-8")

    def image_bytes(self) -> bytes | None:
        for ext in IMAGE_EXTS:
            if ext in self.files:
                return self.files[ext]
        return None


class ShardWriter:
    """Write one tar (+ img2dataset-style parquet and ``_stats.json``) atomically.

    Use as a context manager; nothing appears under the final names unless the block finishes.
    """

    def __init__(self, tar_path: str | os.PathLike, write_parquet: bool = True, write_stats: bool = True):
        self.path = Path(tar_path)
        self.write_parquet = write_parquet
        self.write_stats = write_stats
        self.records: list[dict[str, Any]] = []
        self.count = 0
        self._start = time.time()
        self._ctx = atomic_path(self.path, suffix=".tar")

    def __enter__(self) -> "ShardWriter":
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        return self

    def write(self, key: str, files: dict[str, bytes], record: dict[str, Any] | None = None) -> None:
        """Add a sample. ``record`` is the img2dataset row for the shard parquet (defaults to the json)."""
        if "/" in key or key.startswith(".") or not key:
            raise ValueError(f"invalid sample key {key!r}")
        for ext in sorted(files, key=member_order):
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        if record is None and "json" in files:
            record = json.loads(files["json"])
        if record is not None:
            self.records.append(record)

    def add_failed(self, record: dict[str, Any]) -> None:
        """Record a sample that was attempted but not written (img2dataset's failed rows)."""
        self.records.append(record)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tar.close()
        if exc_type is not None:
            self._ctx.__exit__(exc_type, exc, tb)
            return
        if self.write_parquet:
            with atomic_path(self.path.with_suffix(".parquet"), suffix=".parquet") as tmp:
                table = pa.Table.from_pylist(self.records) if self.records else pa.table({"key": pa.array([], pa.string())})
                pq.write_table(table, tmp)
        self._ctx.__exit__(None, None, None)  # rename the tar into place
        if self.write_stats:
            failed = len(self.records) - self.count if self.records else 0
            write_json(stats_path(self.path), {
                "count": self.count + max(failed, 0),
                "successes": self.count,
                "failed_to_download": max(failed, 0),
                "failed_to_resize": 0,
                "duration": round(time.time() - self._start, 3),
                "status_dict": {"success": self.count, **({"failed": failed} if failed > 0 else {})},
            })


def iter_samples(tar_path: str | os.PathLike) -> Iterator[Sample]:
    """Yield samples (grouped consecutive members with the same key) from one tar; a damaged tar
    or an unsafe member name is a FormatError naming it (``formats.tar.TarSamples``)."""
    for key, files in TarSamples(tar_path, on_damage="raise"):
        yield Sample(key, files)


def list_shards(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: shard directory does not exist")
    tars = sorted(p for p in d.iterdir() if p.suffix == ".tar" and not p.name.startswith("."))
    if not tars:
        raise InputError(f"{d}: no .tar shards")
    return tars


def read_stats(tar_path: str | os.PathLike) -> dict[str, Any] | None:
    p = stats_path(tar_path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{p}: corrupt stats json: {e}") from None


# ---- losses: input shards a stage could not read whole -------------------------------------------

def losses_record(damaged: dict[str, str], lost_samples: int | None) -> dict[str, Any]:
    """What a stage lost to damaged input shards (``{}`` when nothing): kept in its manifest."""
    return {"damaged_shards": dict(sorted(damaged.items())), "lost_samples": lost_samples} if damaged else {}


def describe_losses(losses: dict[str, Any]) -> str | None:
    """One line for :func:`losses_record` (None when nothing was lost)."""
    damaged = losses.get("damaged_shards") or {}
    if not damaged:
        return None
    first, why = next(iter(damaged.items()))
    n = losses.get("lost_samples")
    lost = f"{n} samples lost" if n is not None else "an unknown number of samples lost"
    more = f" and {len(damaged) - 1} more damaged shard(s)" if len(damaged) > 1 else ""
    return f"{first}: damaged input shard ({why}){more}; {lost}"


def check_losses(losses: dict[str, Any], strict: bool) -> None:
    """``strict``: any loss is an InputError (raised before the stage writes its manifest)."""
    line = describe_losses(losses)
    if strict and line is not None:
        raise InputError(f"{line} (--strict)")
