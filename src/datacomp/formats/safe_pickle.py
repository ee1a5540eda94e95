"""Unpickling data without running code from it: the one allowlist unpickler.

A pickle can name any importable global and call it while loading. :class:`AllowlistUnpickler`
answers ``find_class`` only from the mapping its caller gives — ``(module, name)`` -> the object to
build with, or ``None`` for the real global — and refuses every other name with
:class:`RefusedGlobal` before anything is constructed; persistent references (torch storages) are
refused too. The centroid / target readers (:mod:`.tensorfile`) and the reference's ``info.pkl``
reader (:mod:`.info_pkl`) are its two allowlists.
"""
from __future__ import annotations

import pickle
from typing import Any, Mapping


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names a global outside the reader's allowlist (``name``: its dotted name)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"global {name}")
        self.name = name


class AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, allowed: Mapping[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise RefusedGlobal(f"{module}.{name}")
        target = self.allowed[(module, name)]
        return super().find_class(module, name) if target is None else target

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent reference (a torch storage) outside torch's container")
