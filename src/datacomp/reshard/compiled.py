"""The resharder's compiled kernels (``_tar_kernels``), loaded by the one policy of
``datacomp.kernels``.

The scan's header walk and the pack's tar layout run as numba kernels (one call per tar /
batch, without the GIL, so the worker threads really run in parallel) in a process where numba
is loaded already, or for runs of at least KERNEL_MIN input samples. Loading numba and the
cached kernels costs ~0.45 s of CPU once per process (threads share it); the kernels save
~25-30 µs of CPU a sample (0.20 -> 0.05 s of Python per 6,000), so they pay for themselves from
~15-20k samples. Below that, plain Python.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ..formats.ustar import EDGE, SMALL, WINDOW
from ..kernels import KernelModule
from . import fasttar

KERNEL_MIN = 20_000


def _warm_up(k: ModuleType) -> None:
    """Run every kernel once on empty inputs, so that one that fails to load fails here."""
    k.walk(-1, 0, WINDOW, SMALL, EDGE)
    none, one, no_bytes = np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint8)
    k.lay_out(np.zeros((0, 32), np.uint8), one, one, one, no_bytes, none, none, one, no_bytes,
              np.zeros(0, bool), 0, 0, 0, np.frombuffer(fasttar.TEMPLATE, np.uint8), 0, 1)
    k.pwrite_all(-1, np.zeros(0, np.uint8), np.zeros((0, 3), np.int64))


KERNELS = KernelModule(__package__ + "._tar_kernels", _warm_up)


def load_kernels() -> bool:
    """Load the compiled kernels now (~0.45 s of CPU, once per process): every later reshard in
    this process uses them, however small. False where numba is unavailable."""
    return KERNELS.available()


def use_kernels(compiled: bool | None) -> bool:
    """``compiled``: True / False = use the kernels / not; None = only if numba is loaded."""
    return KERNELS.use(compiled) is not None
