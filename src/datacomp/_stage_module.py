"""Stage packages that are also their stage function: ``datacomp.reshard(pool, subset, out)``.

``datacomp.reshard``, ``datacomp.embed``, ``datacomp.train``, ``datacomp.evaluate``,
``datacomp.report`` and ``datacomp.run`` are modules (the import system binds a package's
submodules as its attributes, so a function of the same name could not stay there); each gives
its module this class, whose call is the stage function. Everything else about the module is
unchanged (``from datacomp.reshard import resharder`` and ``datacomp.reshard.reshard`` work as
before); ``inspect.signature(datacomp.reshard)`` shows the function's signature.
"""
from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any


def make_callable(module_name: str, function: str, where: str | None = None) -> None:
    """Calling module ``module_name`` calls its ``function`` (or ``where``'s: a submodule path
    relative to it, imported on the first call)."""
    mod = sys.modules[module_name]

    def target() -> Any:
        owner = import_module(where, module_name) if where else mod
        return getattr(owner, function)

    class StageModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return target()(*args, **kwargs)

        @property
        def __wrapped__(self) -> Any:  # inspect.signature / help() follow it to the function
            return target()

    StageModule.__qualname__ = StageModule.__name__ = f"StageModule[{module_name}]"
    mod.__class__ = StageModule
