"""Training data discovery: directories of webdataset shards -> open_clip ``--train-data`` patterns.

Like the reference ``train.py``: a ``.tar`` path is used as is; a directory's tars are grouped by
name prefix and zero padding and written as a brace pattern ``{first..last}`` (numbering must be
contiguous: a gap is an error, not a silent hole); a sub-directory with a resharder ``meta.json``
uses its ``output_shard_count``; other sub-directories are searched. Several inputs are joined
with ``::`` (open_clip's separator).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError, InputError
from ..formats.shards import read_stats

_NUMBERED = re.compile(r"^(.*?)(\d+)\.tar$")


@dataclass
class TrainData:
    pattern: str  # open_clip --train-data value
    shards: list[Path] = field(default_factory=list)
    samples: int | None = None  # unique samples (sum of _stats.json successes), None when unknown

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def identity(self) -> str:
        """Digest of the shards' names, sizes and mtimes: a rewritten input is a different input."""
        h = hashlib.sha256()
        for p in self.shards:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]


def _group_pattern(directory: Path, tars: list[Path]) -> list[str]:
    groups: dict[tuple[str, int], list[int]] = {}
    for t in tars:
        m = _NUMBERED.match(t.name)
        if m is None:
            raise FormatError(f"{t}: shard name has no number (expected names like 00000000.tar)")
        prefix, num = m.group(1), m.group(2)
        groups.setdefault((prefix, len(num)), []).append(int(num))
    patterns = []
    for (prefix, width), nums in sorted(groups.items()):
        nums.sort()
        lo, hi = nums[0], nums[-1]
        if len(nums) != hi - lo + 1 or len(set(nums)) != len(nums):
            missing = sorted(set(range(lo, hi + 1)) - set(nums))[:5]
            first = f"{prefix}{missing[0]:0{width}d}.tar" if missing else "?"
            raise FormatError(
                f"{directory}: shard numbering has gaps ({hi - lo + 1 - len(set(nums))} missing, first {first}); "
                "training needs contiguous shards"
            )
        if lo == hi:
            patterns.append(str(directory / f"{prefix}{lo:0{width}d}.tar"))
        else:
            patterns.append(str(directory / f"{prefix}{{{lo:0{width}d}..{hi:0{width}d}}}.tar"))
    return patterns


def _from_resharder(d: Path) -> tuple[list[str], list[Path]] | None:
    meta = d / "meta.json"
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{meta}: corrupt resharder meta.json: {e}") from None
    if not isinstance(info, dict):
        raise FormatError(f"{meta}: corrupt resharder meta.json: a JSON {type(info).__name__}, not an object")
    n = info.get("output_shard_count")
    if not isinstance(n, int) or n <= 0:
        return None
    fmt = info.get("output_shard_format", "{:08d}.tar")
    shards = [d / fmt.format(i) for i in range(n)]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: shard listed by {meta} (output_shard_count={n}) does not exist")
    return _group_pattern(d, shards), shards


def _discover(path: Path) -> tuple[list[str], list[Path]]:
    if path.is_file():
        if path.suffix != ".tar":
            raise InputError(f"{path}: training data must be a .tar shard or a directory of shards")
        return [str(path)], [path]
    if not path.is_dir():
        raise InputError(f"{path}: training data does not exist")
    res = _from_resharder(path)
    if res is not None:
        return res
    tars = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file() and not p.name.startswith("."))
    patterns: list[str] = _group_pattern(path, tars) if tars else []
    shards = list(tars)
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            pats, sh = _discover(sub)
        except InputError as e:
            if "no .tar shards" in str(e):
                continue
            raise
        patterns += pats
        shards += sh
    if not shards:
        raise InputError(f"{path}: no .tar shards")
    return patterns, shards


def check_tar_head(path: Path) -> None:
    """FormatError unless ``path`` starts with a valid tar header (or is an empty archive).

    A shard of random bytes would otherwise reach webdataset, which skips bad headers with a log
    line each and, with resampled shards, never runs out of them: a hang that fills the disk.
    """
    with open(path, "rb") as f:
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        raise FormatError(f"{path}: not a tar shard ({len(block)} bytes, shorter than one tar header)")
    if block.count(0) == len(block):
        return
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise FormatError(f"{path}: not a tar shard (first header: {e})") from None


def find_train_data(data: str | os.PathLike | list[str | os.PathLike]) -> TrainData:
    """Resolve one or several shard files/directories into an open_clip pattern (errors name the path)."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise InputError("no training data given")
    patterns: list[str] = []
    shards: list[Path] = []
    for item in items:
        pats, sh = _discover(Path(item).expanduser().resolve())
        patterns += pats
        shards += sh
    total: int | None = 0
    for s in shards:
        st = read_stats(s)
        if st is None or "successes" not in st:
            total = None
            break
        total += int(st["successes"])
    return TrainData(pattern="::".join(patterns), shards=shards, samples=total)
