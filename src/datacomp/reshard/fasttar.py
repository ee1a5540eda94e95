"""A tar writer for the resharder's hot loop, byte-identical to ``formats.shards.ShardWriter``.

``ShardWriter`` goes through ``tarfile`` (a ``TarInfo`` per member, headers built field by field
in Python, a copy per write): about 45 µs per member. Here a member's ustar header is built
from a template with the same fields ``tarfile`` writes for ShardWriter's members (USTAR format,
mode 0444, uid/gid 0, mtime 0, empty user/group names and device numbers), and headers, data and padding are
handed to the kernel in batches with ``os.writev`` by a writer thread, so the next batch is read
and assembled while the previous one is written. Names that do not fit the 100-byte name field
or are not ASCII go through ``tarfile``'s own header code, so the output never differs.

The file is written under a temporary name and renamed into place on success (atomic).
"""
from __future__ import annotations

import os
import queue
import tarfile
import threading
from pathlib import Path
from typing import Iterable

from ..formats.atomic import atomic_path

BLOCK = 512
RECORD = 20 * BLOCK
_EXT_RANK = {"jpg": 0, "txt": 1, "json": 2}
_ZEROS = bytes(RECORD)

_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:108] = b"0000444\0"  # mode
_TEMPLATE[108:116] = b"0000000\0"  # uid
_TEMPLATE[116:124] = b"0000000\0"  # gid
_TEMPLATE[136:148] = b"00000000000\0"  # mtime
_TEMPLATE[148:156] = b"        "  # checksum placeholder
_TEMPLATE[156:157] = b"0"  # regular file
_TEMPLATE[257:265] = b"ustar\x0000"
# devmajor / devminor stay empty (NUL) for regular files, as tarfile writes them
_TEMPLATE_SUM = sum(_TEMPLATE)


def ext_order(ext: str) -> tuple[int, str]:
    """ShardWriter's member order within a sample: jpg, txt, json, then the rest by name."""
    return (_EXT_RANK.get(ext, 3), ext)


def ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if not raw or len(raw) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    sz = b"%011o\0" % size
    h[124:136] = sz
    chk = _TEMPLATE_SUM + sum(raw) + sum(sz) - sum(_TEMPLATE[124:136])
    h[148:155] = b"%06o\0" % chk
    return bytes(h)


class FastTarWriter:
    """Context manager: ``add(key, [(ext, data), ...])`` samples, in order; atomic on exit."""

    def __init__(self, path: str | os.PathLike, batch_bytes: int = 8 << 20):
        self.path = Path(path)
        self.batch_bytes = batch_bytes
        self.count = 0
        self._parts: list[bytes | memoryview] = []
        self._pending = 0
        self._offset = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "FastTarWriter":
        self._ctx = atomic_path(self.path, suffix=".tar")
        self._tmp = self._ctx.__enter__()
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
        return self

    def add(self, key: str, members: Iterable[tuple[str, bytes | memoryview]]) -> None:
        if "/" in key or key.startswith(".") or not key:
            raise ValueError(f"invalid sample key {key!r}")
        parts = self._parts
        for ext, data in sorted(members, key=lambda m: ext_order(m[0])):
            size = len(data)
            parts.append(ustar_header(f"{key}.{ext}", size))
            parts.append(data)
            pad = -size % BLOCK
            if pad:
                parts.append(_ZEROS[:pad])
            n = BLOCK + size + pad
            self._pending += n
            self._offset += n
        self.count += 1
        if self._pending >= self.batch_bytes or len(parts) >= 900:
            self._flush()

    def _flush(self) -> None:
        """Hand the batch to the writer thread (``os.writev`` releases the GIL, so the next batch
        is assembled while this one is written)."""
        if not self._parts:
            return
        if self._thread is None:
            self._queue: queue.Queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._writer, name="fasttar-writer", daemon=True)
            self._thread.start()
        if self._error is not None:
            raise self._error
        self._queue.put(self._parts)
        self._parts = []
        self._pending = 0

    def _writer(self) -> None:
        while True:
            parts = self._queue.get()
            if parts is None:
                return
            if self._error is not None:
                continue
            try:
                _writev_all(self._fd, parts)
            except BaseException as e:  # noqa: BLE001 - re-raised in the producing thread
                self._error = e

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                end = bytes(2 * BLOCK)
                self._parts.append(end)
                self._offset += len(end)
                rem = self._offset % RECORD
                if rem:
                    self._parts.append(_ZEROS[: RECORD - rem])
                self._flush()
            self._join()
        except BaseException as e:
            os.close(self._fd)
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        os.close(self._fd)
        self._ctx.__exit__(exc_type, exc, tb)


def _writev_all(fd: int, parts: list) -> None:
    i, n = 0, len(parts)
    while i < n:
        batch = parts[i : i + 1000]
        written = os.writev(fd, batch)
        for p in batch:  # a short write (rare on regular files) leaves the rest of a part
            size = len(p)
            if written >= size:
                written -= size
                i += 1
            else:
                parts[i] = memoryview(p)[written:]
                break
