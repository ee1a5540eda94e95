"""Image-based clustering filter (the reference's ``image_based`` baseline, DATACOMP.md §3.1).

Three steps, as in the reference:

- ``kmeans`` (global): faiss k-means centroids of an npz embedding (``l14_img``) over the rows the
  step's ``where`` rules pass (the caption pre-filter); 20 iterations, seed 0, L2 index, no
  subsampling by faiss (``max_points_per_centroid`` 10M), optional ``sample_ratio``. Or
  ``centroids: PATH`` (the reference's ``{scale}_centroids_l14.pt``, or ``.npy``) skips it. The
  centroids are saved as a small ``.npy`` under the score cache (``globals/``), named by the
  pool's files and the parameters, so the next recipe that needs them reuses them.
- ``target_clusters`` (global, no pool pass): the set of centroid ids that are the
  inner-product-nearest centroid of at least one target embedding (the reference: ImageNet-1k
  train images, OpenAI L/14). ``targets`` is a path (or a list of paths; ``.npy``, ``.npz``,
  ``.pt`` with ``image_features``); the default is ``POOL/targets/l14_img.npy``.
- ``nearest_centroid`` (per shard): ``cluster_id`` = argmax over centroids of the inner product
  with the row's embedding (first index on ties, as ``torch.argmax``), and
  ``in_target_cluster`` = ``cluster_id`` in the target set.

Inner products are float32 matrix products of the float16 embeddings cast to float32 and the
(unnormalised) float32 centroids, as the reference computes them on GPU.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import FormatError, InputError
from ...formats.atomic import atomic_path
from ...formats.pool import npz_path, read_npz
from ...formats.tensorfile import load_tensor_file
from ..registry import GlobalOp, OpParamError, ShardContext, ShardOp, register

BATCH = 8192


def load_matrix(path: str | Path, what: str) -> np.ndarray:
    """A 2-D float array from ``.npy``, ``.npz`` (its only key, or ``image_features``/``centroids``)
    or a torch ``.pt`` (an array — the reference's centroid files —, a tensor, or a dict with
    ``image_features``), read by ``formats.tensorfile``'s restricted unpickler."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: {what} file does not exist")
    try:
        if path.suffix in (".pt", ".pth", ".pkl"):
            # the reference's {scale}_centroids_l14.pt is a pickled ndarray: read without running code
            obj = load_tensor_file(path, what)
            if isinstance(obj, dict):
                key = next((k for k in ("image_features", "centroids") if k in obj), None)
                if key is None:
                    raise FormatError(f"{path}: {what}: a dict without 'image_features' (keys: {', '.join(map(str, obj))})")
                obj = obj[key]
            arr = obj.float().numpy() if hasattr(obj, "float") else np.asarray(obj)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = next((k for k in ("image_features", "centroids", "l14_img") if k in z.files),
                           z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise FormatError(f"{path}: {what}: npz with several keys and none of image_features, centroids, l14_img")
                arr = z[key]
        else:
            arr = np.load(path, allow_pickle=False)
    except FormatError:
        raise
    except Exception as e:  # numpy / torch / zipfile errors on a bad file
        raise FormatError(f"{path}: cannot read {what}: {' '.join(str(e).split())}") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise FormatError(f"{path}: {what} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise FormatError(f"{path}: {what} must be floating point, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise FormatError(f"{path}: {what} has NaN or infinite values")
    return arr


@lru_cache(maxsize=4)
def _cached_matrix(path: str, what: str) -> np.ndarray:
    return load_matrix(path, what)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the inner-product-nearest centroid of each row (first index on ties)."""
    out = np.empty(len(x), dtype=np.int64)
    ct = np.ascontiguousarray(centroids.T, dtype=np.float32)
    for i in range(0, len(x), BATCH):
        sims = x[i:i + BATCH].astype(np.float32) @ ct
        out[i:i + BATCH] = np.argmax(sims, axis=1)
    return out


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@register
class KMeans(GlobalOp):
    name = "kmeans"
    description = "faiss k-means centroids (seeded, 20 iterations) of an npz embedding over the pool's rows, saved as a .npy (or centroids: PATH)"
    params = {"key": "l14_img", "num_clusters": "auto", "points_per_cluster": 128, "niter": 20, "seed": 0,
              "sample_ratio": -1.0, "centroids": None, "dim": None, "output": "centroids"}

    def setup(self) -> None:
        k = self.args["num_clusters"]
        if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise OpParamError(f"'num_clusters' must be a positive integer or 'auto', got {k!r}")
        for name in ("points_per_cluster", "niter"):
            v = self.args[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OpParamError(f"'{name}' must be a positive integer, got {v!r}")
        r = self.args["sample_ratio"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r == -1 or 0 < r <= 1):
            raise OpParamError(f"'sample_ratio' must be -1 (all rows) or in (0, 1], got {r!r}")
        if self.args["centroids"] is not None and not isinstance(self.args["centroids"], str):
            raise OpParamError("'centroids' must be a path")

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def needs_pool_pass(self) -> bool:
        return self.args["centroids"] is None

    def identity(self) -> dict[str, Any]:
        c = self.args["centroids"]
        return {"centroids": _file_id(Path(c).expanduser())} if c and Path(c).expanduser().is_file() else {}

    def _path(self) -> Path | None:
        if self.env.artifacts is None:
            return None
        spec = {k: v for k, v in self.args.items() if k != "output"}
        return self.env.artifacts / f"kmeans-{_digest([spec, self.env.pool_digest, getattr(self, 'where_rules', [])])}.npy"

    def _values(self, path: Path, arr: np.ndarray, rows: int | None) -> dict[str, Any]:
        out = self.args["output"]
        return {out: str(path), f"{out}_k": int(arr.shape[0]), f"{out}_dim": int(arr.shape[1]),
                f"{out}_points": rows}

    def saved(self) -> dict[str, Any] | None:
        if self.args["centroids"] is not None:
            return None
        path = self._path()
        if path is None or not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            points = json.loads(path.with_suffix(".json").read_text()).get("points")
        except Exception:
            return None
        return self._values(path, arr, points)

    def map(self, store, mask: np.ndarray | None) -> np.ndarray:
        key = self.args["key"]
        path = npz_path(store.parquet)
        emb = read_npz(path, [key], expected_rows=store.num_rows, dim=self.args["dim"])[key]
        rows = np.flatnonzero(mask) if mask is not None else np.arange(store.num_rows)
        ratio = float(self.args["sample_ratio"])
        if ratio > 0 and ratio < 1:
            rng = np.random.default_rng([int(self.args["seed"]), zlib.crc32(store.parquet.name.encode())])
            rows = rows[rng.random(len(rows)) < ratio]
        sub = emb[rows]
        if not np.isfinite(sub).all():
            raise FormatError(f"{path}: npz key '{key}' has NaN or infinite values")
        return sub

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        given = self.args["centroids"]
        if given is not None:
            arr = load_matrix(given, "centroids")
            return self._values(Path(given).expanduser(), arr, None)
        import faiss

        dims = {p.shape[1] for p in partials if p.ndim == 2 and len(p)}
        if len(dims) > 1:
            raise OpParamError(f"npz key '{self.args['key']}' has different dimensions across shards: {sorted(dims)}")
        x = np.concatenate([p for p in partials if len(p)]).astype(np.float32) if dims else np.empty((0, 0), np.float32)
        n = len(x)
        if n == 0:
            raise OpParamError("no rows to cluster (the where rules removed every row)")
        k = self.args["num_clusters"]
        k = max(1, round(n / int(self.args["points_per_cluster"]))) if k == "auto" else int(k)
        if k > n:
            raise OpParamError(f"num_clusters={k} is more than the {n} rows to cluster")
        d = x.shape[1]
        clus = faiss.Clustering(d, k)
        clus.niter = int(self.args["niter"])
        clus.seed = int(self.args["seed"])
        clus.max_points_per_centroid = 10_000_000
        clus.verbose = False
        index = faiss.IndexFlatL2(d)
        clus.train(x, index)
        centroids = faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32)
        path = self._path()
        if path is None:
            raise OpParamError("kmeans needs a directory for its centroid file (the score cache)")
        _save(path, centroids)
        meta = {"points": n, "k": k, "dim": d, "params": {k_: v for k_, v in self.args.items() if k_ != "output"},
                "where": getattr(self, "where_rules", [])}
        with atomic_path(path.with_suffix(".json"), suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1))
        return self._values(path, centroids, n)


@register
class TargetClusters(GlobalOp):
    name = "target_clusters"
    description = "ids of the centroids nearest (inner product) to at least one target embedding (default POOL/targets/l14_img.npy)"
    params = {"targets": None, "centroids": "centroids", "output": "target_clusters"}
    DEFAULT = ("targets", "l14_img.npy")

    def setup(self) -> None:
        t = self.args["targets"]
        if t is not None and not (isinstance(t, str) or (isinstance(t, list) and t and all(isinstance(x, str) for x in t))):
            raise OpParamError("'targets' must be a path or a list of paths")

    def global_inputs(self) -> list[str]:
        return [self.args["centroids"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def needs_pool_pass(self) -> bool:
        return False

    def target_paths(self) -> list[Path]:
        t = self.args["targets"]
        if t is None:
            if self.env.pool is None:
                raise OpParamError("'targets' is not set and there is no pool directory to look in")
            return [self.env.pool.joinpath(*self.DEFAULT)]
        return [Path(p).expanduser() for p in ([t] if isinstance(t, str) else t)]

    def identity(self) -> dict[str, Any]:
        try:
            return {"targets": [_file_id(p) if p.is_file() else str(p) for p in self.target_paths()]}
        except OpParamError:
            return {}

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        cname = self.args["centroids"]
        cpath = self.env.globals.get(cname)
        if not cpath:
            raise OpParamError(f"global value '{cname}' (the centroid file) is not set")
        centroids = load_matrix(cpath, "centroids")
        ids: set[int] = set()
        n = 0
        for p in self.target_paths():
            targets = load_matrix(p, "target embeddings")
            if targets.shape[1] != centroids.shape[1]:
                raise FormatError(f"{p}: target embeddings have dimension {targets.shape[1]}, the centroids {centroids.shape[1]}")
            ids.update(np.unique(nearest_centroid(targets, centroids)).tolist())
            n += len(targets)
        arr = np.array(sorted(ids), dtype=np.int64)
        out = self.args["output"]
        path = Path(cpath).with_name(f"{Path(cpath).stem}-targets-{_digest(self.identity())}.npy")
        if self.env.artifacts is not None:
            path = self.env.artifacts / path.name
        try:
            same = path.is_file() and np.array_equal(np.load(path, allow_pickle=False), arr)
        except Exception:
            same = False
        if not same:  # an unchanged file keeps its time, so cached cluster ids stay valid
            _save(path, arr)
        return {out: str(path), f"{out}_count": int(len(arr)), f"{out}_targets": n}


@register
class NearestCentroid(ShardOp):
    name = "nearest_centroid"
    description = "cluster_id = inner-product-nearest centroid of the row's npz embedding; in_target_cluster = it is a target cluster"
    params = {"key": "l14_img", "dim": None, "centroids": "centroids", "targets": "target_clusters",
              "output": "cluster_id"}

    def global_inputs(self) -> list[str]:
        return [self.args["centroids"]] + ([self.args["targets"]] if self.args["targets"] else [])

    def reads_npz(self) -> bool:
        return True

    def outputs(self) -> list[str]:
        return [self.args["output"]] + (["in_target_cluster"] if self.args["targets"] else [])

    def cache_identity(self) -> dict[str, Any]:
        files = {}
        for g in self.global_inputs():
            v = self.env.globals.get(g)
            if isinstance(v, str) and Path(v).is_file():
                files[g] = _file_id(Path(v))
        return files

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        key = self.args["key"]
        centroids = _cached_matrix(str(self.env.globals[self.args["centroids"]]), "centroids")
        path = npz_path(ctx.parquet)
        emb = read_npz(path, [key], expected_rows=ctx.num_rows, dim=self.args["dim"])[key]
        if emb.shape[1] != centroids.shape[1]:
            raise FormatError(f"{path}: npz key '{key}' has dimension {emb.shape[1]}, the centroids {centroids.shape[1]}")
        if not np.isfinite(emb).all():
            raise FormatError(f"{path}: npz key '{key}' has NaN or infinite values")
        if ctx.rows is not None:
            emb = emb[ctx.rows]
        ids = nearest_centroid(emb, centroids)
        res = {self.args["output"]: pa.array(ids, pa.int64())}
        if self.args["targets"]:
            target = np.load(self.env.globals[self.args["targets"]], allow_pickle=False)
            res["in_target_cluster"] = pa.array(np.isin(ids, target))
        return res
