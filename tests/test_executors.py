"""The executor contract: results per unit, completion markers, resume after an interruption."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datacomp.errors import ConfigError
from datacomp.executors import Unit, run_units


def square_and_log(x: int, log_path: str) -> dict:
    with open(log_path, "a") as f:
        f.write(f"{x}\n")
    if x < 0:
        raise RuntimeError("boom")
    return {"value": x * x}


@pytest.mark.parametrize("workers,executor", [(1, "local"), (2, "local"), (2, "threads")])
def test_results_in_unit_order(tmp_path, workers, executor):
    log = tmp_path / "calls.txt"
    units = [Unit(f"u{i}", (i, str(log))) for i in range(5)]
    res = run_units(square_and_log, units, tmp_path / "out", workers=workers, executor=executor)
    assert list(res) == [f"u{i}" for i in range(5)]
    assert [r["value"] for r in res.values()] == [0, 1, 4, 9, 16]


def test_resume_runs_only_unfinished_units(tmp_path):
    log = tmp_path / "calls.txt"
    units = [Unit(f"u{i}", (i, str(log))) for i in range(3)] + [Unit("bad", (-1, str(log)))]
    with pytest.raises(RuntimeError, match="boom"):
        run_units(square_and_log, units, tmp_path / "out", workers=1)
    assert log.read_text().split() == ["0", "1", "2", "-1"]
    fixed = units[:3] + [Unit("bad", (7, str(log)))]
    res = run_units(square_and_log, fixed, tmp_path / "out", workers=1)
    assert log.read_text().split() == ["0", "1", "2", "-1", "7"]  # finished units were not re-run
    assert res["bad"] == {"value": 49}
    assert json.loads((tmp_path / "out/.done/u1.json").read_text()) == {"value": 1}


def test_unknown_executor(tmp_path):
    with pytest.raises(ConfigError, match="unknown executor"):
        run_units(square_and_log, [Unit("a", (1, str(tmp_path / "l")))], None, executor="spark")
