"""The ``filter`` stage: a recipe over a pool -> the subset ``OUT.npy`` and its manifest ``OUT.json``.

Plan of a run (each pass is a set of per-shard units with completion markers in the work
directory ``.OUT.npy.work/``, so a killed run resumes where it stopped):

1. for each global step, in order: a map pass over every parquet (computing — or loading from the
   score cache — the columns it needs) and a reduce in this process; the values are saved in the
   work directory (``state.json``) and recorded in the manifest;
2. a select pass: every parquet's score columns, the keep rules, and the kept uids, grouped by
   their top byte in the worker, as a small ``.npy`` part plus per-rule counts;
3. the parts are read into one array, cut into value ranges that two threads sort and stream
   into the subset file (``_uids.merge_parts``; written atomically), then the manifest.

The stage's lifecycle is :class:`datacomp.formats.stage.StageOutput`: its parameters are the
run's identity (version, resolved recipe, op identities, pool), its input the fingerprints of
every file the recipe reads (a changed pool file means the subset is made again); the work directory holds the pending parameters and markers; the manifest
is the sidecar ``OUT.json`` (the subset's file record in ``files``). The subset is written
beside the old one and swapped in (``replace="aside"``): with ``overwrite`` the old subset and
manifest stand until the new ones are complete. The per-shard work (column store, rules,
units) is :mod:`.engine`'s; only one score column of the whole pool is ever held in memory
(by a quantile's reduce).
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
from ..errors import ConfigError, InputError
from ..executors import Unit, run_units
from ..formats.atomic import sweep_temps, write_json
from ..formats.guard import check_apart, file_records
from ..formats.manifest import Manifest, manifest_digest
from ..formats.pool import list_parquets, parquet_num_rows
from ..formats.stage import StageOutput
from . import engine
from .recipe import Recipe, load_recipe
from .registry import GlobalOp, OpEnv, OpParamError, ShardOp

log = logging.getLogger(__name__)

STAGE = "filter"
SIDECAR_VERSION = 1  # the manifest's layout, part of the run's identity


def pool_parquets(pool: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(pool root, sorted parquets). ``pool`` is a pool dir (with metadata/) or a dir of parquets
    (the reference's ``--metadata_dir``); a bare ``metadata/`` directory's parent is the root (its
    ``targets/`` and score cache are the pool's)."""
    pool = Path(pool)
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    if (pool / "metadata").is_dir():
        return pool, list_parquets(pool / "metadata")
    if pool.name == "metadata":
        return pool.parent, list_parquets(pool)
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


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


def subset_output(out: Path, params: dict[str, Any], inputs: dict[str, Any], overwrite: bool = False) -> StageOutput:
    """The lifecycle of subset ``out``: markers and pending parameters in its work directory, the
    manifest beside it (``OUT.json``), written aside (the subset is replaced atomically, last)."""
    if out.suffix == ".json":
        raise ConfigError(f"{out}: the subset path must not end in .json (the sidecar goes there)")
    return StageOutput(STAGE, work_dir(out), params, inputs=inputs, overwrite=overwrite, manifest=out.with_suffix(".json"),
                       files_root=out.parent, owned=[work_dir(out)], replace="aside", where=out)


def finish_subset(life: StageOutput, out: Path, manifest: Manifest) -> Manifest:
    """Write the manifest of subset ``out`` (its file record added) and leave nothing of the run beside it."""
    manifest.extra["files"] = file_records(out.parent, [out.name])
    life.finish(manifest)
    _tidy(out, life.manifest_file)
    return manifest


def _merge_cache_stats(results: list[dict[str, Any]], into: dict[str, dict[str, float]]) -> None:
    for res in results:
        for key, st in (res.get("cache") or {}).items():
            e = into.setdefault(key, {"computed_rows": 0, "cached_rows": 0, "seconds": 0.0})
            e["computed_rows"] += st.get("computed_rows", 0)
            e["cached_rows"] += st.get("cached_rows", 0)
            e["seconds"] = round(e["seconds"] + st.get("seconds", 0.0), 4)


def _identity(plan: Recipe, pool_root: Path) -> dict[str, Any]:
    """The run's parameters: the recipe as resolved, its ops' identities, the pool."""
    return {
        "version": __version__,
        "sidecar_version": SIDECAR_VERSION,
        "recipe": plan.resolved(),
        "ops": [s.op.cache_key() if isinstance(s.op, ShardOp) else [s.op.name, s.op.identity()] for s in plan.steps],
        "pool": str(pool_root.resolve()),
    }


def files_digest(files: list[str]) -> str:
    """The identity of the pool files a run reads (name, size, mtime of each): its input."""
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def run_filter(
    pool: str | os.PathLike,
    recipe: str | os.PathLike,
    out: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Apply a recipe to a pool; write the subset ``out`` (.npy, sorted ``u8,u8``) and its manifest
    ``out.with_suffix('.json')``; -> the manifest. An up-to-date output (same resolved recipe, same
    pool files) is reused; one made with other parameters, finished or not, is refused unless
    ``overwrite`` (see the module doc)."""
    t_start = time.time()
    plan = load_recipe(recipe, overrides)
    pool_root, parquets = pool_parquets(pool)
    out = Path(out)
    check_apart(out, {"pool metadata": sorted({p.parent for p in parquets})})
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(pool_root, out)
    identity = _identity(plan, pool_root)
    files = [engine.fingerprint(_source_files(p, plan)) for p in parquets]
    work = work_dir(out)
    life = subset_output(out, identity, {"files": files_digest(files)}, overwrite)
    pool_digest = hashlib.sha256(json.dumps([str(pool_root.resolve()), files]).encode()).hexdigest()[:16]
    env = OpEnv(globals={}, pool=pool_root, artifacts=cache.parent / "globals", pool_digest=pool_digest)
    for st in plan.steps:
        st.op.bind(env)
    done = life.begin()
    if done is not None:
        _tidy(out, life.manifest_file)
        return done

    weights = {str(p): max(1, parquet_num_rows(p)) for p in parquets}
    cache_stats: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    globals_, global_records = _global_steps(plan, parquets, work, env, cache, weights, executor, workers,
                                             cache_stats, timings)

    # select ------------------------------------------------------------------------------------
    t0 = time.time()
    sdir = work / "select"
    kernels = True if sum(weights.values()) >= engine.KERNEL_MIN_ROWS * max(1, workers) else None
    select_env = OpEnv(globals=dict(globals_), pool=pool_root, artifacts=env.artifacts, pool_digest=pool_digest,
                       kernels=kernels)
    units = [Unit(p.stem, (str(p), plan, select_env, str(cache), str(sdir / f"{p.stem}.npy")), weights[str(p)])
             for p in parquets]
    results = run_units(engine.select_unit, units, sdir, workers=workers, executor=executor,
                        desc=f"{plan.name}: select", unit_label="rows")
    _merge_cache_stats(list(results.values()), cache_stats)
    timings["select"] = round(time.time() - t0, 3)

    # subset + manifest ---------------------------------------------------------------------------
    t0 = time.time()
    kept = engine.write_subset_from_parts([sdir / f"{p.stem}.npy" for p in parquets], out,
                                          groups=[results[p.stem].get("groups") for p in parquets])
    timings["write"] = round(time.time() - t0, 3)
    rows = sum(r["rows"] for r in results.values())
    timings["total"] = round(time.time() - t_start, 3)
    manifest = Manifest(
        stage=STAGE, params=identity, inputs={"pool": manifest_digest(pool_root)},  # + "files" (life.inputs)
        counts={"pool_rows": rows, "kept": kept, "removed": rows - kept, "shards": len(parquets),
                "kept_fraction": (kept / rows) if rows else 0.0},
        timings=timings,
        extra={"digest": life.digest, "recipe": plan.name, "recipe_file": plan.source, "resolved": plan.resolved(),
               "recipe_params": plan.params, "overrides": dict(overrides or {}), "pool": str(pool_root),
               "pool_manifest": manifest_digest(pool_root), "subset": str(out),
               "globals": globals_, "global_steps": global_records,
               **_removed_by(plan, results),
               "cache": {"dir": str(cache), "ops": cache_stats},
               "rows_per_second": round(rows / timings["total"], 1) if timings["total"] > 0 else None})
    finish_subset(life, out, manifest)
    log.info("%s: kept %d of %d rows (%.2f%%) -> %s", plan.name, kept, rows, 100 * kept / max(rows, 1), out)
    return manifest


def _global_steps(plan: Recipe, parquets: list[Path], work: Path, env: OpEnv, cache: Path, weights: dict[str, int],
                  executor: str, workers: int, cache_stats: dict[str, dict[str, float]],
                  timings: dict[str, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every global step in order (map over the pool, reduce here), resumable through ``state.json``;
    -> (the global values, one record per step)."""
    state_path = work / "state.json"
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError:
            state = {}
    if not state:
        state = {"globals": {}, "global_steps_done": []}
        write_json(state_path, state)
    globals_: dict[str, Any] = dict(state.get("globals", {}))
    records: list[dict[str, Any]] = []
    for i, step in enumerate(plan.steps):
        if not step.is_global:
            continue
        op = step.op
        assert isinstance(op, GlobalOp)
        t0 = time.time()
        step_env = OpEnv(globals=dict(globals_), pool=env.pool, artifacts=env.artifacts, pool_digest=env.pool_digest,
                         shards=[str(p) for p in parquets], work=work / f"global{i}", executor=executor,
                         workers=workers)
        op.bind(step_env)
        if i not in state["global_steps_done"]:
            partials: list[np.ndarray] = []
            values = op.saved() if op.needs_pool_pass() else None
            if values is not None:
                log.info("%s: step %d (%s): reusing %s", plan.name, i + 1, op.name, values)
            else:
                if op.needs_pool_pass():
                    gdir = step_env.work
                    units = [Unit(p.stem, (str(p), plan, i, step_env, str(cache), str(gdir / f"{p.stem}.npy")),
                                  weights[str(p)]) for p in parquets]
                    res = run_units(engine.global_map_unit, units, gdir, workers=workers, executor=executor,
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
        records.append({"step": i + 1, "op": op.name, "values": {k: globals_.get(k) for k in _values_of(op, globals_)}})
    return globals_, records


def _removed_by(plan: Recipe, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The funnel: rows each rule removes alone (marginal) and after the earlier ones (sequential)."""
    removed_by = []
    j = 0
    for label, rules in plan.rule_groups():
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
    out: dict[str, Any] = {"removed_by": removed_by}
    if plan.keep_any is not None:
        out["union_members"] = [
            {"member": label,
             "removed_by_member": int(sum(r["group_removed"][g] for r in results.values())),
             "removed_by_all_so_far": int(sum(r["group_cumulative"][g] for r in results.values()))}
            for g, (label, _) in enumerate(plan.rule_groups())]
    return out


def _tidy(out: Path, sidecar: Path) -> None:
    """A finished subset leaves nothing of killed runs beside it: its work dir and temporaries."""
    shutil.rmtree(work_dir(out), ignore_errors=True)
    sweep_temps(out.parent, [out.name, sidecar.name])


def _values_of(op: GlobalOp, globals_: dict[str, Any]) -> list[str]:
    names = op.outputs()
    return [k for k in globals_ if any(k == n or k.startswith(n + "_") for n in names)]


def _source_files(parquet: Path, plan: Recipe) -> list[Path]:
    files = [parquet]
    for s in plan.steps:
        if isinstance(s.op, ShardOp):
            for f in engine.op_sources(s.op, parquet)[1:]:
                if f not in files:
                    files.append(f)
    return files


def format_summary(sidecar: Manifest | dict[str, Any]) -> str:
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
