"""Why a recipe dropped a row: the first rule of each rule group the row fails, with the value
that decided (``language == en (was es)``, ``clip_l14_similarity_score >= @threshold (0.242; was
0.198)``).

It re-reads what the filter computed, from a finished subset's sidecar (``SUBSET.json``: the
resolved recipe, its parameters and global values such as a quantile threshold or the k-means
centroids' file) and the score cache the filter wrote (read only: a missing score is computed
again in memory, never written). The rules are evaluated as the filter evaluates them
(:func:`datacomp.filters.engine.eval_rule`), so the reason is the filter's own.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .engine import ShardColumns, _shard_ops, eval_rule, pool_parquets
from .recipe import load_recipe
from .registry import OpEnv


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "null" if math.isnan(v) else f"{v:.3g}" if abs(v) >= 1000 else f"{v:.3f}"
    return "null" if v is None else str(v)


def _recipe(sidecar: dict[str, Any]):
    source = sidecar.get("recipe_file")
    if not source or not Path(source).is_file():
        source = sidecar.get("recipe")
    if not source:
        raise ConfigError("the filter sidecar names no recipe")
    return load_recipe(source, sidecar.get("overrides") or None)


def explain_rows(pool: Path, sidecar: dict[str, Any], rows: dict[str, list[int]]) -> dict[tuple[str, int], str]:
    """``{(shard stem, row): reason}`` for the given rows of the given metadata shards (by stem).

    A row that passes every group gets no entry. ConfigError when the recipe cannot be loaded.
    """
    plan = _recipe(sidecar)
    globals_ = dict(sidecar.get("globals") or {})
    cache_dir = (sidecar.get("cache") or {}).get("dir")
    cache = Path(cache_dir) if cache_dir else None
    env = OpEnv(globals=globals_, pool=Path(pool), artifacts=cache.parent / "globals" if cache else None)
    for st in plan.steps:
        st.op.bind(env)
    _, parquets = pool_parquets(pool)
    out: dict[tuple[str, int], str] = {}
    for parquet in parquets:
        wanted = rows.get(parquet.stem)
        if not wanted:
            continue
        store = ShardColumns(parquet, _shard_ops(plan), cache, env, write_cache=False)
        store.prepare([r.column for r in plan.all_rules()])
        reasons: dict[int, list[str]] = {i: [] for i in wanted}
        for label, rules in plan.rule_groups():
            checks = [(r, store.get(r.column), eval_rule(r, store.get(r.column), globals_, plan.source)) for r in rules]
            for i in wanted:
                failed = next(((r, col) for r, col, ok in checks if not ok[i]), None)
                if failed is None:
                    continue
                r, col = failed
                was = _fmt(col[i].as_py())
                ref = f"{_fmt(globals_.get(r.ref))}; " if r.ref is not None else ""
                reasons[i].append(f"{label + ': ' if label else ''}{r.text} ({ref}was {was})")
        for i, why in reasons.items():
            if why and len(why) == len(plan.rule_groups()):
                out[(parquet.stem, i)] = " / ".join(why)
    return out
