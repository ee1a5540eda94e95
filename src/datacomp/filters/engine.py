"""The filter's per-shard machinery: the column store (score columns per shard, cached), keep
rules, and the units the stage runs in worker processes (global map, select, subset parts).

The stage driver, its lifecycle and the run's plan are :mod:`.stage`'s (``run_filter``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError, FormatError
from ..formats.atomic import atomic_path
from ..formats.pool import npz_path, one_array, parquet_num_rows, read_metadata
from ._uids import merge_parts, uid_pairs, write_part
from .recipe import Recipe, Rule
from .registry import GlobalOp, OpEnv, ShardContext, ShardOp

log = logging.getLogger(__name__)



# ---- per-shard column store ----------------------------------------------------------------------

def _fingerprint(paths: list[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p.name}:missing")
    return ";".join(parts)


def _op_sources(op: ShardOp, parquet: Path) -> list[Path]:
    sources = [parquet]
    if op.reads_npz():
        sources.append(npz_path(parquet))
    return sources


class ShardColumns:
    """The columns of one shard: parquet columns and step outputs, computed lazily, cached on disk.

    ``prepare(names)`` works out which parquet columns the missing (uncached) steps need and reads
    them in one go; ``get(name)`` returns a column as a pyarrow array.
    """

    def __init__(self, parquet: Path, steps: list[ShardOp], cache_dir: Path | None, env: OpEnv,
                 write_cache: bool = True):
        self.parquet = Path(parquet)
        self.steps = steps
        self.cache_dir = cache_dir
        self.write_cache = write_cache  # False: read cached scores, never write (a reader such as the report)
        self.num_rows = parquet_num_rows(self.parquet)
        self.ctx = ShardContext(self.parquet, self.num_rows, dict(env.globals))
        for op in steps:
            op.bind(env)
        self.producer: dict[str, ShardOp] = {c: op for op in steps for c in op.outputs()}
        self.index: dict[int, int] = {id(op): i for i, op in enumerate(steps)}
        self.columns: dict[str, pa.Array] = {}
        self.raw: dict[str, pa.Array] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self._valid: dict[str, bool] = {}
        self._uid_digest: str | None = None

    # cache files ------------------------------------------------------------------------------
    def _cache_path(self, op: ShardOp) -> Path | None:
        if self.cache_dir is None or not op.cache:
            return None
        return self.cache_dir / op.cache_key() / f"{self.parquet.stem}.parquet"

    def _cache_fingerprint(self, op: ShardOp) -> str:
        """What a cached score depends on: the parquet's uids (a uid is a hash of url and text, so
        rewriting the parquet with new score columns keeps the cache valid) and any other source
        file (an npz) by size and modification time."""
        if self._uid_digest is None:
            self._read_raw(["uid"])
            uids = self.raw["uid"].fill_null("").to_pylist()
            self._uid_digest = hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]
        others = _op_sources(op, self.parquet)[1:]
        return f"uids:{self._uid_digest}:{self.num_rows}" + (";" + _fingerprint(others) if others else "")

    def _cache_valid(self, op: ShardOp) -> bool:
        key = op.cache_key() if op.cache else op.name
        if key in self._valid:
            return self._valid[key]
        path = self._cache_path(op)
        ok = False
        if path is not None and path.is_file():
            try:
                meta = pq.read_schema(path).metadata or {}
                ok = (meta.get(b"fingerprint", b"").decode() == self._cache_fingerprint(op)
                      and int(meta.get(b"rows", b"-1")) == self.num_rows)
            except Exception:  # a damaged cache file is just a miss
                ok = False
        self._valid[key] = ok
        return ok

    def _write_cache(self, op: ShardOp, values: dict[str, pa.Array]) -> None:
        path = self._cache_path(op)
        if path is None or not self.write_cache:
            return
        table = pa.table(values).replace_schema_metadata({
            "fingerprint": self._cache_fingerprint(op),
            "rows": str(self.num_rows),
            "op": json.dumps(op.spec(), default=str),
        })
        try:
            with atomic_path(path, suffix=".parquet") as tmp:
                pq.write_table(table, tmp, compression="zstd")
        except OSError as e:  # a read-only cache location slows re-runs but is not an error
            log.warning("%s: cannot write score cache: %s", path, e)

    # column access ----------------------------------------------------------------------------
    def _producer(self, name: str, before: int | None = None) -> ShardOp | None:
        """The step making ``name`` (only steps before index ``before`` when given), else None: a
        parquet column. A step may read a parquet column of the same name as its output."""
        op = self.producer.get(name)
        if op is not None and before is not None and self.index[id(op)] >= before:
            return None
        return op

    def _need_raw(self, name: str, acc: set[str], seen: set[tuple[str, int | None]], before: int | None = None) -> None:
        if (name, before) in seen:
            return
        seen.add((name, before))
        op = self._producer(name, before)
        if op is None:
            if name not in self.raw:
                acc.add(name)
            return
        if name in self.columns or (op.cache and self._cache_valid(op)):
            return
        for c in [*op.inputs(), *(r.column for r in getattr(op, "where", []))]:
            self._need_raw(c, acc, seen, self.index[id(op)])

    def prepare(self, names: list[str]) -> None:
        acc: set[str] = set()
        seen: set[tuple[str, int | None]] = set()
        for n in names:
            self._need_raw(n, acc, seen)
        self._read_raw(sorted(acc))

    def _read_raw(self, names: list[str]) -> None:
        names = [n for n in names if n not in self.raw]
        if not names:
            return
        table = read_metadata(self.parquet, names)
        if table.num_rows != self.num_rows:
            raise FormatError(f"{self.parquet}: read {table.num_rows} rows, metadata says {self.num_rows}")
        for n in names:
            self.raw[n] = one_array(table.column(n))

    def get(self, name: str, before: int | None = None) -> pa.Array:
        op = self._producer(name, before)
        if op is None:
            self._read_raw([name])
            return self.raw[name]
        if name not in self.columns:
            self._run_op(op)
        return self.columns[name]

    def numpy(self, name: str) -> np.ndarray:
        return self.get(name).to_numpy(zero_copy_only=False)

    def _run_op(self, op: ShardOp) -> None:
        key = op.cache_key() if op.cache else op.name
        entry = self.stats.setdefault(key, {"computed_rows": 0, "cached_rows": 0})
        path = self._cache_path(op)
        if path is not None and self._cache_valid(op):
            try:
                table = pq.read_table(path, columns=op.outputs())
                for c in op.outputs():
                    self.columns[c] = one_array(table.column(c))
                entry["cached_rows"] += self.num_rows
                return
            except Exception as e:  # damaged cache: recompute
                log.warning("%s: unreadable score cache (%s); recomputing", path, e)
        idx = self.index[id(op)]
        inputs = {c: self.get(c, idx) for c in op.inputs()}
        ctx = self.ctx
        rows = None
        where = getattr(op, "where", [])
        if where:
            mask = np.ones(self.num_rows, dtype=bool)
            for r in where:
                mask &= eval_rule(r, self.get(r.column, idx), self.ctx.globals, str(self.parquet))
            rows = np.flatnonzero(mask)
            take = pa.array(rows)
            inputs = {c: v.take(take) for c, v in inputs.items()}
            ctx = ShardContext(self.parquet, self.num_rows, self.ctx.globals, rows=rows)
        t0 = time.time()
        out = op.compute(inputs, ctx)
        expect = self.num_rows if rows is None else len(rows)
        if rows is not None:  # back to one value per shard row, null where the step did not run
            back = np.full(self.num_rows, -1, dtype=np.int64)
            back[rows] = np.arange(len(rows))
            back_idx = pa.array(back, mask=back < 0)
        for c in op.outputs():
            if c not in out:
                raise RuntimeError(f"op '{op.name}' did not produce column '{c}'")
            if len(out[c]) != expect:
                raise RuntimeError(f"op '{op.name}' produced {len(out[c])} values for {expect} rows of {self.parquet}")
            out[c] = one_array(out[c])
            if rows is not None:
                out[c] = out[c].take(back_idx)
            self.columns[c] = out[c]
        entry["computed_rows"] += self.num_rows
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.time() - t0, 4)
        self._write_cache(op, {c: self.columns[c] for c in op.outputs()})


# ---- rules ---------------------------------------------------------------------------------------

_CMP = {"==": pc.equal, "!=": pc.not_equal, ">": pc.greater, ">=": pc.greater_equal,
        "<": pc.less, "<=": pc.less_equal}


def _scalar(value: Any, column: pa.Array) -> pa.Scalar:
    """The rule's value as an Arrow scalar. A number compared with a float32 column is a float32,
    as NumPy/pandas compare ``float32_array >= 0.28`` (the reference's comparisons)."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and pa.types.is_float32(column.type)):
        return pa.scalar(np.float32(value), pa.float32())
    return pa.scalar(value)


def eval_rule(rule: Rule, column: pa.Array, globals_: dict[str, Any], source: str) -> np.ndarray:
    """Boolean mask of the rows that satisfy ``rule`` (nulls never do)."""
    value = globals_[rule.ref] if rule.ref is not None else rule.value
    try:
        if rule.op in _CMP:
            res = _CMP[rule.op](column, _scalar(value, column))
        else:
            res = pc.is_in(column, value_set=pa.array(value))
            if rule.op == "not in":
                res = pc.invert(res)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ConfigError(f"{source}: rule '{rule.text}' cannot compare column of type {column.type} "
                          f"with {value!r}: {e}") from None
    return np.asarray(res.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


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
