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
from typing import Sequence

import numpy as np
import pyarrow as pa

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
    return k.hex_pairs, k.pack_keys, k.gather_check, k.pack_keys_segments, k.hex_words


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


def uid_pairs(uids: pa.Array, compiled: bool | None = None) -> np.ndarray:
    """32-hex uids -> ``u8,u8`` pairs (same order). Anything but a null-free string column of
    32-hex uids goes through ``formats.uids.uids_to_pairs`` (which raises ValueError on a bad uid)."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    n = len(uids)
    k = _kernels() if _compiled(compiled) else None
    if pa.types.is_string(uids.type) and n and not uids.null_count:
        bufs = uids.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=uids.offset * 4)
        if bufs[2] is not None and off[-1] - off[0] == 32 * n:
            if k is not None:
                out = np.empty(n, dtype=SUBSET_DTYPE)
                data = np.frombuffer(bufs[2], dtype=np.uint8)
                start = int(off[0])
                if (data.ctypes.data + start) % 8 == 0:  # whole 8-byte words: 8 digits at a time
                    if k[4](data[start:start + 32 * n].view(np.uint64), off, _as_u64x2(out)):
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
