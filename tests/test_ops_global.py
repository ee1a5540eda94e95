"""Global ops (map on each shard, reduce over the pool) and the cluster ops, called on hand-made
columns through the op contract's ``Columns`` protocol, without the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.filters.ops.clusters import KMeans, NearestCentroid, TargetClusters, nearest_centroid
from datacomp.filters.ops.quantile import QuantileThreshold
from datacomp.filters.registry import Columns, OpEnv, OpParamError, ShardContext
from datacomp.formats.pool import write_npz


@dataclass
class HandColumns:
    """A shard's columns as a test writes them (the ``Columns`` protocol)."""

    cols: dict[str, pa.Array]
    parquet: Path = Path("00000000.parquet")
    num_rows: int = field(init=False)

    def __post_init__(self):
        self.num_rows = len(next(iter(self.cols.values())))

    def get(self, name: str) -> pa.Array:
        return self.cols[name]

    def numpy(self, name: str) -> np.ndarray:
        return self.cols[name].to_numpy(zero_copy_only=False)


def test_hand_columns_satisfy_the_protocol():
    store: Columns = HandColumns({"s": pa.array([1.0])})
    assert store.num_rows == 1 and store.numpy("s").tolist() == [1.0]


def test_quantile_threshold_is_the_references_rank():
    op = QuantileThreshold(column="score", fraction=0.3)
    shards = [HandColumns({"score": pa.array([0.1, 0.9, 0.5, 0.3])}), HandColumns({"score": pa.array([0.7, 0.2, 0.8])})]
    parts = [op.map(s, None) for s in shards]
    got = op.reduce(parts)
    scores = np.sort(np.concatenate(parts))[::-1]
    assert got["threshold"] == scores[int(7 * 0.3)] == 0.7 and got["threshold_rank"] == 2
    assert got["threshold_pool_rows"] == 7
    # the step's where rules mask rows out of the map
    assert op.map(shards[0], np.array([True, False, True, False])).tolist() == [0.1, 0.5]
    # fraction 1.0 keeps everything: the smallest score
    assert QuantileThreshold(column="score", fraction=1.0).reduce(parts)["threshold"] == 0.1


def test_quantile_threshold_given_value_and_bad_input():
    op = QuantileThreshold(column="score", threshold=0.25, output="t")
    assert not op.needs_pool_pass() and op.reduce([]) == {"t": 0.25, "t_source": "given"}
    with pytest.raises(OpParamError, match="exactly one"):
        QuantileThreshold(column="score", fraction=0.5, threshold=0.2)
    with pytest.raises(OpParamError, match="NaN"):
        QuantileThreshold(column="score", fraction=0.5).reduce([np.array([0.1, np.nan])])
    with pytest.raises(OpParamError, match="no scores"):
        QuantileThreshold(column="score", fraction=0.5).reduce([np.empty(0)])


def _blobs(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.05 * rng.normal(size=(n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_kmeans_target_clusters_and_nearest_centroid(tmp_path: Path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8, dtype=np.float32)
    parquet = tmp_path / "00000000.parquet"
    emb = _blobs(rng, centres, 200)
    write_npz(tmp_path / "00000000.npz", {"l14_img": emb.astype(np.float16)})
    store = HandColumns({"uid": pa.array(["u"] * 200)}, parquet=parquet)

    env = OpEnv(pool=tmp_path, artifacts=tmp_path / "globals", pool_digest="test")
    km = KMeans(num_clusters=4, niter=10)
    km.bind(env)
    part = km.map(store, None)
    assert part.shape == (200, 8)
    values = km.reduce([part])
    assert values["centroids_k"] == 4 and values["centroids_points"] == 200
    centroids = np.load(values["centroids"])
    # every centre has a centroid next to it
    assert np.all(np.max(centres @ centroids.T, axis=1) > 0.95)
    assert km.saved() == values  # a second run reuses the file

    targets = tmp_path / "targets.npy"
    np.save(targets, centres[:1])
    tc = TargetClusters(targets=str(targets))
    tc.bind(OpEnv(globals=dict(values), pool=tmp_path, artifacts=env.artifacts))
    tvals = tc.reduce([])
    target_ids = np.load(tvals["target_clusters"])
    assert tvals["target_clusters_count"] == 1 and target_ids.tolist() == nearest_centroid(centres[:1], centroids).tolist()

    nc = NearestCentroid()
    nc.bind(OpEnv(globals={**values, **tvals}, pool=tmp_path, artifacts=env.artifacts))
    out = nc.compute({}, ShardContext(parquet, 200))
    ids = out["cluster_id"].to_numpy()
    assert ids.tolist() == nearest_centroid(emb.astype(np.float16), centroids).tolist()
    assert out["in_target_cluster"].to_pylist() == np.isin(ids, target_ids).tolist()
    assert 0 < sum(out["in_target_cluster"].to_pylist()) < 200


def test_kmeans_parameter_checks_and_empty_input(tmp_path: Path):
    with pytest.raises(OpParamError, match="num_clusters"):
        KMeans(num_clusters=0)
    with pytest.raises(OpParamError, match="sample_ratio"):
        KMeans(sample_ratio=2)
    pytest.importorskip("faiss")
    km = KMeans(num_clusters=2)
    km.bind(OpEnv(artifacts=tmp_path))
    with pytest.raises(OpParamError, match="no rows"):
        km.reduce([np.empty((0, 8), np.float32)])
    with pytest.raises(OpParamError, match="more than"):
        km.reduce([np.ones((1, 8), np.float32)])
