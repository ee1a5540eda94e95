"""The executor contract: map ``fn(unit.args) -> dict`` over units, skipping finished ones.

Each unit's result (a small JSON-able dict) is stored as its completion marker in
``marker_dir/.done/<name>.json``; a re-run returns stored results for finished units and runs
only the others. ``fn`` must write its outputs atomically before returning, so a kill leaves no
marker and no half-written file for the interrupted unit.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from ..errors import ConfigError
from ..formats.manifest import mark_done, read_marker
from ..progress import progress
from .unit import Unit

log = logging.getLogger(__name__)


def run_units(
    fn: Callable[..., dict[str, Any]],
    units: list[Unit],
    marker_dir: str | os.PathLike | None,
    workers: int = 1,
    executor: str = "local",
    desc: str = "units",
    unit_label: str = "rows",
    gpus_per_unit: float = 0,
) -> dict[str, dict[str, Any]]:
    """Run ``fn(*unit.args)`` for every unit; return {unit name: result dict}.

    ``gpus_per_unit`` > 0 (Ray only) reserves that many GPUs for each unit's task."""
    if gpus_per_unit and executor != "ray":
        raise ConfigError(f"gpus per unit need the ray executor, not '{executor}'")
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError("unit names must be unique")
    results: dict[str, dict[str, Any]] = {}
    todo: list[Unit] = []
    for u in units:
        done = read_marker(marker_dir, u.name) if marker_dir is not None else None
        if done is not None:
            results[u.name] = done
        else:
            todo.append(u)
    if results:
        log.info("%s: %d of %d units already done, skipping them", desc, len(results), len(units))
    if not todo:
        return {n: results[n] for n in names}
    t0 = time.time()
    if executor == "local":
        from .local import map_local

        stream = map_local(fn, todo, workers)
    elif executor == "threads":
        from .local import map_threads

        stream = map_threads(fn, todo, workers)
    elif executor == "ray":
        from .ray_executor import map_ray

        stream = map_ray(fn, todo, workers, num_gpus=gpus_per_unit)
    else:
        raise ConfigError(f"unknown executor '{executor}' (choose local, threads or ray)")
    with progress(total=sum(u.weight for u in todo), desc=desc, unit=unit_label) as bar:
        for unit, res in stream:
            if marker_dir is not None:
                mark_done(marker_dir, unit.name, res)
            results[unit.name] = res
            bar.update(unit.weight)
    log.info("%s: %d units in %.1fs", desc, len(todo), time.time() - t0)
    return {n: results[n] for n in names}
