"""A fast reader of plain ustar / GNU tar headers (the resharder's scan), with ``tarfile`` as the
fallback for anything unusual (pax, GNU long names, base-256 sizes).

:func:`read_headers` returns every member as (name, data offset, size, regular file: True /
False, None for a link), where the archive ended and what damage stopped it (None when it
read whole). With a :class:`Peek` it also keeps the bytes of small members and the ends of big
ones, read in the same windows as the headers, so the scan needs no further read for a sample's
json or its image-end check. ``reshard/_tar_kernels.walk`` is the compiled twin of this walk
(same windows, same rules); what it does not handle comes here.
"""
from __future__ import annotations

import os
import struct
import tarfile
import zlib
from pathlib import Path


class _Fallback(Exception):
    """A header the fast reader does not handle (pax, GNU long names, base-256 sizes)."""


def _octal(field: bytes) -> int:
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


SMALL = 1536  # members up to this size come with their header read (json, txt, cls)
EDGE = 32  # bytes kept from each end of larger members (image integrity check)


class Peek:
    """What the fast header walk saw besides headers: small members' bytes, big members' ends."""

    def __init__(self) -> None:
        self.small: dict[int, bytes] = {}  # data offset -> data (size <= SMALL)
        self.edges: dict[int, tuple[bytes, bytes]] = {}  # data offset -> (first, last EDGE bytes)


WINDOW = 4096  # smallest read of the header walk: a sample's small members share one window


def header_sum_ok(hdr: bytes, chk: int, chk_field: bytes | None = None) -> bool:
    """The ustar checksum test (sum of the header with the checksum field read as spaces), done
    with ``zlib.adler32`` (whose low 16 bits are 1 + the byte sum mod 65521) instead of a Python
    ``sum`` over 512 bytes; exact whenever the low 16 bits disagree, so a bad header fails."""
    expect = chk - 256 + sum(hdr[148:156] if chk_field is None else chk_field)  # = sum(hdr) if good
    return 0 <= expect <= 512 * 255 and (expect + 1) % 65521 == zlib.adler32(hdr) & 0xFFFF


def read_headers_fast(tar: Path, file_size: int, peek: Peek | None = None) -> tuple[list[tuple[str, int, int, bool | None]], int, str | None]:
    """Headers of a plain ustar/GNU tar: [(name, data offset, size, regular file)], end, error.

    Reads a window of at least ``WINDOW`` bytes from just before each header, unless the last
    window already holds what is needed: the end of the previous member's data, the header and
    the first bytes of this member's data. So small members (json, txt) and the ends of big ones
    (for the image check) come for free, a sample's small members usually share one read, and
    image data is skipped. Several times faster than ``tarfile``. Raises _Fallback for anything
    unusual so ``tarfile`` handles it instead.
    """
    entries: list[tuple[str, int, int, bool | None]] = []
    append = entries.append
    small = peek.small if peek is not None else None
    edges = peek.edges if peek is not None else None
    pos = 0
    prev: tuple[int, int, bytes] | None = None  # a big member whose tail is in the next window
    buf, b0, b1 = b"", 0, 0  # the last window and its file range
    fd = os.open(tar, os.O_RDONLY)
    try:
        while pos < file_size:
            need_lo = pos - 512 - EDGE if pos >= 512 + EDGE else 0
            need_hi = min(pos + 512 + SMALL, file_size)
            if not (b0 <= need_lo and need_hi <= b1):
                buf = os.pread(fd, max(need_hi - need_lo, WINDOW), need_lo)
                b0, b1 = need_lo, need_lo + len(buf)
            h0 = pos - b0
            if prev is not None and edges is not None:
                end = prev[0] + prev[1] - b0
                edges[prev[0]] = (prev[2], buf[max(end - EDGE, 0) : end])
            prev = None
            if len(buf) - h0 < 512:
                return entries, pos, f"cut-off header at byte {pos}"
            name, size_f, chk_f, flag, magic, prefix = _HDR.unpack_from(buf, h0)
            hdr = buf[h0 : h0 + 512]
            if hdr[0] == 0 and hdr.count(0) == 512:
                return entries, pos, None  # end-of-archive block
            try:
                try:  # tarfile's own layout: 6 octal digits, NUL, space
                    if chk_f[6:] != b"\0 ":
                        raise ValueError
                    chk = int(chk_f[:6], 8)
                except ValueError:
                    chk = _octal(chk_f)
                if size_f[0] & 0x80:
                    raise _Fallback("base-256 size")
                try:  # 11 octal digits, NUL
                    if size_f[11] != 0:
                        raise ValueError
                    size = int(size_f[:11], 8)
                except ValueError:
                    size = _octal(size_f)
            except ValueError:
                return entries, pos, f"bad header at byte {pos}"
            if size < 0:
                return entries, pos, f"bad header at byte {pos}"
            if not header_sum_ok(hdr, chk, chk_f):
                return entries, pos, f"bad header checksum at byte {pos}"
            if flag in _FALLBACK_TYPES:
                raise _Fallback(f"header type {flag!r}")
            name = name.split(b"\0", 1)[0]
            if magic == b"ustar" and prefix[0] != 0:
                name = prefix.split(b"\0", 1)[0] + b"/" + name
            data = pos + 512
            append((name.decode("utf-8", "surrogateescape"), data, size,
                    True if flag in _REGULAR_TYPES else (None if flag in _LINK_TYPES else False)))
            if small is not None:
                if size <= SMALL:
                    got = buf[h0 + 512 : h0 + 512 + size]
                    if len(got) == size:
                        small[data] = got
                else:
                    prev = (data, size, buf[h0 + 512 : h0 + 512 + EDGE])
            pos += 512 + (size + 511) // 512 * 512
        if prev is not None and edges is not None and prev[0] + prev[1] <= file_size:
            edges[prev[0]] = (prev[2], os.pread(fd, EDGE, prev[0] + prev[1] - EDGE))
    finally:
        os.close(fd)
    if pos > file_size:
        return entries, file_size, f"truncated: the last member runs past the end of the file ({file_size} bytes)"
    return entries, pos, "truncated: no end-of-archive blocks" if entries else None


_FALLBACK_TYPES = frozenset((b"x", b"g", b"L", b"K"))
_REGULAR_TYPES = frozenset((b"0", b"\0", b"7"))
_LINK_TYPES = frozenset((b"1", b"2"))  # hard and symbolic links: unsafe members, never sample data
# name, size, checksum, type flag, magic, prefix
_HDR = struct.Struct("100s24x12s12x8sc100x5s83x155s12x")


def tar_members(tar: Path) -> list[tuple[str, int, int, bool | None]]:
    """(name, data offset, size, regular file: True / False, None for a link) of every member of
    ``tar`` that could be read, by the resharder's header walk (a damaged tail ends the list)."""
    return read_headers(Path(tar), os.path.getsize(tar))[0]


def read_headers(tar: Path, file_size: int, peek: Peek | None = None) -> tuple[list[tuple[str, int, int, bool | None]], int, str | None]:
    try:
        return read_headers_fast(tar, file_size, peek)
    except _Fallback:
        if peek is not None:
            peek.small.clear()
            peek.edges.clear()
    entries: list[tuple[str, int, int, bool | None]] = []
    try:
        with tarfile.open(tar, "r:") as tf:  # random-access mode: data is skipped by seeking
            for m in tf:
                entries.append((m.name, m.offset_data, m.size, True if m.isfile() else (None if m.islnk() or m.issym() else False)))
            return entries, tf.offset, None
    except (tarfile.TarError, OSError, EOFError) as e:
        return entries, 0, f"{type(e).__name__}: {e}"




def nonzero_tail(tar: Path, start: int, file_size: int) -> int | None:
    """Offset of the first non-zero byte after the last member (a cut-off tar), or None."""
    with open(tar, "rb") as f:
        f.seek(start)
        pos = start
        while pos < file_size:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                return pos + next(i for i, b in enumerate(chunk) if b)
            pos += len(chunk)
    return None

