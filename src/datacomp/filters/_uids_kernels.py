"""Compiled (numba) kernels of ``_uids.py``: hex decoding of uids, key packing and checked gathers."""
from __future__ import annotations

import numpy as np
from numba import njit


u64 = np.uint64
FOUR = u64(4)
NIBBLE = np.uint8(15)
HIGH, ONES, LOW7 = u64(0x8080808080808080), u64(0x0101010101010101), u64(0x7F7F7F7F7F7F7F7F)


def between(m, n):  # the constants for "m < byte < n" on 8 bytes at once (bytes < 0x80)
    return u64(0x0101010101010101 * (127 + n)), u64(0x0101010101010101 * (127 - m))

D_HI, D_LO = between(0x2F, 0x3A)  # 0-9
A_HI, A_LO = between(0x60, 0x67)  # a-f
U_HI, U_LO = between(0x40, 0x47)  # A-F
LOWNIB, NINE = u64(0x0F0F0F0F0F0F0F0F), u64(9)
M16, M32, FFFF = u64(0x00FF00FF00FF00FF), u64(0x0000FFFF0000FFFF), u64(0xFFFF)


@njit(inline="always")
def hex8(x):  # pragma: no cover - compiled
    """8 hex digits (little-endian bytes of ``x``, first digit lowest) -> (32-bit value,
    nonzero if some byte is not a hex digit)."""
    t = x & LOW7
    ok = ((D_HI - t) & (t + D_LO)) | ((A_HI - t) & (t + A_LO)) | ((U_HI - t) & (t + U_LO))
    ok = ok & ~x & HIGH
    nib = (x & LOWNIB) + ((x >> u64(6)) & ONES) * NINE  # letters have bit 6 set: +9
    y = ((nib << FOUR) | (nib >> u64(8))) & M16  # two digits per 16 bits
    z = ((y << u64(8)) | (y >> u64(16))) & M32  # four per 32
    return ((z & FFFF) << u64(16)) | (z >> u64(32)), ok ^ HIGH


@njit(cache=True, nogil=True)
def hex_words(words, offsets, out32):  # pragma: no cover - compiled
    """hex_pairs for 8-byte-aligned rows: ``words`` = the rows' bytes as uint64, 4 per row;
    ``out32`` = the output pairs as uint32, 4 per row. Both loops are branch-free so that LLVM
    vectorises them (~10x the speed of a loop that stores whole uint64 pairs)."""
    n = len(offsets) - 1
    lens = np.int64(0)
    for r in range(n):
        lens |= np.int64(offsets[r + 1] - offsets[r]) ^ np.int64(32)
    if lens != 0:
        return False
    bad = u64(0)
    for i in range(2 * n):  # 16 hex digits -> one uint64 = (first 8 digits << 32) | last 8
        v0, b0 = hex8(words[2 * i])
        v1, b1 = hex8(words[2 * i + 1])
        out32[2 * i] = np.uint32(v1)  # little-endian: the low half first
        out32[2 * i + 1] = np.uint32(v0)
        bad |= b0 | b1
    return bad == 0


@njit(cache=True, nogil=True)
def hex_pairs(data, offsets, lut, out):  # pragma: no cover - compiled
    """Decode rows of exactly 32 hex digits into ``out`` (n x 2 uint64). Returns -1 when all
    rows were decoded, else -2 (some row is not 32 characters or not hex)."""
    n = len(offsets) - 1
    for r in range(n):
        if offsets[r + 1] - offsets[r] != 32:
            return -2
    base = offsets[0]
    bad = np.uint8(0)
    for r in range(n):
        i = base + 32 * r
        hi = u64(0)
        lo = u64(0)
        for j in range(16):
            a = lut[data[i + j]]
            b = lut[data[i + 16 + j]]
            bad |= a | b
            hi = (hi << FOUR) | u64(a & NIBBLE)
            lo = (lo << FOUR) | u64(b & NIBBLE)
        out[r, 0] = hi
        out[r, 1] = lo
    return -1 if bad < 16 else -2


@njit(cache=True, nogil=True)
def pack_keys(pairs, shift, keys):  # pragma: no cover - compiled
    """keys[i] = hi[i] with its low ``shift`` bits replaced by i."""
    m = ~((u64(1) << u64(shift)) - u64(1))
    for i in range(len(keys)):
        keys[i] = (pairs[i, 0] & m) | u64(i)


@njit(cache=True, nogil=True)
def gather_check(pairs, keys, shift, out):  # pragma: no cover - compiled
    """out[j] = pairs[index in keys[j]]; True when out is in (hi, lo) order."""
    m = (u64(1) << u64(shift)) - u64(1)
    ok = True
    ph = u64(0)
    pl = u64(0)
    for j in range(len(keys)):
        src = np.int64(keys[j] & m)
        h = pairs[src, 0]
        lo = pairs[src, 1]
        out[j, 0] = h
        out[j, 1] = lo
        if j and (h < ph or (h == ph and lo < pl)):
            ok = False
        ph = h
        pl = lo
    return ok


@njit(cache=True, nogil=True)
def bucket_rows(pairs, keep, out, ends):  # pragma: no cover - compiled
    """Counting sort of the kept rows by the top byte of hi, stable: ``out`` gets the kept rows
    grouped by top byte in ascending order (row order kept within a group), ``ends[b]`` the end
    of group b (256 values); returns the count."""
    starts = np.zeros(257, dtype=np.int64)
    for i in range(len(keep)):
        if keep[i]:
            starts[np.int64(pairs[i, 0] >> u64(56)) + 1] += 1
    for b in range(256):
        starts[b + 1] += starts[b]
    for i in range(len(keep)):
        if keep[i]:
            b = np.int64(pairs[i, 0] >> u64(56))
            j = starts[b]
            starts[b] = j + 1
            out[j, 0] = pairs[i, 0]
            out[j, 1] = pairs[i, 1]
    for b in range(256):
        ends[b] = starts[b]
    return starts[255]
