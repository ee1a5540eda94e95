"""The embedded synthetic world: a CommonPool-shaped candidate pool with known ground truth.

``synthesize(out, scale, seed)`` writes, under ``out`` (POOL):

- ``metadata/{i:08d}.parquet`` (CommonPool columns; CLIP scores NaN until ``embed``) and
  ``shards/{i:08d}.tar`` (+ img2dataset ``.parquet`` and ``_stats.json``): the candidate pool;
- ``truth/{i:08d}.parquet``: hidden ground truth per uid (noise kinds, concept, attributes,
  duplicate source, eval copy) — filters never read it;
- ``curated/{i:08d}.tar``: clean pairs for teacher training (own seed stream, no eval image);
- ``evalsets/<task-dir>/``: the eval suite in clip_benchmark's wds layout (see ``evalsuite``),
  ``evalsets/eval_sha256.json`` (sha256 of every test image per task) and ``evalsets/tasks.json``;
- ``manifest.json`` last: params (scale, seed, world config, noise rates, data digest), counts
  per noise kind, measured reference-filter fractions (``measured``), timings.

Data (concepts, words, translations, noise rates) lives in ``resources/world/*.yaml``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ...config import Scale
from ...errors import ConfigError
from ...executors import Unit, run_units
from ...formats.atomic import write_json, write_text
from ...formats.guard import tree_records
from ...formats.manifest import Manifest
from ...formats.stage import StageOutput
from .calibration import measure
from .evalsuite import TASKS, classnames, evalsets_readme, task_sizes, write_task
from .generate import pool_units_args, write_curated_shard, write_pool_shard
from .noise import noise_key
from .world import data_digest, load_noise, load_world

__all__ = ["synthesize", "measure", "TASKS"]

log = logging.getLogger(__name__)
STAGE = "synth"
WORLD_FIELDS = ("concepts", "shard_size", "curated_size", "eval_size", "retrieval_size")
OUTPUT_DIRS = ("metadata", "shards", "truth", "curated", "evalsets")


def _world_cfg(scale: Scale) -> dict[str, Any]:
    if not scale.embedded or not scale.world:
        raise ConfigError(f"scale '{scale.name}' is not an embedded-world scale (no 'world' section in scales.yaml)")
    missing = [k for k in WORLD_FIELDS if k not in scale.world]
    if missing:
        raise ConfigError(f"scales.yaml: scale '{scale.name}' world section lacks {', '.join(missing)}")
    cfg = {k: int(scale.world[k]) for k in WORLD_FIELDS}
    if cfg["shard_size"] <= 0 or not scale.pool_size or scale.pool_size <= 0:
        raise ConfigError(f"scales.yaml: scale '{scale.name}' needs a positive pool_size and world.shard_size")
    if cfg["shard_size"] > 10000:
        raise ConfigError("world.shard_size must be <= 10000 (4-digit sample index in img2dataset keys)")
    return cfg


def synthesize(out: Path, scale: Scale, seed: int = 0, workers: int = 2, overwrite: bool = False,
               executor: str = "local") -> Manifest:
    """Generate the embedded world for ``scale`` under ``out``; deterministic given ``seed``."""
    out = Path(out)
    t_start = time.time()
    world_cfg = _world_cfg(scale)
    load_world(world_cfg["concepts"])  # validates the concept count early
    noise = json.loads(json.dumps(load_noise()))  # plain JSON types: what workers and the manifest see
    params = {"scale": scale.name, "seed": int(seed), "pool_size": int(scale.pool_size), "world": world_cfg,
              "noise": noise, "data_digest": data_digest(),
              "tasks": [t.key for t in TASKS]}  # a pool whose eval sets lack a task of the suite is not reused
    life = StageOutput(STAGE, out, params, overwrite=overwrite, owned=OUTPUT_DIRS, replace="swap")
    existing = life.begin()  # other params on a finished or unfinished output: StageConflictError
    if existing is not None:
        return existing
    target, out = out, life.dir  # an --overwrite builds beside the old pool; finish() swaps it in
    timings: dict[str, float] = {}

    # 1. eval suite (curated shards check their images against it)
    t0 = time.time()
    sizes = task_sizes(world_cfg)
    nkey = noise_key(noise)
    eval_units = [Unit(f"evalset-{t.dirname}", (str(out), int(seed), world_cfg["concepts"], t.key, n, noise), n)
                  for t, (_, n) in zip(TASKS, sizes)]
    eval_res = run_units(write_task, eval_units, out, workers=workers, executor=executor, desc="synth evalsets",
                         unit_label="img")
    eval_shas = {t.key: eval_res[f"evalset-{t.dirname}"]["sha256"] for t in TASKS}
    sha_path = out / "evalsets" / "eval_sha256.json"
    write_json(sha_path, eval_shas, indent=None)
    world = load_world(world_cfg["concepts"])
    write_json(out / "evalsets" / "tasks.json", {
        t.key: {"dir": t.dirname, "type": t.kind, "n": n, "style": t.style,
                "num_classes": len(classnames(t, world)) if classnames(t, world) else None}
        for t, (_, n) in zip(TASKS, sizes)})
    write_text(out / "evalsets" / "README.md", evalsets_readme(world))
    timings["evalsets"] = round(time.time() - t0, 3)

    # 2. pool and curated shards (independent units, one process pool)
    t0 = time.time()
    n_rows = int(scale.pool_size)
    units = [Unit(name, args, w) for name, args, w in pool_units_args(str(out), int(seed), world_cfg["concepts"],
                                                                        noise, world_cfg, n_rows)]
    cs = world_cfg["shard_size"]
    for s, start in enumerate(range(0, world_cfg["curated_size"], cs)):
        end = min(world_cfg["curated_size"], start + cs)
        units.append(Unit(f"curated-{s:08d}", (str(out), int(seed), world_cfg["concepts"], nkey, str(sha_path), s,
                                               start, end), end - start))
    res = run_units(_run_shard, [Unit(u.name, (u.name, *u.args), u.weight) for u in units], out, workers=workers,
                    executor=executor, desc="synth shards", unit_label="rows")
    timings["shards"] = round(time.time() - t0, 3)

    # 3. calibration: what the reference rules keep
    t0 = time.time()
    measured = measure(out)
    timings["measure"] = round(time.time() - t0, 3)
    timings["total"] = round(time.time() - t_start, 3)

    counts: dict[str, Any] = {"rows": n_rows, "shards": sum(1 for n in res if n.startswith("pool-")),
                              "curated_rows": world_cfg["curated_size"],
                              "curated_shards": sum(1 for n in res if n.startswith("curated-")),
                              "evalsets": {k: n for k, n in sizes}}
    kinds: dict[str, int] = {}
    for name, r in res.items():
        for k, v in r.get("counts", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    counts["noise_kinds"] = dict(sorted(kinds.items()))
    counts["curated_eval_collisions_rerendered"] = sum(r.get("eval_collisions_rerendered", 0) for r in res.values())
    manifest = Manifest(stage=STAGE, params=params, counts=counts, timings=timings,
                        extra={"measured": measured, "noise_rates": noise,
                               "evalsets": {t.key: t.dirname for t in TASKS},
                               "rows_per_second": round(n_rows / max(timings["shards"], 1e-9), 1),
                               # reuse checks these; not metadata/, to which embed adds npz keys and scores
                               "files": tree_records(out, [d for d in OUTPUT_DIRS if d != "metadata"])})
    life.finish(manifest)
    out = target
    log.info("synth: %d rows in %.1fs; basic_filter keeps %.1f%%, English+length %.1f%%", n_rows, timings["total"],
             100 * measured["basic_filter"], 100 * measured["english_caption_len"])
    return manifest


def _run_shard(name: str, *args: Any) -> dict[str, Any]:
    """Dispatch one unit (module-level, so process pools and Ray can pickle it)."""
    if name.startswith("pool-"):
        return write_pool_shard(*args)
    return write_curated_shard(*args)
