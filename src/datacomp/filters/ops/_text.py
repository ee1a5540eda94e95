"""Vectorised versions of the string rules the reference applies row by row in Python.

They work on the UTF-8 bytes of an Arrow string column with NumPy (no Python loop per row):

- Python's ``str.split()`` splits on runs of the characters for which ``str.isspace()`` is true
  (ASCII 9-13, 28-32 and the Unicode spaces U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
  U+2029, U+202F, U+205F, U+3000); a word starts at a non-space byte that follows a space or
  the start of the string. ``len(t.split())``, and the tokens themselves, come out exact.
- fastText's tokenizer (``Dictionary::readWord``, used by ``fasttext.tokenize``) splits on the
  seven bytes space, ``\\n``, ``\\r``, ``\\t``, ``\\v``, ``\\f``, ``\\0`` and emits an
  end-of-sentence token ``</s>`` for every ``\\n``: its token count is (runs of other bytes) +
  (number of ``\\n``).
- ``len(t)`` is the number of code points (Arrow's ``utf8_length``).

The word and token counts run as one compiled pass over the bytes (numba, cached on disk) and
fall back to NumPy array passes (same results, ~3x slower) where numba is not importable.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...formats.pool import one_array
from ...kernels import KernelModule

# the code points for which str.isspace() is true (tests check this against Python itself)
PY_WS = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
         *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
_PY_WS_ASCII = np.zeros(256, dtype=bool)
_PY_WS_ASCII[[c for c in PY_WS if c < 128]] = True
# multi-byte Python whitespace, as UTF-8 byte sequences
_PY_WS_MULTI = [chr(c).encode("utf-8") for c in PY_WS if c >= 128]
_FT_WS = np.zeros(256, dtype=bool)
_FT_WS[[0x20, 0x0A, 0x0D, 0x09, 0x0B, 0x0C, 0x00]] = True


def as_text(column: pa.Array) -> pa.Array:
    """A plain ``string`` column with nulls as '' (large/dictionary/chunked columns converted)."""
    column = one_array(column)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    if column.null_count:
        column = column.fill_null("")
    return column


def _buffer(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(the whole value buffer as bytes, the rows' int32 offsets into it), without copies."""
    text = as_text(text)
    n = len(text)
    bufs = text.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=text.offset * 4)
    if bufs[2] is None or n == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(n + 1, dtype=np.int32)
    return np.frombuffer(bufs[2], dtype=np.uint8), offsets


def _bytes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the rows only, int32 offsets with n + 1 entries starting at 0)."""
    base, offsets = _buffer(text)
    return base[offsets[0]:offsets[-1]], offsets - offsets[0] if offsets[0] else offsets


def _tail(base: np.ndarray, whole: int) -> np.uint64:
    """The bytes after the last whole 8-byte word, zero-padded, as one little-endian word."""
    return np.uint64(int.from_bytes(base[whole:].tobytes(), "little"))


def _ranges(table: np.ndarray) -> list[tuple[int, int]]:
    """The byte ranges [lo, hi] where ``table`` is True."""
    out, b = [], 0
    while b < 256:
        if table[b]:
            e = b
            while e + 1 < 256 and table[e + 1]:
                e += 1
            out.append((b, e))
            b = e + 1
        else:
            b += 1
    return out


def _range_mask(data: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """``table[data]`` as a few byte comparisons (uint8 wrap-around: ``data - lo <= hi - lo``)."""
    mask = None
    for lo, hi in ranges:
        m = np.subtract(data, lo, dtype=np.uint8) <= hi - lo if hi > lo else data == lo
        mask = m if mask is None else (mask | m)
    return mask if mask is not None else np.zeros(len(data), dtype=bool)


_PY_RANGES = _ranges(_PY_WS_ASCII)
_FT_RANGES = _ranges(_FT_WS)
# multi-byte whitespace grouped by lead byte: {lead: [continuation bytes, ...]}
_PY_MULTI_BY_LEAD: dict[int, list[bytes]] = {}
for _seq in _PY_WS_MULTI:
    _PY_MULTI_BY_LEAD.setdefault(_seq[0], []).append(_seq[1:])


def _py_ws_mask(data: np.ndarray) -> np.ndarray:
    ws = _range_mask(data, _PY_RANGES)
    cand = np.flatnonzero(data >= min(_PY_MULTI_BY_LEAD))  # lead bytes of multi-byte characters
    if not len(cand):
        return ws
    lead = data[cand]
    for lb, tails in _PY_MULTI_BY_LEAD.items():
        c = cand[lead == lb]
        if not len(c):
            continue
        k = len(tails[0]) + 1
        c = c[c + k <= len(data)]
        hit = np.zeros(len(c), dtype=bool)
        nxt = [data[c + j + 1] for j in range(k - 1)]
        for tail in tails:
            h = np.ones(len(c), dtype=bool)
            for j, b in enumerate(tail):
                h &= nxt[j] == b
            hit |= h
        for j in range(k):
            ws[c[hit] + j] = True
    return ws


def _word_starts(ws: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    starts = ~ws
    if len(ws) > 1:
        starts[1:] &= ws[:-1]
    # a word also starts at the first byte of each (non-empty) row
    first = offsets[:-1][offsets[:-1] < offsets[1:]]
    starts[first] = ~ws[first]
    return starts


def _per_row(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Number of True flags in each row's byte range (an Arrow string array has < 2**31 bytes)."""
    cs = np.empty(len(flags) + 1, dtype=np.int32)
    cs[0] = 0
    np.cumsum(flags, out=cs[1:], dtype=np.int32)
    return (cs[offsets[1:]] - cs[offsets[:-1]]).astype(np.int64)


def _np_py_word_count(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return _per_row(_word_starts(_py_ws_mask(data), offsets), offsets)


def _np_fasttext_token_count(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    ws = _range_mask(data, _FT_RANGES)
    return _per_row(_word_starts(ws, offsets), offsets) + _per_row(data == 0x0A, offsets)


# multi-byte Python whitespace as the compiled kernel tests it (checked against PY_WS below)
_KERNEL_MULTI = sorted([b"\xc2\x85", b"\xc2\xa0", b"\xe1\x9a\x80", b"\xe2\x81\x9f", b"\xe3\x80\x80",
                        b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xe2\x80\xaf"]
                       + [bytes([0xE2, 0x80, c]) for c in range(0x80, 0x8B)])
assert _KERNEL_MULTI == sorted(_PY_WS_MULTI), "Python's whitespace set changed: update the kernel"


# the kernels live in their own module so that numba can cache them on disk; text ops always
# use them where they load (``compiled=True``): any caption column is big enough to pay the load
KERNELS = KernelModule(__package__ + "._text_kernels")


def py_word_count(text: pa.Array, compiled: bool = True) -> np.ndarray:
    """``len(t.split())`` per row."""
    return words_and_chars(text, compiled)[0]


def words_and_chars(text: pa.Array, compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(``len(t.split())``, ``len(t)``) per row, in one pass over the bytes."""
    k = KERNELS.use(compiled)
    kernel = k.py_words if k is not None else None
    if kernel is None:
        data, offsets = _bytes(text)
        return _np_py_word_count(data, offsets), char_count(text)
    base, offsets = _buffer(text)
    chars = np.zeros(len(offsets) - 1, dtype=np.int64)
    whole = len(base) // 8 * 8
    return kernel(base, base[:whole].view(np.uint64), _tail(base, whole), offsets, chars), chars


def fasttext_token_count(text: pa.Array, compiled: bool = True) -> np.ndarray:
    """``len(fasttext.tokenize(t))`` per row."""
    k = KERNELS.use(compiled)
    kernel = k.ft_tokens if k is not None else None
    if kernel is None:
        return _np_fasttext_token_count(*_bytes(text))
    base, offsets = _buffer(text)
    whole = len(base) // 8 * 8
    return kernel(base, base[:whole].view(np.uint64), _tail(base, whole), offsets)


def char_count(text: pa.Array) -> np.ndarray:
    """``len(t)`` per row (code points)."""
    return pc.utf8_length(as_text(text)).to_numpy(zero_copy_only=False).astype(np.int64)


def py_split_tokens(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The tokens of ``t.split()`` of every row, flattened in order, and each token's row."""
    data, offsets = _bytes(text)
    ws = _py_ws_mask(data)
    starts = np.flatnonzero(_word_starts(ws, offsets))
    keep = np.flatnonzero(~ws)
    # dropping every space byte makes the tokens contiguous; a token starts where its first byte
    # lands in the compacted buffer (row ends need no mark: a new row starts a new token)
    tok_off = np.empty(len(starts) + 1, dtype=np.int32)
    tok_off[:-1] = np.searchsorted(keep, starts)
    tok_off[-1] = len(keep)
    compact = data[keep]
    tokens = pa.StringArray.from_buffers(len(starts), pa.py_buffer(tok_off), pa.py_buffer(compact))
    rows = np.searchsorted(offsets, starts, side="right") - 1
    return tokens, rows


# the comparisons must say exactly what the tables say
for _table, _rs in ((_PY_WS_ASCII, _PY_RANGES), (_FT_WS, _FT_RANGES)):
    assert np.array_equal(_range_mask(np.arange(256, dtype=np.uint8), _rs), _table)
