"""Progress on every loop a user waits for.

On a terminal (stderr is a TTY): a tqdm bar with rates. Off a terminal (Slurm logs, ``tee``, CI):
one line every ``DATACOMP_PROGRESS_INTERVAL`` seconds (default 30) on stderr,
``reshard: 12,000/40,000 samples (30.0%), 410/s, ETA 0:01:08``, and a last ``done`` line if any
was printed; a loop shorter than the interval prints nothing. ``DATACOMP_PROGRESS=0`` silences
both, ``DATACOMP_PROGRESS=1`` forces the bar.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0


def hms(sec: float) -> str:
    """Seconds as H:MM:SS ("?" when not finite): the ETA and elapsed format of every progress line."""
    if sec != sec or sec in (float("inf"), float("-inf")):
        return "?"
    sec = int(round(sec))
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


class LineProgress:
    """tqdm's ``update`` / ``close`` / context-manager interface, as periodic one-line messages."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.n = 0
        self.start = self.last = clock()
        self.printed = False

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {self.unit}"
        if done:
            text = f"{self.desc}: done, {count} in {hms(elapsed)} ({rate:,.1f}/s)"
        else:
            pct = f" ({100 * self.n / self.total:.1f}%)" if self.total else ""
            eta = f", ETA {hms((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
            text = f"{self.desc}: {count}{pct}, {rate:,.1f}/s{eta}"
        print(text, file=self.stream, flush=True)
        self.printed = True

    def close(self) -> None:
        if self.printed:
            self._line(self.clock(), done=True)
            self.printed = False

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", **kw: Any) -> tqdm | LineProgress:
    force = os.environ.get("DATACOMP_PROGRESS")
    tty = sys.stderr.isatty()
    if force == "1" or (force is None and tty):
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, mininterval=0.5, **kw)
    if force == "0":
        return tqdm(total=total, disable=True)
    interval = float(os.environ.get("DATACOMP_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    return LineProgress(total, desc, unit, interval)
