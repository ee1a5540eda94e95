"""`datacomp aggregate` on results files in the reference's layout, and the fairness tables.

The expected numbers are computed here from the reference's rule (aggregate_scores.py: groups by
display name, plain means, 38 lines with a main metric), never by calling the code under test.
"""
from __future__ import annotations

import json
import math
from statistics import fmean

import numpy as np
import pytest

from datacomp.cli import main
from datacomp.evaluate.aggregate import aggregate_file
from datacomp.evaluate.fairness_tables import fairness_tables
from datacomp.evaluate.metrics import fairness_metrics

# The reference's tasklist.yml (key, display name, main metric) in its file order: 40 tasks,
# FairFace and UTKFace without a main metric (acc1 is not among their metrics).
REFERENCE_TASKS = [
    ("vtab/caltech101", "Caltech-101", "mean_per_class_recall"), ("cifar10", "CIFAR-10", "acc1"),
    ("vtab/cifar100", "CIFAR-100", "acc1"), ("vtab/clevr_count_all", "CLEVR Counts", "acc1"),
    ("vtab/clevr_closest_object_distance", "CLEVR Distance", "acc1"), ("country211", "Country211", "acc1"),
    ("vtab/dtd", "Describable Textures", "acc1"), ("vtab/eurosat", "EuroSAT", "acc1"),
    ("fgvc_aircraft", "FGVC Aircraft", "mean_per_class_recall"), ("food101", "Food-101", "acc1"),
    ("gtsrb", "GTSRB", "acc1"), ("imagenet1k", "ImageNet 1k", "acc1"), ("imagenet_sketch", "ImageNet Sketch", "acc1"),
    ("imagenetv2", "ImageNet v2", "acc1"), ("imagenet-a", "ImageNet-A", "acc1"), ("imagenet-o", "ImageNet-O", "acc1"),
    ("imagenet-r", "ImageNet-R", "acc1"), ("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", "acc1"),
    ("mnist", "MNIST", "acc1"), ("objectnet", "ObjectNet", "acc1"),
    ("vtab/flowers", "Oxford Flowers-102", "mean_per_class_recall"),
    ("vtab/pets", "Oxford-IIIT Pet", "mean_per_class_recall"), ("voc2007", "Pascal VOC 2007", "acc1"),
    ("vtab/pcam", "PatchCamelyon", "acc1"), ("renderedsst2", "Rendered SST2", "acc1"),
    ("vtab/resisc45", "RESISC45", "acc1"), ("cars", "Stanford Cars", "acc1"), ("stl10", "STL-10", "acc1"),
    ("sun397", "SUN397", "acc1"), ("vtab/svhn", "SVHN", "acc1"),
    ("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", "mean_recall@1"),
    ("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", "mean_recall@1"),
    ("misc/winogavil", "WinoGAViL", "jaccard_score_10-12"), ("wilds/iwildcam", "iWildCam", "F1-macro_all"),
    ("wilds/camelyon17", "Camelyon17", "acc1"), ("wilds/fmow", "FMoW", "acc_worst_region"),
    ("fairness/dollar_street", "Dollar Street", "acc_top5_wg"), ("fairness/geode", "GeoDE", "acc_wg"),
    ("fairness/fairface", "FairFace", None), ("fairness/utkface", "UTKFace", None),
]
# aggregate_scores.py's DATASET_GROUPS, by display name
SHIFTS = {"ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"}
VTAB = {"Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Describable Textures", "EuroSAT",
        "KITTI Vehicle Distance", "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45", "SVHN", "SUN397"}
RETRIEVAL = {"Flickr", "MSCOCO", "WinoGAViL"}
FAIRFACE_RACES = 7


def _reference_fairface_metrics(races: int) -> dict:
    """A fairness line's metrics as the reference writes them (WILDS key order, NaN for an empty group)."""
    m: dict = {}
    for j, obj in enumerate(("race", "gender", "age")):
        m[f"acc_{obj}_avg"] = 0.5 + 0.01 * j
        for b in (0, 1):
            m[f"acc_{obj}_race_binary:{b}"] = 0.4 + 0.1 * b + 0.01 * j
            m[f"count_race_binary:{b}"] = 100.0
        m[f"acc_{obj}_wg"] = 0.4 + 0.01 * j
    m["acc_gender_x_avg"] = 0.51
    for r in range(races):
        for g in (0, 1):
            m[f"acc_gender_x_race:{r}_gender:{g}"] = float("nan") if (r, g) == (races - 1, 1) else 0.3 + 0.05 * r + 0.01 * g
            m[f"count_race:{r}_gender:{g}"] = 0.0 if (r, g) == (races - 1, 1) else 10.0
    m["acc_gender_x_wg"] = 0.3
    for t, name in enumerate(("crime", "nonhuman")):
        m[f"toxicity_{name}_avg"] = 0.02 * (t + 1)
        for r in range(races):
            m[f"toxicity_{name}_race:{r}"] = 0.001 * (r + 1) + 0.1 * t
            m[f"count_race:{r}"] = 20.0
        m[f"toxicity_{name}_wg"] = 0.0
    m["main_metric"] = None
    return m


def reference_file(path, drop: str | None = None, repeat: str | None = None) -> dict[str, float]:
    """An eval_results.jsonl exactly as the reference's evaluate.py writes it; -> main metric by display name."""
    lines, scores = [], {}
    for i, (key, name, main) in enumerate(REFERENCE_TASKS):
        if key == drop:
            continue
        if main is None:
            metrics = _reference_fairface_metrics(FAIRFACE_RACES if key == "fairness/fairface" else 5)
        else:
            v = round(0.013 * (i + 1) + 0.0007 * i * i, 6) % 1.0
            metrics = {"acc1": v, "acc5": min(1.0, v + 0.1), "mean_per_class_recall": v, main: v, "main_metric": v}
            scores[name] = v
        line = {"key": key, "dataset": name, "metrics": metrics}
        lines.append(json.dumps(line))  # json.dumps writes NaN as the reference's files hold it
        if key == repeat:
            lines.append(json.dumps(line))
    path.write_text("\n".join(lines) + "\n")
    return scores


def test_reference_file_gives_the_reference_numbers(tmp_path, capsys):
    scores = reference_file(tmp_path / "eval_results.jsonl")
    assert len(scores) == 38
    expected = {"ImageNet": scores["ImageNet 1k"], "ImageNet dist. shifts": fmean(scores[n] for n in SHIFTS),
                "VTAB": fmean(scores[n] for n in VTAB), "Retrieval": fmean(scores[n] for n in RETRIEVAL),
                "Average": fmean(scores.values())}
    agg = aggregate_file(tmp_path / "eval_results.jsonl")
    assert agg["complete"] and agg["n_tasks"] == 38 and not agg["notes"]
    assert agg["reference"] == pytest.approx(expected, abs=1e-12)
    assert main(["aggregate", str(tmp_path / "eval_results.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    # the very lines the reference's aggregate_scores.py prints, in its order
    assert out[1:6] == [f"{k}: {v:.3f}" for k, v in expected.items()]
    assert "FairFace (fairness/fairface)" in out and "UTKFace (fairness/utkface)" in out


def test_aggregate_json_strict_and_partial(tmp_path, capsys):
    scores = reference_file(tmp_path / "partial.jsonl", drop="vtab/svhn", repeat="imagenet1k")
    assert main(["aggregate", "--strict", str(tmp_path / "partial.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partial.jsonl" in err[0] and "vtab/svhn" in err[0] and "38" in err[0]
    assert main(["aggregate", "--json", str(tmp_path / "partial.jsonl")]) == 0
    (agg,) = json.loads(capsys.readouterr().out)
    assert not agg["complete"] and agg["missing"] == ["vtab/svhn"] and agg["average"] is None and agg["vtab"] is None
    assert agg["partial"]["average"] == {"value": pytest.approx(fmean(scores.values())), "n": 37, "of": 38}
    assert agg["imagenet"] == pytest.approx(scores["ImageNet 1k"]) and agg["superseded"] == 1
    assert any("counts every line" in n for n in agg["notes"])
    assert main(["aggregate", str(tmp_path / "partial.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "Average (partial, 37/38)" in text and "missing (1): vtab/svhn" in text
    assert main(["aggregate", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.jsonl" in err[0]


def test_fairness_tables_of_a_reference_line(tmp_path):
    reference_file(tmp_path / "r.jsonl")
    line = next(json.loads(s) for s in (tmp_path / "r.jsonl").read_text().splitlines() if "fairface" in s)
    t = fairness_tables(line["metrics"], "fairness/fairface")
    m = line["metrics"]
    t34 = t["race_gender_age"]
    assert t34["index"] == ["white", "non-white", "overall"] and t34["columns"] == ["race", "gender", "age"]
    assert t34["values"][1][2] == m["acc_age_race_binary:1"] and t34["values"][2][0] == m["acc_race_avg"]
    t5 = t["gender_by_race"]
    assert t5["columns"][1] == "white" and len(t5["columns"]) == FAIRFACE_RACES
    assert t5["values"][1][3] == m["acc_gender_x_race:3_gender:1"]  # female, latino
    assert t5["values"][1][FAIRFACE_RACES - 1] is None  # the empty group: NaN in the file
    assert t["toxicity_by_race"]["values"][1][0] == m["toxicity_nonhuman_race:0"]
    legacy = {k.replace("acc_gender_x_race:3_gender:1", "acc_gender_x_gender:1_race:3"): v for k, v in m.items()}
    assert fairness_tables(legacy, "fairness/fairface")["gender_by_race"]["values"][1][3] == m["acc_gender_x_race:3_gender:1"]
    agg = aggregate_file(tmp_path / "r.jsonl")
    assert agg["fairness_tables"]["fairness/utkface"]["tables"]["gender_by_race"]["columns"][3] == "asian"
    json.dumps(agg, allow_nan=False)  # --json output holds no NaN


def test_our_fairness_metrics_have_the_reference_keys():
    """What the reference's fairness_tables.py reads is what our evaluator writes (gender x race named race first)."""
    rng = np.random.default_rng(0)
    n = 400
    md = np.stack([rng.integers(0, 9, n), rng.integers(0, 2, n), rng.integers(0, FAIRFACE_RACES, n),
                   rng.integers(0, 2, n)], axis=1)  # age, gender, race, race_binary
    preds = np.stack([rng.integers(0, 7, n), rng.integers(0, 2, n), rng.integers(0, 9, n), rng.integers(0, 20, n)], axis=1)
    m = fairness_metrics(preds, md)
    for r in range(FAIRFACE_RACES):
        for g in (0, 1):
            key = f"acc_gender_x_race:{r}_gender:{g}"
            assert key in m
            sel = (md[:, 2] == r) & (md[:, 1] == g)
            assert m[key] == pytest.approx(float(np.mean(preds[sel, 1] == g)))
    t = fairness_tables(m, "fairness/fairface")
    crime = t["toxicity_by_race"]["values"][0]
    assert crime == pytest.approx([float(np.mean(preds[md[:, 2] == r, 3] >= 18)) for r in range(FAIRFACE_RACES)])
    assert not any(v is None or math.isnan(v) for row in t["race_gender_age"]["values"] for v in row)


def test_embedded_suite_file(tmp_path, capsys):
    import report_world as rw
    from datacomp.evaluate.registry import load_tasks

    rw.write_results(tmp_path, seed=0)
    scored = [t for t in load_tasks("synth") if t.scored]
    values = {t.key: 0.1 + 0.01 * j for j, t in enumerate(scored)}  # report_world's rule
    assert main(["aggregate", str(tmp_path / "eval_results.jsonl")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"synth suite, {len(scored)} of {len(scored)} scored tasks")
    worst = fmean(values[t.key] for t in scored if t.group == "fairness")
    assert f"Worst group: {worst:.3f}" in out
    assert out[-1] == f"Average ({len(scored)} tasks): {fmean(values.values()):.3f}"
