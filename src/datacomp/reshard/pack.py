"""Pass 2 of the reshard: pack one output shard (see the package docstring).

An output shard is a list of segments, (input tar, scan file, first, end) ranges of the emitted
sequence, written in order (or in a shuffled ``order``). Three writers give the same bytes: the
compiled layout (``_tar_kernels.lay_out`` + ``fasttar.LayoutWriter``), the range copier (images
copied in the kernel, ``fasttar.FastTarWriter``) and the buffered one (images read into Python,
so they can be blurred).
"""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError
from ..formats.atomic import atomic_path
from ..formats.pool import one_array
from . import fasttar
from .arrow import binary_parts, numbers, offsets_of, read_parquet, valid
from .fasttar import FastTarWriter, Range, ShortInput
from .compiled import KERNELS, use_kernels

class _ScanTable:
    """One scan parquet, decoded once per process (a pack unit usually reads 1-2 of them)."""

    def __init__(self, scan_path: str):
        t = read_parquet(scan_path)
        self.uids = t.column("uid").to_pylist()
        mult = numbers(one_array(t.column("mult")), np.int64)
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
        t = read_parquet(scan_path)
        col = {name: t.column(name).combine_chunks() for name in t.column_names}
        mult = numbers(col["mult"], np.int64)
        uid_o, uid_b = binary_parts(col["uid"])
        lists = numbers(col["exts"].offsets, np.int32).astype(np.int64)
        ext_o, ext_b = binary_parts(col["exts"].flatten())
        offsets = numbers(col["offsets"].flatten(), np.int64)
        sizes = numbers(col["sizes"].flatten(), np.int64)
        if "small" in col:
            small = col["small"].flatten()
            small_o, small_b = binary_parts(small)
            held = valid(small)
        else:  # a scan file from an older version: every member is copied from the input
            small_o, small_b = np.zeros(len(sizes) + 1, np.int64), np.empty(0, np.uint8)
            held = np.zeros(len(sizes), bool)
        longest = 32 + 1 + len(str(max(int(mult.max(initial=0)) - 1, 0))) + 1 + int(np.diff(ext_o).max(initial=0))
        self.plain = bool(np.all(np.diff(uid_o) == 32) and longest <= 100 and np.all(ext_b[ext_o[0] : ext_o[-1]] < 128)
                          and np.all(sizes < 8**11))
        uid = uid_b[uid_o[0] : uid_o[0] + 32 * len(mult)].reshape(-1, 32)
        first = offsets_of(mult)
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
    index)] sequence (a shuffled plan); ``bboxes`` — parquet of uid -> face_bboxes, blurred
    (``blur``, default True, with ``reencode``/``quality`` for the blurred image) and/or added to
    the sample's json as ``face_bboxes`` (``inject``); ``compiled`` — see :func:`use_kernels`.
    """
    opts = options or {}
    order = opts.get("order")
    boxes = None
    if opts.get("bboxes"):
        bp = opts["bboxes"]
        boxes = _bbox_map(bp, os.stat(bp).st_mtime_ns)
    count = None
    if boxes is None and order is None and use_kernels(opts.get("compiled")):
        count = _pack_compiled(out_tar, segments)
    done = {"blurred": 0, "blur_failed": 0, "injected": 0, "blur_seconds": 0.0}
    if count is None:
        tables = [_scan_table(scan, os.stat(scan).st_mtime_ns) for _, scan, _, _ in segments]
        if boxes is None:
            count = _pack_ranges(out_tar, segments, tables, order)
        else:
            count, _ = _pack_buffered(out_tar, segments, tables, order, boxes, opts, done)
    stats = Path(out_tar).with_name(Path(out_tar).stem + "_stats.json")
    with atomic_path(stats, suffix=".json") as tmp:  # no fsync: the completion marker is the commit point
        tmp.write_text(json.dumps({"successes": count}) + "\n")
    return {"successes": count, **done, "blur_seconds": round(done["blur_seconds"], 6)}


def _pack_buffered(out_tar, segments, tables, order, boxes, opts, done: dict[str, Any] | None = None) -> tuple[int, dict]:
    """Pack through user space: each sample's members are read (several close samples in one
    ``pread``) so that images can be blurred or their json given the face boxes; ``done``
    receives the blurred / blur_failed / injected counts and the seconds spent blurring.
    Returns (samples written, ``done``)."""
    count = 0
    done = {"blurred": 0, "blur_failed": 0, "injected": 0, "blur_seconds": 0.0} if done is None else done
    blur, inject = opts.get("blur", True), opts.get("inject", False)
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
                        if blur:
                            t0 = time.perf_counter()
                            files, ok = _blur_sample(files, boxes[t.uids[r]], opts.get("reencode", "webp"), opts.get("quality", 100))
                            done["blur_seconds"] += time.perf_counter() - t0
                            done["blurred" if ok else "blur_failed"] += 1
                        if inject:
                            files, ok = _inject_bboxes(files, boxes[t.uids[r]])
                            done["injected"] += ok
                    cached = (si, r)
                uid = t.uids[r]
                for j in range(j0, j0 + n):
                    w.add(f"{uid}-{j}", files)
                count += n
    finally:
        for fd in fds.values():
            os.close(fd)
    return count, done


def _inject_bboxes(files, bboxes) -> tuple[list, bool]:
    """The sample's json with ``face_bboxes`` (lists of floats) added, as the reference's
    ``--inject-blur-metadata`` does; a json that is not an object is left as it is."""
    for i, (ext, data) in enumerate(files):
        if ext == "json":
            try:
                meta = json.loads(bytes(data))
            except (ValueError, UnicodeDecodeError):
                return files, False
            if not isinstance(meta, dict):
                return files, False
            meta["face_bboxes"] = [[float(v) for v in box] for box in bboxes]
            return files[:i] + [("json", json.dumps(meta).encode())] + files[i + 1 :], True
    return files, False


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
    k = KERNELS.get()
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

