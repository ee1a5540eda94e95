"""executors.run_pipelined: second-pass units released by first-pass results, markers, resume."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from datacomp.errors import ConfigError
from datacomp.executors import Pass, Unit, run_pipelined, run_units

ORDER: list[str] = []
LOCK = threading.Lock()


def _first(i: int) -> dict:
    with LOCK:
        ORDER.append(f"s{i}")
    return {"n": i}


def _second(a: int, b: int) -> dict:
    with LOCK:
        ORDER.append(f"p{a}{b}")
    return {"sum": a + b}


class Pairs:
    """A second-pass unit per pair of consecutive first-pass units, once both are done."""

    def __init__(self, n: int):
        self.n, self.next = n, 0

    def __call__(self, done: dict) -> list[Unit]:
        out = []
        while self.next + 1 < self.n and f"{self.next}" in done and f"{self.next + 1}" in done:
            a, b = done[f"{self.next}"]["n"], done[f"{self.next + 1}"]["n"]
            out.append(Unit(f"pair{self.next}", (a, b)))
            self.next += 2
        return out


def test_pipelined_passes_and_markers(tmp_path: Path):
    ORDER.clear()
    units = [Unit(f"{i}", (i,)) for i in range(6)]
    res = run_pipelined(Pass(_first, tmp_path / "a", units), Pass(_second, tmp_path / "b"), Pairs(6), workers=1)
    assert res.first == {f"{i}": {"n": i} for i in range(6)}
    assert res.second == {"pair0": {"sum": 1}, "pair2": {"sum": 5}, "pair4": {"sum": 9}}
    # with one worker, each pair runs as soon as it is ready, ahead of the remaining first units
    assert ORDER == ["s0", "s1", "p01", "s2", "s3", "p23", "s4", "s5", "p45"]
    # the markers are run_units's: nothing runs again, through either function
    ORDER.clear()
    again = run_pipelined(Pass(_first, tmp_path / "a", units), Pass(_second, tmp_path / "b"), Pairs(6), workers=2)
    assert ORDER == [] and again.second == res.second
    assert run_units(_first, units, tmp_path / "a") == res.first and ORDER == []


def test_a_failure_keeps_the_finished_units(tmp_path: Path):
    units = [Unit(f"{i}", (i,)) for i in range(4)]
    calls = []

    def flaky(a: int, b: int) -> dict:
        calls.append(a)
        if a == 2 and len(calls) < 3:
            raise RuntimeError("disk full")
        return {"sum": a + b}

    with pytest.raises(RuntimeError):
        run_pipelined(Pass(_first, tmp_path / "a", units), Pass(flaky, tmp_path / "b"), Pairs(4), workers=1)
    res = run_pipelined(Pass(_first, tmp_path / "a", units), Pass(flaky, tmp_path / "b"), Pairs(4), workers=1)
    assert res.second == {"pair0": {"sum": 1}, "pair2": {"sum": 5}} and calls == [0, 2, 2]
    with pytest.raises(ConfigError, match="no pipelined mode"):
        run_pipelined(Pass(_first, tmp_path / "c", units), Pass(_second, tmp_path / "d"), Pairs(4), 1, executor="ray")
