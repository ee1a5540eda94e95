"""``datacomp decontaminate --pool POOL --evalsets DIR``: which eval tasks a pool contaminates.

It runs the ``decontaminate`` recipe (the filter stage: its lifecycle, resume and reuse) into
``POOL/decontaminate/keep.npy`` — the pool less its contaminated rows, a subset like any other —
and puts the table beside it, ``POOL/decontaminate/contamination.parquet`` (uid, task, eval_id,
similarity: one row per contaminated pool row), then summarises it per task: contaminated pool
rows, distinct eval images they copy, and that as a share of the task's test images.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..formats.atomic import atomic_path

OUT_DIR = "decontaminate"


def decontaminate_pool(pool: str | os.PathLike, evalsets: str | os.PathLike | None = None,
                       threshold: float | None = None, model: str | None = None, checkpoint: str | None = None,
                       workers: int = 2, executor: str = "local", overwrite: bool = False,
                       out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the decontaminate recipe over ``pool``; -> {table, subset, kept, pool_rows, tasks: [...]}."""
    import pyarrow.parquet as pq

    from .stage import pool_parquets, run_filter

    root, _ = pool_parquets(pool)
    out = Path(out_dir) if out_dir is not None else root / OUT_DIR
    over: dict[str, Any] = {}
    if evalsets is not None:
        over["evalsets"] = str(Path(evalsets).resolve())
    if threshold is not None:
        over["threshold"] = float(threshold)
    if model is not None:
        over["model"] = model
    if checkpoint is not None:
        over["checkpoint"] = str(Path(checkpoint).resolve())
    out.mkdir(parents=True, exist_ok=True)
    m = run_filter(root, "decontaminate", out / "keep.npy", overrides=over, executor=executor, workers=workers,
                   overwrite=overwrite)
    g = m["globals"]
    table = out / "contamination.parquet"
    with atomic_path(table, suffix=".parquet") as tmp:
        shutil.copyfile(g["decontaminate_table"], tmp)
    t = pq.read_table(table).to_pydict()
    sizes = g.get("eval_embeddings_tasks") or {}
    tasks = []
    for task in sorted(set(sizes) | set(t["task"])):
        rows = [i for i, x in enumerate(t["task"]) if x == task]
        images = len({t["eval_id"][i] for i in rows})
        n = int(sizes.get(task, 0))
        tasks.append({"task": task, "pool_rows": len(rows), "eval_images": images, "test_images": n,
                      "share": images / n if n else 0.0})
    return {"table": str(table), "subset": str(out / "keep.npy"), "kept": m["counts"]["kept"],
            "pool_rows": m["counts"]["pool_rows"], "threshold": g["decontaminate_threshold"],
            "eval_images": g.get("eval_embeddings_images"), "tasks": tasks}


def format_contamination(summary: dict[str, Any]) -> str:
    rows = summary["tasks"]
    width = max([len("task")] + [len(r["task"]) for r in rows])
    lines = [f"{'task':<{width}}  {'pool rows':>9}  {'eval images':>11}  {'of':>6}  {'share':>7}"]
    for r in rows:
        flag = "" if r["pool_rows"] else "  (clean)"
        lines.append(f"{r['task']:<{width}}  {r['pool_rows']:>9,}  {r['eval_images']:>11,}  {r['test_images']:>6,}  "
                     f"{100 * r['share']:>6.2f}%{flag}")
    bad = sum(r["pool_rows"] for r in rows)
    lines.append(f"{bad:,} of {summary['pool_rows']:,} pool rows are near-duplicates (cosine >= {summary['threshold']}) "
                 f"of {summary['eval_images']:,} eval test images; contaminated tasks: "
                 f"{sum(1 for r in rows if r['pool_rows'])} of {len(rows)}")
    lines.append(f"table: {summary['table']}")
    lines.append(f"pool without them: {summary['subset']} ({summary['kept']:,} rows)")
    return "\n".join(lines)
