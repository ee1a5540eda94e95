"""Semantic deduplication (SemDeDup: Abbas et al., 2023, "SemDeDup: Data-efficient learning at
web-scale through semantic deduplication").

A global step over an npz image embedding (``l14_img``) and the centroids of an earlier
``kmeans`` step:

- ``map`` (per shard): each row's cluster (the L2-nearest centroid, as k-means assigns) and, for
  ``keep: score``, its score; the shard's embeddings are written sorted by cluster into the step's
  work directory, so a cluster's rows are one slice of each shard's file;
- ``reduce``: contiguous ranges of clusters become units of the run's executor (local processes
  or Ray), each at most ``unit_rows`` rows unless one cluster is larger: memory is bounded by the
  largest cluster, not the pool. Within a cluster the rows are ordered by the keep preference —
  ``farthest`` from the centroid first (SemDeDup's choice), ``closest`` first, or by a ``score``
  column (highest first; ties farthest first) — and a row is a duplicate when its cosine
  similarity with an earlier row in that order is above ``1 - eps`` (SemDeDup's rule: the first
  of a group is kept). The search is exact (blocks of the cluster's Gram matrix).
- The result: one boolean mask per shard (True = keep) in a directory under the score cache named
  by the pool's files, the centroids and the parameters, and ``duplicates.parquet`` beside them
  (uid, kept_uid: the earlier row it matched, similarity, cluster). ``row_mask`` makes the mask a
  column.
- The sweep's candidates: ``matches.parquet`` beside them (uid, match_uid: the best earlier row in
  keep order, similarity, cluster) for every row whose best earlier similarity is at or above
  ``sweep_floor`` (default 0.99). A row's best earlier match does not depend on the other rows'
  decisions, so the rows removed at any threshold ``t >= sweep_floor`` are exactly the rows of
  this table with similarity ``> t`` (:func:`is_duplicate`): the report's precision-recall curve
  against the embedded world's truth (``report/curation.py``) reads it, nothing is recomputed.

Rows the step's ``where`` rules leave out, and all-zero rows (no image), are never duplicates.
NaN or infinite embeddings and a dimension other than the centroids' are errors naming the npz.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError
from ...executors import Unit, run_units
from ...formats.atomic import atomic_path
from ..registry import GlobalOp, OpParamError, register
from .clusters import _cached_matrix, _file_id
from .masks import MaskStep, check_cosine, finish_masks, mask_dir, write_mask

KEEPS = ("farthest", "closest", "score")
MASKS_VERSION = 2  # 2: matches.parquet beside the masks (the mask directory's identity names it)
BLOCK_CELLS = 1 << 24  # cells of one block of the Gram matrix (64 MiB of float32): memory per cluster


def assign_clusters(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2-nearest centroid of each row, its squared distance), as faiss k-means assigns."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return i[:, 0].astype(np.int64), d[:, 0]


def order_cluster(x: np.ndarray, centroid: np.ndarray, keep: str, score: np.ndarray | None) -> np.ndarray:
    """The rows of one cluster in keep-preference order (stable: ties keep the given order)."""
    c = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    to_centroid = x @ c.astype(np.float32)  # cosine to the centroid (rows are unit vectors)
    if keep == "farthest":
        return np.lexsort((np.arange(len(x)), to_centroid))
    if keep == "closest":
        return np.lexsort((np.arange(len(x)), -to_centroid))
    return np.lexsort((np.arange(len(x)), to_centroid, -score))


def earlier_matches(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For rows in order: the most similar earlier row and its similarity (-1, -inf for the first).
    A row is a duplicate when that similarity is above ``threshold``; exact, in column blocks."""
    n = len(x)
    best = np.full(n, -np.inf, np.float32)
    arg = np.full(n, -1, np.int64)
    block = max(16, min(4096, BLOCK_CELLS // max(n, 1)))
    for j0 in range(1, n, block):
        j1 = min(n, j0 + block)
        g = x[:j1] @ x[j0:j1].T  # [earlier rows, block]
        g[np.arange(j1)[:, None] >= np.arange(j0, j1)[None, :]] = -np.inf  # only rows before each column
        arg[j0:j1] = np.argmax(g, axis=0)
        best[j0:j1] = g[arg[j0:j1], np.arange(j1 - j0)]
    return arg, best


def is_duplicate(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """SemDeDup's rule on best earlier similarities: a duplicate when above ``threshold`` (= 1 - eps),
    compared in float32 as the search computes them (the op and the report's sweep both use it)."""
    return np.asarray(similarity, np.float32) > threshold


def cluster_matches(x: np.ndarray, centroid: np.ndarray, keep: str,
                    score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cluster in keep order: (position of each row, position of its best earlier row, their
    similarity; -1 and -inf for the first row). ``x``: unit rows (float32); positions index ``x``."""
    if len(x) < 2:
        return np.arange(len(x)), np.full(len(x), -1, np.int64), np.full(len(x), -np.inf, np.float32)
    order = order_cluster(x, centroid, keep, score)
    arg, best = earlier_matches(np.ascontiguousarray(x[order]), 1.0)
    match = np.where(arg >= 0, order[np.maximum(arg, 0)], -1)
    return order, match, best


def dedup_cluster(x: np.ndarray, centroid: np.ndarray, eps: float, keep: str,
                  score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cluster: (positions of its duplicates, the position each matched, the similarity).
    ``x``: unit rows (float32); positions index ``x``."""
    if len(x) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    order, match, best = cluster_matches(x, centroid, keep, score)
    dup = np.flatnonzero(is_duplicate(best, 1.0 - eps))
    return order[dup], match[dup], best[dup]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def semdedup_unit(shards: list[tuple[str, str, str]], offsets: list[list[int]], c0: int, c1: int,
                  centroids: str, eps: float, keep: str, floor: float, out: str) -> dict[str, Any]:
    """Clusters ``c0 .. c1-1`` (module level: it runs in a worker). ``shards``: per shard, its
    sorted embeddings, sorted row indices and sorted scores (``.npy``); ``offsets[s][c - c0]``:
    where cluster ``c`` starts in shard ``s``'s sorted files (one more entry: the end).
    Writes ``out`` (.npy, float64 rows: shard, row, matched shard, matched row, similarity, cluster,
    removed 0/1) for every row removed or with its best earlier similarity at or above ``floor``."""
    cent = _cached_matrix(centroids, "centroids")
    files = [(np.load(e, mmap_mode="r"), np.load(r, mmap_mode="r"), np.load(s, mmap_mode="r")) for e, r, s in shards]
    found: list[np.ndarray] = []
    largest = rows = 0
    for c in range(c0, c1):
        parts, ids, scores = [], [], []
        for si, (emb, order, sc) in enumerate(files):
            a, b = offsets[si][c - c0], offsets[si][c - c0 + 1]
            if b > a:
                parts.append(np.asarray(emb[a:b]))
                ids.append(np.stack([np.full(b - a, si), np.asarray(order[a:b])], axis=1))
                scores.append(np.asarray(sc[a:b]))
        if not parts:
            continue
        x = _unit_rows(np.concatenate(parts))
        idx = np.concatenate(ids)
        rows += len(x)
        largest = max(largest, len(x))
        order, match, best = cluster_matches(x, cent[c], keep, np.concatenate(scores) if keep == "score" else None)
        removed = is_duplicate(best, 1.0 - eps)
        take = np.flatnonzero(removed | (best >= floor))
        if len(take):
            found.append(np.column_stack([idx[order[take]], idx[match[take]], best[take].astype(np.float64),
                                          np.full(len(take), c), removed[take]]))
    res = np.concatenate(found).astype(np.float64) if found else np.empty((0, 7), np.float64)
    with atomic_path(Path(out), suffix=".npy") as tmp:
        np.save(tmp, res, allow_pickle=False)
    return {"clusters": c1 - c0, "rows": rows, "duplicates": int(res[:, 6].sum()), "matches": int(len(res)),
            "largest": largest}


@register
class SemDeDup(MaskStep, GlobalOp):
    name = "semdedup"
    description = ("SemDeDup (Abbas et al. 2023): within each k-means cluster, rows whose image embeddings have cosine > 1-eps "
                   "with a kept row are duplicates; one per group is kept (farthest from the centroid, or by a score)")
    params = {"key": "l14_img", "dim": None, "centroids": "centroids", "eps": 0.0001, "keep": "farthest",
              "score": None, "unit_rows": 50_000, "sweep_floor": 0.99, "output": "semdedup"}

    def setup(self) -> None:
        eps = self.args["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 <= float(eps) < 2.0) or not math.isfinite(eps):
            raise OpParamError(f"'eps' must be a number in [0, 2), got {eps!r}")
        if self.args["keep"] not in KEEPS:
            raise OpParamError(f"'keep' must be one of {', '.join(KEEPS)}, got {self.args['keep']!r}")
        if (self.args["keep"] == "score") != (self.args["score"] is not None):
            raise OpParamError("'score' (a column) is needed with keep: score, and only then")
        u = self.args["unit_rows"]
        if isinstance(u, bool) or not isinstance(u, int) or u < 1:
            raise OpParamError(f"'unit_rows' must be a positive integer, got {u!r}")
        d = self.args["dim"]
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise OpParamError(f"'dim' must be a positive integer, got {d!r}")
        check_cosine(self.args["sweep_floor"])

    def inputs(self) -> list[str]:
        return [self.args["score"]] if self.args["score"] else []

    def global_inputs(self) -> list[str]:
        return [self.args["centroids"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def _centroid_file(self) -> str:
        path = self.env.globals.get(self.args["centroids"])
        if not path:
            raise OpParamError(f"global value '{self.args['centroids']}' (the centroid file) is not set: "
                               "a kmeans step must come first")
        return str(path)

    def _dir(self) -> Path:
        cpath = Path(self._centroid_file())
        ident = {"version": MASKS_VERSION, "pool": self.env.pool_digest,
                 "centroids": _file_id(cpath) if cpath.is_file() else str(cpath),
                 "args": {k: v for k, v in self.args.items() if k != "unit_rows"}}
        return mask_dir(self.env.artifacts, self.name, ident)

    def map(self, store, mask: np.ndarray | None) -> np.ndarray:
        cent = _cached_matrix(self._centroid_file(), "centroids")
        emb = self.embeddings(store, self.args["key"], cent.shape[1], "centroids", want_dim=self.args["dim"])
        use = np.any(emb != 0, axis=1)  # a zero row has no image: never a duplicate
        if mask is not None:
            use &= mask
        cluster = np.full(store.num_rows, -1, np.int64)
        rows = np.flatnonzero(use)
        if len(rows):
            cluster[rows] = assign_clusters(emb[rows], cent)[0]
        score = np.zeros(store.num_rows, np.float64)
        if self.args["score"]:
            score = store.numpy(self.args["score"]).astype(np.float64)
            if not np.isfinite(score[rows]).all():
                raise FormatError(f"{store.parquet}: column '{self.args['score']}' has NaN values (run `datacomp embed` first)")
        # the shard's used rows sorted by cluster: one slice per cluster for the reduce's units
        order = rows[np.argsort(cluster[rows], kind="stable")]
        if self.env.work is None:
            raise OpParamError("semdedup needs the run's work directory")
        d = self.env.work / "sorted"
        d.mkdir(parents=True, exist_ok=True)
        for suffix, arr in (("emb", emb[order]), ("rows", order), ("score", score[order])):
            with atomic_path(d / f"{store.parquet.stem}.{suffix}.npy", suffix=".npy") as tmp:
                np.save(tmp, arr, allow_pickle=False)
        return cluster

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        out_dir = self._dir()
        cpath = self._centroid_file()
        k = _cached_matrix(cpath, "centroids").shape[0]
        shards = list(self.env.shards)
        if len(shards) != len(partials):
            raise OpParamError("semdedup's reduce needs the run's shard list")
        counts = np.stack([np.bincount(p[p >= 0], minlength=k) for p in partials]) if partials else np.zeros((0, k), int)
        starts = np.zeros((len(partials), k + 1), np.int64)
        starts[:, 1:] = np.cumsum(counts, axis=1)
        sizes = counts.sum(axis=0)
        sdir = self.env.work / "sorted"
        files = [tuple(str(sdir / f"{Path(s).stem}.{x}.npy") for x in ("emb", "rows", "score")) for s in shards]
        units, c0, acc = [], 0, 0
        cap = int(self.args["unit_rows"])
        for c in range(k):
            if acc and acc + sizes[c] > cap:
                units.append((c0, c))
                c0, acc = c, 0
            acc += int(sizes[c])
        units.append((c0, k))
        eps, keep, floor = float(self.args["eps"]), self.args["keep"], float(self.args["sweep_floor"])
        cdir = self.env.work / "clusters"
        work = [Unit(f"clusters-{a:07d}-{b:07d}",
                     (files, starts[:, a:b + 1].tolist(), a, b, cpath, eps, keep, floor,
                      str(cdir / f"{a:07d}-{b:07d}.npy")),
                     max(1, int(sizes[a:b].sum())))
                for a, b in units if sizes[a:b].sum() > 0]
        run_units(semdedup_unit, work, cdir, workers=self.env.workers, executor=self.env.executor,
                  desc="semdedup: clusters", unit_label="rows")
        found = [np.load(cdir / f"{u.args[2]:07d}-{u.args[3]:07d}.npy", allow_pickle=False) for u in work]
        rows = np.concatenate(found) if found else np.empty((0, 7))
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))] if len(rows) else rows
        dups = rows[rows[:, 6] == 1]
        near = rows[np.asarray(rows[:, 4], np.float32) >= floor]  # as the units chose them
        uids = [pq.read_table(s, columns=["uid"]).column("uid").to_pylist() if len(rows) else [] for s in shards]
        for si, s in enumerate(shards):
            keep_rows = np.ones(len(partials[si]), bool)
            mine = dups[dups[:, 0] == si] if len(dups) else dups
            keep_rows[mine[:, 1].astype(np.int64)] = False
            write_mask(out_dir, s, keep_rows)
        for name, part, matched in (("duplicates.parquet", dups, "kept_uid"), ("matches.parquet", near, "match_uid")):
            d = part.astype(np.int64)
            table = pa.table({"uid": pa.array([uids[a][b] for a, b in d[:, :2]], pa.string()),
                              matched: pa.array([uids[a][b] for a, b in d[:, 2:4]], pa.string()),
                              "similarity": pa.array(part[:, 4], pa.float32()),
                              "cluster": pa.array(d[:, 5], pa.int64())})
            with atomic_path(out_dir / name, suffix=".parquet") as tmp:
                pq.write_table(table, tmp)
        out = self.args["output"]
        values = {out: str(out_dir), f"{out}_removed": int(len(dups)), f"{out}_clusters": int(k),
                  f"{out}_rows": int(sizes.sum()), f"{out}_largest_cluster": int(sizes.max()) if k else 0,
                  f"{out}_units": len(work), f"{out}_duplicates": str(out_dir / "duplicates.parquet"),
                  f"{out}_threshold": 1.0 - eps, f"{out}_matches": str(out_dir / "matches.parquet"),
                  f"{out}_sweep_floor": floor, f"{out}_matches_rows": int(len(near))}
        finish_masks(out_dir, values)
        return values
