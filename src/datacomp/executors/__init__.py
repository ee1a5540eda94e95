"""Run a per-unit function over many units (shards) with completion markers.

Stages never import multiprocessing or ray themselves: they call :func:`run_units`.
"""
from __future__ import annotations

from .base import Unit, run_units

__all__ = ["Unit", "run_units"]
