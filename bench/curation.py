"""Curation ops measured against the embedded world's truth, and their speed.

    PYTHONPATH=src .venv/bin/python bench/curation.py quality --pools P0 [P1 ...]
    PYTHONPATH=src .venv/bin/python bench/curation.py speed [--rows 1000000] [--dim 768] [--evals 100000]

``quality``: for every pool (an embedded world: ``POOL/truth/``), semdedup and decontaminate
run as their recipes at the default parameters (``datacomp filter``, the real stage) and are
scored against the truth at the default and along a threshold sweep, from the tables the ops
wrote (the default's removals and the candidates down to their ``sweep_floor``), by
``datacomp.report.curation`` — the same curve ``datacomp report`` draws:

* semdedup: the planted duplicates are the rows with ``duplicate_of`` (a copy of another pool
  row, ``duplicate_kind`` exact or near). A removed row is *right* when the row it matched is in
  its planted group (the copy and its original); precision = right / removed, recall = right /
  planted copies (the ideal removes every copy and keeps one row of each group). The sweep needs
  no second pass: SemDeDup's decision for a row (its best similarity with an earlier row in its
  cluster, in keep order) does not depend on the other rows' decisions, so the op's
  ``matches.parquet`` gives every threshold's result.
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
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


# ---- quality -------------------------------------------------------------------------------------

def filter_run(pool: Path, recipe: str, out: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from datacomp.filters import run_filter

    m = run_filter(pool, recipe, out, overrides=overrides, workers=2, overwrite=True)
    return dict(m.extra["globals"])


def op_quality(pool: Path, work: Path, op: str) -> dict[str, Any]:
    """The op's recipe at its defaults (the real filter stage), scored with the tables it wrote
    (report/curation.py, the report's own curve): the default row and the sweep."""
    import pyarrow.parquet as pq

    from datacomp.report.curation import OPS, load_copy_truth, op_curve

    truth = load_copy_truth(pool)
    if truth is None:
        raise SystemExit(f"{pool}: no truth/ with the copy columns (not an embedded world?)")
    g = filter_run(pool, op, work / f"{op}.npy")
    _, (dkey, _), (skey, _) = OPS[op]
    default = pq.read_table(g[f"{op}_{dkey}"]).to_pydict()
    sweep = pq.read_table(g[f"{op}_{skey}"]).to_pydict()
    curve = op_curve(op, default, sweep, g[f"{op}_threshold"], g[f"{op}_sweep_floor"], truth)
    out = {"default": next(r for r in curve.rows if r["default"]), "sweep": curve.rows,
           "planted": truth.planted(op)}
    if op == "decontaminate":
        out["tasks"] = g["decontaminate_tasks"]
    return out


def _fmt(v: float) -> str:
    return "  -  " if v != v else f"{v:.3f}"


def format_pr(title: str, rows: list[dict[str, Any]], count: str) -> str:
    lines = [title, f"  {'threshold':>10}  {count:>8}  {'right':>6}  {'exact':>6}  {'near':>6}  {'precision':>9}  {'recall':>6}"]
    for r in rows:
        mark = "  (default)" if r.get("default") else ""
        lines.append(f"  {r['threshold']:>10.5f}  {r[count]:>8}  {r['right']:>6}  {r['right_exact']:>6}  {r['right_near']:>6}  "
                     f"{_fmt(r['precision']):>9}  {_fmt(r['recall']):>6}{mark}")
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
            sd = op_quality(pool, work, "semdedup")
            p = sd["planted"]
            print(f"\n== {pool}")
            print(format_pr(f"semdedup sweep (similarity > threshold; {p['total']} planted: {p['exact']} exact, "
                            f"{p['near']} near)", sd["sweep"], "removed"))
            dc = op_quality(pool, work, "decontaminate")
            p = dc["planted"]
            print(format_pr(f"decontaminate sweep (similarity >= threshold; {p['total']} eval copies: {p['exact']} exact, "
                            f"{p['near']} near)", dc["sweep"], "flagged"))
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
