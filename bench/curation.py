"""Curation ops measured against the embedded world's truth, and their speed.

    PYTHONPATH=src .venv/bin/python bench/curation.py quality --pools P0 [P1 ...]
    PYTHONPATH=src .venv/bin/python bench/curation.py speed [--rows 1000000] [--dim 768] [--evals 100000]

``quality``: for every pool (an embedded world: ``POOL/truth/``), semdedup and decontaminate
run as their recipes at the default parameters (``datacomp filter``, the real stage) and along
a threshold sweep, and are scored against the truth:

* semdedup: the planted duplicates are the rows with ``duplicate_of`` (a copy of another pool
  row, ``duplicate_kind`` exact or near). A removed row is *right* when the row it matched is in
  its planted group (the copy and its original); precision = right / removed, recall = right /
  planted copies (the ideal removes every copy and keeps one row of each group). The sweep reuses
  one pass: SemDeDup's decision for a row (its best similarity with an earlier row in its
  cluster, in keep order) does not depend on the other rows' decisions, so one pass at a loose
  threshold gives every threshold's result.
* decontaminate: the eval copies are the rows with ``eval_copy`` (``task:image``, exact or near);
  a flagged row is right when its nearest eval image is the one it copies; precision = right /
  flagged, recall = right / eval copies.

``speed``: random unit vectors (clustered, so k-means has structure): one faiss k-means alone,
then semdedup's own work on the same data with the same clusters (assignment + the exact
within-cluster search), and decontaminate's search of a pool against an eval set, with the
ratios the targets are stated in.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SD_THRESHOLDS = (0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995)


# ---- truth ---------------------------------------------------------------------------------------

def read_truth(pool: Path, columns: list[str]) -> dict[str, list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.concat_tables([pq.read_table(p, columns=columns) for p in sorted((pool / "truth").glob("*.parquet"))])
    return {c: t.column(c).to_pylist() for c in columns}


def dedup_scores(pairs: list[tuple[str, str]], truth: dict[str, list]) -> dict[str, float]:
    """Precision and recall of removals (uid, the uid it matched) against the planted duplicates."""
    group = {u: (d if d else u) for u, d in zip(truth["uid"], truth["duplicate_of"])}
    planted = sum(1 for d in truth["duplicate_of"] if d)
    right = sum(1 for u, k in pairs if group.get(u) == group.get(k))
    n = len(pairs)
    return {"removed": n, "right": right, "planted": planted, "precision": right / n if n else float("nan"),
            "recall": right / planted if planted else float("nan")}


def contamination_scores(flags: list[tuple[str, str]], truth: dict[str, list]) -> dict[str, float]:
    """Precision and recall of flagged rows (uid, 'task:image id' matched) against the eval copies."""
    copy = {u: c for u, c in zip(truth["uid"], truth["eval_copy"]) if c}
    right = sum(1 for u, e in flags if copy.get(u) == e)
    n = len(flags)
    return {"flagged": n, "right": right, "copies": len(copy), "precision": right / n if n else float("nan"),
            "recall": right / len(copy) if copy else float("nan")}


# ---- semdedup -------------------------------------------------------------------------------------

def pool_embeddings(pool: Path, key: str = "l14_img") -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    uids, embs = [], []
    for p in sorted((pool / "metadata").glob("*.parquet")):
        uids += pq.read_table(p, columns=["uid"]).column("uid").to_pylist()
        with np.load(p.with_suffix(".npz")) as z:
            embs.append(z[key].astype(np.float32))
    return uids, np.concatenate(embs)


def semdedup_sweep(pool: Path, centroids: Path, keep: str = "farthest") -> list[tuple[str, str, float]]:
    """Every row's (uid, best earlier match's uid, similarity) within its cluster, in keep order."""
    from datacomp.filters.ops.semdedup import _unit_rows, assign_clusters, earlier_matches, order_cluster

    uids, x = pool_embeddings(pool)
    cent = np.load(centroids)
    use = np.flatnonzero(np.any(x != 0, axis=1))
    cl = np.full(len(x), -1)
    cl[use] = assign_clusters(x[use], cent)[0]
    out = []
    for c in range(len(cent)):
        idx = np.flatnonzero(cl == c)
        if len(idx) < 2:
            continue
        xc = _unit_rows(x[idx])
        order = order_cluster(xc, cent[c], keep, None)
        arg, best = earlier_matches(np.ascontiguousarray(xc[order]), 1.0)
        for j in range(1, len(order)):
            out.append((uids[idx[order[j]]], uids[idx[order[arg[j]]]], float(best[j])))
    return out


def filter_run(pool: Path, recipe: str, out: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from datacomp.filters import run_filter

    m = run_filter(pool, recipe, out, overrides=overrides, workers=2, overwrite=True)
    return dict(m.extra["globals"])


def semdedup_quality(pool: Path, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    truth = read_truth(pool, ["uid", "duplicate_of"])
    g = filter_run(pool, "semdedup", work / "semdedup.npy")
    t = pq.read_table(g["semdedup_duplicates"]).to_pydict()
    default = dedup_scores(list(zip(t["uid"], t["kept_uid"])), truth)
    default["threshold"] = g["semdedup_threshold"]
    rows = semdedup_sweep(pool, Path(g["centroids"]))
    sweep = []
    for th in SD_THRESHOLDS:
        s = dedup_scores([(u, k) for u, k, sim in rows if sim > th], truth)
        s["threshold"] = th
        sweep.append(s)
    return {"default": default, "sweep": sweep}


DC_THRESHOLDS = (0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995)


def decontaminate_quality(pool: Path, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from datacomp.filters.ops.decontaminate import nearest_eval

    truth = read_truth(pool, ["uid", "eval_copy"])
    g = filter_run(pool, "decontaminate", work / "decontaminate.npy")
    t = pq.read_table(g["decontaminate_table"]).to_pydict()
    default = contamination_scores(list(zip(t["uid"], t["eval_id"])), truth)
    default["threshold"] = g["decontaminate_threshold"]
    evals = np.load(g["eval_embeddings"])
    ids = json.loads(Path(g["eval_embeddings"]).with_suffix(".json").read_text())["ids"]
    uids, x = pool_embeddings(pool)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    use = norms[:, 0] > 0
    sims, idx = nearest_eval(x[use] / norms[use], evals)
    u = [uid for uid, ok in zip(uids, use) if ok]
    sweep = []
    for th in DC_THRESHOLDS:
        s = contamination_scores([(u[i], ids[idx[i]]) for i in np.flatnonzero(sims >= th)], truth)
        s["threshold"] = th
        sweep.append(s)
    return {"default": default, "sweep": sweep, "tasks": g["decontaminate_tasks"]}


def _fmt(v: float) -> str:
    return "  -  " if v != v else f"{v:.3f}"


def format_pr(title: str, rows: list[dict[str, Any]], count: str) -> str:
    lines = [title, f"  {'threshold':>10}  {count:>8}  {'right':>6}  {'precision':>9}  {'recall':>6}"]
    for r in rows:
        lines.append(f"  {r['threshold']:>10.5f}  {r[count]:>8}  {r['right']:>6}  {_fmt(r['precision']):>9}  {_fmt(r['recall']):>6}")
    return "\n".join(lines)


# ---- speed ---------------------------------------------------------------------------------------

def clustered(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """n unit vectors around k random centres (float16 like pool npz, returned as float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, n)] + rng.normal(scale=0.6, size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def speed_semdedup(n: int, d: int, per_cluster: int = 1000) -> dict[str, float]:
    """One faiss k-means (the kmeans op's settings) vs semdedup's own work on the same clusters."""
    import faiss

    from datacomp.filters.ops.semdedup import _unit_rows, assign_clusters, dedup_cluster

    k = max(1, n // per_cluster)
    x = clustered(n, d, k, 0)
    t0 = time.perf_counter()
    clus = faiss.Clustering(d, k)
    clus.niter, clus.seed, clus.max_points_per_centroid, clus.verbose = 20, 0, 10_000_000, False
    clus.train(x, faiss.IndexFlatL2(d))
    cent = faiss.vector_to_array(clus.centroids).reshape(k, d)
    t_kmeans = time.perf_counter() - t0
    t0 = time.perf_counter()
    cl = assign_clusters(x, cent)[0]
    t_assign = time.perf_counter() - t0
    t0 = time.perf_counter()
    order = np.argsort(cl, kind="stable")
    bounds = np.searchsorted(cl[order], np.arange(k + 1))
    removed = 0
    for c in range(k):
        idx = order[bounds[c]:bounds[c + 1]]
        removed += len(dedup_cluster(_unit_rows(x[idx]), cent[c], 0.0001, "farthest")[0])
    t_search = time.perf_counter() - t0
    return {"rows": n, "dim": d, "clusters": k, "kmeans_s": t_kmeans, "assign_s": t_assign, "search_s": t_search,
            "removed": removed, "ratio": (t_kmeans + t_assign + t_search) / t_kmeans}


def speed_decontaminate(n: int, n_eval: int, d: int) -> dict[str, float]:
    """The decontaminate op's index build (IVF from 20k eval images) and search of n pool rows."""
    import tempfile

    import faiss

    from datacomp.filters.ops.decontaminate import IVF_NPROBE, build_ivf, nearest_eval

    evals = clustered(n_eval, d, max(1, n_eval // 1000), 1)
    rng = np.random.default_rng(2)
    pool = clustered(n, d, max(1, n // 1000), 3)
    planted = rng.choice(n, min(1000, n), replace=False)
    pool[planted] = evals[rng.choice(n_eval, len(planted), replace=False)]  # copies to find
    t0 = time.perf_counter()
    index = None
    if n_eval >= 20000:
        with tempfile.TemporaryDirectory() as tmp:
            build_ivf(evals, Path(tmp) / "e.ivf")
            index = faiss.read_index(str(Path(tmp) / "e.ivf"))
        index.nprobe = IVF_NPROBE
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    sims, _ = nearest_eval(pool, evals, index)
    t_search = time.perf_counter() - t0
    found = int((sims[planted] >= 0.9999).sum())
    return {"rows": n, "evals": n_eval, "dim": d, "build_s": t_build, "search_s": t_search,
            "planted": len(planted), "found": found, "total_s": t_build + t_search}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--pools", nargs="+", required=True)
    q.add_argument("--work", default="/tmp/datacomp-curation")
    q.add_argument("--json", help="also write the figures as JSON here")
    sp = sub.add_parser("speed")
    sp.add_argument("--rows", type=int, default=1_000_000)
    sp.add_argument("--dim", type=int, default=768)
    sp.add_argument("--evals", type=int, default=100_000)
    sp.add_argument("--what", default="semdedup,decontaminate")
    args = ap.parse_args(argv)
    print(f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cpus")
    results: list[dict[str, Any]] = []
    if args.cmd == "quality":
        for pool in map(Path, args.pools):
            work = Path(args.work) / pool.parent.name
            work.mkdir(parents=True, exist_ok=True)
            sd = semdedup_quality(pool, work)
            print(f"\n== {pool}")
            print(format_pr("semdedup (default eps)", [sd["default"]], "removed"))
            print(format_pr("semdedup sweep (similarity > threshold)", sd["sweep"], "removed"))
            dc = decontaminate_quality(pool, work)
            print(format_pr("decontaminate (default threshold)", [dc["default"]], "flagged"))
            print(format_pr("decontaminate sweep (similarity >= threshold)", dc["sweep"], "flagged"))
            results.append({"pool": str(pool), "semdedup": sd, "decontaminate": dc})
    if args.cmd == "speed":
        what = args.what.split(",")
        if "semdedup" in what:
            r = speed_semdedup(args.rows, args.dim)
            print(f"semdedup {r['rows']:,} x {r['dim']}, {r['clusters']} clusters: k-means {r['kmeans_s']:.1f} s; "
                  f"semdedup = k-means + assignment {r['assign_s']:.1f} s + within-cluster search {r['search_s']:.1f} s "
                  f"= {r['ratio']:.2f}x one k-means ({r['removed']} removed)")
        if "decontaminate" in what:
            r = speed_decontaminate(args.rows, args.evals, args.dim)
            print(f"decontaminate {r['rows']:,} pool rows vs {r['evals']:,} eval images x {r['dim']}: index "
                  f"{r['build_s']:.1f} s + search {r['search_s']:.1f} s = {r['total_s']:.1f} s; planted copies found "
                  f"{r['found']} of {r['planted']}")
        print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.cmd == "quality" and args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
