"""Tar members as webdataset samples: the one place that says which member is safe, how a
member name splits into sample key and extension, in which order a sample's members are
written, and what a reader does with a damaged tar.

- :func:`safe_member_name`: a member whose name is absolute or climbs out (``..``, with ``/`` or
  ``\\`` as the separator) is unsafe; every reader refuses it (the shard reader and byod raise,
  the resharder's scan skips the sample and counts it; ``reshard/_tar_kernels.py`` applies the
  same rule in its compiled walk, and tests hold the two together).
- :func:`split_member`: img2dataset's key / extension split (key = the last path component up
  to its first dot; the extension lower-cased), or webdataset's (``keep_dir``: the directory
  stays part of the key), as clip_benchmark's eval sets are read.
- :func:`member_order`: ``ShardWriter``'s order of a sample's members (jpg, txt, json, then the
  rest by name); the resharder's writers (``reshard/fasttar.py`` and its compiled layout) use it.
- :class:`TarSamples`: the members of one tar grouped into samples, with the caller's damage
  policy: ``on_damage="raise"`` (a corrupt tar is a FormatError naming it) or ``"keep"`` (the
  samples before the damage are kept, the one in progress is dropped, and ``error`` says what
  happened); links are skipped or, with ``links=True``, reported as a :data:`LINK` member so the
  caller can count the sample as unsafe.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Iterator

from ..errors import FormatError, InputError

EXT_RANK = {"jpg": 0, "txt": 1, "json": 2}
LINK = "\0link"  # the files key of a member that is a hard or symbolic link (never sample data)
DAMAGE_POLICIES = ("raise", "keep")


def safe_member_name(name: str) -> bool:
    """False for a member name that is absolute or has a ``..`` component (``/`` or ``\\``)."""
    if "/" not in name and "\\" not in name:
        return name != ".."
    return not (name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"))


def check_member_name(name: str, tar_path: str | os.PathLike) -> None:
    """Raise FormatError naming the tar when ``name`` is not :func:`safe_member_name`."""
    if not safe_member_name(name):
        raise FormatError(f"{tar_path}: tar member {name!r} tries to escape its directory")


def split_member(name: str, keep_dir: bool = False) -> tuple[str, str] | None:
    """(sample key, lower-case extension) of a member name, None for a name without an extension.

    The key is the last path component up to its first dot (img2dataset's shards); ``keep_dir``
    keeps the directory in the key (webdataset's rule, used for clip_benchmark's eval sets)."""
    head, _, base = name.rpartition("/")
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    return (f"{head}/{key}" if keep_dir and head else key), ext.lower()


def member_order(ext: str) -> tuple[int, str]:
    """The rank of a sample's member in the written tar: jpg, txt, json, then the rest by name."""
    return (EXT_RANK.get(ext, 3), ext)


class TarSamples:
    """Iterate ``(key, {ext: bytes})`` over one tar's samples (consecutive members with the same
    key), refusing unsafe member names (FormatError naming the tar).

    ``on_damage``: ``"raise"`` — a tar that cannot be opened or read to its end is a FormatError;
    ``"keep"`` — the samples before the damage are yielded, the one in progress is dropped and
    ``self.error`` holds a description (None while the tar reads whole). ``links``: False skips
    hard and symbolic links; True adds them to their sample as a :data:`LINK` entry (empty).
    ``stream_mode``: the ``tarfile`` mode (``"r|"``: plain tars; ``"r|*"`` also compressed ones).
    """

    def __init__(self, path: str | os.PathLike, on_damage: str = "raise", links: bool = False,
                 stream_mode: str = "r|"):
        if on_damage not in DAMAGE_POLICIES:
            raise ValueError(f"on_damage must be one of {DAMAGE_POLICIES}, got {on_damage!r}")
        self.path = Path(path)
        self.on_damage = on_damage
        self.links = links
        self.stream_mode = stream_mode
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        if not self.path.is_file():
            raise InputError(f"{self.path}: shard does not exist")
        self.error = None
        try:
            tf = tarfile.open(self.path, self.stream_mode)
        except (tarfile.TarError, EOFError, OSError) as e:
            if self.on_damage == "raise":
                raise FormatError(f"{self.path}: not a tar file: {e}") from None
            self.error = f"{type(e).__name__}: {e}"
            return
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            for m in tf:
                link = m.islnk() or m.issym()
                if not (m.isfile() or (link and self.links)):
                    continue
                check_member_name(m.name, self.path)
                split = split_member(m.name)
                if split is None:
                    continue
                if split[0] != key:  # the previous sample is whole: yield it before reading on
                    if key is not None:
                        yield key, files
                    key, files = split[0], {}
                f = None if link else tf.extractfile(m)
                files[LINK if link else split[1]] = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            if self.on_damage == "raise":
                raise FormatError(f"{self.path}: corrupt tar: {e}") from None
            self.error = f"{type(e).__name__}: {e}"
            return  # the sample in progress may be incomplete: dropped
        finally:
            tf.close()
        if key is not None:
            yield key, files
