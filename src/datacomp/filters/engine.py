"""Run a recipe over a pool: score columns per shard (cached), global passes, keep rules, subset.

Plan of a run (each pass is a set of per-shard units with completion markers, so a killed run
resumes where it stopped):

1. for each global step, in order: a map pass over every parquet (computing — or loading from the
   score cache — the columns it needs) and a reduce in this process; the values are saved in the
   work directory and recorded in the sidecar;
2. a select pass: every parquet's score columns, the keep rules, and the kept uids, grouped by
   their top byte in the worker, as a small ``.npy`` part plus per-rule counts;
3. the parts are read into one array, cut into value ranges that two threads sort and stream
   into the subset file (``_uids.merge_parts``; written atomically), then the sidecar.

Only one score column of the whole pool is ever held in memory (by a quantile's reduce). The
per-shard column store (parquet columns, step outputs, the score cache) is ``columns.py``, the
keep rules ``rules.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, FormatError, InputError
from ..executors import Unit, run_units
from ..formats.atomic import atomic_path, sweep_temps, write_json
from ..formats.guard import check_apart, damaged_file, file_records
from ..formats.manifest import manifest_digest
from ..formats.pool import list_parquets, parquet_num_rows
from ._uids import merge_parts, uid_pairs, write_part
from .columns import ShardColumns, fingerprint, op_sources
from .recipe import Recipe, load_recipe
from .registry import GlobalOp, OpEnv, OpParamError, ShardOp
from .rules import eval_rule

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1


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


# ---- the stage -----------------------------------------------------------------------------------

def pool_parquets(pool: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(pool root, sorted parquets). ``pool`` is a pool dir (with metadata/) or a dir of parquets."""
    pool = Path(pool)
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    if (pool / "metadata").is_dir():
        return pool, list_parquets(pool / "metadata")
    return pool, list_parquets(pool)


def default_cache_dir(pool_root: Path, out: Path) -> Path:
    base = pool_root if (pool_root / "metadata").is_dir() else pool_root / ".datacomp"
    cand = base / "cache" / "scores"
    probe = cand
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return cand
    return out.parent / ".datacomp_cache" / "scores"


def _merge_cache_stats(results: list[dict[str, Any]], into: dict[str, dict[str, float]]) -> None:
    for res in results:
        for key, st in (res.get("cache") or {}).items():
            e = into.setdefault(key, {"computed_rows": 0, "cached_rows": 0, "seconds": 0.0})
            e["computed_rows"] += st.get("computed_rows", 0)
            e["cached_rows"] += st.get("cached_rows", 0)
            e["seconds"] = round(e["seconds"] + st.get("seconds", 0.0), 4)


def run_filter(
    pool: str | os.PathLike,
    recipe: str | os.PathLike,
    out: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Apply a recipe to a pool; write the subset ``out`` (.npy, sorted ``u8,u8``) and its sidecar.

    Returns the sidecar dict (also written to ``out.with_suffix('.json')``). An up-to-date output
    (same resolved recipe, same pool files) is reused.
    """
    t_start = time.time()
    plan = load_recipe(recipe, overrides)
    pool_root, parquets = pool_parquets(pool)
    out = Path(out)
    check_apart(out, {"pool metadata": sorted({p.parent for p in parquets})})
    sidecar_path = out.with_suffix(".json")
    if sidecar_path == out:
        raise ConfigError(f"{out}: the subset path must not end in .json (the sidecar goes there)")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(pool_root, out)

    files = [fingerprint(_source_files(p, plan)) for p in parquets]
    pool_digest = hashlib.sha256(json.dumps([str(pool_root.resolve()), files]).encode()).hexdigest()[:16]
    env = OpEnv(globals={}, pool=pool_root, artifacts=cache.parent / "globals", pool_digest=pool_digest)
    for st in plan.steps:
        st.op.bind(env)
    identity = {
        "version": __version__,
        "sidecar_version": SIDECAR_VERSION,
        "recipe": plan.resolved(),
        "ops": [s.op.cache_key() if isinstance(s.op, ShardOp) else [s.op.name, s.op.identity()] for s in plan.steps],
        "pool": str(pool_root.resolve()),
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    if out.is_file() and sidecar_path.is_file():
        try:
            old = json.loads(sidecar_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        old = old if isinstance(old, dict) else {}
        why = damaged_file(out.parent, old.get("files") or {}) if old.get("files") else f"{sidecar_path} records no file sizes"
        if old.get("digest") == digest and why is None:
            log.info("%s: up to date (recipe %s), reusing it", out, plan.name)
            _tidy(out, sidecar_path)
            return {**old, "reused": True}
        if old.get("digest") == digest:
            log.warning("%s: not reusing it: %s; filtering again", out, why)

    work = out.parent / f".{out.name}.work"
    state_path = work / "state.json"
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            state = {}
        if state.get("digest") != digest:
            shutil.rmtree(work)
            state = {}
    if not state:
        state = {"digest": digest, "globals": {}, "global_steps_done": []}
        write_json(state_path, state)

    weights = {str(p): max(1, parquet_num_rows(p)) for p in parquets}
    cache_stats: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    globals_: dict[str, Any] = dict(state.get("globals", {}))
    global_records: list[dict[str, Any]] = []

    # 1. global steps -----------------------------------------------------------------------------
    for i, step in enumerate(plan.steps):
        if not step.is_global:
            continue
        op = step.op
        assert isinstance(op, GlobalOp)
        t0 = time.time()
        step_env = OpEnv(globals=dict(globals_), pool=pool_root, artifacts=env.artifacts, pool_digest=pool_digest)
        op.bind(step_env)
        if i not in state["global_steps_done"]:
            partials: list[np.ndarray] = []
            values = op.saved() if op.needs_pool_pass() else None
            if values is not None:
                log.info("%s: step %d (%s): reusing %s", plan.name, i + 1, op.name, values)
            else:
                if op.needs_pool_pass():
                    gdir = work / f"global{i}"
                    units = [Unit(p.stem, (str(p), plan, i, step_env, str(cache), str(gdir / f"{p.stem}.npy")), weights[str(p)])
                             for p in parquets]
                    res = run_units(global_map_unit, units, gdir, workers=workers, executor=executor,
                                    desc=f"{plan.name}: {op.name}", unit_label="rows")
                    _merge_cache_stats(list(res.values()), cache_stats)
                    partials = [np.load(gdir / f"{p.stem}.npy", allow_pickle=False) for p in parquets]
                try:
                    values = op.reduce(partials)
                except OpParamError as e:
                    raise ConfigError(f"{plan.source}: step {i + 1} ({op.name}): {e}") from None
                del partials
            globals_.update(values)
            state["globals"] = globals_
            state["global_steps_done"].append(i)
            write_json(state_path, state)
        timings[f"global{i}_{op.name}"] = round(time.time() - t0, 3)
        global_records.append({"step": i + 1, "op": op.name, "values": {k: globals_.get(k) for k in _values_of(op, globals_)}})

    # 2. select ---------------------------------------------------------------------------------
    t0 = time.time()
    sdir = work / "select"
    kernels = True if sum(weights.values()) >= KERNEL_MIN_ROWS * max(1, workers) else None
    select_env = OpEnv(globals=dict(globals_), pool=pool_root, artifacts=env.artifacts, pool_digest=pool_digest,
                       kernels=kernels)
    units = [Unit(p.stem, (str(p), plan, select_env, str(cache), str(sdir / f"{p.stem}.npy")), weights[str(p)])
             for p in parquets]
    results = run_units(select_unit, units, sdir, workers=workers, executor=executor,
                        desc=f"{plan.name}: select", unit_label="rows")
    _merge_cache_stats(list(results.values()), cache_stats)
    timings["select"] = round(time.time() - t0, 3)

    # 3. subset + sidecar ------------------------------------------------------------------------
    t0 = time.time()
    kept = write_subset_from_parts([sdir / f"{p.stem}.npy" for p in parquets], out,
                                   groups=[results[p.stem].get("groups") for p in parquets])
    timings["write"] = round(time.time() - t0, 3)

    rows = sum(r["rows"] for r in results.values())
    removed_by = []
    j = 0
    for g, (label, rules) in enumerate(plan.rule_groups()):
        for rule in rules:
            entry = {
                "rule": rule.text,
                "marginal": int(sum(r["marginal"][j] for r in results.values())),
                "sequential": int(sum(r["sequential"][j] for r in results.values())),
            }
            if label:
                entry["member"] = label
            removed_by.append(entry)
            j += 1
    member_counts = None
    if plan.keep_any is not None:
        member_counts = [{"member": label,
                          "removed_by_member": int(sum(r["group_removed"][g] for r in results.values())),
                          "removed_by_all_so_far": int(sum(r["group_cumulative"][g] for r in results.values()))}
                         for g, (label, _) in enumerate(plan.rule_groups())]
    timings["total"] = round(time.time() - t_start, 3)
    sidecar: dict[str, Any] = {
        "stage": "filter",
        "version": __version__,
        "digest": digest,
        "recipe": plan.name,
        "recipe_file": plan.source,
        "resolved": plan.resolved(),
        "params": plan.params,
        "overrides": dict(overrides or {}),
        "pool": str(pool_root),
        "pool_manifest": manifest_digest(pool_root),
        "subset": str(out),
        "files": file_records(out.parent, [out.name]),
        "globals": globals_,
        "global_steps": global_records,
        "counts": {"pool_rows": rows, "kept": kept, "removed": rows - kept, "shards": len(parquets),
                   "kept_fraction": (kept / rows) if rows else 0.0},
        "removed_by": removed_by,
        **({"union_members": member_counts} if member_counts is not None else {}),
        "cache": {"dir": str(cache), "ops": cache_stats},
        "timings": timings,
        "rows_per_second": round(rows / timings["total"], 1) if timings["total"] > 0 else None,
        "created": time.time(),
    }
    write_json(sidecar_path, sidecar)
    _tidy(out, sidecar_path)
    log.info("%s: kept %d of %d rows (%.2f%%) -> %s", plan.name, kept, rows, 100 * kept / max(rows, 1), out)
    return sidecar


def _tidy(out: Path, sidecar: Path) -> None:
    """A finished subset leaves nothing of killed runs beside it: its work dir and temporaries."""
    shutil.rmtree(out.parent / f".{out.name}.work", ignore_errors=True)
    sweep_temps(out.parent, [out.name, sidecar.name])


def _values_of(op: GlobalOp, globals_: dict[str, Any]) -> list[str]:
    names = op.outputs()
    return [k for k in globals_ if any(k == n or k.startswith(n + "_") for n in names)]


def _source_files(parquet: Path, plan: Recipe) -> list[Path]:
    files = [parquet]
    for s in plan.steps:
        if isinstance(s.op, ShardOp):
            for f in op_sources(s.op, parquet)[1:]:
                if f not in files:
                    files.append(f)
    return files


def format_summary(sidecar: dict[str, Any]) -> str:
    """Human-readable summary for the CLI: counts, global values and the removed-by table."""
    c = sidecar["counts"]
    lines = [f"recipe {sidecar['recipe']}: kept {c['kept']:,} of {c['pool_rows']:,} rows "
             f"({100 * c['kept_fraction']:.2f}%) -> {sidecar['subset']}"]
    for k, v in (sidecar.get("globals") or {}).items():
        lines.append(f"  {k} = {v}")
    rows = sidecar.get("removed_by") or []
    if rows:
        label = lambda r: (f"[{r['member']}] " if r.get("member") else "") + r["rule"]  # noqa: E731
        width = max(len("rule"), *(len(label(r)) for r in rows))
        lines.append(f"  {'rule':<{width}}  {'removed (alone)':>16}  {'removed (in order)':>18}")
        for r in rows:
            lines.append(f"  {label(r):<{width}}  {r['marginal']:>16,}  {r['sequential']:>18,}")
    for m in sidecar.get("union_members") or []:
        lines.append(f"  union member {m['member']}: drops {m['removed_by_member']:,} alone; "
                     f"rows no member so far keeps: {m['removed_by_all_so_far']:,}")
    return "\n".join(lines)
