"""Arrow <-> NumPy through the buffers, for the resharder's scan files.

No Python object per item, and no pandas: ``pa.array`` and ``Array.to_numpy`` import it (~0.2 s
of CPU, once per process), and so does ``pq.read_table`` (through ``pyarrow.dataset``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def int64s(a: np.ndarray) -> pa.Array:
    """``pa.array(a, pa.int64())``."""
    return pa.Array.from_buffers(pa.int64(), len(a), [None, pa.py_buffer(np.ascontiguousarray(a, np.int64))])


def int32s(a: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.int32(), len(a), [None, pa.py_buffer(np.ascontiguousarray(a, np.int32))])


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def ranges(starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) ...])`` for starts ``s`` and lengths ``n = diff(offsets)``."""
    return np.repeat(starts - offsets[:-1], np.diff(offsets)) + np.arange(offsets[-1])


def gather(offsets: np.ndarray, data: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items ``idx`` of variable-length items (item i = ``data[offsets[i]:offsets[i + 1]]``)."""
    new = offsets_of(offsets[idx + 1] - offsets[idx])
    return new, data[ranges(offsets[idx], new)]


def binary(kind: pa.DataType, offsets: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string / binary array from offsets and bytes (``valid``: False = null), without
    a Python object per item."""
    nulls = 0 if valid is None else int(len(valid) - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, len(offsets) - 1, [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(data)], null_count=nulls)


def numbers(arr: pa.Array, dtype: Any) -> np.ndarray:
    """A primitive Arrow array without nulls as a NumPy copy."""
    data = arr.buffers()[1]
    if data is None:
        return np.empty(0, dtype)
    return np.frombuffer(data, dtype)[arr.offset : arr.offset + len(arr)].copy()


def valid(arr: pa.Array) -> np.ndarray:
    """Which items of an Arrow array are not null."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.ones(len(arr), bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)


def binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets into data, data) of an Arrow string / binary array, as NumPy copies."""
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int32)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64) \
        if offsets is not None else np.zeros(1, np.int64)
    return offs, np.frombuffer(data, np.uint8).copy() if data is not None else np.empty(0, np.uint8)


def uid_keys(uids: pa.Array) -> np.ndarray:
    """A scan file's uids (32 hex characters each) as ``S32`` values."""
    offsets, data = binary_parts(uids)
    return data[offsets[0] : offsets[-1]].view("S32") if len(uids) else np.empty(0, "S32")



def bytes_array(kind: pa.DataType, items: list[bytes | None]) -> pa.Array:
    """An Arrow string / binary array of ``items`` (None = null), built from buffers (``pa.array``
    would import pandas)."""
    data = [b"" if x is None else x for x in items]
    valid = np.array([x is not None for x in items], bool)
    return binary(kind, offsets_of(np.array([len(x) for x in data], np.int64)), np.frombuffer(b"".join(data), np.uint8),
                   None if valid.all() else valid)



def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table`` without its import of ``pyarrow.dataset`` (and pandas): ~0.2 s of CPU
    the first time in a process, more than reading all of a reshard's scan files."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)

