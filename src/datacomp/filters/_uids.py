"""Fast uid conversion, sorting and merging for the filter engine (the subset's hot path).

- :func:`uid_pairs`: an Arrow column of 32-hex uids -> ``u8,u8`` pairs, decoded straight from the
  column's value buffer (one compiled pass, 8 digits at a time when the rows are 8-byte aligned;
  no intermediate ``bytes``/``str`` copies).
- :func:`sort_pairs`: sort by (hi, lo) exactly as the reference's structured-array sort does. The
  high halves, with their low bits replaced by the row index, are sorted as plain ``uint64``
  (NumPy's SIMD sort), the rows gathered in that order, and the result checked to be in (hi, lo)
  order; only if two uids share the kept high bits *and* came out of order (vanishingly rare for
  hashes) is there a full ``lexsort``. Equal pairs are equal bytes, so the output is byte-identical
  to the reference's sort.
- :func:`load_parts`: the per-shard ``.npy`` parts read straight into one array.

Every compiled kernel has a NumPy fallback (same results), used where numba is not importable
and, by default, in processes that have not loaded numba yet (see ``_compiled``).
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

# hex digit values; 0x10 marks a byte that is not a hex digit (bytes.fromhex takes both cases)
_HEX = np.full(256, 0x10, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def _compile():
    try:  # the kernels live in their own module so that numba can cache them on disk
        from . import _uids_kernels as k
    except Exception:  # numba missing or incompatible with this NumPy
        return None
    return k.hex_pairs, k.pack_keys, k.gather_check, k.pack_keys_segments, k.hex_words, k.pack_keys_masked


_KERNELS: tuple | None = None
_COMPILED = False


def _kernels():
    global _KERNELS, _COMPILED
    if not _COMPILED:
        _KERNELS = _compile()
        _COMPILED = True
    return _KERNELS


def _as_u64x2(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.uint64).reshape(-1, 2)


def _compiled(compiled: bool | None) -> bool:
    """``compiled=None``: use the numba kernels only once numba is loaded in this process.
    Importing numba and loading the cached kernels costs ~0.4 s per process — more than the
    kernels save on the uid work of a few shards (NumPy does it ~2x slower: ~4 ms instead of
    ~2 ms per 125k rows) — so a worker that runs no text op (no_filter, CLIP-score recipes)
    stays on NumPy, and so does run_filter's own process (its merge of 1M rows takes ~30 ms
    either way)."""
    return ("numba" in sys.modules) if compiled is None else compiled


def uid_pairs(uids: pa.Array, compiled: bool | None = None, scratch: bool = False) -> np.ndarray:
    """32-hex uids -> ``u8,u8`` pairs (same order). Anything but a null-free string column of
    32-hex uids goes through ``formats.uids.uids_to_pairs`` (which raises ValueError on a bad uid).

    ``scratch=True``: decode into this thread's reusable buffer (valid until the next such call;
    a worker's per-shard work then touches no fresh memory)."""
    uids = one_array(uids)
    n = len(uids)
    k = _kernels() if _compiled(compiled) else None
    if pa.types.is_string(uids.type) and n and not uids.null_count:
        bufs = uids.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=uids.offset * 4)
        if bufs[2] is not None and off[-1] - off[0] == 32 * n:
            if k is not None:
                out = _scratch("pairs", n, SUBSET_DTYPE) if scratch else np.empty(n, dtype=SUBSET_DTYPE)
                data = np.frombuffer(bufs[2], dtype=np.uint8)
                start = int(off[0])
                if (data.ctypes.data + start) % 8 == 0 and sys.byteorder == "little":  # 8 digits at a time
                    if k[4](data[start:start + 32 * n].view(np.uint64), off, out.view(np.uint32)):
                        return out
                elif k[0](data, off, _HEX, _as_u64x2(out)) == -1:
                    return out
            elif (np.diff(off) == 32).all():
                try:
                    raw = bytes.fromhex(memoryview(bufs[2])[off[0]:off[-1]].tobytes().decode("ascii", "replace"))
                except ValueError:
                    raw = b""
                if len(raw) == 16 * n:  # fromhex skips spaces: a short result means a bad uid
                    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).view(SUBSET_DTYPE)
    return uids_to_pairs(uids.to_numpy(zero_copy_only=False))


def sort_pairs(parts: Sequence[np.ndarray] | np.ndarray, compiled: bool | None = None,
               runs: Sequence[int] | None = None, threads: int = 1) -> np.ndarray:
    """Concatenate uid-pair arrays and sort them by (hi, lo): the reference's order and bytes.

    ``runs`` (one array only): the row offsets where its sorted runs start and end (e.g. the
    workers' sorted parts, as :func:`load_parts` gives them); with ``threads`` > 1 the rows are
    then split by value (a sampled median of the high halves, cut in every run by binary
    search) and the ranges sorted in parallel threads (the kernels and NumPy's sort release the
    GIL), each into its own slice of the output.
    """
    if isinstance(parts, np.ndarray):
        parts = [parts]
    arr = (np.concatenate([np.asarray(p, dtype=SUBSET_DTYPE) for p in parts]) if len(parts) != 1
           else np.ascontiguousarray(parts[0], dtype=SUBSET_DTYPE))
    n = len(arr)
    if n < 2:
        return arr.copy() if len(parts) == 1 else arr
    k = _kernels() if _compiled(compiled) else None
    shift = int(n - 1).bit_length()  # bits that hold a row index
    src = _as_u64x2(arr)
    if k is not None and runs is not None and threads > 1 and n >= _THREADED_MIN and len(parts) == 1:
        out = _sort_threaded(k, arr, src, shift, list(runs))
        if out is not None:
            return out
    elif k is not None:
        keys = np.empty(n, dtype=np.uint64)
        k[1](src, shift, keys)
        keys.sort()
        out = np.empty(n, dtype=SUBSET_DTYPE)
        if k[2](src, keys, shift, _as_u64x2(out)):
            return out
    else:
        mask = np.uint64((1 << shift) - 1)
        keys = (src[:, 0] & ~mask) | np.arange(n, dtype=np.uint64)
        keys.sort()
        out = arr[(keys & mask).astype(np.intp)]
        hi, lo = out["f0"], out["f1"]
        if bool(np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1])))):
            return out
    return arr[np.lexsort((arr["f1"], arr["f0"]))]


_THREADED_MIN = 1 << 17


def _sort_threaded(k, arr: np.ndarray, src: np.ndarray, shift: int, runs: list[int]) -> np.ndarray | None:
    """Two value ranges sorted in two threads (see sort_pairs); None when a check fails."""
    import threading

    n = len(arr)
    hi = src[:, 0]
    sample = np.sort(hi[:: max(1, n // 4096)])
    cut_value = sample[len(sample) // 2]
    starts = np.asarray(runs[:-1], dtype=np.int64)
    ends = np.asarray(runs[1:], dtype=np.int64)
    cuts = np.array([a + np.searchsorted(hi[a:b], cut_value) for a, b in zip(starts, ends)], dtype=np.int64)
    low_n = int((cuts - starts).sum())
    out = np.empty(n, dtype=SUBSET_DTYPE)
    dst = _as_u64x2(out)
    ok = [False, False]

    def half(t: int) -> None:
        a, b = (starts, cuts) if t == 0 else (cuts, ends)
        lo, hi_ = (0, low_n) if t == 0 else (low_n, n)
        keys = np.empty(hi_ - lo, dtype=np.uint64)
        k[3](src, a, b, shift, keys)
        keys.sort()
        ok[t] = bool(k[2](src, keys, shift, dst[lo:hi_]))

    th = threading.Thread(target=half, args=(1,))
    th.start()
    half(0)
    th.join()
    # each half in order, and the halves split by value (a part that was not sorted breaks this)
    if ok[0] and ok[1] and (low_n in (0, n) or (dst[low_n - 1, 0] < cut_value <= dst[low_n, 0])):
        return out
    return None


def load_parts(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[int]]:
    """The parts concatenated (each file read straight into its slice of the one array) and the
    row offsets where each part starts and the last ends."""
    heads = []
    total = 0
    for p in paths:
        f = open(p, "rb")
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except Exception:
            f.close()
            raise
        if dtype != SUBSET_DTYPE or len(shape) != 1 or fortran:
            f.close()
            raise ValueError(f"{p}: not a 1-D 'u8,u8' array")
        heads.append((f, shape[0]))
        total += shape[0]
    out = np.empty(total, dtype=SUBSET_DTYPE)
    view = memoryview(out.view(np.uint8))
    pos = 0
    runs = [0]
    for f, count in heads:
        with f:
            nbytes = count * SUBSET_DTYPE.itemsize
            if nbytes and f.readinto(view[pos:pos + nbytes]) != nbytes:
                raise ValueError(f"{f.name}: truncated")
        pos += nbytes
        runs.append(pos // SUBSET_DTYPE.itemsize)
    return out, runs


# ---- sorted writes, streamed ---------------------------------------------------------------------
#
# The two writes of the select pass — each worker's sorted part and the driver's merged subset —
# never materialise the sorted array: the sort keys (high halves with the row index in their low
# bits) are sorted, then the rows are gathered in that order a chunk at a time into a small
# buffer that stays in cache, each chunk checked to continue the (hi, lo) order and written with
# ``os.pwrite`` at its place in the file. Only when a check fails (two uids that share the kept
# high bits came out in the wrong order: vanishingly rare for hashes) is the array sorted fully.
# Output bytes are those of ``np.save(make_subset(...))``.

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
            k[2](src, keys[c:c + m], shift, out[:m])  # (its own order check is the one above)
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


def write_sorted_part(pairs: np.ndarray, keep_rows: np.ndarray | None, path: str | os.PathLike,
                      compiled: bool | None = None) -> int:
    """Write ``pairs[keep_rows]`` sorted by (hi, lo) as a ``.npy`` file, atomically; returns the
    row count. ``pairs`` may be a scratch buffer: only its rows are read."""
    from ..formats.atomic import atomic_path

    n = len(pairs)
    k = _kernels() if _compiled(compiled) else None
    src = _as_u64x2(np.ascontiguousarray(pairs, dtype=SUBSET_DTYPE))
    every = keep_rows is None or bool(keep_rows.all())
    m = n if every else int(np.count_nonzero(keep_rows))
    shift = int(max(n - 1, 1)).bit_length()
    keys = _scratch("keys", m, np.uint64)
    if k is not None:
        if every:
            k[1](src, shift, keys)
        else:
            k[5](src, keep_rows, shift, keys)
    else:
        rows = np.arange(n, dtype=np.uint64) if every else np.flatnonzero(keep_rows).astype(np.uint64)
        np.bitwise_or(src[rows.astype(np.intp), 0] & ~np.uint64((1 << shift) - 1), rows, out=keys)
    keys.sort()
    head = npy_header(m)
    with atomic_path(path, suffix=".npy") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, head)
            if _stream_gather(k, src, keys, shift, fd, len(head)) is None:
                _write_sorted_fully(fd, pairs if every else pairs[keep_rows])
        finally:
            os.close(fd)
    return m


_BUCKET_ROWS = 1 << 16  # rows per value range of the merge (its keys, and the rows it gathers, stay in cache)


def merge_parts(paths: Sequence[str | os.PathLike], out: str | os.PathLike, compiled: bool | None = None,
                threads: int = 2) -> int:
    """Merge the sorted ``.npy`` parts into one subset file (sorted by (hi, lo), byte-identical to
    ``np.save(make_subset(all parts))``), written atomically; returns the row count.

    The rows are split into value ranges of ~64k rows (cut values from a sample of the high
    halves, cut in every part by binary search); each range's keys are sorted and its rows
    streamed into the range's own bytes of the file. With ``threads`` > 1 two threads take half of
    the ranges each (NumPy's sort and take, the kernels and ``os.pwrite`` release the GIL). A part
    that is not sorted makes a check fail, and then the whole array is sorted."""
    from ..formats.atomic import atomic_path

    arr, runs = load_parts(paths)
    n = len(arr)
    k = _kernels() if _compiled(compiled) else None
    src = _as_u64x2(arr)
    hi = src[:, 0]
    shift = int(max(n - 1, 1)).bit_length()
    low_bits = ~np.uint64((1 << shift) - 1)
    starts = np.asarray(runs[:-1], dtype=np.int64)
    ends = np.asarray(runs[1:], dtype=np.int64)
    nb = max(1, min(1024, n // _BUCKET_ROWS))
    if nb > 1:
        sample = np.sort(hi[:: max(1, n // (64 * nb))])
        cut_values = np.unique(sample[(np.arange(1, nb) * len(sample)) // nb])
        bounds = np.column_stack([starts, *[starts + np.array([np.searchsorted(hi[a:b], v) for a, b in zip(starts, ends)])
                                            for v in cut_values], ends]) if len(starts) else np.zeros((0, 2), np.int64)
    else:
        bounds = np.column_stack([starts, ends])
    nb = bounds.shape[1] - 1
    sizes = (bounds[:, 1:] - bounds[:, :-1]).sum(axis=0) if len(bounds) else np.zeros(nb, np.int64)
    head = npy_header(n)
    offsets = len(head) + 16 * np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    split = int(np.searchsorted(np.cumsum(sizes), n // 2)) + 1 if threads > 1 and n >= _THREADED_MIN else nb
    groups = [range(0, min(split, nb)), range(min(split, nb), nb)]
    ends_written: list = [None] * nb

    def one(t: int) -> None:
        for b in groups[t]:
            a, e = bounds[:, b], bounds[:, b + 1]
            keys = _scratch("merge_keys", int(sizes[b]), np.uint64)
            if k is not None:
                k[3](src, a, e, shift, keys)
            else:
                j = 0
                for s0, e0 in zip(a.tolist(), e.tolist()):
                    np.bitwise_or(hi[s0:e0] & low_bits, np.arange(s0, e0, dtype=np.uint64), out=keys[j:j + e0 - s0])
                    j += e0 - s0
            keys.sort()
            ends_written[b] = _stream_gather(k, src, keys, shift, fd, int(offsets[b]))
            if ends_written[b] is None:
                return

    with atomic_path(out, suffix=".npy") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, head)
            if not len(groups[1]):
                one(0)
            else:
                th = threading.Thread(target=one, args=(1,))
                th.start()
                try:
                    one(0)
                finally:
                    th.join()
            # each range in order (checked while streaming) and each range's first row not below the
            # last row before it: the file is in order (parts that were not sorted break this)
            good = all(e is not None for e in ends_written)
            last = None
            for e in ends_written if good else ():
                if e:
                    good = good and (last is None or e[:2] >= last)
                    last = e[2:]
            if not good:
                _write_sorted_fully(fd, arr)
        finally:
            os.close(fd)
    return n
