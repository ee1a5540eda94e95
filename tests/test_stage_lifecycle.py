"""The one stage lifecycle (formats.stage.StageOutput): reuse, resume, the conflict rule, --overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datacomp.errors import StageConflictError
from datacomp.formats.guard import file_records
from datacomp.formats.manifest import Manifest, mark_done, read_marker
from datacomp.formats.stage import PENDING_NAME, StageOutput, describe_diff


def _run(out: Path, params: dict, overwrite: bool = False, **kw) -> Manifest:
    """A toy stage: one unit writing data.txt from the params, through the lifecycle."""
    life = StageOutput("toy", out, params, overwrite=overwrite, owned=["data.txt"], **kw)
    done = life.begin()
    if done is not None:
        return done
    if read_marker(out, "u0") is None:
        (out / "data.txt").write_text(json.dumps(params))
        mark_done(out, "u0", {"n": 1})
    return life.finish(Manifest(stage="toy", params=params, extra={"files": file_records(out, ["data.txt"])}))


def test_diff_names_keys():
    assert describe_diff({"seed": 0, "w": {"c": 3}}, {"seed": 1, "w": {"c": 3}}) == "seed 0 -> 1"
    assert "and 1 more" in describe_diff({"a": 1, "b": 1, "c": 1, "d": 1}, {"a": 2, "b": 2, "c": 2, "d": 2})


def test_reuse_refuse_overwrite(tmp_path: Path):
    out = tmp_path / "o"
    m = _run(out, {"seed": 0})
    assert not m.reused and not (out / PENDING_NAME).exists()
    again = _run(out, {"seed": 0})
    assert again.reused and again["params"] == {"seed": 0}
    with pytest.raises(StageConflictError) as e:
        _run(out, {"seed": 1})
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "finished" in msg and "seed 0 -> 1" in msg
    assert json.loads((out / "data.txt").read_text()) == {"seed": 0}  # refused: nothing touched
    m2 = _run(out, {"seed": 1}, overwrite=True)
    assert not m2.reused and json.loads((out / "data.txt").read_text()) == {"seed": 1}


def test_unfinished_resume_and_refuse(tmp_path: Path):
    out = tmp_path / "o"
    life = StageOutput("toy", out, {"seed": 0})
    assert life.begin() is None  # a run that dies after its pending file and one marker
    mark_done(out, "u0", {"n": 1})
    (out / "data.txt").write_text("partial")
    with pytest.raises(StageConflictError, match="unfinished 'toy' output made with other parameters .seed 0 -> 2"):
        _run(out, {"seed": 2})
    _run(out, {"seed": 0})  # same params: resumed, the finished unit is kept
    assert (out / "data.txt").read_text() == "partial"
    out2 = tmp_path / "o2"
    StageOutput("toy", out2, {"seed": 0}).begin()
    mark_done(out2, "u0", {"n": 1})
    _run(out2, {"seed": 3}, overwrite=True)  # overwrite: markers cleared, the unit runs again
    assert json.loads((out2 / "data.txt").read_text()) == {"seed": 3}


def test_damaged_output_is_redone(tmp_path: Path, caplog):
    out = tmp_path / "o"
    _run(out, {"seed": 0})
    (out / "data.txt").write_text("x")
    m = _run(out, {"seed": 0})
    assert not m.reused and "not reusing" in caplog.text
    assert json.loads((out / "data.txt").read_text()) == {"seed": 0}


def test_exclusive_and_other_stage(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stray.bin").write_bytes(b"x")
    with pytest.raises(StageConflictError, match="not a 'toy' output .e.g. stray.bin"):
        StageOutput("toy", out, {}, exclusive=True).begin()
    StageOutput("toy", out, {}, exclusive=True, overwrite=True).begin()
    assert not (out / "stray.bin").exists()
    other = tmp_path / "p"
    _run(other, {"seed": 0})
    with pytest.raises(StageConflictError, match="made by stage 'toy'"):
        StageOutput("other", other, {"seed": 0}).begin()


def test_aside_keeps_the_old_output_until_finish(tmp_path: Path):
    out = tmp_path / "o"
    _run(out, {"seed": 0}, replace="aside")
    life = StageOutput("toy", out, {"seed": 1}, overwrite=True, replace="aside")
    assert life.begin() is None and (out / "manifest.json").is_file()  # killed here: the old output stands
    assert _run(out, {"seed": 0}, replace="aside").reused
