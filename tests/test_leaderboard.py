"""`datacomp leaderboard` over fake-but-well-formed work and run directories (no training).

Every run's scores follow report_world's rule (task j of seed s of the recipe at offset o:
0.1 + o + 0.01 j + 0.02 s), so the expected averages and order are computed here by hand.
"""
from __future__ import annotations

import csv
import io
import json
from statistics import fmean, stdev

import pytest

import report_world as rw
from datacomp.cli import main
from datacomp.evaluate.registry import load_tasks
from datacomp.report.published import load_published
from datacomp.report.leaderboard import build_leaderboard, format_leaderboard

HALF = {"no_filter": (lambda i: True, []), "half": (lambda i: i % 2 == 0, [])}  # offsets 0.0 and 0.05
SMALL_SAMPLES = 12_800_000


def _synth_avg(offset: float, seed: int) -> float:
    n = len([t for t in load_tasks("synth") if t.scored])
    return fmean(0.1 + offset + 0.01 * j + 0.02 * seed for j in range(n))


def _small_run(run, shift: float) -> dict[str, float]:
    """A run directory at the small scale with all 40 reference tasks; -> main metric by key."""
    run.mkdir(parents=True)
    scores, lines = {}, []
    for i, t in enumerate(load_tasks("datacomp")):
        v = None if t.main_metric is None else round(0.1 + shift + 0.002 * i, 6)
        lines.append(json.dumps({"key": t.key, "dataset": t.name, "metrics": {"main_metric": v}}))
        if v is not None:
            scores[t.key] = v
    (run / "eval_results.jsonl").write_text("\n".join(lines) + "\n")
    (run / "manifest.json").write_text(json.dumps({"stage": "train", "params": {"scale": {"name": "small"}},
                                                   "counts": {"unique_samples": 3_000_000, "samples_seen": SMALL_SAMPLES}}))
    return scores


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    a = rw.make_world(root / "a", seed=0, recipes=HALF)                  # synth_test, one seed
    b = root / "b"                                                       # synth_test, seeds 0 and 1
    for s in (0, 1):
        rw.make_world(b / f"seed-{s}", seed=s, recipes=HALF)
    c = rw.make_world(root / "c", seed=0, recipes={"no_filter": HALF["no_filter"]})
    rw.add_run(c, "no_filter", 0, 0.0, scale="synth_demo")               # the same world at another scale
    small = _small_run(root / "ref" / "mine", shift=0.07)
    return root, a, b, c, small


def test_ranked_per_scale_with_published_rows(dirs):
    root, a, b, c, small = dirs
    board = build_leaderboard([a, b, c, root / "ref"])
    assert [(s.scale, s.track) for s in board.sections] == [("small", "filtering"), ("synth_test", "filtering"),
                                                             ("synth_demo", "filtering")]
    small_sec, test_sec, demo_sec = board.sections

    # synth_test: four rows, ranked by the average; B's rows are means over its two seeds
    expected = sorted([
        (str(b), "half", fmean([_synth_avg(0.05, 0), _synth_avg(0.05, 1)]), 2),
        (str(a), "half", _synth_avg(0.05, 0), 1),
        (str(b), "no_filter", fmean([_synth_avg(0.0, 0), _synth_avg(0.0, 1)]), 2),
        (str(a), "no_filter", _synth_avg(0.0, 0), 1),
    ], key=lambda e: -e[2])
    got = [(r["source"], r["recipe"], r["average"], r["seeds"]) for r in test_sec.rows]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected])
    assert [g[3] for g in got] == [e[3] for e in expected]
    assert [r["rank"] for r in test_sec.rows] == [1, 2, 3, 4]
    top = test_sec.rows[0]
    assert top["average_std"] == pytest.approx(stdev([_synth_avg(0.05, 0), _synth_avg(0.05, 1)]))
    assert top["dataset_size"] == rw.N // 2 and top["samples_seen"] > 0 and top["date"]
    assert test_sec.rows[-1]["dataset_size"] == rw.N and "imagenet_std" not in test_sec.rows[-1]
    assert not any(r["kind"] != "run" for r in test_sec.rows)  # no paper rows at an embedded scale
    assert [r["recipe"] for r in demo_sec.rows] == ["no_filter"]

    # small: ours between the paper's rows by the 38-task average; released checkpoints (no average) last
    mine = next(r for r in small_sec.rows if r["kind"] == "run")
    assert mine["rank"] == 1 and mine["n_tasks"] == 38 and mine["samples_seen"] == SMALL_SAMPLES
    assert mine["average"] == pytest.approx(fmean(small.values()))
    assert mine["imagenet"] == pytest.approx(small["imagenet1k"])
    paper = [r for r in small_sec.rows if r["kind"] == "paper"]
    published_small = {p.recipe for p in load_published() if p.scale == "small"}  # Tables 3 and 25
    assert len(paper) == len(published_small) and {r["recipe"] for r in paper} == published_small
    assert {"no_filter", "clip_score_l14_30", "english_only"} <= published_small
    clip = next(r for r in paper if r["recipe"] == "clip_score_l14_30")
    assert (clip["average"], clip["imagenet"], clip["vtab"], clip["dataset_size"]) == (0.173, 0.051, 0.190, 3_800_000)
    ranked = [r["average"] for r in small_sec.rows if r["average"] is not None]
    assert ranked == sorted(ranked, reverse=True)
    kinds = [r["kind"] for r in small_sec.rows]
    first = kinds.index("released")
    assert kinds[first:] == ["released"] * 7 and all(r["average"] is None for r in small_sec.rows[first:])
    assert all(r["samples_seen"] == SMALL_SAMPLES for r in small_sec.rows)


def test_cli_formats_and_html(dirs, tmp_path, capsys):
    root, a, b, c, _ = dirs
    assert main(["leaderboard", str(a), str(b), str(root / "ref"), "--html", str(tmp_path / "page")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("scale small · filtering track · ranked by Average (38)")
    assert "ImageNet dist. shifts" in lines[1] and "samples seen" in lines[1]
    assert any(line.split()[0] == "paper" for line in lines)
    test_title = next(i for i, line in enumerate(lines) if line.startswith("scale synth_test"))
    assert lines[test_title + 3].split()[:2] == ["1", "half"] and " ± " in lines[test_title + 3]
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'class="paper"' in page and "<script" not in page

    assert main(["leaderboard", str(a), str(b), "--format", "csv", "--out", str(tmp_path / "board.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "board.csv").read_text())))
    assert [(r["rank"], r["recipe"], r["seeds"]) for r in rows] == [("1", "half", "2"), ("2", "half", "1"),
                                                                   ("3", "no_filter", "2"), ("4", "no_filter", "1")]
    assert float(rows[0]["average"]) == pytest.approx(fmean([_synth_avg(0.05, 0), _synth_avg(0.05, 1)]))
    assert main(["leaderboard", str(a), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "## scale synth_test · filtering track" in md and "| 1 | half |" in md
    assert main(["leaderboard", str(root / "ref"), "--format", "json", "--no-references"]) == 0
    (sec,) = json.loads(capsys.readouterr().out)["sections"]
    assert [r["kind"] for r in sec["rows"]] == ["run"]


def test_byod_track_and_missing_runs(tmp_path, capsys):
    w = rw.make_world(tmp_path / "w", seed=0, recipes={"no_filter": HALF["no_filter"]})
    (w / "pool" / "manifest.json").write_text(json.dumps({"stage": "byod"}))
    (tmp_path / "empty").mkdir()
    board = build_leaderboard([w, tmp_path / "empty"])
    assert [(s.scale, s.track) for s in board.sections] == [("synth_test", "byod")]
    assert any("empty" in n and "no runs found" in n for n in board.notes)
    assert "no evaluated runs found" in format_leaderboard(build_leaderboard([tmp_path / "empty"]))
    # a run directory whose manifest is gone: the scale from its info.json, else 'unknown' with a note
    lone = tmp_path / "lone"
    for name, info in (("r1", {"scale": "synth_demo"}), ("r2", None), ("r3", "pkl")):
        (lone / name).mkdir(parents=True)
        rw.write_results(lone / name, seed=0)
        if info == "pkl":  # a reference train.py run: its info.pkl names the scale
            import pathlib
            import pickle

            (lone / name / "info.pkl").write_bytes(pickle.dumps({
                "scale": "synth_demo", "scale_config": {"model": "ViT-B-32", "batch_size": 4096},
                "checkpoint": pathlib.Path("/r/checkpoints/epoch_5.pt"), "data_dir": pathlib.Path("/d")}))
        elif info:
            (lone / name / "info.json").write_text(json.dumps(info))
    board = build_leaderboard([lone])
    assert [(s.scale, [r["recipe"] for r in s.rows]) for s in board.sections] == [("synth_demo", ["r1", "r3"]),
                                                                                  ("unknown", ["r2"])]
    assert any("r2" in n and "unknown" in n for n in board.notes)
