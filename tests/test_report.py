"""Results tables: Markdown, CSV, terminal."""
from __future__ import annotations

import csv

from datacomp.report import format_table, table_columns, write_results_table

ROWS = [
    {"recipe": "no_filter", "dataset_size": 2400, "synth/retrieval": 0.05, "synth/concepts": 0.1234,
     "synth/count": 0.5, "average": 0.22446},
    {"recipe": "clip_score|l14", "dataset_size": 720, "synth/concepts": 0.5, "synth/count": None,
     "average": None},
]


def test_columns_in_registry_order():
    cols = table_columns(ROWS)
    assert cols == ["recipe", "dataset_size", "synth/concepts", "synth/count", "synth/retrieval", "average"]


def test_write_results_table(tmp_path):
    md, cv = write_results_table(ROWS, tmp_path / "out")
    assert md == tmp_path / "out" / "results.md" and cv == tmp_path / "out" / "results.csv"
    lines = md.read_text().splitlines()
    assert lines[0] == "| recipe | size | concepts | count | retrieval | average |"
    assert lines[1].startswith("|---|")
    assert lines[2] == "| no_filter | 2,400 | 0.123 | 0.500 | 0.050 | 0.224 |"
    assert lines[3] == "| clip_score\\|l14 | 720 | 0.500 | - | - | - |"
    with open(cv) as f:
        got = list(csv.DictReader(f))
    assert got[0]["synth/concepts"] == "0.1234" and got[0]["dataset_size"] == "2400"
    assert got[1]["average"] == "" and got[1]["recipe"] == "clip_score|l14"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_format_table_terminal():
    text = format_table(ROWS)
    lines = text.splitlines()
    assert lines[0].split() == ["recipe", "size", "concepts", "count", "retrieval", "average"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "0.123" in lines[2] and "-" in lines[3]
    assert format_table([{"recipe": "x", "average": None}]).splitlines()[2].split() == ["x", "-"]
