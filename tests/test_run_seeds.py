"""`datacomp run` over several seeds: one world per seed, the layout, the seed tables.

The per-world loop (``run._run_world``, exercised end to end by tests/test_end_to_end.py) is
replaced by a stand-in that writes nothing but records where it was asked to work, so these run
in a second.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from datacomp import run as run_mod
from datacomp.cli import main


def _fake_world(calls: list):
    def fake(scale, workdir, recipes, seed, workers, jobs=1):
        calls.append((Path(workdir), seed))
        rows = [{"recipe": r, "dataset_size": 100 + 10 * seed + i, "resharded": 100 + 10 * seed + i,
                 "synth/concepts": 0.1 * (seed + 1), "average": 0.2 + 0.01 * seed + i / 10}
                for i, r in enumerate(recipes)]
        return rows, {"synth": 1.0, "total": 2.0}
    return fake


def test_several_seeds_one_world_each(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(run_mod, "_run_world", _fake_world(calls))
    wd = tmp_path / "w"
    assert main(["run", "--scale", "synth_test", "--workdir", str(wd), "--recipes", "no_filter,oracle",
                 "--seeds", "2,0,1"]) == 0
    assert calls == [(wd / "seed-2", 2), (wd / "seed-0", 0), (wd / "seed-1", 1)]
    out = capsys.readouterr().out
    assert "0.210 ± 0.010" in out and "results_per_seed.csv" in out
    table = list(csv.DictReader((wd / "results.csv").open()))
    assert [r["recipe"] for r in table] == ["no_filter", "oracle"]
    assert table[0]["seeds"] == "3" and float(table[0]["average"]) == pytest.approx(0.21)
    assert float(table[0]["average_std"]) == pytest.approx(0.01) and float(table[1]["dataset_size"]) == pytest.approx(111)
    per = list(csv.DictReader((wd / "results_per_seed.csv").open()))
    assert [(r["seed"], r["recipe"]) for r in per] == [(s, r) for s in "201" for r in ("no_filter", "oracle")]
    assert "± " in (wd / "results.md").read_text()
    # every seed directory is a complete one-seed work directory with its own tables
    for s in (0, 1, 2):
        own = list(csv.DictReader((wd / f"seed-{s}" / "results.csv").open()))
        assert own[0]["seeds"] == "1" and int(own[0]["dataset_size"]) == 100 + 10 * s
        assert json.loads((wd / f"seed-{s}" / "run.json").read_text())["seed"] == s
    meta = json.loads((wd / "run.json").read_text())
    assert meta["seeds"] == [2, 0, 1] and set(meta["per_seed"]) == {"0", "1", "2"} and "total" in meta["timings"]


def test_one_seed_keeps_the_flat_layout(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(run_mod, "_run_world", _fake_world(calls))
    wd = tmp_path / "w"
    rows = run_mod.run_loop("synth_test", wd, ["no_filter"], seed=3)
    assert calls == [(wd, 3)]
    assert rows == [{"recipe": "no_filter", "seeds": 1, "dataset_size": 130, "resharded": 130,
                     "synth/concepts": pytest.approx(0.4), "average": pytest.approx(0.23)}]
    assert not (wd / "results_per_seed.csv").exists() and not list(wd.glob("seed-*"))
    assert json.loads((wd / "run.json").read_text())["seed"] == 3
    assert (wd / "results.md").read_text().splitlines()[0].startswith("| recipe | seeds | size |")
    assert main(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "v"), "--recipes", "no_filter",
                 "--seeds", "5"]) == 0
    assert calls[-1] == (tmp_path / "v", 5)
    assert main(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "u"), "--recipes", "no_filter"]) == 0
    assert calls[-1] == (tmp_path / "u", 0)
