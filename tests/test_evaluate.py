"""Evaluation: registry, metrics arithmetic, wds eval sets, zero-shot path, resume, aggregation."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datacomp.errors import ConfigError, FormatError, InputError  # noqa: E402
from datacomp.evaluate import aggregate, check_evalsets, evaluate, get_task, load_tasks, open_evalset  # noqa: E402
from datacomp.evaluate.metrics import (  # noqa: E402
    classification_metrics,
    mean_per_class_recall,
    retrieval_metrics,
    topk_accuracy,
)
from datacomp.train import load_model  # noqa: E402
from datacomp.evaluate.registry import registry_version  # noqa: E402
from datacomp.evaluate.zeroshot import class_embeddings, zeroshot_retrieval  # noqa: E402
from datacomp.formats.results import append_result, read_results  # noqa: E402

# ---------------------------------------------------------------- helpers

TINY_CFG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "size": 32,
    },
}


def make_run(root: Path, seed: int = 0, module_prefix: bool = False) -> Path:
    """A training run dir with a random-init tiny open_clip model in open_clip's checkpoint format."""
    import open_clip

    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "model" / "open_clip_config.json").write_text(json.dumps(TINY_CFG))
    torch.manual_seed(seed)
    model = open_clip.create_model("local-dir:" + str(run / "model"), load_weights=False)
    sd = model.state_dict()
    if module_prefix:  # as DDP training writes it
        sd = {"module." + k: v for k, v in sd.items()}
    torch.save({"epoch": 1, "name": "tiny", "state_dict": sd}, run / "checkpoints" / "epoch_latest.pt")
    return run


def png_bytes(rng: np.random.Generator, size: int = 40) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def make_cls_task(
    evalsets: Path, key: str, n_classes: int = 6, per_shard: list[int] = (9, 7), seed: int = 0,
    bad_images: int = 0, labels: list[int] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    d = evalsets / key.replace("/", "-")
    (d / "test").mkdir(parents=True)
    (d / "classnames.txt").write_text("\n".join(f"shape {i}" for i in range(n_classes)) + "\n")
    (d / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of the {c}.\n")
    (d / "test" / "nshards.txt").write_text(f"{len(per_shard)}\n")
    j = 0
    for s, n in enumerate(per_shard):
        members = []
        for i in range(n):
            k = f"s{j:05d}"
            img = b"not an image" if j < bad_images else png_bytes(rng)
            lab = labels[j] if labels is not None else int(rng.integers(0, n_classes))
            members += [(f"{k}.png", img), (f"{k}.cls", f"{lab}".encode())]
            j += 1
        write_tar(d / "test" / f"{s}.tar", members)
    return d


def make_retrieval_task(evalsets: Path, key: str = "synth/retrieval", n: int = 8, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    d = evalsets / key.replace("/", "-")
    (d / "test").mkdir(parents=True)
    (d / "test" / "nshards.txt").write_text("1")
    members = []
    for i in range(n):
        caps = "\n".join(f"caption {c} of picture {i}" for c in range(2 + i % 2))
        members += [(f"r{i:04d}.jpg", _jpeg(rng)), (f"r{i:04d}.txt", caps.encode())]
    write_tar(d / "test" / "0.tar", members)
    return d


def _jpeg(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(36, 44, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------- registry

def test_registry_reference_tasks():
    ref = load_tasks("datacomp")
    assert len(ref) == 40
    assert sum(t.main_metric is not None for t in ref) == 38
    assert {t.key for t in ref if t.main_metric is None} == {"fairness/fairface", "fairness/utkface"}
    groups = {g: [t for t in ref if t.group == g and t.scored] for g in ("imagenet", "dist_shift", "vtab", "retrieval")}
    assert [t.key for t in groups["imagenet"]] == ["imagenet1k"]
    assert len(groups["dist_shift"]) == 6 and len(groups["vtab"]) == 13 and len(groups["retrieval"]) == 3
    assert get_task("sun397").group == "vtab"
    assert get_task("vtab/caltech101").main_metric == "mean_per_class_recall"
    assert get_task("misc/winogavil").main_metric == "jaccard_score_10-12"
    assert get_task("imagenet1k").name == "ImageNet 1k" and get_task("imagenet1k").size == 50000
    assert isinstance(registry_version(), int)


NEW_CONCEPT_TASKS = ("synth/concepts_v2", "synth/concepts_edge", "synth/concepts_pair", "synth/concepts_lowres", "synth/concepts_jpeg", "synth/concepts_object", "synth/concepts_small", "synth/concepts_crowd")


def test_registry_synth_suite():
    synth = {t.key: t for t in load_tasks("synth")}
    assert set(synth) == {"synth/concepts", "synth/concepts_style", "synth/concepts_clutter",
                          "synth/count", "synth/position", "synth/size", "synth/concepts_groups",
                          "synth/concepts_longtail", "synth/retrieval", *NEW_CONCEPT_TASKS}
    # DataComp's composition: most tasks recognise concepts, three are structured, retrieval is one
    kinds = [("concepts" in k) for k in synth]
    assert sum(kinds) / len(kinds) > 0.7
    # every metric family of the real suite runs in the embedded one
    mains = {t.main_metric for t in synth.values()}
    assert {"acc1", "acc_wg", "mean_per_class_recall", "mean_recall@1"} <= mains
    assert synth["synth/concepts"].group == "imagenet"
    assert synth["synth/concepts_style"].group == synth["synth/concepts_clutter"].group == "dist_shift"
    assert synth["synth/retrieval"].main_metric == "mean_recall@1"
    assert synth["synth/concepts"].dirname == "synth-concepts"
    with pytest.raises(ConfigError):
        get_task("nope")


# ---------------------------------------------------------------- metrics, by hand

def test_classification_metrics_by_hand():
    # 4 samples, 5 classes; labels 0,1,2,2
    logits = torch.tensor([
        [9., 1, 0, 0, 0],   # top1 0 (hit)
        [9., 1, 0, 0, 0],   # label 1: top1 miss, top2 hit
        [0., 0, 0, 1, 9],   # label 2: top1 miss; 5 classes, so always in the top 5
        [0., 0, 9, 0, 0],   # label 2: hit
    ])
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels, 5)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(1.0)
    # per-class recall: class0 1/1, class1 0/1, class2 1/2 -> mean 0.5
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    assert topk_accuracy(logits, labels, (2,)) == [pytest.approx(0.75)]
    # fewer than 5 classes -> acc5 is null
    m4 = classification_metrics(logits[:, :4], labels, 4)
    assert m4["acc5"] is None
    # classes only predicted, never true, do not count (sklearn balanced accuracy)
    assert mean_per_class_recall(np.array([0, 0, 1]), np.array([0, 3, 1])) == pytest.approx((0.5 + 1) / 2)


def test_retrieval_recalls_multiple_captions():
    # 3 images; captions 0,1 -> image 0; 2 -> image 1; 3,4 -> image 2
    t2i = torch.tensor([0, 0, 1, 2, 2])
    scores = torch.tensor([   # rows: captions, cols: images
        [0.9, 0.1, 0.0],      # cap0: image0 first (hit@1)
        [0.2, 0.8, 0.1],      # cap1: image1 first, image0 second (miss@1, hit@5)
        [0.1, 0.3, 0.7],      # cap2: image2 first (miss@1)
        [0.0, 0.1, 0.6],      # cap3: hit@1
        [0.5, 0.2, 0.4],      # cap4: image0 first (miss@1)
    ])
    m = retrieval_metrics(scores, t2i, ks=(1, 5))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)
    # image0's best caption = cap0 (gt) -> hit; image1's best = cap1 (0.8, not gt) -> miss;
    # image2's best = cap2 (0.7, not gt) -> miss
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["mean_recall@1"] == pytest.approx(0.5 * (2 / 5 + 1 / 3))


# ---------------------------------------------------------------- results file

def test_results_append_and_torn_line(tmp_path):
    p = tmp_path / "eval_results.jsonl"
    row = {"key": "synth/concepts", "dataset": "Synth Concepts", "metrics": {"acc1": 0.5, "main_metric": 0.5}}
    append_result(p, row)
    with open(p, "ab") as f:
        f.write(b'{"key": "synth/count", "dataset": "Synth Co')  # crash mid-line
    assert read_results(p) == [row]
    assert read_results(p, repair=True) == [row]
    assert p.read_text() == json.dumps(row) + "\n"
    # a complete last line that only lacks its newline is kept (repair adds the newline)
    p.write_text(json.dumps(row) + "\n" + json.dumps(row))
    assert len(read_results(p, repair=True)) == 2 and p.read_text().endswith("}\n")
    with pytest.raises(FormatError, match="plain JSON"):
        append_result(p, {"key": "x", "dataset": "x", "metrics": {"acc1": float("nan"), "main_metric": 0.1}})
    # a malformed line that is not the last is an error naming the file and line
    p.write_text("garbage\n" + json.dumps(row) + "\n")
    with pytest.raises(FormatError, match=r"eval_results.jsonl:1"):
        read_results(p)
    with pytest.raises(FormatError):
        append_result(p, {"key": "x", "dataset": "x", "metrics": {}})


# ---------------------------------------------------------------- aggregation

def _fake_reference_results(drop: str | None = None) -> list[dict]:
    rows = []
    for i, t in enumerate(load_tasks("datacomp")):
        if t.key == drop:
            continue
        mm = None if t.main_metric is None else round(0.01 * (i + 1), 4)
        rows.append({"key": t.key, "dataset": t.name, "metrics": {"main_metric": mm}})
    return rows


def test_aggregate_reference_numbers(tmp_path):
    rows = _fake_reference_results()
    by_name = {r["dataset"]: r["metrics"]["main_metric"] for r in rows}
    agg = aggregate(rows)
    assert agg["suite"] == "datacomp" and agg["complete"] and agg["n_tasks"] == 38
    # the reference script's sets, by display name
    shifts = ["ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"]
    vtab = ["Caltech-101", "CIFAR-100", "Describable Textures", "Oxford Flowers-102", "Oxford-IIIT Pet",
            "SUN397", "SVHN", "EuroSAT", "PatchCamelyon", "RESISC45", "CLEVR Counts", "CLEVR Distance",
            "KITTI Vehicle Distance"]
    retrieval = ["Flickr", "MSCOCO", "WinoGAViL"]
    scored = [v for v in by_name.values() if v is not None]
    assert agg["imagenet"] == pytest.approx(by_name["ImageNet 1k"])
    assert agg["dist_shift"] == pytest.approx(np.mean([by_name[n] for n in shifts]))
    assert agg["vtab"] == pytest.approx(np.mean([by_name[n] for n in vtab]))
    assert agg["retrieval"] == pytest.approx(np.mean([by_name[n] for n in retrieval]))
    assert agg["average"] == pytest.approx(np.mean(scored)) and len(scored) == 38
    assert agg["reference"]["Average"] == agg["average"]
    # from a file too
    p = tmp_path / "r.jsonl"
    for r in rows:
        append_result(p, r)
    assert aggregate(p)["average"] == pytest.approx(agg["average"])


def test_aggregate_refuses_37():
    rows = _fake_reference_results(drop="vtab/dtd")
    agg = aggregate(rows, suite="datacomp")
    assert not agg["complete"] and agg["average"] is None and agg["vtab"] is None
    assert agg["missing"] == ["vtab/dtd"]
    assert agg["partial"]["average"]["n"] == 37 and agg["partial"]["average"]["of"] == 38
    assert agg["partial"]["vtab"]["n"] == 12
    assert agg["imagenet"] is not None  # complete groups still reported
    with pytest.raises(InputError, match="38"):
        aggregate(rows, suite="datacomp", strict=True)
    # a null main metric on a scored task counts as missing (the reference drops null rows)
    rows = _fake_reference_results()
    rows[0]["metrics"]["main_metric"] = None
    assert aggregate(rows)["average"] is None


def test_aggregate_synth():
    vals = {"synth/concepts": 0.4, "synth/concepts_style": 0.2, "synth/concepts_clutter": 0.3,
            "synth/count": 0.5, "synth/position": 0.6, "synth/size": 0.7, "synth/concepts_groups": 0.15,
            "synth/concepts_longtail": 0.35, "synth/retrieval": 0.1}
    vals.update({k: 0.45 for k in NEW_CONCEPT_TASKS})
    rows = [{"key": k, "dataset": get_task(k).name, "metrics": {"main_metric": v}} for k, v in vals.items()]
    agg = aggregate(rows)
    assert agg["suite"] == "synth" and agg["complete"]
    assert agg["imagenet"] == pytest.approx(0.4)
    assert agg["dist_shift"] == pytest.approx((0.2 + 0.3 + 8 * 0.45) / 10)  # style, clutter and the eight variants
    assert agg["retrieval"] == pytest.approx(0.1)
    assert agg["other"] == pytest.approx(0.6)  # count, position, size: the attribute tasks alone
    assert agg["fairness"] == pytest.approx(0.15) and agg["vtab"] == pytest.approx(0.35)
    assert agg["average"] == pytest.approx(np.mean(list(vals.values())))
    assert aggregate(rows[:-1])["average"] is None


# ---------------------------------------------------------------- eval sets: bad input

def test_check_evalsets_report(tmp_path):
    ev = tmp_path / "ev"
    make_cls_task(ev, "synth/concepts")
    make_retrieval_task(ev)
    (ev / "something-else").mkdir()
    rep = check_evalsets(ev)
    assert [e["key"] for e in rep["present"]] == ["synth/concepts", "synth/retrieval"]
    assert set(rep["missing"]) == {"synth/concepts_style", "synth/concepts_clutter", "synth/count", "synth/position",
                                   "synth/size", "synth/concepts_groups", "synth/concepts_longtail", *NEW_CONCEPT_TASKS}
    assert rep["unknown_dirs"] == ["something-else"]
    concepts = rep["present"][0]
    assert concepts["size"] == 16 and concepts["classes"] == 6 and concepts["shards"] == 2
    assert rep["present"][1]["captions"] == 8 * 2 + 4
    # the synth stage's tasks.json fills in sizes the registry leaves open
    (ev / "tasks.json").write_text(json.dumps({"synth/concepts": {"n": 17, "num_classes": 6}}))
    rep = check_evalsets(ev, ["synth/concepts"])
    assert rep["present"][0]["problems"] == ["16 samples, tasks.json expects 17"]


def test_bad_evalsets(tmp_path):
    ev = tmp_path / "ev"
    d = make_cls_task(ev, "synth/concepts")
    (d / "classnames.txt").unlink()
    with pytest.raises(InputError, match=r"synth/concepts.*classnames.txt"):
        open_evalset(ev, "synth/concepts")

    d = make_cls_task(ev, "synth/count")
    (d / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(InputError, match=r"synth/count.*zeroshot_classification_templates.txt"):
        open_evalset(ev, "synth/count")

    d = make_cls_task(ev, "synth/position")
    (d / "test" / "nshards.txt").write_text("3")
    with pytest.raises(FormatError, match=r"synth/position.*nshards.txt says 3"):
        open_evalset(ev, "synth/position")

    make_cls_task(ev, "synth/concepts_style", n_classes=3, per_shard=[4], labels=[0, 1, 3, 2])
    with pytest.raises(FormatError, match=r"synth/concepts_style.*0\.tar.*label 3 outside 0\.\.2") as e:
        open_evalset(ev, "synth/concepts_style")
    assert "\n" not in str(e.value)


def test_undecodable_images_skipped(tmp_path):
    ev = tmp_path / "ev"
    make_cls_task(ev, "synth/concepts", per_shard=[6], bad_images=2)
    run = make_run(tmp_path)
    res = evaluate(run, ev, workers=0)["results"]
    assert [r["key"] for r in res] == ["synth/concepts"]
    m = res[0]["metrics"]
    assert m["n_skipped"] == 2 and m["n_samples"] == 4


# ---------------------------------------------------------------- zero-shot with a tiny model

def test_zeroshot_matches_direct_computation(tmp_path):
    from PIL import Image

    ev = tmp_path / "ev"
    make_cls_task(ev, "synth/concepts", n_classes=6, per_shard=[9, 7])
    make_retrieval_task(ev)
    run = make_run(tmp_path, module_prefix=True)
    res = evaluate(run, ev, batch_size=5, workers=2)["results"]
    assert [r["key"] for r in res] == ["synth/concepts", "synth/retrieval"]
    lines = read_results(run / "eval_results.jsonl")
    assert [line["key"] for line in lines] == ["synth/concepts", "synth/retrieval"]
    assert lines[0]["dataset"] == "Synth Concepts" and lines[0]["registry_version"] == registry_version()

    # direct computation, no DataLoader, one image at a time
    model, preprocess, tok = load_model(run)
    es = open_evalset(ev, "synth/concepts")
    with torch.no_grad():
        per_class = []
        for c in es.classnames:
            e = model.encode_text(tok([t.replace("{c}", c) for t in es.templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.mean(0)
            per_class.append(e / e.norm())
        W = torch.stack(per_class, dim=1)
        assert torch.allclose(W, class_embeddings(model, tok, es.classnames, es.templates), atol=1e-5)
        correct = 0
        for s in es.samples:
            with open(es.shards[s.shard], "rb") as f:
                f.seek(s.offset)
                img = Image.open(io.BytesIO(f.read(s.size)))
                x = preprocess(img).unsqueeze(0)
            feat = model.encode_image(x)
            feat = feat / feat.norm(dim=-1, keepdim=True)
            pred = int((100 * feat @ W).argmax())
            correct += pred == s.label
    m = res[0]["metrics"]
    assert m["acc1"] == pytest.approx(correct / es.size)
    assert m["main_metric"] == m["acc1"] and m["acc5"] is not None and m["n_samples"] == 16

    # retrieval path: metrics consistent with the returned score matrix
    rs = open_evalset(ev, "synth/retrieval")
    rm, aux = zeroshot_retrieval(model, preprocess, tok, rs, batch_size=3, workers=0)
    assert aux["scores"].shape == (20, 8)
    assert rm["mean_recall@1"] == pytest.approx(res[1]["metrics"]["mean_recall@1"], abs=1e-6)
    assert rm == retrieval_metrics(aux["scores"], aux["text_to_image"]) | {
        "n_samples": 8, "n_captions": 20, "n_skipped": 0}


def test_resume_skips_done_tasks_and_repairs_torn_line(tmp_path):
    ev = tmp_path / "ev"
    make_cls_task(ev, "synth/concepts", per_shard=[5])
    make_cls_task(ev, "synth/count", n_classes=3, per_shard=[4], seed=3)
    run = make_run(tmp_path)
    out = tmp_path / "res" / "eval.jsonl"
    calls = []

    def loader(r):
        calls.append(r)
        return load_model(r)

    first = evaluate(run, ev, out=out, tasks=["synth/concepts"], model_loader=loader, workers=0)["results"]
    assert len(first) == 1 and len(calls) == 1
    with open(out, "ab") as f:
        f.write(b'{"key": "synth/count", "metr')  # torn line from a crash
    second = evaluate(run, ev, out=out, model_loader=loader, workers=0)["results"]
    assert [r["key"] for r in second] == ["synth/concepts", "synth/count"]
    assert second[0] == first[0] and len(calls) == 2
    assert second[1]["metrics"]["acc5"] is None  # 3 classes
    assert [r["key"] for r in read_results(out)] == ["synth/concepts", "synth/count"]
    # everything done: no model load at all
    third = evaluate(run, ev, out=out, model_loader=loader, workers=0)["results"]
    assert third == second and len(calls) == 2


def test_evaluate_errors_before_model_load(tmp_path):
    ev = tmp_path / "ev"
    d = make_cls_task(ev, "synth/concepts", per_shard=[3])
    (d / "test" / "1.tar").write_bytes(b"")
    calls = []
    with pytest.raises(FormatError, match="nshards"):
        evaluate(tmp_path / "norun", ev, model_loader=lambda r: calls.append(r))
    assert not calls
    with pytest.raises(InputError, match="synth/position"):
        evaluate(tmp_path / "norun", ev, tasks=["synth/position"], model_loader=lambda r: calls.append(r))
    make_cls_task(ev, "wilds/fmow", per_shard=[2])  # no per-sample .npy metadata
    with pytest.raises(FormatError, match=r"wilds/fmow.*0\.tar.*no \.npy or \.json metadata"):
        evaluate(tmp_path / "norun", ev, tasks=["wilds/fmow"], model_loader=lambda r: calls.append(r))
    assert not calls
    import shutil
    shutil.rmtree(ev / "wilds-fmow")
    (ev / "synth-concepts" / "test" / "1.tar").unlink()
    with pytest.raises(InputError, match="norun: training run directory does not exist"):
        evaluate(tmp_path / "norun", ev, model_loader=load_model)
    (tmp_path / "norun").mkdir()
    with pytest.raises(InputError, match="norun.*open_clip_config.json"):
        evaluate(tmp_path / "norun", ev, model_loader=load_model)
    run = make_run(tmp_path)
    (run / "checkpoints" / "epoch_latest.pt").unlink()
    with pytest.raises(InputError, match="epoch_latest.pt"):
        evaluate(run, ev, model_loader=load_model)["results"]
