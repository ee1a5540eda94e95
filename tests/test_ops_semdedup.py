"""semdedup (SemDeDup) on hand-made embeddings: exact and near duplicates at the threshold, a
cluster of one, all rows identical, the keep preference; the stage's units, a killed re-run, and
bad input (NaN rows, a dimension other than the centroids')."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp.errors import FormatError
from datacomp.filters import run_filter
from datacomp.filters.ops.semdedup import SemDeDup, dedup_cluster, earlier_matches, is_duplicate
from datacomp.filters.registry import OpParamError
from datacomp.formats.pool import write_metadata


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_exact_and_near_duplicates_at_the_threshold():
    base = unit([1.0, 0.0, 0.0])
    # a row at cosine exactly cos(theta) from base, theta chosen around the threshold 1 - eps
    def at(cos, side=1.0):
        return unit([cos, side * np.sqrt(1 - cos * cos), 0.0])
    x = np.stack([base, base, at(0.995), at(0.985, -1.0), unit([0.0, 0.0, 1.0])])
    centroid = base
    dup, match, sim = dedup_cluster(x, centroid, eps=0.01, keep="closest")
    # closest to the centroid first: base (rows 0, 1: stable order), then 0.995, 0.985, the far one
    assert dup.tolist() == [1, 2] and match.tolist() == [0, 0]
    assert sim[0] == pytest.approx(1.0, abs=1e-6) and sim[1] == pytest.approx(0.995, abs=1e-5)
    # eps just below / above 1 - 0.985: the 0.985 row flips
    assert 3 not in dedup_cluster(x, centroid, eps=0.0149, keep="closest")[0].tolist()
    assert 3 in dedup_cluster(x, centroid, eps=0.0151, keep="closest")[0].tolist()


def test_farthest_first_keeps_the_farthest_and_score_keeps_the_best():
    centroid = unit([1.0, 0.0])
    x = unit([[1.0, 0.001], [1.0, 0.01], [1.0, 0.02]])  # nearly identical; row 2 is farthest
    dup, match, _ = dedup_cluster(x, centroid, eps=0.01, keep="farthest")
    assert sorted(dup.tolist()) == [0, 1] and set(match.tolist()) <= {2, 1}
    dup, _, _ = dedup_cluster(x, centroid, eps=0.01, keep="score", score=np.array([0.1, 0.9, 0.5]))
    assert sorted(dup.tolist()) == [0, 2]  # row 1 has the best score


def test_cluster_of_one_and_all_identical():
    one = unit([[0.3, 0.4]])
    assert dedup_cluster(one, one[0], eps=0.5, keep="farthest")[0].size == 0
    same = np.repeat(unit([[0.6, 0.8]]), 7, axis=0)
    dup, match, sim = dedup_cluster(same, same[0], eps=1e-6, keep="farthest")
    assert len(dup) == 6 and np.allclose(sim, 1.0) and len(set(range(7)) - set(dup.tolist())) == 1


def test_blocked_search_is_the_full_gram_matrix():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 8)))
    import datacomp.filters.ops.semdedup as sd

    old = sd.BLOCK_CELLS
    sd.BLOCK_CELLS = 300 * 16  # blocks of 16 columns
    try:
        arg, best = earlier_matches(x, 0.9)
    finally:
        sd.BLOCK_CELLS = old
    g = x @ x.T
    for j in (1, 17, 299):
        assert best[j] == pytest.approx(g[:j, j].max(), abs=1e-6) and arg[j] == np.argmax(g[:j, j])


def test_bad_parameters():
    with pytest.raises(OpParamError, match="'score'"):
        SemDeDup(keep="score")
    with pytest.raises(OpParamError, match="'eps'"):
        SemDeDup(eps=-0.1)
    with pytest.raises(OpParamError, match="'keep'"):
        SemDeDup(keep="first")


# ---- the stage -----------------------------------------------------------------------------------

N_SHARD = 30


def make_pool(root: Path) -> tuple[Path, set[str]]:
    """Three shards of 30 rows in 3 well-separated groups; 12 rows are copies (some exact, some
    at cosine ~0.9999) of rows in other shards. Returns (pool, the copies' uids)."""
    rng = np.random.default_rng(7)
    centers = np.eye(16, dtype=np.float32)[:3]
    emb = unit(centers[rng.integers(0, 3, 3 * N_SHARD)] + rng.normal(0, 0.3, (3 * N_SHARD, 16)))
    uids = [f"{i:032x}" for i in range(3 * N_SHARD)]
    copies = set()
    for j, i in enumerate(range(5, 3 * N_SHARD, 7)):  # row i copies row (i + 31) % N
        src = (i + 31) % (3 * N_SHARD)
        emb[i] = emb[src] if j % 2 else unit(emb[src] + 0.003 * rng.normal(size=16))
        copies.add((i, src))
    for s in range(3):
        rows = slice(s * N_SHARD, (s + 1) * N_SHARD)
        write_metadata(root / "metadata" / f"{s:08d}.parquet", pa.table({
            "uid": pa.array(uids[rows]), "text": pa.array(["a photo"] * N_SHARD),
            "clip_l14_similarity_score": pa.array(rng.uniform(0.1, 0.3, N_SHARD).astype(np.float32))}))
        np.savez(root / "metadata" / f"{s:08d}.npz", l14_img=emb[rows].astype(np.float16))
    return root, copies


RECIPE = """name: sd_test
description: semdedup in small units
params: {eps: 0.001}
steps:
  - op: kmeans
    key: l14_img
    num_clusters: 3
  - op: semdedup
    eps: ${eps}
    unit_rows: 20
  - op: row_mask
    mask: semdedup
keep: [semdedup_keep == true]
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdpool")
    (root / "sd.yaml").write_text(RECIPE)
    return make_pool(root / "pool") + (root / "sd.yaml",)


def test_stage_removes_the_copies_across_shards(pool, tmp_path):
    root, copies, recipe = pool
    m = run_filter(root, recipe, tmp_path / "s.npy", workers=1, cache_dir=tmp_path / "c" / "scores")
    g = m["globals"]
    assert g["semdedup_units"] >= 2  # the clusters were split into several units
    t = pq.read_table(g["semdedup_duplicates"]).to_pydict()
    found = {(int(u, 16), int(k, 16)) for u, k in zip(t["uid"], t["kept_uid"])}
    pairs = {frozenset(p) for p in found}
    assert pairs == {frozenset(p) for p in copies}  # every copy, nothing else
    assert m["counts"]["kept"] == 3 * N_SHARD - len(copies)
    # a kill after the map pass: the re-run resumes and gives the same subset
    shutil.rmtree(tmp_path / "c")
    out2 = tmp_path / "s2.npy"
    import datacomp.filters.ops.semdedup as sd

    real = sd.semdedup_unit
    calls = []

    def dies(*a, **k):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    sd.semdedup_unit = dies
    try:
        with pytest.raises(KeyboardInterrupt):
            run_filter(root, recipe, out2, workers=1, executor="local", cache_dir=tmp_path / "c" / "scores")
    finally:
        sd.semdedup_unit = real
    assert not out2.exists()
    m2 = run_filter(root, recipe, out2, workers=1, cache_dir=tmp_path / "c" / "scores")
    assert out2.read_bytes() == (tmp_path / "s.npy").read_bytes() and m2["counts"] == m["counts"]


def test_bad_embeddings_are_one_line_errors(pool, tmp_path):
    root, _, recipe = pool
    p = tmp_path / "p"
    shutil.copytree(root / "metadata", p / "metadata")
    z = dict(np.load(p / "metadata" / "00000001.npz"))
    z["l14_img"][4] = np.nan
    np.savez(p / "metadata" / "00000001.npz", **z)
    with pytest.raises(FormatError, match=r"00000001\.npz: npz key 'l14_img' has NaN"):  # kmeans reads it first
        run_filter(p, recipe, tmp_path / "x.npy", workers=1, cache_dir=tmp_path / "c1")
    for dim, bad in ((16, r"00000001\.npz: npz key 'l14_img' has 1 rows with NaN or infinite values \(first: row 4\)"),
                     (5, r"00000000\.npz: npz key 'l14_img' has dimension 16, the centroids 5")):
        np.save(tmp_path / f"cent{dim}.npy", np.eye(dim, dtype=np.float32)[:3])  # centroids given: no k-means
        (tmp_path / f"r{dim}.yaml").write_text(recipe.read_text().replace("num_clusters: 3", f"centroids: {tmp_path / f'cent{dim}.npy'}"))
        with pytest.raises(FormatError, match=bad):
            run_filter(p, tmp_path / f"r{dim}.yaml", tmp_path / f"y{dim}.npy", workers=1, cache_dir=tmp_path / f"c{dim}")


# ---- the sweep table (matches.parquet) --------------------------------------------------------------

def test_matches_table_holds_the_sweep_candidates_down_to_the_floor(tmp_path):
    """One cluster in index order (the given centroid is orthogonal to every row): an exact copy
    (removed), a near copy at cosine 0.995 (kept: below 1 - eps, above the floor 0.99), a row at
    0.894 (below the floor: absent) and an orthogonal one; the rows span two shards."""
    e = np.eye(16, dtype=np.float32)
    a, near, far, ortho = e[0], unit(e[0] + 0.1 * e[1]), unit(e[0] + 0.5 * e[2]), e[3]
    shards = [[("a", a), ("far", far)], [("copy", a), ("near", near), ("ortho", ortho)]]
    uid = {name: f"{i:032x}" for i, name in enumerate(["a", "far", "copy", "near", "ortho"])}
    name = {u: n for n, u in uid.items()}
    pool = tmp_path / "pool"
    for s, rows in enumerate(shards):
        write_metadata(pool / "metadata" / f"{s:08d}.parquet",
                       pa.table({"uid": pa.array([uid[n] for n, _ in rows]), "text": pa.array(["x"] * len(rows))}))
        np.savez(pool / "metadata" / f"{s:08d}.npz", l14_img=np.stack([v for _, v in rows]).astype(np.float16))
    np.save(tmp_path / "cent.npy", e[5:6])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("num_clusters: 3", f"centroids: {tmp_path / 'cent.npy'}")
                      .replace("eps: ${eps}", "eps: ${eps}\n    sweep_floor: ${floor}").replace("eps: 0.001", "eps: 0.0001, floor: 0.99"))
    m = run_filter(pool, recipe, tmp_path / "s.npy", workers=1, cache_dir=tmp_path / "c" / "scores")
    g = m["globals"]
    assert g["semdedup_sweep_floor"] == 0.99 and g["semdedup_matches_rows"] == 2
    t = pq.read_table(g["semdedup_matches"]).to_pydict()
    assert [(name[u], name[k]) for u, k in zip(t["uid"], t["match_uid"])] == [("copy", "a"), ("near", "a")]  # shard, row order
    assert t["similarity"][0] == pytest.approx(1.0, abs=1e-3) and t["similarity"][1] == pytest.approx(0.995, abs=1e-3)
    assert t["cluster"] == [0, 0]
    d = pq.read_table(g["semdedup_duplicates"]).to_pydict()
    assert [(name[u], name[k]) for u, k in zip(d["uid"], d["kept_uid"])] == [("copy", "a")]  # the removal rule is unchanged
    assert m["counts"]["kept"] == 4
    # the table's rows above the threshold are the removals (the rule the report's sweep uses)
    assert [u for u, s in zip(t["uid"], is_duplicate(t["similarity"], g["semdedup_threshold"])) if s] == d["uid"]
    # a lower floor: the 0.894 row joins (its best earlier match is 'a'); the masks and removals do not change
    low = tmp_path / "low.yaml"
    low.write_text(recipe.read_text().replace("floor: 0.99", "floor: 0.8"))
    m2 = run_filter(pool, low, tmp_path / "s2.npy", workers=1, cache_dir=tmp_path / "c" / "scores")
    t2 = pq.read_table(m2["globals"]["semdedup_matches"]).to_pydict()
    assert [name[u] for u in t2["uid"]] == ["far", "copy", "near"] and {name[u] for u in t2["match_uid"]} == {"a"}
    assert (tmp_path / "s2.npy").read_bytes() == (tmp_path / "s.npy").read_bytes()
    assert m2["globals"]["semdedup"] != g["semdedup"]  # its own mask directory (the floor is in its identity)


@pytest.mark.parametrize("floor", [1.5, -1.01, True, "0.99", float("nan")])
def test_bad_sweep_floor(floor, tmp_path):
    with pytest.raises(OpParamError, match=r"^'sweep_floor' must be a cosine in \[-1, 1\], got "):
        SemDeDup(sweep_floor=floor)
    from datacomp.errors import ConfigError
    from datacomp.filters.recipe import load_recipe

    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.replace("unit_rows: 20", f"unit_rows: 20\n    sweep_floor: {floor!r}"))
    if isinstance(floor, float) and floor != floor:
        r.write_text(RECIPE.replace("unit_rows: 20", "unit_rows: 20\n    sweep_floor: .nan"))
    with pytest.raises(ConfigError, match=r"r\.yaml: step 2 \(semdedup\): 'sweep_floor' must be a cosine") as e:
        load_recipe(r)
    assert "\n" not in str(e.value)
