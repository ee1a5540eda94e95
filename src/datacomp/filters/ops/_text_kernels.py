"""Compiled (numba) kernels of ``_text.py``: word, code-point and fastText token counts per row."""
from __future__ import annotations

import numpy as np
from numba import njit


u64 = np.uint64
ONES = u64(0x0101010101010101)
HIGH = u64(0x8080808080808080)
LOW7 = u64(0x7F7F7F7F7F7F7F7F)
WS_A_HI, WS_A_LO = u64(0x0101010101010101 * (127 + 14)), u64(0x0101010101010101 * (127 - 8))  # 9..13
WS_B_HI, WS_B_LO = u64(0x0101010101010101 * (127 + 33)), u64(0x0101010101010101 * (127 - 27))  # 28..32
S7, S8, S56 = u64(7), u64(8), u64(56)


@njit(inline="always")
def _ws8(x):  # pragma: no cover - compiled
    """High bit of each byte of ``x`` set where the byte is ASCII whitespace (9-13, 28-32)."""
    t = x & LOW7
    a = (WS_A_HI - t) & (t + WS_A_LO)
    b = (WS_B_HI - t) & (t + WS_B_LO)
    return (a | b) & ~x & HIGH


@njit(inline="always")
def _popc8(m):  # pragma: no cover - compiled
    """Number of bytes of ``m`` with their high bit set (the only bits set)."""
    return np.int64(((m >> S7) * ONES) >> S56)


@njit(inline="always")
def _is_ws(b):  # pragma: no cover - compiled
    return ((b - 9) & 0xFF) <= 4 or ((b - 28) & 0xFF) <= 4


@njit(cache=True, nogil=True)
def _decode_words(data, i, end):  # pragma: no cover - compiled
    """``len(t.split())`` of one row, decoding UTF-8 (rows with multi-byte whitespace)."""
    cnt = 0
    inword = False
    while i < end:
        b = np.int64(data[i])
        step = 1
        ws = False
        if b < 0x80:
            ws = _is_ws(b)
        else:
            if b >= 0xF0:
                step = 4
            elif b >= 0xE0:
                step = 3
            elif b >= 0xC0:
                step = 2
            if b == 0xC2 and i + 1 < end:
                c1 = data[i + 1]
                ws = c1 == 0x85 or c1 == 0xA0
            elif b == 0xE1 and i + 2 < end:
                ws = data[i + 1] == 0x9A and data[i + 2] == 0x80
            elif b == 0xE2 and i + 2 < end:
                c1 = data[i + 1]
                c2 = data[i + 2]
                ws = (c1 == 0x80 and ((0x80 <= c2 <= 0x8A) or c2 == 0xA8 or c2 == 0xA9 or c2 == 0xAF)) \
                    or (c1 == 0x81 and c2 == 0x9F)
            elif b == 0xE3 and i + 2 < end:
                ws = data[i + 1] == 0x80 and data[i + 2] == 0x80
        if ws:
            inword = False
        elif not inword:
            inword = True
            cnt += 1
        i += step
    return cnt


@njit(cache=True, nogil=True)
def _has_multi_ws(data, i, end):  # pragma: no cover - compiled
    """Whether bytes [i, end) hold a multi-byte Python whitespace character."""
    for j in range(i, end):
        b = data[j]
        if b == 0xC2:
            if j + 1 < end and (data[j + 1] == 0x85 or data[j + 1] == 0xA0):
                return True
        elif b == 0xE1 or b == 0xE2 or b == 0xE3:
            if j + 2 < end:
                c1 = data[j + 1]
                c2 = data[j + 2]
                if b == 0xE1:
                    if c1 == 0x9A and c2 == 0x80:
                        return True
                elif b == 0xE3:
                    if c1 == 0x80 and c2 == 0x80:
                        return True
                elif (c1 == 0x80 and ((0x80 <= c2 <= 0x8A) or c2 == 0xA8 or c2 == 0xA9 or c2 == 0xAF)) \
                        or (c1 == 0x81 and c2 == 0x9F):
                    return True
    return False


@njit(cache=True, nogil=True)
def py_words(data, words, tail, offsets, chars):  # pragma: no cover - compiled
    """Words per row (``len(t.split())``); also fills ``chars`` with the code points per row.

    ``data`` is the whole value buffer (``offsets`` index it), ``words`` its first
    ``len(data) // 8`` 8-byte words and ``tail`` the rest, zero-padded to 8 bytes. One pass of 8 bytes at a time (SWAR): per word, the
    bytes that start an ASCII-whitespace-separated word and the UTF-8 continuation bytes;
    running totals of both give each row's counts at its two ends. A row with continuation
    bytes (non-ASCII) is scanned for multi-byte whitespace and, only if it has some, counted
    again by decoding it.
    """
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    k = np.int64(offsets[0]) >> 3
    # the word before k decides whether k's first byte follows whitespace
    nw = len(words)
    prev_ws = _ws8(words[k - 1]) if k > 0 else HIGH
    x = words[k] if k < nw else tail
    ws = _ws8(x)
    cur_s = ~ws & HIGH & ((ws << S8) | (prev_ws >> S56))
    cur_c = x & ~(x << u64(1)) & HIGH
    tot_s = 0
    tot_c = 0
    o = np.int64(offsets[0])
    sh = u64(8 * (o & 7))
    mask = (u64(1) << sh) - u64(1)
    c_s = tot_s + _popc8(cur_s & mask)
    c_c = tot_c + _popc8(cur_c & mask)
    for r in range(n):
        s = o
        e = np.int64(offsets[r + 1])
        ke = e >> 3
        while k < ke:
            tot_s += _popc8(cur_s)
            tot_c += _popc8(cur_c)
            prev_ws = ws
            k += 1
            x = words[k] if k < nw else tail
            ws = _ws8(x)
            cur_s = ~ws & HIGH & ((ws << S8) | (prev_ws >> S56))
            cur_c = x & ~(x << u64(1)) & HIGH
        sh = u64(8 * (e & 7))
        mask = (u64(1) << sh) - u64(1)
        e_s = tot_s + _popc8(cur_s & mask)
        e_c = tot_c + _popc8(cur_c & mask)
        if e > s:
            w = e_s - c_s
            # the row's first byte starts a word if it is not whitespace, whatever precedes it
            if s > 0 and not _is_ws(np.int64(data[s])) and not _is_ws(np.int64(data[s - 1])):
                w += 1
            cont = e_c - c_c
            chars[r] = e - s - cont
            if cont and _has_multi_ws(data, s, e):
                w = _decode_words(data, s, e)
            out[r] = w
        o = e
        c_s = e_s
        c_c = e_c
    return out

NL_HI, NL_LO = u64(0x0101010101010101 * (127 + 11)), u64(0x0101010101010101 * (127 - 9))  # 10
SP_HI, SP_LO = u64(0x0101010101010101 * (127 + 33)), u64(0x0101010101010101 * (127 - 31))  # 32


@njit(inline="always")
def _ft_ws8(x):  # pragma: no cover - compiled
    """High bit of each byte of ``x`` set where fastText splits (9-13, 32, 0)."""
    t = x & LOW7
    a = (WS_A_HI - t) & (t + WS_A_LO)
    b = (SP_HI - t) & (t + SP_LO)
    z = ~((t + LOW7) | x)  # zero bytes
    return ((a | b) & ~x | z) & HIGH


@njit(inline="always")
def _nl8(x):  # pragma: no cover - compiled
    t = x & LOW7
    return (NL_HI - t) & (t + NL_LO) & ~x & HIGH


@njit(inline="always")
def _ft_ws(b):  # pragma: no cover - compiled
    return ((b - 9) & 0xFF) <= 4 or b == 32 or b == 0


@njit(cache=True, nogil=True)
def ft_tokens(data, words, tail, offsets):  # pragma: no cover - compiled
    """Tokens per row: runs of non-blank bytes plus one '</s>' per newline; the same
    8-bytes-at-a-time pass as ``py_words`` (no UTF-8 decoding: fastText splits on bytes)."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    k = np.int64(offsets[0]) >> 3
    nw = len(words)
    prev_ws = _ft_ws8(words[k - 1]) if k > 0 else HIGH
    x = words[k] if k < nw else tail
    ws = _ft_ws8(x)
    cur_s = ~ws & HIGH & ((ws << S8) | (prev_ws >> S56))
    cur_n = _nl8(x)
    tot = 0
    o = np.int64(offsets[0])
    mask = (u64(1) << u64(8 * (o & 7))) - u64(1)
    c = tot + _popc8((cur_s | cur_n) & mask)
    for r in range(n):
        s = o
        e = np.int64(offsets[r + 1])
        ke = e >> 3
        while k < ke:
            tot += _popc8(cur_s | cur_n)  # a byte is never both a token start and a newline
            prev_ws = ws
            k += 1
            x = words[k] if k < nw else tail
            ws = _ft_ws8(x)
            cur_s = ~ws & HIGH & ((ws << S8) | (prev_ws >> S56))
            cur_n = _nl8(x)
        mask = (u64(1) << u64(8 * (e & 7))) - u64(1)
        ce = tot + _popc8((cur_s | cur_n) & mask)
        if e > s:
            w = ce - c
            if s > 0 and not _ft_ws(np.int64(data[s])) and not _ft_ws(np.int64(data[s - 1])):
                w += 1
            out[r] = w
        o = e
        c = ce
    return out
