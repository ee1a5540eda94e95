"""``train --overwrite`` trains beside the old run and swaps it in (issue 16), and the bound on
unreadable training data (:mod:`datacomp.train.corrupt`).

A finished run directory of the train lifecycle stands for the old run; an overwrite on data
30 % unreadable (never two bad members in a row) fails on the corrupt-fraction limit and leaves
it byte-identical and reusable; a second overwrite (a real open_clip run) succeeds and every
file that records a path names the final run directory.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from datacomp.config import Scale, load_scale
from datacomp.errors import FormatError, StageConflictError
from datacomp.formats.manifest import Manifest, read_manifest
from datacomp.formats.shards import ShardWriter, sample_key
from datacomp.train import train
from datacomp.train.corrupt import MARKER, CorruptDataError, CorruptGuard
from datacomp.train.toydata import write_toy_shards

from hostile_world import changed, jpeg, snapshot


def _scale(samples: int) -> Scale:
    s = load_scale("synth_test")
    return Scale(**{**s.__dict__, "name": "tiny", "samples_seen": samples, "batch_size": 32, "warmup": 1,
                    "teachers": {}})


def _garbage_shards(d: Path, shards: int = 2, per_shard: int = 100) -> Path:
    """Members i % 10 in {0, 3, 6} have image bytes that do not decode: 30 %, never two in a row."""
    rng = np.random.default_rng(0)
    for s in range(shards):
        with ShardWriter(d / f"{s:08d}.tar") as w:
            for i in range(per_shard):
                img = rng.bytes(300) if i % 10 in (0, 3, 6) else jpeg(i)
                w.write(sample_key(s, i), {"jpg": img, "txt": f"a red star number {i}".encode(),
                                           "json": json.dumps({"uid": f"{s * per_shard + i + 1:032x}"}).encode()})
    return d


def _old_run(run: Path) -> dict:
    """A finished run directory of the train lifecycle (its manifest last), without a trainer:
    what an overwrite must leave byte for byte."""
    from datacomp.train.rundir import run_output

    params = {"scale": {"name": "old"}, "seed": 0}
    life = run_output(run, params)
    assert life.begin() is None
    for name, data in {"checkpoints/epoch_latest.pt": b"old weights", "model/open_clip_config.json": b"{}",
                       "info.json": json.dumps({"checkpoint": str(run / "checkpoints/epoch_latest.pt")}).encode(),
                       "params.txt": f"name: run\nlogs: {run.parent}\n".encode()}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    life.finish(Manifest(stage="train", params=params))
    return params


def test_overwrite_trains_beside_and_swaps_in(tmp_path: Path):
    import torch

    from datacomp.train.rundir import run_output

    clean, run = tmp_path / "clean", tmp_path / "run"
    write_toy_shards(clean, n_shards=2, per_shard=32)
    bad = _garbage_shards(tmp_path / "bad")
    old_params = _old_run(run)
    before = snapshot(run)

    # a failing overwrite: the trainer stops on the corrupt fraction, in one line naming shards and counts
    with pytest.raises(FormatError) as e:
        train(_scale(6400), bad, run, seed=1, workers=0, overwrite=True)
    msg = str(e.value)
    assert "\n" not in msg and str(bad / "00000000.tar") in msg and f"previous run in {run} is unchanged" in msg
    m = re.search(r"(\d+) of (\d+) training members read are unreadable \(([\d.]+)% > max-corrupt-fraction 0.1\)", msg)
    assert m, msg
    n_bad, n_read = int(m.group(1)), int(m.group(2))
    assert 500 <= n_read < 1000 and 0.2 < n_bad / n_read < 0.4
    log = tmp_path / ".run.swap-new" / "stdout.log"  # kept for reading until the next run drops it
    assert log.stat().st_size < 200_000 and log.read_text().count("Ignoring") <= 25  # logs bounded
    assert snapshot(run) == before  # nothing changed, nothing added

    # the old run is reusable as it was (train's lifecycle reuses it); that drops the failed overwrite's sibling
    again = run_output(run, old_params).begin()
    assert again is not None and again.reused and again.params == old_params
    assert not list(tmp_path.glob(".run.swap-*")) and snapshot(run) == before

    # a successful overwrite replaces it; what records a path names the final run directory
    new = train(_scale(64), clean, run, seed=1, workers=0, overwrite=True)
    assert read_manifest(run).params["seed"] == 1 and new.params["seed"] == 1
    assert not list(tmp_path.glob(".run.swap-*")) and not (run / ".lock").exists()
    for f in ("train_args.json", "info.json", "info.pkl", "manifest.json", "params.txt", "out.log", "stdout.log"):
        assert b"swap-" not in (run / f).read_bytes(), f
    ckpt = run / "checkpoints" / "epoch_latest.pt"
    info = json.loads((run / "info.json").read_text())
    assert info["checkpoint"] == str(ckpt) and info["model_dir"] == str(run / "model")
    assert pickle.loads((run / "info.pkl").read_bytes())["checkpoint"] == str(ckpt)
    assert new.extra["checkpoint"] == str(ckpt) and new.extra["model_dir"] == str(run / "model")
    params = dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())
    assert params["name"] == "run" and params["logs"] == str(tmp_path) and params["seed"] == "1"
    assert params["model"] == f"local-dir:{run / 'model'}"
    assert torch.load(ckpt, weights_only=True)["name"] == "run"
    assert f"--name run " in (run / "stdout.log").read_text()


def test_the_run_directory_lock_is_held_across_the_swap(tmp_path: Path):
    """A lock on the run directory taken before an overwrite still holds on the swapped-in directory."""
    from datacomp.executors.children import dir_lock
    from datacomp.train.rundir import run_output

    run = tmp_path / "run"
    with dir_lock(run, "train"):
        life = run_output(run, {"seed": 0})
        assert life.begin() is None
        (life.dir / "weights").write_bytes(b"old")
        life.finish(Manifest(stage="train", params={"seed": 0}))
    with dir_lock(run, "train"):
        life = run_output(run, {"seed": 1}, overwrite=True)
        life.begin()
        assert life.dir == tmp_path / ".run.swap-new"
        (life.dir / "weights").write_bytes(b"new")
        life.finish(Manifest(stage="train", params={"seed": 1}))
        assert life.dir == run and (run / "weights").read_bytes() == b"new"
        with pytest.raises(StageConflictError, match="another datacomp train"):  # still ours after the swap
            with dir_lock(run, "train"):
                pass
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "weights"]
    assert not list(tmp_path.glob(".run.swap-*"))


# ---- the guard's rules, without a trainer ------------------------------------------------------------

def _guard(**kw) -> tuple[CorruptGuard, list[str]]:
    lines: list[str] = []
    return CorruptGuard(emit=lines.append, **kw), lines


def test_guard_fraction_applies_after_the_minimum_count():
    g, lines = _guard(max_fraction=0.1, min_members=100)
    for i in range(99):  # 1 in 3 bad, but fewer than the minimum read: tolerated
        g.member("/d/a.tar")
        if i % 3 == 0:
            g.error(OSError("cannot identify image file"))
    assert lines == []
    g.member("/d/b.tar")
    with pytest.raises(CorruptDataError) as e:
        g.error(OSError("cannot identify image file"))
    assert lines == [MARKER + str(e.value)]
    assert str(e.value).startswith("/d/a.tar (33 unreadable), /d/b.tar (1 unreadable): 34 of 100 training members")


def test_guard_tolerates_a_fraction_under_the_limit_and_keeps_logs_bounded(caplog):
    g, lines = _guard(max_fraction=0.1, min_members=100)
    with caplog.at_level(logging.WARNING, logger="datacomp.train.corrupt"):
        for i in range(50_000):
            g.member("/d/a.tar")
            if i % 20 == 0:  # 5 %
                g.error(ValueError("bad"))
    assert lines == [] and g.bad == 2500 and g.read == 50_000
    assert len(caplog.records) <= 25


def test_guard_ends_a_run_of_unreadable_members_even_without_a_fraction_limit():
    g, lines = _guard(max_fraction=1.0, max_in_a_row=50)
    for _ in range(49):
        g.error(OSError("invalid header"), new_member=True)
    g.member("/d/a.tar")  # a member that decodes breaks the run
    for _ in range(49):
        g.member("/d/a.tar")
        g.error(OSError("cannot identify image file"))
    g.member("/d/a.tar")
    with pytest.raises(CorruptDataError, match="yields no valid sample \\(50 unreadable members in a row"):
        g.error(OSError("cannot identify image file"))
    assert len(lines) == 1


@pytest.mark.parametrize("value", ["0", "1.5", "x"])
def test_max_corrupt_fraction_is_checked_at_parse_time(value: str, tmp_path: Path, capsys):
    from datacomp.cli import main

    code = main(["train", "--scale", "synth_test", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--max-corrupt-fraction", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--max-corrupt-fraction" in err[0] and "(0, 1]" in err[0]
