"""Local executors: a process pool (CPU-bound units) or a thread pool (I/O-bound units that
release the GIL), or in-process for one worker."""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

from .unit import Unit


def _drain(pool: Executor, fn: Callable[..., dict[str, Any]], units: list[Unit]) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Submit every unit, yield (unit, result) as they finish; exceptions propagate."""
    with pool:
        pending = {pool.submit(fn, *u.args): u for u in units}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    u = pending.pop(fut)
                    yield u, fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def _serial(fn: Callable[..., dict[str, Any]], units: list[Unit]) -> Iterator[tuple[Unit, dict[str, Any]]]:
    for u in units:
        yield u, fn(*u.args)


def map_local(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Worker processes (spawned: fork is unsafe with torch / threads already running)."""
    workers = max(1, min(workers, len(units)))
    if workers == 1:
        return _serial(fn, units)
    return _drain(ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")), fn, units)


def map_threads(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Threads: for I/O-bound units (tar copying) that would otherwise pay a process start each."""
    workers = max(1, min(workers, len(units)))
    if workers == 1:
        return _serial(fn, units)
    return _drain(ThreadPoolExecutor(max_workers=workers), fn, units)
