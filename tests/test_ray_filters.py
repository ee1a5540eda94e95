"""The Ray executor on a local 2-CPU Ray instance gives bit-identical subsets to the local one."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.errors import FormatError
from datacomp.filters import run_filter
from datacomp.formats.pool import write_metadata

ray = pytest.importorskip("ray")

TEXTS = ["a photo of a dog on the beach", "two cats sleeping on a red sofa", "red dog", "a b cd",
         "Dogs\non the beach", "ein Hund am Strand bei Sonnenuntergang", "kitten\n", "IMG_2041.JPG",
         "the old bridge over the river at sunset", "A Cat and a bird"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raypool") / "pool"
    rng = np.random.default_rng(3)
    centers = np.eye(6, dtype=np.float32)
    for i in range(3):
        n = 40
        texts = [TEXTS[j % len(TEXTS)] for j in range(i, i + n)]
        emb = centers[rng.integers(0, 6, n)] + rng.normal(0, 0.1, (n, 6)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        write_metadata(root / "metadata" / f"{i:08d}.parquet", pa.table({
            "uid": pa.array([rng.bytes(16).hex() for _ in range(n)]),
            "text": pa.array(texts),
            "original_width": pa.array(rng.choice([150, 200, 600, 900], n).astype(np.int64)),
            "original_height": pa.array(rng.choice([199, 200, 300], n).astype(np.int64)),
            "clip_b32_similarity_score": pa.array(rng.integers(20, 35, n).astype(np.float32) / 100),
            "clip_l14_similarity_score": pa.array(rng.integers(15, 30, n).astype(np.float32) / 100),
        }))
        np.savez_compressed(root / "metadata" / f"{i:08d}.npz", l14_img=emb.astype(np.float16))
    (root / "targets").mkdir()
    np.save(root / "targets" / "l14_img.npy", centers[:2].astype(np.float16))
    return root


RECIPES = ["no_filter", "basic_filter", "clip_score_l14_30", "clip_score_b32_30", "laion2b", "text_based",
           "image_based", "image_based_clip_score_l14_30"]


def test_ray_matches_local(local_ray, pool: Path, tmp_path: Path):
    over = {"image_based": {"num_clusters": 3}, "image_based_clip_score_l14_30": {"num_clusters": 3}}
    for name in RECIPES:
        a = run_filter(pool, name, tmp_path / "local" / f"{name}.npy", overrides=over.get(name), workers=1,
                       executor="local", cache_dir=tmp_path / "cache_local" / "scores")
        b = run_filter(pool, name, tmp_path / "ray" / f"{name}.npy", overrides=over.get(name), workers=2,
                       executor="ray", cache_dir=tmp_path / "cache_ray" / "scores")
        assert (tmp_path / "local" / f"{name}.npy").read_bytes() == (tmp_path / "ray" / f"{name}.npy").read_bytes(), name
        assert a["counts"] == b["counts"] and a["removed_by"] == b["removed_by"], name
    assert 0 < a["counts"]["kept"] < a["counts"]["pool_rows"]


def test_ray_task_error_is_the_units_error(local_ray, pool: Path, tmp_path: Path):
    import shutil

    p = tmp_path / "p"
    shutil.copytree(pool / "metadata", p / "metadata")
    shutil.copytree(pool / "targets", p / "targets")
    np.savez(p / "metadata" / "00000002.npz", b32_img=np.zeros((40, 6), np.float16))
    with pytest.raises(FormatError, match=r"00000002\.npz: npz has no key 'l14_img'"):
        run_filter(p, "image_based", tmp_path / "x.npy", overrides={"num_clusters": 3}, workers=2, executor="ray",
                   cache_dir=tmp_path / "c")


SEMDEDUP_SMALL_UNITS = """name: semdedup_small_units
description: semdedup with clusters split over several executor units
steps:
  - op: clip_score
    arch: l14
  - op: kmeans
    key: l14_img
    num_clusters: 3
  - op: semdedup
    eps: 0.02
    keep: score
    score: clip_l14_similarity_score
    unit_rows: 15
  - op: row_mask
    mask: semdedup
keep: [semdedup_keep == true]
"""


def test_ray_semdedup_matches_local(local_ray, pool: Path, tmp_path: Path):
    """semdedup's per-cluster units on Ray give the subset the local executor gives."""
    recipe = tmp_path / "semdedup_small_units.yaml"
    recipe.write_text(SEMDEDUP_SMALL_UNITS)
    a = run_filter(pool, recipe, tmp_path / "local.npy", workers=1, cache_dir=tmp_path / "cl" / "scores")
    b = run_filter(pool, recipe, tmp_path / "ray.npy", workers=2, executor="ray", cache_dir=tmp_path / "cr" / "scores")
    assert (tmp_path / "local.npy").read_bytes() == (tmp_path / "ray.npy").read_bytes()
    assert a["globals"]["semdedup_units"] >= 3 and 0 < a["globals"]["semdedup_removed"] < 120
    assert a["counts"] == b["counts"]
