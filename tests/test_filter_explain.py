"""`datacomp filter --explain N`: N dropped rows per deciding rule with the values that decided,
printed and written to SUBSET.explain.parquet (the report's sample grids use the same reasons)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

import report_world as rw
from datacomp.cli import main


def test_explain_names_the_deciding_rule_and_value(tmp_path: Path, capsys):
    wd = rw.make_world(tmp_path / "w", recipes={"no_filter": rw.RECIPES["no_filter"]})
    out = tmp_path / "sub" / "basic.npy"
    assert main(["filter", "--pool", str(wd / "pool"), "--recipe", "basic_filter", "--out", str(out),
                 "--workers", "1", "--explain", "3"]) == 0
    printed = capsys.readouterr().out
    table = pq.read_table(out.with_suffix(".explain.parquet")).to_pylist()
    uids = rw.uids(0)
    expected = {}
    for rule, value in (("language == en", "es"), ("image_min_side >= 200", 150)):
        rows = sorted((i for i in range(rw.N) if (rw.basic_filter_reason(i) or "").startswith(rule)),
                      key=uids.__getitem__)[:3]
        expected[rule] = [uids[i] for i in rows]
        got = [r for r in table if r["rule"] == rule]
        assert [r["uid"] for r in got] == expected[rule]
        col = "language" if rule.startswith("language") else "image_min_side"
        assert all(r[col] == value and r["reason"] == rw.basic_filter_reason(int(r["row"])) for r in got)
        assert f"dropped by {rule}:" in printed
    assert len(table) == 6 and {"caption_words", "caption_chars", "image_aspect", "text"} <= set(table[0])
    assert f"wrote {out.with_suffix('.explain.parquet')} (6 rows" in printed
