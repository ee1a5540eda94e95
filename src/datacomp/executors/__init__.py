"""Run a per-unit function over many units (shards) with completion markers.

Stages never import multiprocessing or ray themselves: they call :func:`run_units`, or
:func:`run_pipelined` for two passes whose second starts while the first still runs.
"""
from __future__ import annotations

from .base import Unit, run_units
from .pipeline import Pass, PipelineResult, run_pipelined

__all__ = ["Pass", "PipelineResult", "Unit", "run_pipelined", "run_units"]
