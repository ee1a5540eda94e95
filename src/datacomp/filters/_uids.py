"""Fast uid conversion, sorting and merging for the filter engine (the subset's hot path).

- :func:`uid_pairs`: an Arrow column of 32-hex uids -> ``u8,u8`` pairs, decoded straight from the
  column's value buffer (one compiled pass, 8 digits at a time when the rows are 8-byte aligned;
  no intermediate ``bytes``/``str`` copies).
- :func:`write_part`: a select unit's kept pairs, grouped by the top byte of hi, as a ``.npy`` part.
- :func:`merge_parts`: the parts into the subset file, sorted by (hi, lo) exactly as the
  reference's structured-array sort does: per value range, the high halves with their low bits
  replaced by the row index are sorted as plain ``uint64`` (NumPy's SIMD sort), the rows
  gathered in that order and streamed to the file; only if two uids share the kept high bits
  *and* came out of order (vanishingly rare for hashes) is there a full ``lexsort``. Equal pairs
  are equal bytes, so the output is byte-identical to the reference's sort.

Every compiled kernel has a NumPy fallback (same results), used where numba is not importable
and, by default, in processes that have not loaded numba yet (``datacomp.kernels``).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..formats.pool import one_array
from ..formats.uids import SUBSET_DTYPE, uids_to_pairs
from ..kernels import KernelModule

# hex digit values; 0x10 marks a byte that is not a hex digit (bytes.fromhex takes both cases)
_HEX = np.full(256, 0x10, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


# the kernels live in their own module so that numba can cache them on disk
KERNELS = KernelModule(__package__ + "._uids_kernels")


def _as_u64x2(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.uint64).reshape(-1, 2)


# ``compiled`` (``kernels.wanted``): None = the numba kernels only once numba is loaded in this
# process. Importing numba and loading the cached kernels costs ~0.4 s per process, and the
# kernels save ~3.5 ms per 125k uids (the decode: 0.13 instead of 3.4 ms), so below ~15M rows per
# worker a worker that runs no text op (no_filter, CLIP-score recipes) stays on NumPy, and so does
# run_filter's own process (its merge of 1M rows takes ~10 ms either way); run_filter passes True
# for bigger pools (``engine.KERNEL_MIN_ROWS``).


def uid_pairs(uids: pa.Array, compiled: bool | None = None, scratch: bool = False) -> np.ndarray:
    """32-hex uids -> ``u8,u8`` pairs (same order). Anything but a null-free string column of
    32-hex uids goes through ``formats.uids.uids_to_pairs`` (which raises ValueError on a bad uid).

    ``scratch=True``: decode into this thread's reusable buffer (valid until the next such call;
    a worker's per-shard work then touches no fresh memory)."""
    uids = one_array(uids)
    n = len(uids)
    k = KERNELS.use(compiled)
    if pa.types.is_string(uids.type) and n and not uids.null_count:
        bufs = uids.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=uids.offset * 4)
        if bufs[2] is not None and off[-1] - off[0] == 32 * n:
            if k is not None:
                out = _scratch("pairs", n, SUBSET_DTYPE) if scratch else np.empty(n, dtype=SUBSET_DTYPE)
                data = np.frombuffer(bufs[2], dtype=np.uint8)
                start = int(off[0])
                if (data.ctypes.data + start) % 8 == 0 and sys.byteorder == "little":  # 8 digits at a time
                    if k.hex_words(data[start:start + 32 * n].view(np.uint64), off, out.view(np.uint32)):
                        return out
                elif k.hex_pairs(data, off, _HEX, _as_u64x2(out)) == -1:
                    return out
            elif (np.diff(off) == 32).all():
                try:
                    raw = bytes.fromhex(memoryview(bufs[2])[off[0]:off[-1]].tobytes().decode("ascii", "replace"))
                except ValueError:
                    raw = b""
                if len(raw) == 16 * n:  # fromhex skips spaces: a short result means a bad uid
                    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).view(SUBSET_DTYPE)
    return uids_to_pairs(uids.to_numpy(zero_copy_only=False))


_THREADED_MIN = 1 << 17  # rows from which merge_parts uses its second thread


# ---- the select pass's writes --------------------------------------------------------------------
#
# Each worker writes its kept pairs grouped by top byte (``write_part``); the driver's merge
# (``merge_parts``) never materialises the sorted subset: per value range, the sort keys (high
# halves with the row index in their low bits) are sorted, then the rows are gathered in that
# order a chunk at a time into a small buffer that stays in cache and written with ``os.pwrite``
# at their place in the file. Only when a check fails (two uids that share the kept high bits
# came out in the wrong order: vanishingly rare for hashes) is the subset sorted fully. Output
# bytes are those of ``np.save(make_subset(...))``.

_CHUNK = 1 << 15  # rows per gathered chunk (512 kB)
_LOCAL = threading.local()


def _scratch(name: str, n: int, dtype: np.dtype | type) -> np.ndarray:
    """This thread's reusable buffer ``name`` as an array of ``n`` ``dtype`` (grown as needed).
    Reusing the same pages shard after shard avoids the page faults of fresh allocations, which
    cost as much as the work itself here."""
    dtype = np.dtype(dtype)
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    nbytes = n * dtype.itemsize
    buf = bufs.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, int((buf.nbytes if buf is not None else 0) * 1.25)), dtype=np.uint8)
        bufs[name] = buf
    return buf[:nbytes].view(dtype)


def npy_header(n: int) -> bytes:
    """The ``.npy`` header of a 1-D ``u8,u8`` array of ``n`` rows (as ``np.save`` writes it)."""
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": np.lib.format.dtype_to_descr(SUBSET_DTYPE),
                                             "fortran_order": False, "shape": (n,)})
    return b.getvalue()


def _stream_gather(k, src: np.ndarray, keys: np.ndarray, shift: int, fd: int, offset: int
                   ) -> tuple[int, int] | tuple[int, int, int, int] | None:
    """Write ``src`` rows in the order of the sorted ``keys`` at byte ``offset`` of ``fd``.
    Returns (first hi, first lo, last hi, last lo) written ((), for no rows), or None when the rows
    are not in (hi, lo) order (nothing is promised about the file then).

    The order check needs no pass over the rows: sorted keys whose high parts differ hold rows
    whose high halves are in order, so only neighbouring keys with equal high parts (almost never
    for hashes) have their rows compared."""
    if not len(keys):
        return ()
    mask = np.uint64((1 << shift) - 1)
    ties = np.flatnonzero((keys[1:] ^ keys[:-1]) <= mask)
    if len(ties):
        left = src[(keys[ties] & mask).astype(np.intp)]
        right = src[(keys[ties + 1] & mask).astype(np.intp)]
        if np.any((left[:, 0] > right[:, 0]) | ((left[:, 0] == right[:, 0]) & (left[:, 1] > right[:, 1]))):
            return None
    buf = _scratch("chunk", _CHUNK, SUBSET_DTYPE)
    out = _as_u64x2(buf)
    idx = _scratch("chunk_idx", _CHUNK, np.intp) if k is None else None
    for c in range(0, len(keys), _CHUNK):
        m = min(_CHUNK, len(keys) - c)
        if k is not None:
            k.gather_check(src, keys[c:c + m], shift, out[:m])  # (its own order check is the one above)
        else:
            np.bitwise_and(keys[c:c + m], mask, out=idx[:m].view(np.uint64), casting="unsafe")
            np.take(src, idx[:m], axis=0, out=out[:m])
        _write_all(fd, memoryview(buf[:m]).cast("B"), offset + 16 * c)
    first, last = src[int(keys[0] & mask)], src[int(keys[-1] & mask)]
    return int(first[0]), int(first[1]), int(last[0]), int(last[1])


def _write_all(fd: int, data: bytes | memoryview, offset: int = 0) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _write_sorted_fully(fd: int, rows: np.ndarray) -> None:
    """The fallback: sort ``rows`` (u8,u8) exactly and write header + rows from the start."""
    rows = rows[np.lexsort((rows["f1"], rows["f0"]))]
    os.ftruncate(fd, 0)
    _write_all(fd, npy_header(len(rows)))
    _write_all(fd, rows.view(np.uint8), len(npy_header(len(rows))))


def write_part(pairs: np.ndarray, keep_rows: np.ndarray | None, path: str | os.PathLike,
               compiled: bool | None = None) -> tuple[int, list[int]]:
    """Write ``pairs[keep_rows]`` as a select unit's part, atomically. Returns the row count and
    where each top-byte group ends (256 row offsets), for :func:`merge_parts`.

    A part is a ``.npy`` of ``u8,u8`` rows grouped by the top byte of hi in ascending order (a
    stable counting sort: one pass to count, one to place). That is all the merge needs to cut
    every part into value ranges, and it is cheaper than sorting here: the merge sorts each range
    anyway (and NumPy sorts keys in no particular order faster than keys that are already runs).
    ``pairs`` may be a scratch buffer: only its rows are read."""
    from ..formats.atomic import atomic_path

    n = len(pairs)
    k = KERNELS.use(compiled)
    pairs = np.ascontiguousarray(pairs, dtype=SUBSET_DTYPE)
    every = keep_rows is None or bool(keep_rows.all())
    if k is not None:
        keep = np.ones(n, dtype=bool) if every else np.ascontiguousarray(keep_rows, dtype=bool)
        grouped = _scratch("part", n, SUBSET_DTYPE)
        ends = np.empty(256, dtype=np.int64)
        m = int(k.bucket_rows(_as_u64x2(pairs), keep, _as_u64x2(grouped), ends))
        grouped = grouped[:m]
    else:
        kept = pairs if every else pairs[keep_rows]
        top = (kept["f0"] >> np.uint64(56)).astype(np.uint8)
        grouped = kept[np.argsort(top, kind="stable")]  # a radix sort for one-byte keys
        ends = np.cumsum(np.bincount(top, minlength=256))
        m = len(grouped)
    head = npy_header(m)
    with atomic_path(path, suffix=".npy") as tmp:
        fd = os.open(tmp, os.O_WRONLY)  # no O_TRUNC: ext4 would then flush the data at close
        try:
            _write_all(fd, head)
            _write_all(fd, grouped.view(np.uint8), len(head))
        finally:
            os.close(fd)
    return m, ends.tolist()


_BUCKET_ROWS = 1 << 16  # rows per value range of the merge (its keys and rows stay in cache)


def _map_part(path: str | os.PathLike) -> np.ndarray:
    """A part's rows as an (n, 2) uint64 array mapped from the file (nothing read yet)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a .npy file: {e}") from None
        offset = f.tell()
    if dtype != SUBSET_DTYPE or len(shape) != 1 or fortran:
        raise ValueError(f"{path}: not a 1-D 'u8,u8' array")
    if os.path.getsize(path) < offset + 16 * shape[0]:
        raise ValueError(f"{path}: truncated")
    if not shape[0]:
        return np.empty((0, 2), dtype=np.uint64)
    return np.memmap(path, dtype=np.uint64, mode="r", offset=offset, shape=(shape[0], 2))


def merge_parts(paths: Sequence[str | os.PathLike], out: str | os.PathLike, groups: Sequence | None = None,
                compiled: bool | None = None, threads: int = 2) -> int:
    """Merge the parts (:func:`write_part`) into one subset file, sorted by (hi, lo) and
    byte-identical to ``np.save(make_subset(all parts))``, written atomically; returns the row
    count. ``groups``: each part's top-byte group ends as ``write_part`` returned them (None: count
    them here; sorted parts are grouped too).

    The parts are memory-mapped, not loaded: the output is made of value ranges of ~64k rows
    (whole top-byte groups); each range's rows are copied from every part into a cache-sized
    buffer, their keys sorted and the rows streamed into the range's own bytes of the file, so
    memory stays flat in the subset size. With ``threads`` > 1 two threads take half of the
    ranges each (copies, NumPy's sort and take, the kernels and ``os.pwrite`` release the GIL).
    Every range is checked to be in order and to follow the one before; parts in any other
    order fail a check, and then the whole subset is sorted in memory: the output is right for
    any input."""
    from ..formats.atomic import atomic_path

    maps = [_map_part(p) for p in paths]
    sizes = [len(m) for m in maps]
    n = sum(sizes)
    k = KERNELS.use(compiled)
    by_byte = np.zeros((len(maps), 257), dtype=np.int64)
    for i, m in enumerate(maps):
        g = groups[i] if groups is not None else None
        if g is None or len(g) != 256:
            g = np.cumsum(np.bincount((m[:, 0] >> np.uint64(56)).astype(np.intp), minlength=256))
        # consecutive segments that cover the part whatever ``g`` says: every row is written once
        by_byte[i, 1:] = np.maximum.accumulate(np.clip(np.asarray(g, dtype=np.int64), 0, sizes[i]))
        by_byte[i, -1] = sizes[i]
    cum = by_byte[:, 1:].sum(axis=0)
    cuts = np.flatnonzero(np.diff(cum // _BUCKET_ROWS)) + 1
    bounds = by_byte[:, np.unique(np.concatenate([[0], cuts, [256]]))]
    nb = bounds.shape[1] - 1
    counts = (bounds[:, 1:] - bounds[:, :-1]).sum(axis=0)
    head = npy_header(n)
    offsets = len(head) + 16 * np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    split = int(np.searchsorted(np.cumsum(counts), n // 2)) + 1 if threads > 1 and n >= _THREADED_MIN else nb
    ranges = [range(0, min(split, nb)), range(min(split, nb), nb)]
    ends_written: list = [None] * nb

    def one(t: int) -> None:
        for b in ranges[t]:
            m = int(counts[b])
            rows = _scratch("merge_rows", m, SUBSET_DTYPE)
            src = _as_u64x2(rows)
            j = 0
            for i, (s0, e0) in enumerate(zip(bounds[:, b].tolist(), bounds[:, b + 1].tolist())):
                src[j:j + e0 - s0] = maps[i][s0:e0]
                j += e0 - s0
            shift = int(max(m - 1, 1)).bit_length()
            keys = _scratch("merge_keys", m, np.uint64)
            if k is not None:
                k.pack_keys(src, shift, keys)
            else:
                np.bitwise_or(src[:, 0] & ~np.uint64((1 << shift) - 1), np.arange(m, dtype=np.uint64), out=keys)
            keys.sort()
            ends_written[b] = _stream_gather(k, src, keys, shift, fd, int(offsets[b]))
            if ends_written[b] is None:
                return

    with atomic_path(out, suffix=".npy") as tmp:
        fd = os.open(tmp, os.O_WRONLY)  # no O_TRUNC: ext4 would then flush the data at close
        try:
            _write_all(fd, head)
            if not len(ranges[1]):
                one(0)
            else:
                failed: list[BaseException] = []

                def second() -> None:
                    try:
                        one(1)
                    except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
                        failed.append(e)

                th = threading.Thread(target=second)
                th.start()
                try:
                    one(0)
                finally:
                    th.join()
                if failed:
                    raise failed[0]
            # each range in order (checked while streaming) and each range's first row not below the
            # last row before it: the file is in order (parts in another order break this)
            good = all(e is not None for e in ends_written)
            last = None
            for e in ends_written if good else ():
                if e:
                    good = good and (last is None or e[:2] >= last)
                    last = e[2:]
            if not good:
                everything = np.concatenate([np.asarray(m) for m in maps]) if maps else np.empty((0, 2), np.uint64)
                _write_sorted_fully(fd, np.ascontiguousarray(everything).view(SUBSET_DTYPE).reshape(-1))
        finally:
            os.close(fd)
            _LOCAL.__dict__.pop("bufs", None)  # the run is over: do not keep its buffers alive
    return n
