"""A tar writer for the resharder's hot loop, byte-identical to ``formats.shards.ShardWriter``.

``ShardWriter`` goes through ``tarfile`` (a ``TarInfo`` per member, headers built field by field
in Python, a copy per write): about 45 µs per member. Here a member's ustar header is built
from a template with the same fields ``tarfile`` writes for ShardWriter's members (USTAR format,
mode 0444, uid/gid 0, mtime 0, empty user/group names and device numbers), and headers, data and padding are
handed to the kernel in batches with ``os.writev`` by a writer thread, so the next batch is read
and assembled while the previous one is written. Names that do not fit the 100-byte name field
or are not ASCII go through ``tarfile``'s own header code, so the output never differs.

A member's data may be a :class:`Range` (input fd, offset, size) instead of bytes: the writer
thread then copies it from the input file in the kernel (``os.copy_file_range``; one copy, no
user-space buffer), falling back to ``pread`` + ``write`` where the file systems do not support
it. Headers and padding still come from memory, so the bytes are the same either way.

:class:`LayoutWriter` writes the same bytes from batches laid out elsewhere (the resharder's
compiled ``_tar_kernels.lay_out``: headers, small members and padding in one buffer, plus the
input ranges to copy), with one ``copy_file_range`` per run of samples and one compiled
``pwrite`` loop per batch, so no Python runs per member.

The file is written under a temporary name and renamed into place on success (atomic).
"""
from __future__ import annotations

import errno
import os
import queue
import tarfile
import threading
from pathlib import Path
from typing import Iterable

from ..formats.atomic import atomic_path
from ..formats.tar import member_order

BLOCK = 512
RECORD = 20 * BLOCK
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


class Range:
    """``size`` bytes of open file ``fd`` from ``offset``: member data copied without reading it
    into Python. ``fd`` must stay open until the writer is closed."""

    __slots__ = ("fd", "offset", "size")

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.offset, self.size = fd, offset, size

    def __len__(self) -> int:
        return self.size


class ShortInput(OSError):
    """A :class:`Range` ran past the end of its input file (the file changed)."""


_NO_CFR = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
           getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_cfr_ok = hasattr(os, "copy_file_range")  # cleared (per process) the first time the kernel refuses


def _copy_range(r: Range, out_fd: int, out_off: int | None = None) -> None:
    """Write ``r``'s bytes to ``out_fd`` at ``out_off`` (None: at its position, which advances):
    in-kernel copy, else pread + write."""
    global _cfr_ok
    off, left = r.offset, r.size
    while left > 0 and _cfr_ok:
        try:
            n = os.copy_file_range(r.fd, out_fd, left, off, out_off)
        except OSError as e:
            if e.errno not in _NO_CFR:
                raise
            _cfr_ok = False  # e.g. across file systems on older kernels: copy through user space
            break
        if n == 0:
            raise ShortInput(errno.EIO, f"input ended at byte {off} (expected {left} more bytes)")
        off += n
        left -= n
        out_off = None if out_off is None else out_off + n
    while left > 0:
        buf = os.pread(r.fd, min(left, 1 << 20), off)
        if not buf:
            raise ShortInput(errno.EIO, f"input ended at byte {off} (expected {left} more bytes)")
        if out_off is None:
            _writev_all(out_fd, [buf])
        else:
            _pwrite_all(out_fd, buf, out_off)
            out_off += len(buf)
        off += len(buf)
        left -= len(buf)


def ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if not raw or len(raw) > 100 or size >= 8**11:
        return _tarfile_header(name, size)
    return _header(raw, sum(raw), size)


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


# the template cut around the name, size and checksum fields (the size field is NUL there)
_T_MODE_IDS = bytes(_TEMPLATE[100:124])
_T_MTIME = bytes(_TEMPLATE[136:148])
_T_REST = bytes(_TEMPLATE[156:BLOCK])
_NULS = bytes(100)


def _header(raw: bytes, raw_sum: int, size: int) -> bytes:
    """The ustar header of an ASCII name of at most 100 bytes (``raw_sum`` = ``sum(raw)``)."""
    sz = b"%011o\0" % size
    chk = _TEMPLATE_SUM + raw_sum + sum(sz)
    return b"".join((raw, _NULS[len(raw):], _T_MODE_IDS, sz, _T_MTIME, b"%06o\0 " % chk, _T_REST))


def _member_order(m: tuple) -> tuple[int, str]:
    """ShardWriter's member order within a sample (``formats.tar.member_order``)."""
    return member_order(m[0])


class _AtomicTar:
    """A tar written under a temporary name in ``self.path``'s directory and renamed onto it when
    the ``with`` block succeeds (``formats.atomic.atomic_path``). Subclasses write through
    ``self._fd`` and finish the archive in ``_close(ok)`` (``ok``: the block raised nothing)."""

    path: Path

    def __enter__(self):
        self._ctx = atomic_path(self.path, suffix=".tar")
        self._tmp = self._ctx.__enter__()
        # made empty by atomic_path; O_TRUNC would make ext4 start writeback at close
        self._fd = os.open(self._tmp, os.O_WRONLY)
        return self

    def _close(self, ok: bool) -> None:
        raise NotImplementedError

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close(exc_type is None)
        except BaseException as e:
            os.close(self._fd)
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        os.close(self._fd)
        self._ctx.__exit__(exc_type, exc, tb)


class FastTarWriter(_AtomicTar):
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

    def add(self, key: str, members: Iterable[tuple[str, "bytes | memoryview | Range"]]) -> None:
        if "/" in key or key.startswith(".") or not key:
            raise ValueError(f"invalid sample key {key!r}")
        parts = self._parts
        append = parts.append
        kraw = key.encode("ascii") if key.isascii() else None
        ksum = sum(kraw) + 46 if kraw is not None else 0  # 46: the "." before the extension
        added = 0
        for ext, data in sorted(members, key=_member_order):
            size = len(data)
            if kraw is not None and ext.isascii() and len(kraw) + 1 + len(ext) <= 100 and size < 8**11:
                eraw = ext.encode("ascii")
                append(_header(kraw + b"." + eraw, ksum + sum(eraw), size))
            else:
                append(ustar_header(f"{key}.{ext}", size))
            append(data)
            pad = -size % BLOCK
            if pad:
                append(_ZEROS[:pad])
            added += BLOCK + size + pad
        self._pending += added
        self._offset += added
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
                _write_parts(self._fd, parts)
            except BaseException as e:  # noqa: BLE001 - re-raised in the producing thread
                self._error = e

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def _close(self, ok: bool) -> None:
        if ok:
            end = bytes(2 * BLOCK)
            self._parts.append(end)
            self._offset += len(end)
            rem = self._offset % RECORD
            if rem:
                self._parts.append(_ZEROS[: RECORD - rem])
            self._flush()
        self._join()


# the header template and its byte sum (checksum field as spaces), for compiled layouts
TEMPLATE = bytes(_TEMPLATE)
TEMPLATE_SUM = _TEMPLATE_SUM


class LayoutWriter(_AtomicTar):
    """Context manager: a tar written from batches laid out elsewhere (the resharder's compiled
    ``_tar_kernels.lay_out``), same bytes as :class:`FastTarWriter`; atomic on exit.

    ``put(src_fd, mem, writes, copies, end)``: the batch's input ranges ``copies`` (input offset,
    length, output offset) are copied in the kernel first, then its memory pieces ``writes``
    (start in ``mem``, length, output offset) written over and between them with
    ``pwrite_all(fd, mem, writes)`` (one call for the batch; it returns the index of a piece
    that failed, or -1); ``end`` is the output size so far. End-of-archive blocks and record
    padding on exit.
    """

    def __init__(self, path: str | os.PathLike, pwrite_all):
        self.path = Path(path)
        self.size = 0
        self._pwrite_all = pwrite_all

    def put(self, src_fd: int, mem, writes, copies, end: int) -> None:
        for offset, size, out_off in copies.tolist():
            _copy_range(Range(src_fd, offset, size), self._fd, out_off)
        failed = self._pwrite_all(self._fd, mem, writes)
        if failed >= 0:  # the compiled call sees no errno: write the rest here, raising the OSError
            for start, size, out_off in writes[failed:].tolist():
                _pwrite_all(self._fd, memoryview(mem)[start : start + size], out_off)
        self.size = end

    def _close(self, ok: bool) -> None:
        if ok:
            _pwrite_all(self._fd, bytes(2 * BLOCK + -(self.size + 2 * BLOCK) % RECORD), self.size)


def _write_parts(fd: int, parts: list) -> None:
    """Append ``parts`` (bytes-like, or :class:`Range`) to ``fd`` in order.

    Bytes go out with ``writev``. Ranges that are laid out in their input exactly as in the
    output — each the same distance after the previous one as the bytes written between them
    (consecutive samples of an input tar: every member's header and padding are the same size
    in both) — are copied as one ``copy_file_range`` of the whole input span, and the bytes
    between them (new headers, small members, padding) are then written over the copy with
    ``pwrite``: one in-kernel copy per run of samples instead of one per image.
    """
    n = len(parts)
    i = start = 0
    while i < n:
        first = parts[i]
        if type(first) is not Range:
            i += 1
            continue
        if start < i:
            _writev_all(fd, parts[start:i])
        end = first.offset + first.size  # input end of the group so far
        patches: list[tuple[int, list]] = []
        gap: list = []
        gap_len = 0
        k = i + 1
        j = i + 1  # parts[i:j] are in the group
        while k < n:
            q = parts[k]
            if type(q) is not Range:
                gap.append(q)
                gap_len += len(q)
                k += 1
                continue
            if q.fd != first.fd or q.offset != end + gap_len:
                break
            patches.append((end - first.offset, gap))
            end = q.offset + q.size
            gap, gap_len = [], 0
            k += 1
            j = k
        if not patches:
            _copy_range(first, fd)
        else:
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            _copy_range(Range(first.fd, first.offset, end - first.offset), fd)
            for rel, chunk in patches:
                if chunk:
                    _pwrite_all(fd, chunk[0] if len(chunk) == 1 else b"".join(chunk), pos + rel)
        i = start = j
    if start < n:
        _writev_all(fd, parts[start:] if start else parts)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


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
