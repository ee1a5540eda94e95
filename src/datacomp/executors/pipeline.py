"""Two passes of units in one pool of workers: a unit of the second pass starts as soon as the
first-pass results it depends on are in, ahead of the first pass's remaining units.

The second pass's units are not known up front (their arguments come from first-pass results,
e.g. a reshard's output shards from the scans of the input shards before them): ``follow`` is
called with the first-pass results so far, once before anything runs and again after every
first-pass unit, and returns the second-pass units that have become ready (each exactly once,
in order). Markers are ``run_units``'s: each pass has its marker directory, finished units are
skipped and their stored results returned, so a re-run (or a later ``run_units`` of the same
units) finds them done.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError
from ..formats.manifest import mark_done, read_marker
from ..progress import progress
from .unit import Unit

Results = dict[str, dict[str, Any]]


@dataclass
class Pass:
    """One pass: ``fn(*unit.args) -> dict`` over units, markers in ``marker_dir``."""

    fn: Callable[..., dict[str, Any]]
    marker_dir: str | Path
    units: list[Unit] = field(default_factory=list)  # the second pass's come from ``follow``


@dataclass
class PipelineResult:
    first: Results
    second: Results
    first_done_at: float  # time.time() when the last first-pass unit finished (or none was left)


def _pool(executor: str, workers: int) -> Executor:
    if executor == "threads":
        return ThreadPoolExecutor(max_workers=workers)
    if executor == "local":
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    raise ConfigError(f"executor '{executor}' has no pipelined mode (choose local or threads)")


def run_pipelined(first: Pass, second: Pass, follow: Callable[[Results], Iterable[Unit]], workers: int,
                  executor: str = "threads", desc: str = "units", unit_label: str = "rows") -> PipelineResult:
    """Run ``first.units`` and the second-pass units ``follow`` releases in ``workers`` workers;
    second-pass units go first whenever one is ready. The progress bar counts the first pass."""
    done1: Results = {}
    todo: deque[Unit] = deque()
    for u in first.units:
        res = read_marker(first.marker_dir, u.name)
        if res is not None:
            done1[u.name] = res
        else:
            todo.append(u)
    done2: Results = {}
    ready: deque[Unit] = deque()

    def release() -> None:
        for u in follow(done1):
            res = read_marker(second.marker_dir, u.name)
            if res is not None:
                done2[u.name] = res
            else:
                ready.append(u)

    release()
    first_done_at = time.time()
    in_flight: dict = {}
    with progress(total=sum(u.weight for u in todo), desc=desc, unit=unit_label) as bar, \
            _pool(executor, max(1, workers)) as pool:
        try:
            while todo or ready or in_flight:
                while len(in_flight) < max(1, workers) and (ready or todo):
                    p, u = (second, ready.popleft()) if ready else (first, todo.popleft())
                    in_flight[pool.submit(p.fn, *u.args)] = (p, u)
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p, u = in_flight.pop(fut)
                    res = fut.result()
                    mark_done(p.marker_dir, u.name, res)
                    if p is first:
                        done1[u.name] = res
                        bar.update(u.weight)
                        if not todo and all(q is second for q, _ in in_flight.values()):
                            first_done_at = time.time()
                        release()
                    else:
                        done2[u.name] = res
        finally:
            for fut in in_flight:
                fut.cancel()
    return PipelineResult(first={u.name: done1[u.name] for u in first.units}, second=done2, first_done_at=first_done_at)
