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


def test_download_reports_each_shard_as_it_lands(tmp_path, caplog):
    """img2dataset's per-shard stats are surfaced while it runs, not only in its log file."""
    import logging
    import subprocess
    import sys

    from datacomp.pool.download import wait_reporting_shards

    (tmp_path / "00000000_stats.json").write_text('{"count": 5, "successes": 5}')  # from an earlier run
    script = ("import json, time, pathlib\n"
              f"d = pathlib.Path({str(tmp_path)!r})\n"
              "for i, ok in ((1, 9), (2, 7)):\n"
              "    time.sleep(0.3)\n"
              "    (d / f'{i:08d}_stats.json').write_text(json.dumps({'count': 10, 'successes': ok}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    with caplog.at_level(logging.INFO, logger="datacomp.pool.download"):
        rc = wait_reporting_shards(proc, tmp_path, total=3, poll=0.1)
    assert rc == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "datacomp.pool.download"]
    assert lines == ["download: shard 00000001 done: 9 of 10 images fetched",
                     "download: shard 00000002 done: 7 of 10 images fetched"]
