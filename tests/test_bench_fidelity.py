"""bench/fidelity.py's pure parts: ranks, Spearman (against scipy), the tables, the gaps."""
from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_fidelity", Path(__file__).resolve().parents[1] / "bench" / "fidelity.py")
fid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fid)


def test_rankdata_averages_ties():
    assert fid.rankdata([0.3, 0.1, 0.2]) == [3, 1, 2]
    assert fid.rankdata([0.328, 0.312, 0.328, 0.338]) == [2.5, 1, 2.5, 4]
    assert fid.rankdata([1, 1, 1]) == [2, 2, 2]


@pytest.mark.parametrize("x, y", [
    ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]),
    ([0.258, 0.285, 0.307, 0.312, 0.292, 0.328, 0.328, 0.338], [0.15, 0.2, 0.21, 0.19, 0.17, 0.22, 0.18, 0.23]),
    ([3, 1, 2, 2], [1, 1, 2, 3]),
])
def test_spearman_agrees_with_scipy(x, y):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = float(scipy_stats.spearmanr(x, y).statistic)
    assert fid.spearman(x, y) == pytest.approx(expected)


def test_spearman_edges():
    assert fid.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert fid.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    assert fid.spearman([1, 1, 1], [1, 2, 3]) is None
    assert fid.spearman([1], [2]) is None
    with pytest.raises(ValueError):
        fid.spearman([1, 2], [1, 2, 3])


def _rows(avgs: dict[str, float], shift: float = 0.0):
    return [{"recipe": r, "dataset_size": 100 * (i + 1), "average": None if a is None else a + shift}
            for i, (r, a) in enumerate(avgs.items())]


PER_SEED = {
    0: _rows({"no_filter": 0.10, "basic_filter": 0.15, "clip_score_l14_30": 0.18, "oracle": 0.25, "random_basic": 0.11}),
    1: _rows({"no_filter": 0.12, "basic_filter": 0.16, "clip_score_l14_30": 0.17, "oracle": 0.24, "random_basic": 0.13}),
    2: _rows({"no_filter": 0.11, "basic_filter": 0.17, "clip_score_l14_30": 0.21, "oracle": 0.26, "random_basic": 0.12}),
}
PAPER = {"small": {"no_filter": 0.132, "basic_filter": 0.142, "clip_score_l14_30": 0.173},
         "medium": {"no_filter": 0.258, "basic_filter": 0.285, "clip_score_l14_30": 0.328}}


def test_fidelity_rows_and_correlations():
    rows = fid.fidelity_rows(PER_SEED, 1000, PAPER)
    by = {r["recipe"]: r for r in rows}
    assert [r["recipe"] for r in rows] == ["no_filter", "basic_filter", "clip_score_l14_30", "oracle", "random_basic"]
    assert by["no_filter"]["keep"] == pytest.approx(0.1) and by["oracle"]["keep"] == pytest.approx(0.4)
    assert by["basic_filter"]["average"] == pytest.approx(0.16) and by["basic_filter"]["average_std"] == pytest.approx(0.01)
    assert [by[r]["rank"] for r in ("oracle", "clip_score_l14_30", "basic_filter", "random_basic", "no_filter")] == [1, 2, 3, 4, 5]
    assert by["clip_score_l14_30"]["paper_small_rank"] == 1 and by["no_filter"]["paper_medium"] == 0.258
    assert by["oracle"]["paper_small"] is None and by["oracle"]["paper_small_rank"] is None
    corr = fid.rank_correlations(PER_SEED, PAPER)
    assert corr["small"]["n"] == 3 and corr["small"]["rho"] == pytest.approx(1.0)
    assert corr["small"]["per_seed"][1] == pytest.approx(1.0)


def test_gaps_paired_over_seeds():
    gaps = {(g["a"], g["b"]): g for g in fid.gap_checks(PER_SEED)}
    g = gaps[("no_filter", "basic_filter")]
    assert g["gap"] == pytest.approx(0.05) and g["sigma"] == pytest.approx(0.01) and g["two_sigma"] == pytest.approx(0.02)
    assert g["holds"] and g["positive_seeds"] == 3 and g["seeds"] == 3
    g = gaps[("basic_filter", "clip_score_l14_30")]  # +0.03, +0.01, +0.04: mean 0.0267, 2σ 0.0306
    assert g["gap"] == pytest.approx(0.08 / 3) and not g["holds"] and g["positive_seeds"] == 3
    assert gaps[("random_basic", "basic_filter")]["kind"] == "bracket"
    one = fid.gap_checks({0: PER_SEED[0]})
    assert all(g["sigma"] is None and g["holds"] == (g["gap"] > 0) for g in one)
    assert fid.gap_checks({0: _rows({"no_filter": 0.1})}) == []


def test_rule_checks_pair_over_seeds_and_beside_the_paper():
    per = {s: _rows({"english_only": 0.10 + s / 100, "basic_filter": 0.15 + s / 50, "english_caption_length": 0.12})
           for s in (0, 1, 2)}
    paper = {"small": {"english_only": 0.154, "basic_filter": 0.142},
             "medium": {"english_only": 0.285, "basic_filter": 0.285, "english_caption_length": 0.285}}
    by = {r["without"]: r for r in fid.rule_checks(per, paper)}
    r = by["english_only"]  # gaps 0.05, 0.06, 0.07
    assert r["with"] == "basic_filter" and r["seeds"] == 3
    assert r["gap"] == pytest.approx(0.06) and r["sigma"] == pytest.approx(0.01)
    assert r["paper"]["small"] == pytest.approx(-0.012) and r["paper"]["medium"] == pytest.approx(0.0)
    assert by["english_caption_length"]["paper"]["small"] is None  # small publishes no such row
    assert by["english_caption_length"]["gap"] == pytest.approx(0.05)
    text = fid.format_report("synth_test", [0, 1, 2], fid.fidelity_rows(per, 1000, paper), {}, [], 1.0,
                             rules=list(by.values()))
    assert "| caption length + image size + aspect (english_only → basic_filter) | +0.060 ± 0.010 | -0.012 | +0.000 |" in text
    assert "| image size + aspect (english_caption_length → basic_filter) | +0.050 ± 0.020 | - | +0.000 |" in text
    # a pair missing from a seed is not reported, nor are pairs with nothing run
    per[2] = _rows({"basic_filter": 0.2})
    assert fid.rule_checks(per, paper) == []
    assert "rules are worth" not in fid.format_report("synth_test", [0], fid.fidelity_rows({0: per[0]}, 1000, paper),
                                                      {}, [], 1.0)


def test_report_and_record(tmp_path):
    rows = fid.fidelity_rows(PER_SEED, 1000, PAPER)
    rows[0]["clean_share"], rows[0]["clean_recall"] = 0.54, 0.98  # from the truth, where a world has it
    text = fid.format_report("synth_test", [0, 1, 2], rows, fid.rank_correlations(PER_SEED, PAPER),
                             fid.gap_checks(PER_SEED), 12.3)
    assert "| oracle | 3 | 40.0% | - | - | 0.250 ± 0.010 | 1 | - | - | - | - |" in text
    assert f"| {rows[0]['recipe']} | 3 |" in text and "| 54% | 98% |" in text
    assert "| no_filter < basic_filter | ordering | +0.050 | 0.020 | 3/3 | yes |" in text
    assert "Spearman ρ vs the paper's medium Avg (38), 3 baselines: **1.00**" in text and "12 s" in text
    res = tmp_path / "RESULTS.md"
    res.write_text("# Benchmark results\n\nold section\n")
    fid.record(res, datetime(2026, 12, 1, 19, 30, tzinfo=timezone.utc), fid.machine_line((1, 2, 3), (1, 1, 1)), text)
    out = res.read_text()
    assert out.startswith("# Benchmark results\n\nold section\n\n## Fidelity")
    assert "2026-12-01 19:30 UTC" in out and "nproc" in out and "1.0/2.0/3.0 at the start" in out and text in out


def _scored_pool(seed_dir: Path, b32: list[float], l14: list[float]) -> None:
    import pyarrow as pa

    from datacomp.formats.pool import POOL_SCHEMA, write_metadata

    n = len(b32)
    cols = {"uid": [f"{i:032x}" for i in range(n)], "url": [f"http://127.0.0.1/{i}" for i in range(n)],
            "text": ["a dog"] * n, "original_width": [256] * n, "original_height": [256] * n,
            "clip_b32_similarity_score": b32, "clip_l14_similarity_score": l14, "face_bboxes": [[]] * n,
            "sha256": ["0" * 64] * n}
    write_metadata(seed_dir / "pool" / "metadata" / "00000000.parquet", pa.table(cols, schema=POOL_SCHEMA))


def test_score_checks_against_table16(tmp_path):
    from datacomp.report.published import ScoreThreshold, load_score_thresholds

    rows = load_score_thresholds()
    assert {(r.arch, r.threshold, r.keep) for r in rows} >= {("b32", 0.281, 0.30), ("l14", 0.243, 0.30), ("l14", 0.129, 0.90)}
    nan = float("nan")
    _scored_pool(tmp_path / "seed-0", [0.30, 0.29, 0.20, 0.10, nan], [0.25, 0.25, 0.25, 0.1, 0.3])
    _scored_pool(tmp_path / "seed-1", [0.30, 0.20, 0.20, 0.10, 0.10], [0.1] * 5)
    (tmp_path / "seed-2").mkdir()  # a world whose pool is not there yet: skipped
    th = [ScoreThreshold("b32", 0.281, 0.30), ScoreThreshold("l14", 0.243, 0.30)]
    got = fid.score_checks([tmp_path / f"seed-{s}" for s in range(3)], th)
    assert [c["per_seed"] for c in got] == [pytest.approx([0.4, 0.2]), pytest.approx([0.8, 0.0])]  # NaN never passes
    assert got[0]["keep"] == pytest.approx(0.3) and got[0]["keep_paper"] == 0.30
    text = fid.format_report("synth_test", [0, 1], [], {}, [], 1.0, got)
    assert "| B/32 | 0.281 | 30% | 30.0% | 40.0% / 20.0% |" in text
    assert "| L/14 | 0.243 | 30% | 40.0% | 80.0% / 0.0% |" in text
    assert fid.score_checks([tmp_path / "seed-2"], th) == []


def test_score_thresholds_file_errors_name_the_file(tmp_path):
    from datacomp.errors import ConfigError
    from datacomp.report.published import load_score_thresholds

    bad = tmp_path / "t16.yaml"
    bad.write_text("rows:\n  - {arch: b16, threshold: 0.3, keep: 0.1}\n")
    with pytest.raises(ConfigError, match=r"t16.yaml: row 1: 'arch' must be b32 or l14"):
        load_score_thresholds(bad)
    bad.write_text("rows:\n  - {arch: b32, threshold: 1.3, keep: 0.1}\n")
    with pytest.raises(ConfigError, match=r"t16.yaml: row 1: 'threshold' must be a number in \[0, 1\]"):
        load_score_thresholds(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_score_thresholds(tmp_path / "missing.yaml")
