"""Results tables: Markdown, CSV, terminal; aggregation over seeds; the published numbers."""
from __future__ import annotations

import csv
import math
import re

import pytest

from datacomp.errors import ConfigError
from datacomp.report import (aggregate_seeds, csv_columns, format_csv, format_markdown, format_table, per_seed_rows,
                             table_columns, write_results_table)
from datacomp.report.published import load_published, published_metric

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


# ---- several seeds ------------------------------------------------------------------------------

PER_SEED = {
    0: [{"recipe": "no_filter", "dataset_size": 2400, "resharded": 2400, "synth/concepts": 0.10, "synth/count": 0.5, "average": 0.20},
        {"recipe": "basic_filter", "dataset_size": 540, "resharded": 540, "synth/concepts": 0.30, "synth/count": None, "average": 0.31}],
    1: [{"recipe": "no_filter", "dataset_size": 2400, "resharded": 2400, "synth/concepts": 0.20, "synth/count": 0.7, "average": 0.26},
        {"recipe": "basic_filter", "dataset_size": 560, "resharded": 560, "synth/concepts": 0.40, "synth/count": 0.6, "average": 0.35}],
    2: [{"recipe": "no_filter", "dataset_size": 2400, "resharded": 2400, "synth/concepts": 0.30, "synth/count": 0.6, "average": 0.23}],
}


def test_aggregate_seeds_mean_sample_std_and_seed_count():
    rows = aggregate_seeds(PER_SEED)
    assert [r["recipe"] for r in rows] == ["no_filter", "basic_filter"]
    nf, bf = rows
    assert nf["seeds"] == 3 and bf["seeds"] == 2
    assert nf["synth/concepts"] == pytest.approx(0.2) and nf["synth/concepts_std"] == pytest.approx(0.1)  # ddof=1
    assert nf["average"] == pytest.approx(0.23) and nf["average_std"] == pytest.approx(0.03)
    assert nf["dataset_size"] == 2400 and nf["dataset_size_std"] == 0
    assert bf["average"] == pytest.approx(0.33) and bf["average_std"] == pytest.approx(math.sqrt(0.0008))
    assert bf["dataset_size"] == 550 and bf["dataset_size_std"] == pytest.approx(math.sqrt(200))
    # a value missing in one of the row's seeds: no mean over fewer seeds than `seeds` says
    assert bf["synth/count"] is None and bf["synth/count_std"] is None
    # one seed: the rows as they were (ints stay ints, no std), plus seeds = 1
    one = aggregate_seeds({5: PER_SEED[0]})
    assert one == [{"recipe": r["recipe"], "seeds": 1, **{k: v for k, v in r.items() if k != "recipe"}} for r in PER_SEED[0]]
    with pytest.raises(ConfigError, match="seed 3: a results row has no 'recipe'"):
        aggregate_seeds({3: [{"average": 0.1}]})


def test_seed_tables_markdown_and_csv():
    rows = aggregate_seeds(PER_SEED)
    assert table_columns(rows) == ["recipe", "seeds", "dataset_size", "resharded", "synth/concepts", "synth/count", "average"]
    assert csv_columns(rows) == ["recipe", "seeds", "dataset_size", "dataset_size_std", "resharded", "resharded_std",
                                 "synth/concepts", "synth/concepts_std", "synth/count", "synth/count_std",
                                 "average", "average_std"]
    md = format_markdown(rows).splitlines()
    assert md[0] == "| recipe | seeds | size | resharded | concepts | count | average |"
    assert md[2] == "| no_filter | 3 | 2,400 ± 0 | 2,400 ± 0 | 0.200 ± 0.100 | 0.600 ± 0.100 | 0.230 ± 0.030 |"
    assert md[3] == "| basic_filter | 2 | 550 ± 14 | 550 ± 14 | 0.350 ± 0.071 | - | 0.330 ± 0.028 |"
    got = list(csv.DictReader(format_csv(rows).splitlines()))
    assert got[0]["seeds"] == "3" and float(got[0]["average_std"]) == pytest.approx(0.03)
    assert got[1]["synth/count"] == "" and got[1]["synth/count_std"] == ""
    one = format_markdown(aggregate_seeds({0: PER_SEED[0]})).splitlines()
    assert one[0] == "| recipe | seeds | size | resharded | concepts | count | average |"
    assert one[2] == "| no_filter | 1 | 2,400 | 2,400 | 0.100 | 0.500 | 0.200 |"
    per = list(csv.DictReader(format_csv(per_seed_rows(PER_SEED)).splitlines()))
    assert [(r["seed"], r["recipe"]) for r in per] == [("0", "no_filter"), ("0", "basic_filter"), ("1", "no_filter"),
                                                       ("1", "basic_filter"), ("2", "no_filter")]
    assert list(per[0])[:3] == ["recipe", "seed", "dataset_size"]


# ---- published numbers --------------------------------------------------------------------------

def test_published_table3_values():
    rows = load_published()
    small = published_metric("small")
    assert small["no_filter"] == 0.132 and small["clip_score_l14_30"] == 0.173 and small["clip_score_b32_30"] == 0.167
    medium = published_metric("medium")
    assert medium["image_based_clip_score_l14_30"] == 0.328 and medium["clip_score_b32_30"] == 0.338
    baselines = {"no_filter", "basic_filter", "text_based", "image_based", "laion2b", "clip_score_b32_30",
                 "clip_score_l14_30", "image_based_clip_score_l14_30"}
    extra = {"english_only", "english_caption_length"}  # Tables 25-27 rows, beside basic_filter
    assert set(small) == baselines | {"english_only"} and set(medium) == baselines | extra
    assert small["english_only"] == 0.154 and medium["english_caption_length"] == 0.285
    from datacomp.filters.recipe import recipe_names
    assert {r.recipe for r in rows} <= set(recipe_names())  # every published row names a shipped recipe
    r = next(r for r in rows if r.scale == "medium" and r.recipe == "basic_filter")
    assert (r.dataset_size, r.imagenet, r.imagenet_dist_shifts, r.vtab, r.retrieval, r.table) == (30_000_000, 0.226, 0.193, 0.284, 0.251, "3")
    assert next(r for r in rows if r.scale == "small" and r.recipe == "clip_score_b32_30").table == "25"
    assert published_metric("xlarge", "imagenet")["image_based_clip_score_l14_30"] == 0.792


@pytest.mark.parametrize("text, msg", [
    ("rows: [{scale: small}]", "row 1: missing baseline"),
    ("rows: 3", "expected a mapping with a 'rows' list"),
    ("rows: [{scale: small, baseline: B, recipe: b, dataset_size: 1, imagenet: 2.0, imagenet_dist_shifts: null, "
     "vtab: null, retrieval: null, avg38: 0.1, table: '3'}]", "'imagenet' must be a number in [0, 1]"),
    ("rows: [{scale: small, baseline: B, recipe: b, dataset_size: 1, imagenet: null, imagenet_dist_shifts: null, "
     "vtab: null, retrieval: null, avg38: 0.1, table: '3', extra: 1}]", "unknown extra"),
    ("rows: [\n - {", "not valid YAML"),
])
def test_published_file_errors(tmp_path, text, msg):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(msg)) as e:
        load_published(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_published(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="no published results for scale 'tiny'"):
        published_metric("tiny")
