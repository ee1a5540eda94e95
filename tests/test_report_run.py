"""`datacomp run` ends with the report: two calls with different recipes into one work directory
give one page with both, and rebuilding it on unchanged inputs gives the same bytes (slow: two
real loops at the smallest embedded scale on the session's shared world)."""
from __future__ import annotations

from pathlib import Path

import pytest

from datacomp.report.build import build_report
from datacomp.run import run_seeds
from conftest import seed_workdir
from test_report_page import Page

pytestmark = pytest.mark.slow


def test_two_runs_one_report(tmp_path: Path, capsys, synth_test_pool):
    wd = tmp_path / "w"
    seed_workdir(synth_test_pool, wd)  # the session's world; both runs train and evaluate here
    first = run_seeds("synth_test", wd, ["no_filter"], [0])
    assert first.paths["report"] == wd / "report" / "index.html"
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"report: {wd / 'report' / 'index.html'}"
    run_seeds("synth_test", wd, ["oracle"], [0], echo=False)
    index = wd / "report" / "index.html"
    page = Page(index.read_text())
    assert [r["recipe"] for r in page.table("Results")] == ["no_filter", "oracle", "chance"]
    assert {"no_filter: kept", "oracle: kept", "oracle: dropped"} <= set(page.headings)
    assert any(h.startswith("Ground truth") for h in page.headings)
    before = {p: p.read_bytes() for p in (wd / "report").rglob("*") if p.is_file()}
    rep = build_report([wd], wd / "report")
    after = {p: p.read_bytes() for p in (wd / "report").rglob("*") if p.is_file()}
    assert after == before and rep.notes == []
