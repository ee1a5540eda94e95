"""Progress off a terminal: periodic one-line messages with done/total, rate and ETA."""
from __future__ import annotations

import io

from tqdm import tqdm

from datacomp import progress as prog


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_interval_then_done():
    clock, out = Clock(), io.StringIO()
    with prog.LineProgress(1000, "reshard", "samples", interval=30, stream=out, clock=clock) as p:
        clock.t += 10
        p.update(100)  # before the first interval: nothing
        clock.t += 20
        p.update(200)  # 300 done in 30 s
        clock.t += 5
        p.update(100)  # 5 s after the last line: nothing
        clock.t += 25
        p.update(100)  # 500 in 60 s
    assert out.getvalue().splitlines() == [
        "reshard: 300/1,000 samples (30.0%), 10.0/s, ETA 0:01:10",
        "reshard: 500/1,000 samples (50.0%), 8.3/s, ETA 0:01:00",
        "reshard: done, 500/1,000 samples in 0:01:00 (8.3/s)",
    ]


def test_a_short_loop_prints_nothing():
    clock, out = Clock(), io.StringIO()
    with prog.LineProgress(10, "filter", "rows", interval=30, stream=out, clock=clock) as p:
        clock.t += 3
        p.update(10)
    assert out.getvalue() == ""


def test_choice_of_display(monkeypatch):
    monkeypatch.delenv("DATACOMP_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    monkeypatch.setenv("DATACOMP_PROGRESS_INTERVAL", "5")
    p = prog.progress(total=3, desc="x")
    assert isinstance(p, prog.LineProgress) and p.interval == 5
    monkeypatch.setenv("DATACOMP_PROGRESS", "1")
    bar = prog.progress(total=3, desc="x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setenv("DATACOMP_PROGRESS", "0")
    quiet = prog.progress(total=3, desc="x")
    assert isinstance(quiet, tqdm) and quiet.disable
