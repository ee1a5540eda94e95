"""Why a recipe dropped a row: the first rule of each rule group the row fails, with the value
that decided (``language == en (was es)``, ``clip_l14_similarity_score >= @threshold (0.242; was
0.198)``).

It re-reads what the filter computed, from a finished subset's sidecar (``SUBSET.json``: the
resolved recipe, its parameters and global values such as a quantile threshold or the k-means
centroids' file) and the score cache the filter wrote (read only: a missing score is computed
again in memory, never written). The rules are evaluated as the filter evaluates them
(:func:`datacomp.filters.rules.eval_rule`), so the reason is the filter's own.

:func:`explain_rows` gives the reasons for chosen rows (the report's sample grids);
:func:`explain_dropped` picks N dropped rows per deciding rule, in uid order, with every column
the recipe computed (``datacomp filter --explain N`` writes them to ``SUBSET.explain.parquet``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .columns import ShardColumns
from .engine import _shard_ops
from .rules import eval_rule
from .stage import pool_parquets
from .recipe import Recipe, Rule, load_recipe
from .registry import OpEnv


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "null" if math.isnan(v) else f"{v:.3g}" if abs(v) >= 1000 else f"{v:.3f}"
    return "null" if v is None else str(v)


def _recipe(sidecar: dict[str, Any]) -> Recipe:
    source = sidecar.get("recipe_file")
    if not source or not Path(source).is_file():
        source = sidecar.get("recipe")
    if not source:
        raise ConfigError("the filter sidecar names no recipe")
    return load_recipe(source, sidecar.get("overrides") or None)


def _stores(pool: Path, sidecar: dict[str, Any], stems: set[str] | None) -> Iterator[tuple[Path, Recipe, ShardColumns, dict]]:
    """(parquet, recipe, its columns with the recipe's steps bound, globals) per metadata shard."""
    plan = _recipe(sidecar)
    globals_ = dict(sidecar.get("globals") or {})
    cache_dir = (sidecar.get("cache") or {}).get("dir")
    cache = Path(cache_dir) if cache_dir else None
    env = OpEnv(globals=globals_, pool=Path(pool), artifacts=cache.parent / "globals" if cache else None)
    for st in plan.steps:
        st.op.bind(env)
    for parquet in pool_parquets(pool)[1]:
        if stems is None or parquet.stem in stems:
            store = ShardColumns(parquet, _shard_ops(plan), cache, env, write_cache=False)
            store.prepare(["uid", *(r.column for r in plan.all_rules())])
            yield parquet, plan, store, globals_


def _first_failures(plan: Recipe, store: ShardColumns, globals_: dict) -> list[tuple[str, list[Rule], np.ndarray]]:
    """Per rule group: (label, rules, index of the first rule each row fails; len(rules) = passes all)."""
    out = []
    for label, rules in plan.rule_groups():
        first = np.full(store.num_rows, len(rules), dtype=np.int64)
        for j in reversed(range(len(rules))):
            r = rules[j]
            first[~eval_rule(r, store.get(r.column), globals_, plan.source)] = j
        out.append((label, rules, first))
    return out


def _reason(store: ShardColumns, globals_: dict, groups, i: int) -> str | None:
    """The reason row ``i`` is dropped (every group names its first failing rule), or None if kept."""
    parts = []
    for label, rules, first in groups:
        j = int(first[i])
        if j == len(rules):
            return None  # this group keeps the row
        r = rules[j]
        ref = f"{_fmt(globals_.get(r.ref))}; " if r.ref is not None else ""
        parts.append(f"{label + ': ' if label else ''}{r.text} ({ref}was {_fmt(store.get(r.column)[i].as_py())})")
    return " / ".join(parts)


def explain_rows(pool: Path, sidecar: dict[str, Any], rows: dict[str, list[int]]) -> dict[tuple[str, int], str]:
    """``{(shard stem, row): reason}`` for the given rows of the given metadata shards (by stem).

    A row the recipe keeps gets no entry. ConfigError when the recipe cannot be loaded.
    """
    out: dict[tuple[str, int], str] = {}
    for parquet, plan, store, globals_ in _stores(pool, sidecar, {s for s, r in rows.items() if r}):
        groups = _first_failures(plan, store, globals_)
        for i in rows[parquet.stem]:
            why = _reason(store, globals_, groups, i)
            if why is not None:
                out[(parquet.stem, i)] = why
    return out


def explain_dropped(pool: Path, sidecar: dict[str, Any], n: int) -> pa.Table:
    """Up to ``n`` dropped rows per deciding rule (the first rule it fails, of each group), the first
    in uid order: ``uid, shard, row, rule, reason`` and every column the recipe's rules and steps
    read or computed (``language``, ``caption_words``, ``image_min_side``, scores, cluster ids...)."""
    candidates: list[dict[str, Any]] = []  # at most n per rule per shard
    columns: list[str] = []
    for parquet, plan, store, globals_ in _stores(pool, sidecar, None):
        if not columns:
            columns = list(dict.fromkeys(["text", *(r.column for r in plan.all_rules()),
                                          *(c for op in _shard_ops(plan) for c in op.outputs())]))
        groups = _first_failures(plan, store, globals_)
        dropped = np.ones(store.num_rows, dtype=bool)
        for _, rules, first in groups:
            dropped &= first < len(rules)
        uids = store.get("uid").to_pylist()
        by_rule: dict[str, list[int]] = {}
        for i in np.flatnonzero(dropped).tolist():
            rule = " / ".join(f"{label + ': ' if label else ''}{rules[int(first[i])].text}"
                              for label, rules, first in groups)
            by_rule.setdefault(rule, []).append(i)
        for rule, idx in by_rule.items():
            for i in sorted(idx, key=uids.__getitem__)[:n]:
                candidates.append({"uid": uids[i], "shard": parquet.stem, "row": i, "rule": rule,
                                   "reason": _reason(store, globals_, groups, i),
                                   **{c: store.get(c)[i].as_py() for c in columns}})
    candidates.sort(key=lambda r: (r["rule"], r["uid"]))
    picked: list[dict[str, Any]] = []
    count: dict[str, int] = {}
    for r in candidates:
        if count.get(r["rule"], 0) < n:
            count[r["rule"]] = count.get(r["rule"], 0) + 1
            picked.append(r)
    if not picked:
        return pa.table({k: pa.array([], pa.string()) for k in ("uid", "shard", "row", "rule", "reason", *columns)})
    return pa.Table.from_pylist(picked)
