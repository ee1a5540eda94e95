"""Evaluation: group / WILDS / fairness / WinoGAViL metrics on hand-computed cases, and the
task types that need per-sample metadata or the nlphuji layouts, end to end on a tiny model."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datacomp.errors import FormatError, InputError  # noqa: E402
from datacomp.evaluate import check_evalsets, evaluate, get_task, open_evalset  # noqa: E402
from datacomp.evaluate.metrics import (  # noqa: E402
    Grouper,
    classification_metrics,
    fairness_metrics,
    fmow_metrics,
    winogavil_metrics,
    winogavil_prediction,
    winogavil_prompt,
    worst_group_accuracy,
)

from test_evaluate import make_cls_task, make_run, png_bytes, write_tar  # noqa: E402


def onehot_logits(preds: list[int], n_classes: int) -> torch.Tensor:
    x = torch.zeros(len(preds), n_classes)
    x[torch.arange(len(preds)), torch.tensor(preds)] = 1.0
    return x


# ---------------------------------------------------------------- hand-computed metrics

def test_worst_group_top1():
    # regions: 0 0 0 1 1 2 ; correct: 1 1 0 | 0 1 | 1  -> 2/3, 1/2, 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    preds = [0, 1, 0, 1, 1, 2]
    md = np.array([[0, 7], [0, 7], [0, 7], [1, 7], [1, 7], [2, 7]])
    m = worst_group_accuracy(onehot_logits(preds, 3), labels, md, ["region", "country"], ["region"])
    assert m["acc_avg"] == pytest.approx(4 / 6)
    assert m["acc_region:0"] == pytest.approx(2 / 3) and m["count_region:0"] == 3
    assert m["acc_region:1"] == pytest.approx(0.5)
    assert m["acc_region:2"] == pytest.approx(1.0)
    assert m["acc_wg"] == pytest.approx(0.5)


def test_worst_group_top5_and_empty_group():
    # 6 classes; income groups 0 and 2 (1 is empty); top-5 misses only when the label is ranked last
    labels = torch.tensor([0, 5, 1, 2])
    logits = torch.tensor([
        [6., 5, 4, 3, 2, 1],  # label 0 rank 1: hit
        [6., 5, 4, 3, 2, 1],  # label 5 rank 6: miss
        [6., 5, 4, 3, 2, 1],  # label 1 rank 2: hit
        [1., 2, 3, 4, 5, 6],  # label 2 rank 4: hit
    ])
    md = np.array([[0, 10, 3], [0, 11, 3], [2, 12, 3], [2, 13, 3]])
    m = worst_group_accuracy(logits, labels, md, ["income_ds", "income_meta", "region"], ["income_ds"], topk=5)
    assert m["acc_top5_avg"] == pytest.approx(0.75)
    assert m["acc_top5_income_ds:0"] == pytest.approx(0.5)
    assert m["count_income_ds:1"] == 0 and m["acc_top5_income_ds:1"] is None
    assert m["acc_top5_income_ds:2"] == pytest.approx(1.0)
    assert m["acc_top5_wg"] == pytest.approx(0.5)  # the empty group is not the worst


def test_combinatorial_grouper_names():
    md = np.array([[0, 1], [1, 2], [1, 0]])
    g = Grouper(md, ["gender", "race"], ["gender", "race"])
    assert g.n_groups == 2 * 3
    # WILDS: gender has factor 1 (metadata order), the name lists the last field first
    assert g.group_str(int(g.groups[1])) == "race:2_gender:1"
    assert [int(x) for x in g.groups] == [0 + 2 * 1, 1 + 2 * 2, 1 + 2 * 0]
    assert [g.group_str(int(x)) for x in g.groups] == ["race:1_gender:0", "race:2_gender:1", "race:0_gender:1"]
    # the grouped fields take the metadata's order whatever order `by` gives
    assert Grouper(md, ["gender", "race"], ["race", "gender"]).group_str(1) == "race:0_gender:1"


def test_fmow_worst_region_ignores_other():
    fields = ["region", "year", "y"]
    # region 5 = "Other" (all wrong, never the worst); region 0: 1/2, region 1: 1/1, region 3: 2/3
    md = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [3, 0, 0], [3, 0, 0], [3, 1, 0], [5, 1, 0]])
    labels = torch.tensor([1, 1, 1, 1, 1, 1, 1])
    preds = [1, 0, 1, 1, 1, 0, 0]
    names = ["Asia", "Europe", "Africa", "Americas", "Oceania", "Other"]
    m = fmow_metrics(onehot_logits(preds, 2), labels, md, fields, region_names=names)
    assert m["acc_avg"] == pytest.approx(4 / 7)
    assert m["acc_region:5"] == 0.0 and m["count_region:5"] == 1
    assert m["acc_worst_region"] == pytest.approx(0.5)
    # years: 0 -> rows 0,3,4 (3/3); 1 -> rows 1,2,5,6 (1/4)
    assert m["acc_year:0"] == pytest.approx(1.0) and m["acc_worst_year"] == pytest.approx(0.25)
    # without names nothing is excluded
    assert fmow_metrics(onehot_logits(preds, 2), labels, md, fields)["acc_worst_region"] == 0.0


def test_iwildcam_macro_f1_over_true_classes():
    # labels 0 0 1 2, preds 0 1 1 3 (class 3 never true: not averaged, as WILDS passes labels=unique(y))
    # F1: class0 2*1/(2+0+1)=2/3, class1 2*1/(2+1+0)=2/3, class2 0 -> 4/9; recall: 1/2, 1, 0 -> 1/2
    labels = torch.tensor([0, 0, 1, 2])
    m = classification_metrics(onehot_logits([0, 1, 1, 3], 5), labels, 5, f1=True)
    assert m["F1-macro_all"] == pytest.approx(4 / 9)
    assert m["recall-macro_all"] == pytest.approx(0.5)
    assert m["acc_avg"] == pytest.approx(0.5) and m["acc1"] == pytest.approx(0.5)


def test_winogavil_jaccard_by_hand():
    assert winogavil_prompt("Apple") == "An apple" and winogavil_prompt("Moon") == "A moon"
    assert winogavil_prediction(np.array([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [False, True, False, True]
    gold10 = np.zeros(10, bool)
    gold10[[0, 1, 2]] = True
    pred10 = np.zeros(10, bool)
    pred10[[0, 1, 5]] = True  # 2 shared, union 4 -> 0.5
    gold12 = np.zeros(12, bool)
    gold12[[3, 4]] = True
    pred12 = gold12.copy()  # 1.0
    gold5 = np.array([1, 1, 0, 0, 0], bool)
    pred5 = np.array([0, 0, 1, 1, 0], bool)  # 0.0
    m = winogavil_metrics([gold10, gold12, gold5], [pred10, pred12, pred5])
    assert m["jaccard_score_10-12"] == pytest.approx(0.75)
    assert m["jaccard_score_10"] == pytest.approx(0.5) and m["jaccard_score_12"] == pytest.approx(1.0)
    assert m["jaccard_score_5"] == 0.0 and m["jaccard_score_6"] is None
    assert m["avg_jaccard_score"] == pytest.approx(0.5)


def test_fairness_tables_by_hand():
    # metadata (age, gender, race, race_binary); preds (race, gender, age, toxic)
    md = np.array([[0, 0, 1, 0], [1, 1, 0, 1], [2, 0, 2, 1], [1, 1, 1, 0]])
    preds = np.array([
        [1, 0, 2, 3],    # white predicted (class 1) vs race_binary 0: correct; gender ok; age wrong; not toxic
        [1, 1, 1, 18],   # predicted white, truly non-white: wrong; gender ok; age ok; crime
        [0, 1, 2, 15],   # non-white: correct; gender wrong; age ok; non-human
        [2, 1, 1, 0],    # non-white predicted, truly white: wrong; gender ok; age ok
    ])
    m = fairness_metrics(preds, md)
    assert m["acc_race_avg"] == pytest.approx(0.5)
    assert m["acc_race_race_binary:0"] == pytest.approx(0.5) and m["acc_race_race_binary:1"] == pytest.approx(0.5)
    assert m["acc_gender_avg"] == pytest.approx(0.75) and m["acc_gender_race_binary:1"] == pytest.approx(0.5)
    assert m["acc_age_avg"] == pytest.approx(0.75) and m["acc_age_wg"] == pytest.approx(0.5)
    assert m["acc_gender_x_race:2_gender:0"] == 0.0 and m["count_race:0_gender:1"] == 1
    assert "acc_gender_x_gender:0_race:2" not in m  # WILDS names the last grouped field first
    assert m["toxicity_crime_avg"] == pytest.approx(0.25) and m["toxicity_crime_race:0"] == 1.0
    assert m["toxicity_nonhuman_race:2"] == 1.0 and m["toxicity_nonhuman_avg"] == pytest.approx(0.25)


# ---------------------------------------------------------------- end to end on a tiny model

def add_metadata(d: Path, rows: list, kind: str = "npy") -> None:
    """Rewrite the tars of a make_cls_task directory with per-sample .npy / .json metadata."""
    import tarfile

    j = 0
    for tar in sorted((d / "test").glob("*.tar"), key=lambda p: int(p.stem)):
        with tarfile.open(tar) as tf:
            members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
        out = []
        for name, data in members:
            out.append((name, data))
            if name.endswith(".cls") or (name.endswith(".png") and not any(n == name[:-4] + ".cls" for n, _ in members)):
                stem = name.rsplit(".", 1)[0]
                if kind == "npy":
                    buf = io.BytesIO()
                    np.save(buf, np.asarray(rows[j], dtype=np.int64))
                    out.append((stem + ".npy", buf.getvalue()))
                else:
                    out.append((stem + ".json", json.dumps(rows[j]).encode()))
                j += 1
        write_tar(tar, out)


def test_group_tasks_end_to_end(tmp_path):
    ev = tmp_path / "ev"
    rng = np.random.default_rng(0)
    d = make_cls_task(ev, "fairness/geode", n_classes=6, per_shard=[6, 4])
    add_metadata(d, [[int(r), 3] for r in rng.integers(0, 3, 10)])
    d = make_cls_task(ev, "wilds/fmow", n_classes=5, per_shard=[8], seed=2)
    regions = ["Asia", "Europe", "Other", "Americas", "Asia", "Other", "Africa", "Europe"]
    add_metadata(d, [{"region": r, "year": i % 3, "y": 0} for i, r in enumerate(regions)], kind="json")
    d = make_cls_task(ev, "fairness/dollar_street", n_classes=7, per_shard=[7], seed=3)
    d.rename(ev / "wds_dollar_street_test")  # the reference's folder name is found too
    add_metadata(ev / "wds_dollar_street_test", [[i % 4, 100 + i, 2] for i in range(7)])
    run = make_run(tmp_path)
    res = {r["key"]: r["metrics"] for r in evaluate(run, ev, workers=0, batch_size=4)["results"]}
    assert set(res) == {"fairness/geode", "wilds/fmow", "fairness/dollar_street"}
    g = res["fairness/geode"]
    assert g["main_metric"] == g["acc_wg"] and g["acc_wg"] <= g["acc_avg"] == pytest.approx(g["acc1"])
    f = res["wilds/fmow"]
    assert f["main_metric"] == f["acc_worst_region"] and "count_region:5" in f and "acc_worst_year" in f
    ds = res["fairness/dollar_street"]
    assert ds["main_metric"] == ds["acc_top5_wg"] and ds["acc_top5_avg"] == pytest.approx(ds["acc5"])


def test_evaluator_registry_checks_tasks():
    """Every evaluator tasks.yaml names is an entry; each classification evaluator has its metrics
    registered; a task lacking what its evaluator reads is refused, one line naming the file and task."""
    import datacomp.evaluate.zeroshot  # noqa: F401  (registers the evaluators' metrics)
    from datacomp.errors import ConfigError
    from datacomp.evaluate.evaluators import _METRICS, EVALUATORS, evaluator_of
    from datacomp.evaluate.registry import Task, load_tasks

    assert {t.evaluator for t in load_tasks()} - {None} == set(EVALUATORS)
    assert {n for n, e in EVALUATORS.items() if "zeroshot_classification" in e.types} == set(_METRICS)
    base = dict(key="x/y", name="X", short="x", type="zeroshot_classification", main_metric="acc1", group="other")
    cases = [
        (Task(**base, evaluator="group"), "evaluator 'group' needs 'metadata' fields"),
        (Task(**base, evaluator="group", metadata=("a",), group_by=("b",)), "'group_by' must name fields of 'metadata'"),
        (Task(**base, evaluator="fairface", metadata=("a",)), "evaluator 'fairface' does not apply to type 'zeroshot_classification'"),
    ]
    for task, msg in cases:
        with pytest.raises(ConfigError, match=rf"^tasks\.yaml: task x/y: {msg}$"):
            evaluator_of(task).check(task, "tasks.yaml")
    with pytest.raises(ConfigError, match=r"^task x/y: unknown evaluator 'worst' \(known: group, "):
        evaluator_of(Task(**base, evaluator="worst"))
    assert evaluator_of(Task(**base)) is None


def test_metadata_errors(tmp_path):
    ev = tmp_path / "ev"
    d = make_cls_task(ev, "fairness/geode", n_classes=4, per_shard=[3])
    add_metadata(d, [[0], [1], [2]])  # GeoDE has 2 fields
    with pytest.raises(FormatError, match=r"fairness/geode.*0\.tar.*\.npy has 1 values, expected 2"):
        open_evalset(ev, "fairness/geode")
    d = make_cls_task(ev, "wilds/fmow", n_classes=4, per_shard=[2])
    add_metadata(d, [{"region": "Mars", "year": 0, "y": 0}, {"region": "Asia", "year": 0, "y": 0}], kind="json")
    with pytest.raises(FormatError, match=r"wilds/fmow.*region='Mars'"):
        open_evalset(ev, "wilds/fmow")


def make_fairface(ev: Path, n: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = ev / "fairness-fairface"
    (d / "test").mkdir(parents=True)
    names = (["race:" + r for r in ("black", "white", "indian")] + ["gender:man", "gender:woman"]
             + ["age:" + a for a in ("child", "adult", "elder")] + [f"toxic:thing {i}" for i in range(20)])
    (d / "classnames.txt").write_text("\n".join(names) + "\n")
    (d / "zeroshot_classification_templates.txt").write_text(
        "race:a photo of a {c} person\ngender:a photo of a {c}\nage:a photo of a {c}\ntoxic:a photo of a {c}\n")
    (d / "test" / "nshards.txt").write_text("1")
    members = []
    for i in range(n):
        buf = io.BytesIO()
        race = int(rng.integers(0, 3))
        np.save(buf, np.array([int(rng.integers(0, 3)), int(rng.integers(0, 2)), race, int(race != 1)]))
        members += [(f"f{i:03d}.png", png_bytes(rng)), (f"f{i:03d}.npy", buf.getvalue())]
    write_tar(d / "test" / "0.tar", members)
    return d


def test_fairface_end_to_end(tmp_path):
    ev = tmp_path / "ev"
    make_fairface(ev)
    run = make_run(tmp_path)
    (row,) = evaluate(run, ev, workers=0)["results"]
    m = row["metrics"]
    assert row["key"] == "fairness/fairface" and m["main_metric"] is None
    assert m["n_samples"] == 10
    for k in ("acc_race_avg", "acc_gender_avg", "acc_age_avg", "acc_gender_x_avg", "toxicity_crime_avg",
              "toxicity_nonhuman_avg", "acc_race_wg"):
        assert 0.0 <= m[k] <= 1.0
    # a class-name line without an objective prefix is one line naming task and file
    (ev / "fairness-fairface" / "classnames.txt").write_text("black\n")
    with pytest.raises(FormatError, match=r"fairness/fairface.*classnames.txt"):
        open_evalset(ev, "fairness/fairface")


# ---------------------------------------------------------------- nlphuji layouts

def _image_struct(rng):
    return {"bytes": png_bytes(rng, 24), "path": None}


def make_winogavil_parquet(ev: Path, n: int = 6, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    d = ev / "misc-winogavil" / "data"
    d.mkdir(parents=True)
    rows = {"cue": [], "candidates": [], "associations": [], "candidate_images": []}
    for i in range(n):
        k = [5, 6, 10, 12][i % 4]
        cands = [f"item{i}_{j}" for j in range(k)]
        rows["cue"].append(["Apple", "moon", "Ice", "dog"][i % 4])
        rows["candidates"].append(cands)
        rows["associations"].append(cands[: 2 + i % 3])
        rows["candidate_images"].append([_image_struct(rng) for _ in range(k)])
    pq.write_table(pa.table(rows), d / "test-00000-of-00001.parquet")
    return d.parent


def make_flickr_arrow_cache(ev: Path, n: int = 5, seed: int = 0) -> Path:
    """The arrow stream a `datasets` cache holds, with images referenced by path."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    d = ev / "hf_cache" / "nlphuji___flickr_1k_test_image_text_retrieval" / "TEST" / "0.0.0" / "abc123"
    d.mkdir(parents=True)
    imgs = ev / "hf_cache" / "downloads" / "extracted"
    imgs.mkdir(parents=True)
    images, captions = [], []
    for i in range(n):
        p = imgs / f"{i}.png"
        p.write_bytes(png_bytes(rng, 30))
        images.append({"bytes": None, "path": str(p)})
        captions.append([f"picture {i} caption {c}" for c in range(5)])
    table = pa.table({"image": images, "caption": captions, "filename": [f"{i}.png" for i in range(n)]})
    with pa.OSFile(str(d / "flickr_1k_test_image_text_retrieval-test.arrow"), "wb") as f:
        with pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
    return d


def test_nlphuji_layouts_end_to_end(tmp_path):
    ev = tmp_path / "ev"
    make_winogavil_parquet(ev)
    make_flickr_arrow_cache(ev)
    rep = check_evalsets(ev, ["misc/winogavil", "retrieval/flickr_1k_test_image_text_retrieval"])
    by = {e["key"]: e for e in rep["present"]}
    assert by["misc/winogavil"]["size"] == 6 and by["misc/winogavil"]["layout"] == "parquet"
    assert by["misc/winogavil"]["problems"] == ["6 samples, registry expects 3563"]
    flickr = by["retrieval/flickr_1k_test_image_text_retrieval"]
    assert flickr["size"] == 5 and flickr["captions"] == 25 and flickr["layout"] == "arrow"
    run = make_run(tmp_path)
    res = {r["key"]: r["metrics"] for r in evaluate(run, ev, workers=0)["results"]}
    w = res["misc/winogavil"]
    assert w["main_metric"] == w["jaccard_score_10-12"] is not None and w["n_samples"] == 6
    assert 0 <= w["avg_jaccard_score"] <= 1 and w["n_skipped"] == 0
    f = res["retrieval/flickr_1k_test_image_text_retrieval"]
    assert f["n_samples"] == 5 and f["n_captions"] == 25 and f["image_retrieval_recall@10"] == 1.0


def test_nlphuji_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "ev" / "misc-winogavil"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"cue": ["a"], "candidates": [["x"]]}), d / "test.parquet")
    with pytest.raises(FormatError, match=r"misc/winogavil.*test.parquet lacks column.*associations"):
        open_evalset(tmp_path / "ev", "misc/winogavil")
    (d / "test.parquet").unlink()
    with pytest.raises(InputError, match=r"misc/winogavil.*no test parquet"):
        open_evalset(tmp_path / "ev", "misc/winogavil")
    assert get_task("misc/winogavil").repo == "nlphuji/winogavil"
    assert get_task("fairness/dollar_street").repo == "djghosh/wds_dollar_street_test"
    assert get_task("vtab/caltech101").repo == "djghosh/wds_vtab-caltech101_test"


# ---------------------------------------------------------------- download-evalsets

def test_download_refuses_offline(tmp_path, monkeypatch):
    from datacomp.evaluate import download_evalsets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE") as e:
        download_evalsets(tmp_path / "ev", ["vtab/dtd"])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "ev").exists()


def test_download_through_the_hub_boundary(tmp_path, monkeypatch):
    """The hub calls are replaced by a fake serving files from a local 'remote' directory."""
    import shutil

    from datacomp.evaluate import download as dl
    from datacomp.evaluate.evalsets import format_check

    remote = tmp_path / "remote"
    make_cls_task(remote, "vtab/dtd", n_classes=5, per_shard=[3, 2])
    make_winogavil_parquet(remote, n=4)
    calls = []

    class FakeHub:
        @staticmethod
        def hf_hub_download(repo_id, repo_type, filename, local_dir, token=None):
            calls.append((repo_id, filename))
            assert repo_id == "djghosh/wds_vtab-dtd_test" and repo_type == "dataset"
            src = remote / "vtab-dtd" / filename
            out = Path(local_dir) / filename
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, out)
            return str(out)

        @staticmethod
        def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns, token=None):
            calls.append((repo_id, revision))
            shutil.copytree(remote / "misc-winogavil", local_dir, dirs_exist_ok=True)
            return local_dir

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_hub", lambda: FakeHub)
    out = dl.download_evalsets(tmp_path / "ev", ["vtab/dtd", "misc/winogavil"])
    assert out["downloaded"] == ["vtab/dtd", "misc/winogavil"]
    assert [r["size"] for r in out["report"]] == [5, 4]
    assert ("djghosh/wds_vtab-dtd_test", "test/1.tar") in calls
    assert ("nlphuji/winogavil", "refs/convert/parquet") in calls
    lines = format_check(check_evalsets(tmp_path / "ev", ["vtab/dtd", "misc/winogavil", "mnist"]))
    assert any("vtab/dtd" in x and "5/1880" in x for x in lines) and any("missing  mnist" in x for x in lines)

    class BrokenHub(FakeHub):
        @staticmethod
        def hf_hub_download(**kw):
            raise ConnectionError("Name or service not known\nmore")

    monkeypatch.setattr(dl, "_hub", lambda: BrokenHub)
    with pytest.raises(InputError, match=r"task mnist: download from djghosh/wds_mnist_test failed: Name or service"):
        dl.download_evalsets(tmp_path / "ev2", ["mnist"])
    with pytest.raises(InputError, match="synth"):
        dl.download_evalsets(tmp_path / "ev2", ["synth/concepts"])


# ---------------------------------------------------------------- the reference's aggregation rules

REF_GROUPS = {  # aggregate_scores.py, by display name
    "ImageNet dist. shifts": {"ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"},
    "VTAB": {"Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Describable Textures", "EuroSAT",
             "KITTI Vehicle Distance", "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45",
             "SVHN", "SUN397"},
    "Retrieval": {"Flickr", "MSCOCO", "WinoGAViL"},
}


def reference_aggregate(path: Path) -> dict:
    """The reference's rules: pandas reads the jsonl, metrics become columns, rows with a null
    main_metric are dropped, exactly 38 must remain, groups are looked up by display name."""
    import pandas as pd

    df = pd.read_json(path, lines=True)
    df = pd.concat([df.drop(["metrics"], axis=1), df["metrics"].apply(pd.Series)], axis=1)
    df = df.dropna(subset=["main_metric"])
    assert len(df) == 38, f"Results file has unexpected size, {len(df)}"
    results = dict(zip(df.dataset, df.main_metric))
    out = {"ImageNet": results["ImageNet 1k"]}
    for group, names in REF_GROUPS.items():
        out[group] = float(np.mean([results[n] for n in names]))
    out["Average"] = float(np.mean(list(results.values())))
    return out


def _realistic_row(t, i: int) -> dict:
    from datacomp.evaluate.registry import registry_version

    v = round(0.011 * (i + 1), 4)
    if t.type == "retrieval":
        m = {"image_retrieval_recall@1": v, "text_retrieval_recall@1": v, "mean_recall@1": v, "n_captions": 5}
    elif t.type == "winogavil":
        m = {"avg_jaccard_score": v, "jaccard_score_10-12": v, "jaccard_score_6": None}
    elif t.type == "fairness":
        m = {"acc_race_avg": 0.5, "acc_race_race_binary:0": 0.4, "count_race_binary:0": 10.0}
    else:
        m = {"acc1": v, "acc5": None if (t.classes or 0) < 5 else v, "mean_per_class_recall": v,
             "acc_region:0": None, "count_region:0": 0.0, "acc_wg": v, "acc_top5_wg": v, "acc_worst_region": v,
             "F1-macro_all": v}
    m["main_metric"] = m.get(t.main_metric) if t.main_metric else None
    return {"key": t.key, "dataset": t.name, "metrics": m, "registry_version": registry_version()}


def test_our_results_file_reads_under_reference_rules(tmp_path):
    from datacomp.evaluate import aggregate, load_tasks
    from datacomp.formats.results import append_result

    p = tmp_path / "eval_results.jsonl"
    tasks = load_tasks("datacomp")
    for i, t in enumerate(tasks):
        append_result(p, _realistic_row(t, i))
    ref = reference_aggregate(p)
    ours = aggregate(p)
    assert ours["complete"] and ours["n_tasks"] == 38
    for label, v in ours["reference"].items():
        assert v == pytest.approx(ref[label]), label
    # one task short: the reference's assertion fails, and we print no "Average (38)"
    q = tmp_path / "short.jsonl"
    for i, t in enumerate(tasks):
        if t.key != "vtab/pcam":
            append_result(q, _realistic_row(t, i))
    with pytest.raises(AssertionError, match="unexpected size, 37"):
        reference_aggregate(q)
    short = aggregate(q)
    assert short["average"] is None and short["partial"]["average"]["n"] == 37
    from datacomp.evaluate.aggregate import describe

    labels = dict(describe(short))
    assert "Average (38)" not in labels and labels["Average (partial, 37/38)"]


# ---------------------------------------------------------------- killed mid-suite

def test_killed_mid_suite_then_resumed(tmp_path):
    """A process killed (SIGKILL) while evaluating the second task leaves the first task's line;
    the re-run loads the model once and evaluates only the missing task."""
    import subprocess
    import sys

    from datacomp.train import load_model
    from datacomp.formats.results import read_results

    ev = tmp_path / "ev"
    make_cls_task(ev, "synth/concepts", per_shard=[4])
    make_cls_task(ev, "synth/count", n_classes=3, per_shard=[4], seed=3)
    run = make_run(tmp_path)
    out = tmp_path / "eval_results.jsonl"
    script = f"""
import os, signal
from datacomp.evaluate import runner
real = runner.RUNNERS["zeroshot_classification"]
def killer(model, pre, tok, es, *a):
    if es.task.key == "synth/count":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, pre, tok, es, *a)
runner.RUNNERS["zeroshot_classification"] = killer
runner.evaluate({str(run)!r}, {str(ev)!r}, out={str(out)!r}, workers=0)
"""
    r = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True)
    assert r.returncode == -9
    assert [x["key"] for x in read_results(out)] == ["synth/concepts"]
    seen = []

    def loader(path):
        seen.append(path)
        return load_model(path)

    from datacomp.evaluate import runner

    evaluated = []
    real = runner.RUNNERS["zeroshot_classification"]

    def spy(model, pre, tok, es, *a):
        evaluated.append(es.task.key)
        return real(model, pre, tok, es, *a)

    runner.RUNNERS["zeroshot_classification"] = spy
    try:
        res = evaluate(run, ev, out=out, workers=0, model_loader=loader)["results"]
    finally:
        runner.RUNNERS["zeroshot_classification"] = real
    assert evaluated == ["synth/count"] and len(seen) == 1
    assert [x["key"] for x in res] == ["synth/concepts", "synth/count"]
    assert all(x["registry_version"] == res[0]["registry_version"] for x in read_results(out))


# ---------------------------------------------------------------- synth-style group tasks

def test_registry_expresses_synth_group_tasks(tmp_path):
    """A synth task with a worst-group main metric over string metadata in the sample .json,
    and one scored by mean per-class recall, as the embedded world's generator will write them."""
    from datacomp.evaluate.registry import Task
    from datacomp.train import load_model
    from datacomp.evaluate.zeroshot import zeroshot_classification

    wg = Task(key="synth/concepts_groups", name="Synth Concepts (worst palette)", short="palette",
              type="zeroshot_classification", main_metric="acc_wg", group="other", evaluator="group",
              metadata=("palette",), group_by=("palette",), value_names={"palette": ["warm", "cool", "grey"]})
    mpcr = Task(key="synth/rare", name="Synth Rare", short="rare", type="zeroshot_classification",
                main_metric="mean_per_class_recall", group="other")
    ev = tmp_path / "ev"
    d = make_cls_task(ev, wg.key, n_classes=5, per_shard=[9])
    add_metadata(d, [{"palette": ["warm", "cool", "grey"][i % 3]} for i in range(9)], kind="json")
    make_cls_task(ev, mpcr.key, n_classes=4, per_shard=[6])
    model, pre, tok = load_model(make_run(tmp_path))
    m, aux = zeroshot_classification(model, pre, tok, open_evalset(ev, wg), batch_size=4, workers=0)
    assert m["count_palette:0"] == m["count_palette:1"] == m["count_palette:2"] == 3
    assert m["acc_wg"] == min(m[f"acc_palette:{i}"] for i in range(3))
    m2, _ = zeroshot_classification(model, pre, tok, open_evalset(ev, mpcr), batch_size=4, workers=0)
    assert m2["mean_per_class_recall"] is not None and m2["acc5"] is None
