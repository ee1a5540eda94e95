"""CommonPool uids and the reference subset file.

A uid is 32 lowercase hex characters (128 bits). The reference splits it into two uint64:
``hi`` = the first 16 hex characters, ``lo`` = the last 16. A subset file is a NumPy structured
array of dtype ``u8,u8`` (fields ``f0`` = hi, ``f1`` = lo), sorted ascending, saved as ``.npy``
(or a headerless memmap of 16-byte native-order records). Duplicates are allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import FormatError, InputError
from .atomic import atomic_path

SUBSET_DTYPE = np.dtype("u8,u8")
NPY_MAGIC = b"\x93NUMPY"


def uid_to_pair(uid: str) -> tuple[int, int]:
    """32-hex uid -> (hi, lo) as Python ints; shorter hex strings are left-padded with zeros."""
    value = int(uid, 16)
    if value >> 128:
        raise ValueError(f"uid {uid!r} has more than 128 bits")
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def pair_to_uid(hi: int, lo: int) -> str:
    return f"{int(hi):016x}{int(lo):016x}"


def uids_to_pairs(uids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Vectorised conversion of 32-hex uids to a ``u8,u8`` structured array (same order).

    Every uid must be exactly 32 hex characters (CommonPool's form); raises ValueError otherwise.
    """
    arr = np.asarray(uids, dtype=object)
    n = len(arr)
    out = np.empty(n, dtype=SUBSET_DTYPE)
    if n == 0:
        return out
    items = arr.tolist()
    bad = next((u for u in items if not isinstance(u, str) or len(u) != 32), None)
    if bad is not None:  # (a total length check alone would pass a 31- next to a 33-character uid)
        raise ValueError(f"uid {bad!r} is not 32 hex characters")
    joined = "".join(items)
    try:
        raw = bytes.fromhex(joined)
    except ValueError as e:
        raise ValueError(f"uids contain a non-hex character: {e}") from None
    words = np.frombuffer(raw, dtype=">u8").reshape(n, 2)
    out["f0"] = words[:, 0]
    out["f1"] = words[:, 1]
    return out


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    """``u8,u8`` array -> list of 32-hex uids (same order)."""
    words = np.empty((len(pairs), 2), dtype=">u8")
    words[:, 0] = pairs["f0"]
    words[:, 1] = pairs["f1"]
    hexed = words.tobytes().hex()
    return [hexed[i : i + 32] for i in range(0, len(hexed), 32)]


def make_subset(pairs: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate uid-pair arrays and sort them the way the reference does (by hi, then lo)."""
    if isinstance(pairs, np.ndarray):
        arr = pairs.astype(SUBSET_DTYPE, copy=True)
    else:
        parts = [np.asarray(p, dtype=SUBSET_DTYPE) for p in pairs]
        arr = np.concatenate(parts) if parts else np.empty(0, dtype=SUBSET_DTYPE)
    arr.sort(order=("f0", "f1"), kind="stable")
    return arr


def is_sorted(arr: np.ndarray) -> bool:
    if len(arr) < 2:
        return True
    hi, lo = arr["f0"], arr["f1"]
    d_hi = hi[1:] > hi[:-1]
    eq_hi = hi[1:] == hi[:-1]
    return bool(np.all(d_hi | (eq_hi & (lo[1:] >= lo[:-1]))))


def write_subset(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Validate and write a subset ``.npy`` atomically. Returns the path."""
    path = Path(path)
    validate_subset(arr, str(path))
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)
    return path


def validate_subset(arr: np.ndarray, where: str) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != SUBSET_DTYPE or arr.ndim != 1:
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise FormatError(f"{where}: subset must be a 1-D structured array of dtype 'u8,u8', got {dtype}")
    if not is_sorted(arr):
        raise FormatError(f"{where}: subset uids are not sorted ascending (sort by (hi, lo) before saving)")


def read_subset(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Read and validate a subset file (``.npy`` or raw 16-byte records)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: subset file does not exist")
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    try:
        if magic == NPY_MAGIC:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            size = path.stat().st_size
            if size % SUBSET_DTYPE.itemsize:
                raise FormatError(f"{path}: not a .npy file and its size {size} is not a multiple of 16 bytes")
            arr = np.fromfile(path, dtype=SUBSET_DTYPE) if not mmap or size == 0 else np.memmap(path, dtype=SUBSET_DTYPE, mode="r")
    except FormatError:
        raise
    except (ValueError, OSError) as e:
        raise FormatError(f"{path}: cannot read subset file: {e}") from None
    validate_subset(arr, str(path))
    return arr
