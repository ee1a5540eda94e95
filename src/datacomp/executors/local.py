"""Local executor: a process pool on this machine (or in-process for one worker)."""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator

from .base import Unit


def map_local(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Yield (unit, result) as units finish. Exceptions propagate to the caller."""
    workers = max(1, min(workers, len(units)))
    if workers == 1:
        for u in units:
            yield u, fn(*u.args)
        return
    ctx = mp.get_context("spawn")  # fork is unsafe with torch / threads already running
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
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


def map_threads(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Threads instead of processes: for I/O-bound units (tar copying) that release the GIL and
    would otherwise pay a process start each. Same contract as :func:`map_local`."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(workers, len(units)))
    if workers == 1:
        for u in units:
            yield u, fn(*u.args)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
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
