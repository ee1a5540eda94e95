"""The reshard stage (see the package docstring for the algorithm)."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import sys
import tarfile
import threading
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, FormatError, InputError, StageConflictError
from ..executors import Unit, run_units
from ..formats.atomic import atomic_path, file_sha256, write_json
from ..formats.guard import check_apart, file_records
from ..formats.manifest import MANIFEST_NAME, Manifest, check_reusable, manifest_digest, write_manifest
from ..formats.pool import one_array
from ..formats.shards import SHARD_FORMAT, check_losses, list_shards, losses_record, read_stats
from ..formats.uids import read_subset
from ..progress import progress
from . import fasttar
from .fasttar import FastTarWriter, Range, ShortInput

log = logging.getLogger(__name__)

STAGE = "reshard"
# With executor="local", units run in threads of this process (``executor="threads"``: no
# process start, and the units' pread / writev / copy_file_range release the GIL) unless there
# are at least this many input (scan) / output (pack) samples; then in worker processes.
SCAN_PARALLEL_MIN = 1_000_000
PACK_PARALLEL_MIN = 2_000_000
PIPELINE = True  # threads for both passes (and no shuffle / blur): pack while later shards are scanned
WORK = ".work"
SAMPLE_IDS = "sample_ids.npy"
META = "meta.json"


# The scan's header walk and the pack's tar layout run as numba kernels (``_tar_kernels``: one
# call per tar / batch, without the GIL, so the worker threads really run in parallel) in a
# process where numba is loaded already, or for runs of at least KERNEL_MIN input samples.
# Loading numba and the cached kernels costs ~0.45 s of CPU once per process (threads share
# it); the kernels save ~25-30 µs of CPU a sample (0.20 -> 0.05 s of Python per 6,000), so
# they pay for themselves from ~15-20k samples. Below that, plain Python.
KERNEL_MIN = 20_000


# ---- uid membership ------------------------------------------------------------------------------

def pairs_to_keys(pairs: np.ndarray) -> np.ndarray:
    """``u8,u8`` pairs -> 16-byte big-endian strings, whose byte order is the (hi, lo) order."""
    words = np.empty((len(pairs), 2), dtype=">u8")
    words[:, 0] = pairs["f0"]
    words[:, 1] = pairs["f1"]
    return words.view("S16").ravel()


def hex_to_keys(uids: list[str]) -> np.ndarray:
    """32-hex uids (validated by the caller) -> the same 16-byte keys, in one conversion."""
    if not uids:
        return np.empty(0, dtype="S16")
    return np.frombuffer(bytes.fromhex("".join(uids)), dtype="S16")


@lru_cache(maxsize=1)
def _subset_keys(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return pairs_to_keys(np.asarray(read_subset(path, mmap=True)))


def subset_keys(path: str) -> np.ndarray:
    st = os.stat(path)
    return _subset_keys(path, st.st_mtime_ns, st.st_size)


def multiplicities(keys: np.ndarray, sorted_subset_keys: np.ndarray) -> np.ndarray:
    """How many times each key occurs in the sorted subset (two vectorised binary searches)."""
    left = sorted_subset_keys.searchsorted(keys, side="left")
    right = sorted_subset_keys.searchsorted(keys, side="right")
    return (right - left).astype(np.int64)


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_uid(u: Any) -> bool:
    return isinstance(u, str) and len(u) == 32 and _HEX.issuperset(u)


# ---- Arrow <-> NumPy, through the buffers ----------------------------------------------------------
# No Python object per item, and no pandas: ``pa.array`` and ``Array.to_numpy`` import it
# (~0.2 s of CPU, once per process).

def _int64s(a: np.ndarray) -> pa.Array:
    """``pa.array(a, pa.int64())``."""
    return pa.Array.from_buffers(pa.int64(), len(a), [None, pa.py_buffer(np.ascontiguousarray(a, np.int64))])


def _int32s(a: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.int32(), len(a), [None, pa.py_buffer(np.ascontiguousarray(a, np.int32))])


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _ranges(starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) ...])`` for starts ``s`` and lengths ``n = diff(offsets)``."""
    return np.repeat(starts - offsets[:-1], np.diff(offsets)) + np.arange(offsets[-1])


def _gather(offsets: np.ndarray, data: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items ``idx`` of variable-length items (item i = ``data[offsets[i]:offsets[i + 1]]``)."""
    new = _offsets(offsets[idx + 1] - offsets[idx])
    return new, data[_ranges(offsets[idx], new)]


def _binary(kind: pa.DataType, offsets: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string / binary array from offsets and bytes (``valid``: False = null), without
    a Python object per item."""
    nulls = 0 if valid is None else int(len(valid) - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, len(offsets) - 1, [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(data)], null_count=nulls)


def _numbers(arr: pa.Array, dtype: Any) -> np.ndarray:
    """A primitive Arrow array without nulls as a NumPy copy."""
    data = arr.buffers()[1]
    if data is None:
        return np.empty(0, dtype)
    return np.frombuffer(data, dtype)[arr.offset : arr.offset + len(arr)].copy()


def _valid(arr: pa.Array) -> np.ndarray:
    """Which items of an Arrow array are not null."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.ones(len(arr), bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets into data, data) of an Arrow string / binary array, as NumPy copies."""
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int32)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64) \
        if offsets is not None else np.zeros(1, np.int64)
    return offs, np.frombuffer(data, np.uint8).copy() if data is not None else np.empty(0, np.uint8)


def _uid_keys(uids: pa.Array) -> np.ndarray:
    """A scan file's uids (32 hex characters each) as ``S32`` values."""
    offsets, data = _binary_parts(uids)
    return data[offsets[0] : offsets[-1]].view("S32") if len(uids) else np.empty(0, "S32")


# ---- compiled kernels (``_tar_kernels``; see KERNEL_MIN) ------------------------------------------

_KERNELS: list = []
_KERNELS_LOCK = threading.Lock()


def _kernels() -> Any:
    """The compiled kernels (``_tar_kernels``), or None where numba is missing or they do not
    load; each is run once here, so that a failure to load falls back to Python."""
    with _KERNELS_LOCK:
        if _KERNELS:
            return _KERNELS[0]
        try:
            from . import _tar_kernels as k

            k.walk(-1, 0, _WINDOW, _SMALL, _EDGE)
            none, one, no_bytes = np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint8)
            k.lay_out(np.zeros((0, 32), np.uint8), one, one, one, no_bytes, none, none, one, no_bytes,
                      np.zeros(0, bool), 0, 0, 0, np.frombuffer(fasttar.TEMPLATE, np.uint8), 0, 1)
            k.pwrite_all(-1, np.zeros(0, np.uint8), np.zeros((0, 3), np.int64))
        except Exception as e:  # noqa: BLE001 - numba missing or broken: the Python code does it all
            log.debug("reshard kernels unavailable (%s); using Python", e)
            k = None
        _KERNELS.append(k)
        return k


def load_kernels() -> bool:
    """Load the compiled kernels now (~0.45 s of CPU, once per process): every later reshard in
    this process uses them, however small. False where numba is unavailable."""
    return _kernels() is not None


def _use_kernels(compiled: bool | None) -> bool:
    """``compiled``: True / False = use the kernels / not; None = only if numba is loaded."""
    return ("numba" in sys.modules if compiled is None else compiled) and _kernels() is not None


# ---- pass 1: scan one input shard ---------------------------------------------------------------

def _safe_name(name: str) -> bool:
    if "/" not in name and "\\" not in name:
        return name != ".."
    return not (name.startswith("/") or name.startswith("\\") or ".." in name.replace("\\", "/").split("/"))


class _Fallback(Exception):
    """A header the fast reader does not handle (pax, GNU long names, base-256 sizes)."""


def _octal(field: bytes) -> int:
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


_SMALL = 1536  # members up to this size come with their header read (json, txt, cls)
_EDGE = 32  # bytes kept from each end of larger members (image integrity check)


class _Peek:
    """What the fast header walk saw besides headers: small members' bytes, big members' ends."""

    def __init__(self) -> None:
        self.small: dict[int, bytes] = {}  # data offset -> data (size <= _SMALL)
        self.edges: dict[int, tuple[bytes, bytes]] = {}  # data offset -> (first, last _EDGE bytes)


_WINDOW = 4096  # smallest read of the header walk: a sample's small members share one window


def _header_sum_ok(hdr: bytes, chk: int, chk_field: bytes | None = None) -> bool:
    """The ustar checksum test (sum of the header with the checksum field read as spaces), done
    with ``zlib.adler32`` (whose low 16 bits are 1 + the byte sum mod 65521) instead of a Python
    ``sum`` over 512 bytes; exact whenever the low 16 bits disagree, so a bad header fails."""
    expect = chk - 256 + sum(hdr[148:156] if chk_field is None else chk_field)  # = sum(hdr) if good
    return 0 <= expect <= 512 * 255 and (expect + 1) % 65521 == zlib.adler32(hdr) & 0xFFFF


def _read_headers_fast(tar: Path, file_size: int, peek: _Peek | None = None) -> tuple[list[tuple[str, int, int, bool | None]], int, str | None]:
    """Headers of a plain ustar/GNU tar: [(name, data offset, size, regular file)], end, error.

    Reads a window of at least ``_WINDOW`` bytes from just before each header, unless the last
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
            need_lo = pos - 512 - _EDGE if pos >= 512 + _EDGE else 0
            need_hi = min(pos + 512 + _SMALL, file_size)
            if not (b0 <= need_lo and need_hi <= b1):
                buf = os.pread(fd, max(need_hi - need_lo, _WINDOW), need_lo)
                b0, b1 = need_lo, need_lo + len(buf)
            h0 = pos - b0
            if prev is not None and edges is not None:
                end = prev[0] + prev[1] - b0
                edges[prev[0]] = (prev[2], buf[max(end - _EDGE, 0) : end])
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
            if not _header_sum_ok(hdr, chk, chk_f):
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
                if size <= _SMALL:
                    got = buf[h0 + 512 : h0 + 512 + size]
                    if len(got) == size:
                        small[data] = got
                else:
                    prev = (data, size, buf[h0 + 512 : h0 + 512 + _EDGE])
            pos += 512 + (size + 511) // 512 * 512
        if prev is not None and edges is not None and prev[0] + prev[1] <= file_size:
            edges[prev[0]] = (prev[2], os.pread(fd, _EDGE, prev[0] + prev[1] - _EDGE))
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
    return _read_headers(Path(tar), os.path.getsize(tar))[0]


def _read_headers(tar: Path, file_size: int, peek: _Peek | None = None) -> tuple[list[tuple[str, int, int, bool | None]], int, str | None]:
    try:
        return _read_headers_fast(tar, file_size, peek)
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


_UID_RE = re.compile(rb'"uid"\s*:\s*"([0-9a-fA-F]{32})"')


def _uid_from_json(raw: bytes) -> Any:
    """The sample's uid, as ``json.loads(raw).get("uid")`` gives it (None if not a JSON object).

    Fast path for img2dataset's flat json: one ``{`` (so no nested object can hold the key),
    one ``"uid"`` and that key followed by a plain 32-hex string. Anything else — escapes,
    nesting, a repeated key, a non-string uid — goes to ``json.loads``.
    """
    if raw.count(b"{") == 1 and raw.count(b'"uid"') == 1:
        m = _UID_RE.search(raw)
        if m is not None:
            return m.group(1).decode("ascii")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return meta.get("uid") if isinstance(meta, dict) else None


class _Samples:
    """What a scan front end (:func:`_samples_py`, :func:`_samples_compiled`) found in a tar: the
    counts, and for its samples with a valid uid (in tar order) ``keys()`` (16-byte keys, as
    ``hex_to_keys``), ``images_whole(sel)`` (:func:`_images_look_whole` of samples ``sel``) and
    ``table(sel, mult)`` (their rows of the scan file)."""

    processed = no_uid = corrupt_samples = unsafe_members = 0
    error: str | None = None


def scan_unit(tar_path: str, subset_path: str, out_path: str, compiled: bool | None = None) -> dict[str, Any]:
    """Find the subset's samples in one tar; save (uid, multiplicity, member offsets) as parquet.
    ``compiled``: see :func:`_use_kernels`."""
    tar = Path(tar_path)
    file_size = tar.stat().st_size
    found = _samples_compiled(tar, file_size) if _use_kernels(compiled) else None
    if found is None:
        found = _samples_py(tar, file_size)
    keys = found.keys()
    mult = multiplicities(keys, subset_keys(subset_path)) if len(keys) else np.empty(0, np.int64)
    sel = np.nonzero(mult > 0)[0]
    # selected samples only: a broken image is skipped and counted, like a corrupt member
    whole = found.images_whole(sel)
    broken = int(len(sel) - whole.sum())
    if broken:
        log.warning("%s: %d selected samples have a broken image; skipped", tar, broken)
        sel = sel[whole]
    with atomic_path(out_path, suffix=".parquet") as tmp:
        pq.write_table(found.table(sel, mult[sel]), tmp)
    stats = _stats_or_none(tar)
    return {
        "processed": found.processed,
        "matched": int(len(sel)),
        "emitted": int(mult[sel].sum()) if len(sel) else 0,
        "json_without_uid": found.no_uid,
        "corrupt_samples": found.corrupt_samples + broken,
        "broken_images": broken,
        "unsafe_members": found.unsafe_members,
        "error": found.error,
        "expected": None if stats is None else stats.get("successes"),
    }


class _PySamples(_Samples):
    def __init__(self, tar: Path, uids: list[str], members: list[list[tuple[str, int, int]]], peek: _Peek):
        self.tar, self.uids, self.members, self.peek = tar, uids, members, peek

    def keys(self) -> np.ndarray:
        return hex_to_keys(self.uids)

    def images_whole(self, sel: np.ndarray) -> np.ndarray:
        if not len(sel):
            return np.ones(0, bool)
        fd = os.open(self.tar, os.O_RDONLY)
        try:
            return np.array([_images_look_whole(fd, self.members[i], self.peek) for i in sel], bool)
        finally:
            os.close(fd)

    def table(self, sel: np.ndarray, mult: np.ndarray) -> pa.Table:
        rows = [self.members[i] for i in sel]
        flat = [m for r in rows for m in r]
        lists = _int32s(_offsets(np.array([len(r) for r in rows], np.int64)))
        # the bytes of small members (txt, json) as the header walk read them, so the pack needs
        # no read for them; null for members it did not hold whole (images)
        small = [self.peek.small.get(o) for _, o, _ in flat]
        return pa.table({
            "uid": _bytes_array(pa.string(), [self.uids[i].encode("ascii") for i in sel]),
            "mult": _int64s(mult),
            "exts": pa.ListArray.from_arrays(lists, _bytes_array(pa.string(), [e.encode("utf-8") for e, _, _ in flat])),
            "offsets": pa.ListArray.from_arrays(lists, _int64s(np.array([o for _, o, _ in flat], np.int64))),
            "sizes": pa.ListArray.from_arrays(lists, _int64s(np.array([z for _, _, z in flat], np.int64))),
            "small": pa.ListArray.from_arrays(lists, _bytes_array(pa.binary(), small)),
        })


def _bytes_array(kind: pa.DataType, items: list[bytes | None]) -> pa.Array:
    """An Arrow string / binary array of ``items`` (None = null), built from buffers (``pa.array``
    would import pandas)."""
    data = [b"" if x is None else x for x in items]
    valid = np.array([x is not None for x in items], bool)
    return _binary(kind, _offsets(np.array([len(x) for x in data], np.int64)), np.frombuffer(b"".join(data), np.uint8),
                   None if valid.all() else valid)


def _samples_py(tar: Path, file_size: int) -> _PySamples:
    """The header walk and sample grouping in Python (any tar ``tarfile`` reads)."""
    uids: list[str] = []
    members: list[list[tuple[str, int, int]]] = []
    peek = _Peek()
    found = _PySamples(tar, uids, members, peek)
    entries, end_pos, error = _read_headers(tar, file_size, peek)
    if error is None:
        tail = _nonzero_tail(tar, end_pos, file_size)
        if tail is not None:  # a cut-off header: the last sample may be incomplete
            error = f"truncated or damaged after byte {tail}"
    found.error = error

    group_key: str | None = None
    group: list[tuple[str, int, int]] = []
    group_json: tuple[int, int] | None = None
    group_bad = False
    with open(tar, "rb") as f:

        def flush() -> None:
            nonlocal group_key, group, group_json, group_bad
            if group_key is None:
                return
            found.processed += 1
            if group_bad:
                found.corrupt_samples += 1
            else:
                uid = None
                if group_json is not None:
                    raw = peek.small.get(group_json[0])
                    if raw is None:
                        f.seek(group_json[0])
                        raw = f.read(group_json[1])
                    uid = _uid_from_json(raw)
                if _is_uid(uid):
                    uids.append(uid.lower())
                    members.append(group)
                else:
                    found.no_uid += 1
            group_key, group, group_json, group_bad = None, [], None, False

        for name, offset, size, isfile in entries:
            if isfile is False:  # directories and the like; None is a link, counted below as unsafe
                continue
            base = name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            if key != group_key:
                flush()
                group_key = key
            if isfile is None or not _safe_name(name):
                found.unsafe_members += 1
                group_bad = True
                continue
            if offset + size > file_size:
                group_bad = True  # cut-off member
                continue
            ext = ext.lower()
            group.append((ext, offset, size))
            if ext == "json":
                group_json = (offset, size)
        if error is not None:
            group_bad = True  # the sample in progress at the damage is dropped
            log.warning("%s: %s; kept the samples before the damage", tar, error)
        flush()
    return found


class _CompiledSamples(_Samples):
    def __init__(self, uid: np.ndarray, start: np.ndarray, end: np.ndarray, img: np.ndarray, members: tuple):
        self.uid, self.start, self.end, self.img = uid, start, end, img  # samples with a uid: members [start, end)
        self.m_off, self.m_size, self.exts, self.small = members  # every sample's members

    def keys(self) -> np.ndarray:
        if not len(self.uid):
            return np.empty(0, dtype="S16")
        return np.frombuffer(bytes.fromhex(self.uid.tobytes().decode("ascii")), dtype="S16")

    def images_whole(self, sel: np.ndarray) -> np.ndarray:
        return self.img[sel]

    def table(self, sel: np.ndarray, mult: np.ndarray) -> pa.Table:
        lists = _offsets(self.end[sel] - self.start[sel])
        idx = _ranges(self.start[sel], lists)  # the selected samples' members

        def column(values: pa.Array) -> pa.Array:
            return pa.ListArray.from_arrays(_int32s(lists), values)

        ext_o, ext_b = self.exts
        small_o, small_b, held = self.small
        return pa.table({
            "uid": _binary(pa.string(), _offsets(np.full(len(sel), 32)), self.uid[sel].ravel()),
            "mult": _int64s(mult),
            "exts": column(_binary(pa.string(), *_gather(ext_o, ext_b, idx))),
            "offsets": column(_int64s(self.m_off[idx])),
            "sizes": column(_int64s(self.m_size[idx])),
            "small": column(_binary(pa.binary(), *_gather(small_o, small_b, idx), held[idx])),
        })


def _samples_compiled(tar: Path, file_size: int) -> _CompiledSamples | None:
    """:func:`_samples_py` by the compiled walk (``_tar_kernels.walk``); None for a tar it does
    not handle (damage, pax or GNU headers, non-ASCII names), which then goes to Python."""
    k = _kernels()
    fd = os.open(tar, os.O_RDONLY)
    try:
        code, end_pos, unsafe, state, first, uid, json_m, img, m_off, m_size, ext_o, ext_b, m_small, small_b = \
            k.walk(fd, file_size, _WINDOW, _SMALL, _EDGE)
        if code != 0 or _nonzero_tail(tar, end_pos, file_size) is not None:
            return None
        for i in np.nonzero(state == k.NEEDS_JSON)[0]:  # not the plain flat json: ask json.loads
            j = json_m[i]
            held = m_small[j] >= 0
            raw = small_b[m_small[j] : m_small[j] + m_size[j]].tobytes() if held else os.pread(fd, m_size[j], m_off[j])
            got = _uid_from_json(raw)
            if _is_uid(got):
                uid[i] = np.frombuffer(got.lower().encode("ascii"), np.uint8)
                state[i] = k.OK
            else:
                state[i] = k.NO_JSON
    finally:
        os.close(fd)
    valid = np.nonzero(state == k.OK)[0]
    held = m_small >= 0  # members whose bytes are in small_b (in member order)
    found = _CompiledSamples(uid[valid], first[valid], first[valid + 1], img[valid],
                             (m_off, m_size, (ext_o, ext_b), (_offsets(np.where(held, m_size, 0)), small_b, held)))
    found.processed = len(state)
    found.no_uid = int((state == k.NO_JSON).sum())
    found.corrupt_samples = int((state == k.BAD).sum())
    found.unsafe_members = int(unsafe)
    return found


def _edges(fd: int, off: int, size: int, peek: _Peek) -> tuple[bytes, bytes]:
    small = peek.small.get(off)
    if small is not None:
        return small[:_EDGE], small[-_EDGE:]
    got = peek.edges.get(off)
    if got is not None:
        return got
    n = min(size, _EDGE)
    return os.pread(fd, n, off), os.pread(fd, n, off + size - n)


def _images_look_whole(fd: int, group: list[tuple[str, int, int]], peek: _Peek) -> bool:
    """Cheap integrity check of a sample's image members: signature and end marker, no decode.

    An empty image member fails. A member that starts like a JPEG (FF D8) must have its end
    marker (FF D9) in its last bytes, one that starts like a PNG its IEND chunk: a cut-off or
    partly overwritten file fails. Bytes in no known image format pass (the reference resharder
    never looks at image bytes; the trainer's decoder decides).
    """
    for ext, off, size in group:
        if ext not in ("jpg", "jpeg", "png", "webp"):
            continue
        if size == 0:
            return False
        head, tail = _edges(fd, off, size, peek)
        if head[:2] == b"\xff\xd8":
            if b"\xff\xd9" not in tail:
                return False
        elif head[:8] == b"\x89PNG\r\n\x1a\n":
            if b"IEND" not in tail[-12:]:
                return False
        elif head[:4] == b"RIFF" and size >= 12 and head[8:12] == b"WEBP":
            declared = int.from_bytes(head[4:8], "little") + 8
            if declared > size:
                return False
    return True


def _nonzero_tail(tar: Path, start: int, file_size: int) -> int | None:
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


def _stats_or_none(tar: Path) -> dict[str, Any] | None:
    try:
        return read_stats(tar)
    except FormatError as e:  # a corrupt stats file only loses the expected count
        log.warning("%s", e)
        return None


# ---- pass 2: pack one output shard ---------------------------------------------------------------

def _read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table`` without its import of ``pyarrow.dataset`` (and pandas): ~0.2 s of CPU
    the first time in a process, more than reading all of a reshard's scan files."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


class _ScanTable:
    """One scan parquet, decoded once per process (a pack unit usually reads 1-2 of them)."""

    def __init__(self, scan_path: str):
        t = _read_parquet(scan_path)
        self.uids = t.column("uid").to_pylist()
        mult = _numbers(one_array(t.column("mult")), np.int64)
        self.exts = t.column("exts").to_pylist()
        self.offsets = t.column("offsets").to_pylist()
        self.sizes = t.column("sizes").to_pylist()
        # small members' bytes (absent in a scan file left by an older version: read them then)
        self.small = t.column("small").to_pylist() if "small" in t.column_names else [[None] * len(e) for e in self.exts]
        self.mult = mult.tolist()
        self._span: list[tuple[int, int]] | None = None
        self.row = np.repeat(np.arange(len(self.uids)), mult).tolist()  # emitted index -> scan row
        self.first = (np.concatenate([[0], np.cumsum(mult)[:-1]]) if len(mult) else np.empty(0, np.int64)).tolist()

    @property
    def span(self) -> list[tuple[int, int]]:
        """Byte span of each sample's members (contiguous in the tar); the buffered pack's reads."""
        if self._span is None:
            self._span = [(min(o), max(a + b for a, b in zip(o, z))) for o, z in zip(self.offsets, self.sizes)]
        return self._span


@lru_cache(maxsize=4)
def _scan_table(scan_path: str, mtime_ns: int) -> _ScanTable:
    return _ScanTable(scan_path)


class _ScanArrays:
    """One scan parquet as the arrays ``_tar_kernels.lay_out`` reads (decoded once per process).
    ``plain``: every name fits what the kernel writes (ASCII, at most 100 bytes; sizes under
    8 GiB), as ``FastTarWriter`` writes it from its template too."""

    def __init__(self, scan_path: str):
        t = _read_parquet(scan_path)
        col = {name: t.column(name).combine_chunks() for name in t.column_names}
        mult = _numbers(col["mult"], np.int64)
        uid_o, uid_b = _binary_parts(col["uid"])
        lists = _numbers(col["exts"].offsets, np.int32).astype(np.int64)
        ext_o, ext_b = _binary_parts(col["exts"].flatten())
        offsets = _numbers(col["offsets"].flatten(), np.int64)
        sizes = _numbers(col["sizes"].flatten(), np.int64)
        if "small" in col:
            small = col["small"].flatten()
            small_o, small_b = _binary_parts(small)
            held = _valid(small)
        else:  # a scan file from an older version: every member is copied from the input
            small_o, small_b = np.zeros(len(sizes) + 1, np.int64), np.empty(0, np.uint8)
            held = np.zeros(len(sizes), bool)
        longest = 32 + 1 + len(str(max(int(mult.max(initial=0)) - 1, 0))) + 1 + int(np.diff(ext_o).max(initial=0))
        self.plain = bool(np.all(np.diff(uid_o) == 32) and longest <= 100 and np.all(ext_b[ext_o[0] : ext_o[-1]] < 128)
                          and np.all(sizes < 8**11))
        uid = uid_b[uid_o[0] : uid_o[0] + 32 * len(mult)].reshape(-1, 32)
        first = _offsets(mult)
        self.columns = (uid, first, lists - lists[0], ext_o, ext_b, offsets, sizes, small_o, small_b, held)


@lru_cache(maxsize=4)
def _scan_arrays(scan_path: str, mtime_ns: int) -> _ScanArrays:
    return _ScanArrays(scan_path)


@lru_cache(maxsize=2)
def _bbox_map(path: str, mtime_ns: int) -> dict[str, list]:
    t = pq.read_table(path)
    return dict(zip(t.column("uid").to_pylist(), t.column("face_bboxes").to_pylist()))


_CHUNK = 1 << 20  # pack reads up to this many bytes at once (big buffers cost page faults)
_GAP = 64 << 10  # ... bridging gaps of unselected samples up to this size
_RANGE_MIN = 8 << 10  # members from this size on are copied in the kernel (no blur)


def _emitted(segments, tables, order):
    """(segment, scan row, first j, count) runs of the emitted sequence: one read per run."""
    if order is None:
        for si, (_, _, start, end) in enumerate(segments):
            t = tables[si]
            e = start
            while e < end:
                r = t.row[e]
                n = min(end, t.first[r] + t.mult[r]) - e
                yield si, r, e - t.first[r], n
                e += n
    else:
        for si, e in order:
            r = tables[si].row[e]
            yield si, r, e - tables[si].first[r], 1


def pack_unit(out_tar: str, segments: list[tuple[str, str, int, int]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write output shard ``out_tar``.

    ``segments``: (input tar, scan parquet, first, end) emitted-index ranges within each input
    shard, written in order. ``options`` (optional): ``order`` — explicit [(segment, emitted
    index)] sequence (a shuffled plan); ``bboxes`` — parquet of uid -> face_bboxes to blur, with
    ``reencode``/``quality`` for the blurred image; ``compiled`` — see :func:`_use_kernels`.
    """
    opts = options or {}
    order = opts.get("order")
    boxes = None
    if opts.get("bboxes"):
        bp = opts["bboxes"]
        boxes = _bbox_map(bp, os.stat(bp).st_mtime_ns)
    count = None
    if boxes is None and order is None and _use_kernels(opts.get("compiled")):
        count = _pack_compiled(out_tar, segments)
    blurred = blur_failed = 0
    if count is None:
        tables = [_scan_table(scan, os.stat(scan).st_mtime_ns) for _, scan, _, _ in segments]
        if boxes is None:
            count = _pack_ranges(out_tar, segments, tables, order)
        else:
            count, blurred, blur_failed = _pack_buffered(out_tar, segments, tables, order, boxes, opts)
    stats = Path(out_tar).with_name(Path(out_tar).stem + "_stats.json")
    with atomic_path(stats, suffix=".json") as tmp:  # no fsync: the completion marker is the commit point
        tmp.write_text(json.dumps({"successes": count}) + "\n")
    return {"successes": count, "blurred": blurred, "blur_failed": blur_failed}


def _pack_buffered(out_tar, segments, tables, order, boxes, opts) -> tuple[int, int, int]:
    """Pack through user space: each sample's members are read (several close samples in one
    ``pread``) so that images can be blurred."""
    count = blurred = blur_failed = 0
    fds: dict[int, int] = {}
    try:
        with FastTarWriter(out_tar) as w:
            cached: tuple[int, int] | None = None
            files: list[tuple[str, Any]] = []
            chunk_mv: memoryview = memoryview(b"")
            chunk_si, chunk_lo, chunk_hi = -1, 0, 0
            for si, r, j0, n in _emitted(segments, tables, order):
                t = tables[si]
                if cached != (si, r):
                    tar_path = segments[si][0]
                    fd = fds.get(si)
                    if fd is None:
                        fd = fds[si] = os.open(tar_path, os.O_RDONLY)
                    offs, sizes = t.offsets[r], t.sizes[r]
                    lo, hi = t.span[r]
                    if not (chunk_si == si and chunk_lo <= lo and hi <= chunk_hi):
                        # one read for this sample and the selected ones that closely follow it
                        end, k = hi, r + 1
                        while k < len(t.span) and t.span[k][0] - end <= _GAP and t.span[k][1] - lo <= _CHUNK:
                            end, k = t.span[k][1], k + 1
                        chunk = os.pread(fd, end - lo, lo)
                        if len(chunk) != end - lo:
                            raise InputError(f"{tar_path}: shard changed while resharding (short read at {lo})")
                        chunk_mv, chunk_si, chunk_lo, chunk_hi = memoryview(chunk), si, lo, end
                    files = [(x, chunk_mv[o - chunk_lo : o - chunk_lo + z]) for x, o, z in zip(t.exts[r], offs, sizes)]
                    if boxes is not None and boxes.get(t.uids[r]):
                        files, ok = _blur_sample(files, boxes[t.uids[r]], opts.get("reencode", "webp"), opts.get("quality", 100))
                        blurred += ok
                        blur_failed += not ok
                    cached = (si, r)
                uid = t.uids[r]
                for j in range(j0, j0 + n):
                    w.add(f"{uid}-{j}", files)
                count += n
    finally:
        for fd in fds.values():
            os.close(fd)
    return count, blurred, blur_failed


def _pack_ranges(out_tar, segments, tables, order) -> int:
    """Pack without reading images into Python: members of ``_RANGE_MIN`` bytes or more are
    copied from the input tar in the kernel by the writer thread (``fasttar.Range``); the small
    ones (txt, json) come from the scan file (or a ``pread``). Same bytes as :func:`_pack_buffered`."""
    count = 0
    fds: dict[int, int] = {}
    try:
        with FastTarWriter(out_tar) as w:
            cached: tuple[int, int] | None = None
            files: list[tuple[str, Any]] = []
            for si, r, j0, n in _emitted(segments, tables, order):
                t = tables[si]
                if cached != (si, r):
                    fd = fds.get(si)
                    if fd is None:
                        fd = fds[si] = os.open(segments[si][0], os.O_RDONLY)
                    files = []
                    for x, o, z, d in zip(t.exts[r], t.offsets[r], t.sizes[r], t.small[r]):
                        if d is None or len(d) != z:
                            if z >= _RANGE_MIN:
                                d = Range(fd, o, z)
                            else:
                                d = os.pread(fd, z, o)
                                if len(d) != z:
                                    raise InputError(f"{segments[si][0]}: shard changed while resharding (short read at {o})")
                        files.append((x, d))
                    cached = (si, r)
                uid = t.uids[r]
                for j in range(j0, j0 + n):
                    w.add(f"{uid}-{j}", files)
                count += n
    except ShortInput as e:
        raise InputError(f"{out_tar}: an input shard changed while resharding ({e.strerror})") from None
    finally:
        for fd in fds.values():
            os.close(fd)
    return count


_LAYOUT_BATCH = 4 << 20  # bytes of headers and small members laid out per compiled call


def _pack_compiled(out_tar: str, segments: list[tuple[str, str, int, int]]) -> int | None:
    """:func:`_pack_ranges` by the compiled layout (``_tar_kernels.lay_out``): headers, small
    members and copy plans for batches of samples in one call each, written by
    ``fasttar.LayoutWriter``. None, before writing anything, when a scan file holds a name the
    kernel does not write (:class:`_ScanArrays` ``plain``); the Python writer does it then."""
    k = _kernels()
    arrays = [_scan_arrays(scan, os.stat(scan).st_mtime_ns) for _, scan, _, _ in segments]
    if not all(a.plain for a in arrays):
        return None
    template = np.frombuffer(fasttar.TEMPLATE, np.uint8)
    try:
        with fasttar.LayoutWriter(out_tar, k.pwrite_all) as w:
            for (tar, _, start, end), a in zip(segments, arrays):
                fd = os.open(tar, os.O_RDONLY)
                try:
                    e = start
                    while e < end:
                        e, size, mem, writes, copies = k.lay_out(*a.columns, e, end, w.size, template,
                                                                 fasttar.TEMPLATE_SUM, _LAYOUT_BATCH)
                        w.put(fd, mem, writes, copies, size)
                finally:
                    os.close(fd)
    except ShortInput as e:
        raise InputError(f"{out_tar}: an input shard changed while resharding ({e.strerror})") from None
    return sum(end - start for _, _, start, end in segments)


def _blur_sample(files, bboxes, fmt: str, quality: int):
    """Blur the sample's image; the blurred image replaces it (``webp`` by default, like the reference)."""
    from ..pool.blur import blur_encoded

    for i, (ext, data) in enumerate(files):
        if ext in ("jpg", "jpeg", "png", "webp"):
            try:
                new, new_ext = blur_encoded(bytes(data), bboxes, fmt, quality)
            except ValueError:
                return files, False
            rest = [(x, d) for j, (x, d) in enumerate(files) if j != i and x != new_ext]
            return rest + [(new_ext, new)], True
    return files, False


def _shuffled_sources(lo: int, hi: int, bufsize: int, seed: int, total: int) -> np.ndarray:
    """Emitted indices feeding output positions [lo, hi) when the sequence is shuffled in windows."""
    out = []
    for w in range(lo // bufsize, (hi - 1) // bufsize + 1):
        w0, w1 = w * bufsize, min((w + 1) * bufsize, total)
        perm = np.random.default_rng([seed, w]).permutation(w1 - w0) + w0
        out.append(perm[max(lo, w0) - w0 : min(hi, w1) - w0])
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _collect_bboxes(pool: Path, scan_paths: list[Path], work: Path) -> str:
    """uid -> face_bboxes for the selected samples that have faces, from POOL/metadata (one file)."""
    import pyarrow.compute as pc

    path = work / "bboxes.parquet"
    if path.is_file():
        return str(path)
    selected = pa.concat_tables([pq.read_table(p, columns=["uid"]) for p in scan_paths]).column("uid") \
        if scan_paths else pa.chunked_array([], pa.string())
    parts = []
    for f in sorted((pool / "metadata").glob("*.parquet")):
        names = pq.ParquetFile(f).schema_arrow.names
        if "face_bboxes" not in names or "uid" not in names:
            continue
        t = pq.read_table(f, columns=["uid", "face_bboxes"])
        has = pc.fill_null(pc.greater(pc.list_value_length(t.column("face_bboxes")), 0), False)
        t = t.filter(has)
        t = t.filter(pc.is_in(t.column("uid"), value_set=selected.combine_chunks() if len(selected) else pa.array([], pa.string())))
        parts.append(t)
    table = pa.concat_tables(parts) if parts else pa.table({"uid": pa.array([], pa.string()),
                                                            "face_bboxes": pa.array([], pa.list_(pa.list_(pa.float64())))})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return str(path)


def _plain_segments(lo: int, hi: int, shards: list[Path], starts: list[int], scan_dir: Path) -> list[tuple[str, str, int, int]]:
    """The (tar, scan file, first, end) segments of emitted samples [lo, hi) in input order;
    ``starts[i]``: emitted index of shard i's first sample (known for a prefix of the shards)."""
    segs = []
    for i in range(len(starts) - 1):
        a, b = max(lo, int(starts[i])), min(hi, int(starts[i + 1]))
        if a < b:
            p = shards[i]
            segs.append((str(p), str(scan_dir / f"{p.stem}.parquet"), a - int(starts[i]), b - int(starts[i])))
    return segs


def _scan_and_pack(scan_units: list[Unit], shards: list[Path], scan_dir: Path, pack_dir: Path, out: Path,
                   shard_size: int, workers: int) -> float:
    """Run the scan units and the (plain: no shuffle, no blur) pack units in ``workers`` threads,
    starting each output shard once the scans of the input shards before its end are done, ahead
    of the remaining scans. Markers as ``run_units`` writes them; finished units are skipped.
    Returns the time the last scan finished."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from ..formats.manifest import mark_done, read_marker

    scans: dict[str, dict[str, Any]] = {}
    todo: deque = deque()
    for u in scan_units:
        done = read_marker(scan_dir, u.name)
        if done is not None:
            scans[u.name] = done
        else:
            todo.append(u)
    ready: deque = deque()
    starts = [0]
    next_out = 0

    def advance() -> None:
        nonlocal next_out
        while len(starts) <= len(shards) and shards[len(starts) - 1].stem in scans:
            starts.append(starts[-1] + int(scans[shards[len(starts) - 1].stem]["emitted"]))
        known, final = starts[-1], len(starts) == len(shards) + 1
        while True:
            lo = next_out * shard_size
            hi = lo + shard_size
            if final:
                if lo >= known:
                    return
                hi = min(hi, known)
            elif hi > known:
                return
            name = f"{next_out:08d}"
            if read_marker(pack_dir, name) is None:
                segs = _plain_segments(lo, hi, shards, starts, scan_dir)
                ready.append(Unit(name, (str(out / SHARD_FORMAT.format(next_out)), segs), hi - lo))
            next_out += 1

    advance()
    t_scan_end = time.time()
    in_flight: dict = {}
    # the bar counts input samples scanned (the packs run alongside)
    with progress(total=sum(u.weight for u in todo), desc="reshard: scan (+write)", unit="samples") as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            while todo or ready or in_flight:
                while len(in_flight) < workers and (ready or todo):
                    if ready:  # module-level lookups at call time (tests patch them)
                        u, kind = ready.popleft(), "pack"
                        in_flight[pool.submit(pack_unit, *u.args)] = (kind, u)
                    else:
                        u, kind = todo.popleft(), "scan"
                        in_flight[pool.submit(scan_unit, *u.args)] = (kind, u)
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    kind, u = in_flight.pop(fut)
                    res = fut.result()
                    if kind == "scan":
                        mark_done(scan_dir, u.name, res)
                        scans[u.name] = res
                        bar.update(u.weight)
                        if not todo and all(k == "pack" for k, _ in in_flight.values()):
                            t_scan_end = time.time()
                        advance()
                    else:
                        mark_done(pack_dir, u.name, res)
        finally:
            for fut in in_flight:
                fut.cancel()
    return t_scan_end


def _local_mode(executor: str, n: int, process_min: int) -> str:
    """The executor for a pass of ``n`` samples: "local" runs threads below ``process_min``."""
    return "threads" if executor == "local" and n < process_min else executor


# ---- the stage -----------------------------------------------------------------------------------

def _scan_losses(shards: list[Path], scans: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(count mismatches, unreadable shards, :func:`losses_record`) from the scan's results."""
    mismatches = {p.name: {"expected": scans[p.stem]["expected"], "found": scans[p.stem]["processed"]}
                  for p in shards if scans[p.stem]["expected"] is not None and scans[p.stem]["expected"] != scans[p.stem]["processed"]}
    corrupt = {p.name: scans[p.stem]["error"] for p in shards if scans[p.stem]["error"]}
    damaged = {}
    for p in shards:
        why = [corrupt[p.name]] if p.name in corrupt else []
        if p.name in mismatches:
            why.append(f"{mismatches[p.name]['found']} of {mismatches[p.name]['expected']} samples readable")
        if why:
            damaged[str(p)] = "; ".join(why)
    lost = sum(max(0, m["expected"] - m["found"]) for m in mismatches.values())
    return mismatches, corrupt, losses_record(damaged, lost)


def _input_shards(pool: Path) -> list[Path]:
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    d = pool / "shards" if (pool / "shards").is_dir() else pool
    return list_shards(d)



def _our_files(out: Path) -> list[Path]:
    names = []
    for p in out.iterdir():
        n = p.name
        if (n.endswith(".tar") and n[:-4].isdigit()) or (n.endswith("_stats.json") and n[:-11].isdigit()) \
                or n in (META, SAMPLE_IDS, MANIFEST_NAME, WORK, ".done") or (n.startswith(".") and ".tmp" in n):
            names.append(p)
    return names


def _clear(out: Path) -> None:
    for p in _our_files(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def reshard(
    pool: str | os.PathLike,
    subset: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 10000,
    workers: int = 2,
    executor: str = "local",
    overwrite: bool = False,
    shuffle_bufsize: int = 0,
    seed: int = 0,
    apply_blur: bool = False,
    reencode: str = "webp",
    quality: int = 100,
    allow_empty: bool = False,
    strict: bool = False,
) -> Manifest:
    """Write the subset's samples of ``pool`` (a pool dir with shards/, or a dir of tars) to ``out``.

    ``shuffle_bufsize`` > 0: the emitted sequence is shuffled in consecutive windows of that many
    samples (seeded by ``seed``; a sample moves less than one window), instead of input order.
    An empty subset is an error unless ``allow_empty``. Samples lost to damaged input shards are
    recorded in the manifest (``losses``); ``strict`` makes any loss an error.
    ``apply_blur``: blur the faces listed in ``POOL/metadata``'s ``face_bboxes`` (DATACOMP.md
    §3.2) and re-encode those images as ``reencode`` (webp, quality 100, like the reference's
    ``--apply-blur``); images without faces are copied unchanged.
    """
    t_start = time.time()
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not isinstance(shuffle_bufsize, int) or shuffle_bufsize < 0:
        raise ConfigError(f"shuffle_bufsize must be a non-negative integer, got {shuffle_bufsize!r}")
    if reencode not in ("webp", "jpg"):
        raise ConfigError(f"unknown re-encode format '{reencode}' (choose webp or jpg)")
    pool, subset, out = Path(pool), Path(subset), Path(out)
    check_apart(out, {"pool": pool, "subset": subset})
    shards = _input_shards(pool)
    sub = read_subset(subset, mmap=True)  # validates dtype and order
    if len(sub) == 0 and not allow_empty:
        raise InputError(f"{subset}: the subset is empty; nothing to reshard (pass --allow-empty to write an empty output)")
    params = {
        "pool": str(pool.resolve()),
        "input_shards": [p.name for p in shards],
        "subset": str(subset.resolve()),
        "subset_sha256": file_sha256(subset),
        "shard_size": shard_size,
        "output_shard_format": SHARD_FORMAT,
    }
    if shuffle_bufsize:
        params.update(shuffle_bufsize=shuffle_bufsize, seed=seed)
    if apply_blur:
        params.update(apply_blur=True, reencode=reencode, quality=quality)
        if not list((pool / "metadata").glob("*.parquet")):
            raise InputError(f"{pool}: --apply-blur needs the pool's metadata/*.parquet (face_bboxes)")
    was_complete = (out / MANIFEST_NAME).is_file()
    existing = check_reusable(out, STAGE, params, overwrite)
    if existing is not None:
        check_losses(existing.extra.get("losses") or {}, strict)
        log.info("%s: already resharded with these parameters, reusing it", out)
        shutil.rmtree(out / WORK, ignore_errors=True)
        return existing
    overwrite = overwrite or was_complete  # a damaged finished output (check_reusable said why) is redone

    work = out / WORK
    params_file = work / "params.json"
    if out.is_dir():
        prev = None
        if params_file.is_file():
            try:
                prev = json.loads(params_file.read_text())
            except json.JSONDecodeError:
                prev = None
        if prev is not None and prev == json.loads(json.dumps(params)):
            log.info("%s: resuming an unfinished reshard", out)
        elif any(out.iterdir()):
            if not overwrite:
                raise StageConflictError(f"{out}: output directory is not empty and holds no unfinished reshard "
                                         "with these parameters; pass --overwrite to replace it")
            _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    if not params_file.is_file():
        write_json(params_file, params)

    ids_path = out / SAMPLE_IDS
    if not ids_path.is_file():
        with atomic_path(ids_path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(sub), allow_pickle=False)
    n_subset = len(sub)
    del sub

    # pass 1: scan ------------------------------------------------------------------------------
    t0 = time.time()
    scan_dir = work / "scan"
    weights = {}
    missing_stats = []
    for p in shards:
        st = _stats_or_none(p)
        if st is None:
            missing_stats.append(p.name)
        weights[p.name] = max(1, int((st or {}).get("successes") or 1))
    n_in = sum(weights.values())
    # compiled kernels (see KERNEL_MIN): loaded here for threads, and worker processes are told
    compiled = n_in >= KERNEL_MIN and _kernels() is not None
    units = [Unit(p.stem, (str(p), str(ids_path), str(scan_dir / f"{p.stem}.parquet")) + ((True,) if compiled else ()),
                  weights[p.name]) for p in shards]
    # The scan reads headers and jsons only (pread releases the GIL). With the local executor it
    # runs in threads of this process unless the pool is large: starting worker processes
    # (~1-2 s each) would cost more than the GIL-held part of the scan gains from them.
    t_pipe = None
    if (PIPELINE and workers >= 2 and not shuffle_bufsize and not apply_blur
            and _local_mode(executor, n_in, SCAN_PARALLEL_MIN) == _local_mode(executor, max(n_in, n_subset), PACK_PARALLEL_MIN) == "threads"):
        # threads for both passes: pack each output shard as soon as the scans before it are done,
        # so the scan's Python overlaps the pack's in-kernel copying; the passes below then find
        # every unit done (same units, same markers, same bytes)
        t_scan_end = _scan_and_pack(units, shards, scan_dir, work / "pack", out, shard_size, workers)
        t_scan, t_pipe = t_scan_end - t0, time.time()
    scans = run_units(scan_unit, units, scan_dir, workers=workers, executor=_local_mode(executor, n_in, SCAN_PARALLEL_MIN),
                      desc="reshard: scan", unit_label="samples")
    if t_pipe is None:
        t_scan = time.time() - t0

    mismatches, corrupt_shards, losses = _scan_losses(shards, scans)
    check_losses(losses, strict)  # before anything is packed

    # plan: emitted sequence in input order, cut into output shards of shard_size
    emitted = [scans[p.stem]["emitted"] for p in shards]
    total = int(sum(emitted))
    n_out = (total + shard_size - 1) // shard_size
    starts = np.concatenate([[0], np.cumsum(emitted)]).astype(np.int64)
    options: dict[str, Any] = {"compiled": True} if compiled else {}
    if apply_blur:
        options.update(bboxes=_collect_bboxes(pool, [scan_dir / f"{p.stem}.parquet" for p in shards], work),
                       reencode=reencode, quality=quality)
    pack_units = []
    for o in range(n_out):
        lo, hi = o * shard_size, min((o + 1) * shard_size, total)
        segs = []
        if shuffle_bufsize:
            src = _shuffled_sources(lo, hi, shuffle_bufsize, seed, total)
            shard_of = np.searchsorted(starts, src, side="right") - 1
            used = sorted(set(shard_of.tolist()))
            seg_of = {i: k for k, i in enumerate(used)}
            for i in used:
                p = shards[i]
                segs.append((str(p), str(scan_dir / f"{p.stem}.parquet"), 0, int(emitted[i])))
            order = [(seg_of[i], int(e - starts[i])) for i, e in zip(shard_of.tolist(), src.tolist())]
            unit_opts: dict[str, Any] | None = {**options, "order": order}
        else:
            segs = _plain_segments(lo, hi, shards, starts.tolist(), scan_dir)
            unit_opts = options or None
        args = (str(out / SHARD_FORMAT.format(o)), segs) + ((unit_opts,) if unit_opts else ())
        pack_units.append(Unit(f"{o:08d}", args, hi - lo))

    # pass 2: pack ------------------------------------------------------------------------------
    t0 = time.time()
    # Packing is I/O: images are copied in the kernel, the GIL is held only for headers (~10 µs a
    # sample). Threads of this process share the cores without the ~1-2 s start of a worker
    # process; the local executor uses processes only for very large outputs.
    packed = run_units(pack_unit, pack_units, work / "pack", workers=workers,
                       executor=_local_mode(executor, total, PACK_PARALLEL_MIN),
                       desc="reshard: write", unit_label="samples")
    t_pack = time.time() - (t0 if t_pipe is None else t0 - (t_pipe - t_scan_end))
    # stale shards from an earlier, larger output cannot survive: _clear ran unless params matched
    for p in out.glob("*.tar"):
        if p.stem.isdigit() and int(p.stem) >= n_out:
            p.unlink()
            p.with_name(p.stem + "_stats.json").unlink(missing_ok=True)

    # missing uids: unique subset uids not found in any input shard
    found = [_read_parquet(scan_dir / f"{p.stem}.parquet", ["uid", "mult"]) for p in shards]
    found_uids = np.concatenate([_uid_keys(t.column("uid").combine_chunks()) for t in found] or [np.empty(0, "S32")])
    found_mult = np.concatenate([_numbers(t.column("mult").combine_chunks(), np.int64) for t in found]
                                or [np.empty(0, np.int64)])
    found_unique, first_idx = np.unique(found_uids, return_index=True) if len(found_uids) else (np.empty(0), np.empty(0, np.int64))
    found_rows = int(found_mult[first_idx].sum()) if len(first_idx) else 0
    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    keys = pairs_to_keys(np.asarray(ids))
    n_unique = int(len(np.unique(keys))) if len(keys) else 0
    del ids, keys
    missing_uids = n_unique - int(len(found_unique))
    missing_rows = n_subset - found_rows
    duplicated_in_pool = int(len(found_uids) - len(found_unique))

    processed = int(sum(s["processed"] for s in scans.values()))
    if missing_uids:
        log.warning("%d uids of the subset (%d subset rows) were not found in the input shards", missing_uids, missing_rows)
    for name, mm in mismatches.items():
        log.warning("%s: expected %s samples but found %s", name, mm["expected"], mm["found"])
    counts = {
        "input_shard_count": len(shards),
        "subset_count": n_subset,
        "subset_unique_uids": n_unique,
        "processed_count": processed,
        "matched_count": int(sum(s["matched"] for s in scans.values())),
        "output_count": total,
        "output_shard_count": n_out,
        "missing_uid_count": missing_uids,
        "missing_subset_rows": missing_rows,
        "uids_in_several_input_samples": duplicated_in_pool,
        "json_without_uid_count": int(sum(s["json_without_uid"] for s in scans.values())),
        "corrupt_sample_count": int(sum(s["corrupt_samples"] for s in scans.values())),
        "unsafe_member_count": int(sum(s["unsafe_members"] for s in scans.values())),
        "corrupt_shard_count": len(corrupt_shards),
        "broken_image_count": int(sum(s.get("broken_images", 0) for s in scans.values())),
        "blur_count": int(sum(r.get("blurred", 0) for r in packed.values())),
        "blur_failed_count": int(sum(r.get("blur_failed", 0) for r in packed.values())),
    }
    assert sum(r["successes"] for r in packed.values()) == total
    timings = {"scan": round(t_scan, 3), "write": round(t_pack, 3), "total": round(time.time() - t_start, 3)}
    meta = {
        **counts,
        "args": {**params, "output_dir": str(out.resolve()), "workers": workers, "executor": executor},
        "shards_without_stats": missing_stats,
        "count_mismatches": mismatches,
        "corrupt_shards": corrupt_shards,
        "timings": timings,
        "samples_per_second": round(processed / timings["total"], 1) if timings["total"] > 0 else None,
        "cwd": os.getcwd(),
    }
    write_json(out / META, meta)
    inputs = {"pool": manifest_digest(pool)} if (pool / MANIFEST_NAME).is_file() else {}
    manifest = Manifest(stage=STAGE, params=params, inputs=inputs, counts=counts, timings=timings,
                        extra={"meta": META, "sample_ids": SAMPLE_IDS, "losses": losses,
                               "shards": f"{{{0:08d}..{max(n_out - 1, 0):08d}}}.tar" if n_out else None,
                               "files": file_records(out, [META, SAMPLE_IDS] + [
                                   n for o in range(n_out) for n in (SHARD_FORMAT.format(o), f"{o:08d}_stats.json")])})
    write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    log.info("reshard: %d of %d subset rows written as %d samples in %d shards (%d uids missing)",
             found_rows, n_subset, total, n_out, missing_uids)
    return manifest
