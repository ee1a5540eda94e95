"""One policy for loading the numba kernel modules (``filters/ops/_text_kernels.py``,
``filters/_uids_kernels.py``, ``reshard/_tar_kernels.py``).

Every kernel has a NumPy / Python path that gives the same result, so a kernel is an
optimisation that must never be an error: a module that does not import (numba missing, or
incompatible with this NumPy) or whose warm-up call fails is None, and the caller takes its
other path. Importing numba and loading a module's cached kernels costs ~0.4-0.5 s of CPU once
per process, so whether to pay it is the caller's ``compiled`` argument:

- ``True`` / ``False``: load the kernels / do not (a driver decided, e.g. from the run's size:
  :func:`size_rule`, and passed the decision to its workers);
- ``None``: use them only where numba is loaded already (another kernel ran in this process).
"""
from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType
from typing import Callable

log = logging.getLogger(__name__)


def numba_loaded() -> bool:
    """Whether numba is imported in this process (its import cost is paid)."""
    return "numba" in sys.modules


def wanted(compiled: bool | None) -> bool:
    """The ``compiled`` argument of a kernel user: True / False as given; None = if numba is loaded."""
    return numba_loaded() if compiled is None else bool(compiled)


def size_rule(n: int, threshold: int) -> bool | None:
    """A driver's decision for its workers: load the kernels (True) when ``n`` items reach
    ``threshold`` (where the load pays for itself), else None (only where numba is loaded)."""
    return True if n >= threshold else None


class KernelModule:
    """A numba kernel module, imported once per process on first use (thread-safe).

    ``warm_up(module)`` runs once after the import (a call of every kernel on empty inputs, so
    that a kernel that fails to load fails here and the caller falls back, not mid-run)."""

    def __init__(self, name: str, warm_up: Callable[[ModuleType], object] | None = None):
        self.name = name
        self.warm_up = warm_up
        self._lock = threading.Lock()
        self._loaded = False
        self._module: ModuleType | None = None

    def get(self) -> ModuleType | None:
        """The module, or None where it does not load (logged at debug level)."""
        if self._loaded:
            return self._module
        with self._lock:
            if not self._loaded:
                try:
                    module = importlib.import_module(self.name)
                    if self.warm_up is not None:
                        self.warm_up(module)
                except Exception as e:  # noqa: BLE001 - numba missing or broken: the other path does it all
                    log.debug("%s unavailable (%s); using the NumPy / Python path", self.name, e)
                    module = None
                self._module = module
                self._loaded = True
        return self._module

    def use(self, compiled: bool | None) -> ModuleType | None:
        """The module where ``compiled`` (:func:`wanted`) asks for it and it loads, else None."""
        return self.get() if wanted(compiled) else None

    def available(self) -> bool:
        """Load the module now; False where it does not load."""
        return self.get() is not None
