"""The resharder's uid keys: 16-byte big-endian strings whose byte order is the (hi, lo) order of
the subset's ``u8,u8`` pairs, so membership is a vectorised ``searchsorted``."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from ..formats.uids import read_subset


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


def is_uid(u: Any) -> bool:
    return isinstance(u, str) and len(u) == 32 and _HEX.issuperset(u)

