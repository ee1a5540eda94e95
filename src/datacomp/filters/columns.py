"""The per-shard column store of the filter engine: one shard's parquet columns and the outputs
of the recipe's shard steps, computed lazily and cached on disk per op (keyed by the op's
parameters and the shard's uids), so every recipe that runs the same op reuses its scores.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FormatError
from ..formats.atomic import atomic_path
from ..formats.pool import npz_path, one_array, parquet_num_rows, read_metadata
from .registry import OpEnv, ShardContext, ShardOp
from .rules import eval_rule

log = logging.getLogger(__name__)


def fingerprint(paths: list[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p.name}:missing")
    return ";".join(parts)


def op_sources(op: ShardOp, parquet: Path) -> list[Path]:
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

    def _cachefingerprint(self, op: ShardOp) -> str:
        """What a cached score depends on: the parquet's uids (a uid is a hash of url and text, so
        rewriting the parquet with new score columns keeps the cache valid) and any other source
        file (an npz) by size and modification time."""
        if self._uid_digest is None:
            self._read_raw(["uid"])
            uids = self.raw["uid"].fill_null("").to_pylist()
            self._uid_digest = hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]
        others = op_sources(op, self.parquet)[1:]
        return f"uids:{self._uid_digest}:{self.num_rows}" + (";" + fingerprint(others) if others else "")

    def _cache_valid(self, op: ShardOp) -> bool:
        key = op.cache_key() if op.cache else op.name
        if key in self._valid:
            return self._valid[key]
        path = self._cache_path(op)
        ok = False
        if path is not None and path.is_file():
            try:
                meta = pq.read_schema(path).metadata or {}
                ok = (meta.get(b"fingerprint", b"").decode() == self._cachefingerprint(op)
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
            "fingerprint": self._cachefingerprint(op),
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
