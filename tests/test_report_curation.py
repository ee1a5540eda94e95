"""The curation ops against the world's truth: precision and recall from the ops' tables on a
hand-made truth (known answers, the rules' boundaries), the report's section for a synth_test work
directory that ran semdedup and decontaminate (the session's world: real filter runs, real
report), and the one-line note for a filter run made before the ops recorded their sweep tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import report_world as rw
from conftest import seed_workdir
from datacomp.filters import run_filter
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.report.build import build_report
from datacomp.report.curation import CopyTruth, contamination_scores, dedup_scores, load_copy_truth, op_curve
from test_report_page import Page

GRID = (0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995)


@pytest.fixture()
def truth(tmp_path) -> CopyTruth:
    """Group a = {a, a1 (exact copy), a2 (near copy)}, b = {b, b1 (near copy)}; c, d, e copy nothing.
    x copies eval image t:1 (exact), y copies t:2 (near); z and w copy nothing."""
    rows = [("a", None, None, None, None), ("a1", "a", "exact", None, None), ("a2", "a", "near", None, None),
            ("b", None, None, None, None), ("b1", "b", "near", None, None), ("c", None, None, None, None),
            ("d", None, None, None, None), ("e", None, None, None, None), ("x", None, None, "t:1", "exact"),
            ("y", None, None, "t:2", "near"), ("z", None, None, None, None), ("w", None, None, None, None)]
    cols = list(zip(*rows))
    (tmp_path / "pool" / "truth").mkdir(parents=True)
    for part, sl in (("00000000", slice(0, 6)), ("00000001", slice(6, None))):
        pq.write_table(pa.table({n: pa.array(list(c[sl]), pa.string()) for n, c in
                                 zip(("uid", "duplicate_of", "duplicate_kind", "eval_copy", "eval_copy_kind"), cols)}),
                       tmp_path / "pool" / "truth" / f"{part}.parquet")
    t = load_copy_truth(tmp_path / "pool")
    assert t is not None
    return t


def test_truth_counts_the_planted_copies(truth, tmp_path):
    assert truth.planted("semdedup") == {"total": 3, "exact": 1, "near": 2}
    assert truth.planted("decontaminate") == {"total": 2, "exact": 1, "near": 1}
    assert truth.group["a2"] == "a" and truth.group["c"] == "c"
    assert load_copy_truth(tmp_path / "nowhere") is None


def test_scores_known_answers(truth):
    s = dedup_scores([("a1", "a"), ("c", "d"), ("b", "b1")], truth)  # b removed for its copy: right (kind near)
    assert (s["removed"], s["right"], s["right_exact"], s["right_near"]) == (3, 2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert dedup_scores([("a2", "b")], truth)["right"] == 0  # a copy matched outside its group
    empty = dedup_scores([], truth)
    assert empty["removed"] == 0 and math.isnan(empty["precision"]) and empty["recall"] == 0
    c = contamination_scores([("x", "t:1"), ("y", "t:1"), ("z", "t:2")], truth)  # y's nearest is the wrong image
    assert (c["flagged"], c["right"], c["right_exact"], c["right_near"], c["copies"]) == (3, 1, 1, 0, 2)
    assert c["precision"] == pytest.approx(1 / 3) and c["recall"] == pytest.approx(0.5)


def test_semdedup_curve_from_its_tables(truth):
    """Removed at t = the matches with similarity > t, compared as the op compares (float32)."""
    matches = {"uid": ["a1", "c", "b", "a2", "e"], "match_uid": ["a", "d", "b1", "a1", "c"],
               "similarity": [1.0, 0.99995, 0.9991, 0.995, 0.991]}
    default = {"uid": ["a1", "c"], "kept_uid": ["a", "d"]}
    curve = op_curve("semdedup", default, matches, 1.0 - 0.0001, 0.99, truth, thresholds=GRID)
    got = [(r["threshold"], r["removed"], r["right"], r["right_exact"], r["right_near"], r["default"]) for r in curve.rows]
    assert got == [(0.99, 5, 3, 1, 2, False),
                   (0.995, 3, 2, 1, 1, False),   # a2 at exactly 0.995 is not above it
                   (0.998, 3, 2, 1, 1, False), (0.999, 3, 2, 1, 1, False),
                   (0.9995, 2, 1, 1, 0, False), (0.9998, 2, 1, 1, 0, False),
                   (1.0 - 0.0001, 2, 1, 1, 0, True),  # the run's own removals, not the grid's 0.9999
                   (0.99995, 1, 1, 1, 0, False)]  # c at exactly 0.99995 is not above it
    assert curve.rows[0]["precision"] == pytest.approx(0.6) and curve.rows[0]["recall"] == pytest.approx(1.0)
    assert curve.rows[-1]["precision"] == 1.0 and curve.rows[-1]["recall"] == pytest.approx(1 / 3)
    # thresholds below the floor are not in the table's reach: left out
    high = op_curve("semdedup", default, matches, 0.9999, 0.9995, truth, thresholds=GRID)
    assert [r["threshold"] for r in high.rows] == [0.9995, 0.9998, 0.9999, 0.99995]


def test_decontaminate_curve_from_its_tables(truth):
    """Flagged at t = the nearest rows with similarity >= t."""
    nearest = {"uid": ["x", "y", "z", "w"], "eval_id": ["t:1", "t:2", "t:1", "t:3"],
               "similarity": [1.0, 0.9996, 0.9992, 0.995]}
    default = {"uid": ["x"], "eval_id": ["t:1"]}
    curve = op_curve("decontaminate", default, nearest, 0.99995, 0.998, truth, thresholds=GRID)
    got = [(r["threshold"], r["flagged"], r["right"], r["right_near"], r["default"]) for r in curve.rows]
    assert got == [(0.998, 3, 2, 1, False), (0.999, 3, 2, 1, False), (0.9995, 2, 2, 1, False),
                   (0.9998, 1, 1, 0, False), (0.9999, 1, 1, 0, False), (0.99995, 1, 1, 0, True)]
    assert curve.rows[0]["precision"] == pytest.approx(2 / 3) and curve.rows[0]["recall"] == 1.0
    assert curve.count == "flagged"


# ---- the report's section ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def curated(tmp_path_factory, synth_test_pool) -> Path:
    """A synth_test work directory (the session's world) whose filter ran semdedup and decontaminate."""
    wd = tmp_path_factory.mktemp("curation-report") / "w"
    pool = seed_workdir(synth_test_pool, wd)
    for recipe in ("semdedup", "decontaminate"):
        run_filter(pool, recipe, wd / "subsets" / f"{recipe}.npy", workers=1)  # in-process: no worker start-up
    (wd / "run.json").write_text(json.dumps({"scale": "synth_test", "seed": 0}))
    return wd


def test_report_shows_the_curves_for_a_synth_test_world(curated, tmp_path):
    build_report([curated], tmp_path / "a", n_samples=1)
    rep = build_report([curated], tmp_path / "b", n_samples=1)
    assert not [n for n in rep.notes if "sweep table" in n]
    for f in ("index.html", "plots/e0-curation-pr.svg"):  # byte-identical rebuild
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    page = Page((tmp_path / "a" / "index.html").read_text())
    assert "plots/e0-curation-pr.svg" in page.images
    svg = (tmp_path / "a" / "plots" / "e0-curation-pr.svg").read_text()
    assert svg.startswith("<?xml") and "semdedup (semdedup)" in svg and "decontaminate (decontaminate)" in svg
    rows = page.table("Curation ops against the world's truth")
    by_op = {op: [r for r in rows if r["op (recipes)"] == f"{op} ({op})"] for op in ("semdedup", "decontaminate")}
    assert [r["threshold (cosine)"] for r in by_op["semdedup"]] == \
        ["0.99", "0.995", "0.998", "0.999", "0.9995", "0.9998", "0.9999 (default)", "0.99995"]
    assert [r["threshold (cosine)"] for r in by_op["decontaminate"]][-1] == "0.99995 (default)"
    # the default rows are the filter runs' own removals, scored against the truth here, independently
    tables = [pq.read_table(p) for p in sorted((curated / "pool" / "truth").glob("*.parquet"))]
    t = pa.concat_tables(tables).to_pydict()
    group = {u: d or u for u, d in zip(t["uid"], t["duplicate_of"])}
    planted = sum(d is not None for d in t["duplicate_of"])
    side = json.loads((curated / "subsets" / "semdedup.json").read_text())
    dups = pq.read_table(side["globals"]["semdedup_duplicates"]).to_pydict()
    right = sum(group[u] == group[k] for u, k in zip(dups["uid"], dups["kept_uid"]))
    default = next(r for r in by_op["semdedup"] if r["threshold (cosine)"].endswith("(default)"))
    assert default["removed / flagged"] == f"{len(dups['uid']):,}" == f"{side['counts']['removed']:,}"
    assert default["right"] == f"{right:,}" and default["recall"] == f"{right / planted:.3f}"
    # looser thresholds remove at least as many rows
    removed = [int(r["removed / flagged"].replace(",", "")) for r in by_op["semdedup"]]
    assert removed == sorted(removed, reverse=True) and removed[0] > removed[-1]
    exact = sum(k == "exact" for k in t["duplicate_kind"])
    near = sum(k == "near" for k in t["duplicate_kind"])
    assert f"{planted:,} duplicates of other pool rows ({exact:,} exact, {near:,} near)" in \
        (tmp_path / "a" / "index.html").read_text()


def test_a_filter_run_without_sweep_tables_is_a_note(tmp_path):
    """A sidecar from before the ops recorded their sweep tables: one note, no section, no crash."""
    wd = rw.make_world(tmp_path / "w")
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(pa.table({"uid": pa.array([rw.uids(0)[6]]), "kept_uid": pa.array([rw.uids(0)[0]]),
                             "similarity": pa.array([1.0], pa.float32()), "cluster": pa.array([0])}),
                   old / "duplicates.parquet")
    write_subset(wd / "subsets" / "semdedup.npy", make_subset(uids_to_pairs(rw.uids(0)[:6] + rw.uids(0)[7:])))
    side = wd / "subsets" / "semdedup.json"
    side.write_text(json.dumps({"recipe": "semdedup", "counts": {"pool_rows": rw.N, "kept": rw.N - 1},
                                "resolved": {"steps": [{"op": "kmeans"}, {"op": "semdedup", "output": "semdedup"}]},
                                "globals": {"semdedup": str(old), "semdedup_duplicates": str(old / "duplicates.parquet"),
                                            "semdedup_threshold": 0.9999}}))
    rep = build_report([wd], tmp_path / "out")
    notes = [n for n in rep.notes if "sweep table" in n]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith(f"{side}: its semdedup step has no sweep table (matches.parquet")
    assert "re-run the filter with --overwrite" in notes[0]
    text = (tmp_path / "out" / "index.html").read_text()
    assert "re-run the filter with --overwrite" in text
    assert "Curation ops against the world" not in text and not (tmp_path / "out" / "plots" / "e0-curation-pr.svg").exists()
