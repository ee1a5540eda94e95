"""The filter's per-shard machinery, run by :mod:`.stage` (``run_filter``: the driver, its lifecycle
and the run's plan) in worker processes: a global step's map over one parquet, the select pass
(score columns, keep rules, kept uids as a small ``.npy`` part) and the subset written from the
parts. The per-shard column store (parquet columns, step outputs, the score cache) is
``columns.py``, the keep rules ``rules.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ..formats.atomic import atomic_path
from ._uids import merge_parts, uid_pairs, write_part
from .columns import ShardColumns, fingerprint, op_sources
from .recipe import Recipe
from .registry import GlobalOp, OpEnv, ShardOp
from .rules import eval_rule

__all__ = ["ShardColumns", "fingerprint", "op_sources", "eval_rule", "global_map_unit", "select_unit", "kept_part",
           "write_subset_from_parts", "KERNEL_MIN_ROWS"]


# ---- units (module level: they run in worker processes) ------------------------------------------

def _shard_ops(recipe: Recipe, upto: int | None = None) -> list[ShardOp]:
    steps = recipe.steps if upto is None else recipe.steps[:upto]
    return [s.op for s in steps if isinstance(s.op, ShardOp)]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)


def global_map_unit(parquet: str, recipe: Recipe, step_index: int, env: OpEnv,
                    cache_dir: str | None, part: str) -> dict[str, Any]:
    step = recipe.steps[step_index]
    op = step.op
    assert isinstance(op, GlobalOp)
    globals_ = env.globals
    op.bind(env)
    store = ShardColumns(Path(parquet), _shard_ops(recipe, step_index), Path(cache_dir) if cache_dir else None, env)
    store.prepare([*op.inputs(), *(r.column for r in step.where)])
    mask = None
    for r in step.where:
        m = eval_rule(r, store.get(r.column), globals_, recipe.source)
        mask = m if mask is None else (mask & m)
    values = np.asarray(op.map(store, mask))
    _save_npy(Path(part), values)
    return {"rows": store.num_rows, "values": int(len(values)), "cache": store.stats}


def select_unit(parquet: str, recipe: Recipe, env: OpEnv, cache_dir: str | None, part: str) -> dict[str, Any]:
    path = Path(parquet)
    globals_ = env.globals
    store = ShardColumns(path, _shard_ops(recipe), Path(cache_dir) if cache_dir else None, env)
    store.prepare(["uid", *(r.column for r in recipe.all_rules())])
    uids = store.get("uid")
    if uids.null_count:
        raise FormatError(f"{path}: column 'uid' has {uids.null_count} null values")
    try:
        pairs = uid_pairs(uids, env.kernels, scratch=True)  # valid until the next shard of this worker
    except ValueError as e:
        raise FormatError(f"{path}: bad uid: {e}") from None
    n = store.num_rows
    marginal, sequential, group_fail, all_fail = [], [], [], []
    keep_rows = np.zeros(n, dtype=bool)
    for _, rules in recipe.rule_groups():
        alive = np.ones(n, dtype=bool)
        for r in rules:
            m = eval_rule(r, store.get(r.column), globals_, recipe.source)
            marginal.append(int(n - m.sum()))
            sequential.append(int((alive & ~m).sum()))
            alive &= m
        keep_rows |= alive
        group_fail.append(int(n - alive.sum()))
        all_fail.append(int(n - keep_rows.sum()))
    kept, groups = kept_part(pairs, keep_rows, part, env.kernels)
    return {"rows": n, "kept": kept, "groups": groups, "marginal": marginal, "sequential": sequential,
            "group_removed": group_fail, "group_cumulative": all_fail, "cache": store.stats}


def kept_part(pairs: np.ndarray, keep_rows: np.ndarray | None, part: str | os.PathLike,
              compiled: bool | None = None) -> tuple[int, list[int]]:
    """A select unit's output: its kept uid pairs, grouped by top byte here (in the worker, in
    parallel) and written as the part file (``_uids.write_part``); returns how many were kept and
    where the part's top-byte groups end."""
    return write_part(pairs, keep_rows, part, compiled)


def write_subset_from_parts(parts: list[str | os.PathLike], out: str | os.PathLike,
                            groups: list[list[int] | None] | None = None) -> int:
    """The driver's share of writing the subset: the parts, memory-mapped, cut into value ranges
    that two threads sort and stream into the subset file (written atomically; every row checked
    to be in order while written). Returns the row count."""
    return merge_parts(parts, out, groups=groups, threads=2)


# The select pass's uid work (hex decode, grouping) runs compiled kernels in a worker that has
# numba loaded already (a text op ran there), or in every worker when the pool has at least
# KERNEL_MIN_ROWS rows per worker: loading numba costs ~0.4 s of CPU per process and the kernels
# save ~3.5 ms per 125k rows (0.13 instead of 3.4 ms for the decode), which pays from ~15M rows.
KERNEL_MIN_ROWS = 16_000_000
