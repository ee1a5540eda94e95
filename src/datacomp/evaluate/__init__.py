"""Downstream evaluation: task registry, wds eval sets, zero-shot classification, retrieval,
aggregation into suite scores (DATACOMP.md §5).

Public API: ``evaluate``, ``aggregate``, ``check_evalsets``, ``open_evalset``, ``load_tasks``,
``get_task``, ``load_model``, ``download_evalsets``, ``format_check``. Torch-using parts are imported on first use, so
``datacomp.evaluate.registry`` (``datacomp info tasks``) stays light.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .aggregate import aggregate
from .registry import get_task, load_tasks

_LAZY = {
    "evaluate": "runner",
    "check_evalsets": "evalsets",
    "open_evalset": "evalsets",
    "load_model": "model",
    "download_evalsets": "download",
    "format_check": "evalsets",
}

__all__ = ["aggregate", "check_evalsets", "download_evalsets", "evaluate", "format_check", "get_task",
           "load_model", "load_tasks", "open_evalset"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

from .._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'evaluate')  # datacomp.evaluate(...) calls evaluate
