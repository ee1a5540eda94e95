"""``datacomp run``: the whole loop — pool, embed, filter, reshard, train, evaluate, report —
for several recipes at one embedded scale, in one work directory.

Layout under WORKDIR: ``pool/``, ``subsets/<recipe>.npy`` (+ .json), ``shards/<recipe>/``,
``runs/<recipe>/`` (checkpoints, eval_results.jsonl), ``results.md``, ``results.csv``,
``run.json`` (stage timings). Every stage reuses finished output, so a killed run resumes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .config import Scale, load_scale
from .errors import ConfigError
from .formats.atomic import write_json

log = logging.getLogger(__name__)


def _known_recipes() -> set[str]:
    from .filters import list_ops_and_recipes

    return {name for kind, name, _ in list_ops_and_recipes() if kind == "recipe"}


def _check_recipes(recipes: list[str]) -> None:
    if not recipes:
        raise ConfigError("no recipes given (--recipes a,b,c)")
    known = _known_recipes()
    for r in recipes:
        if r not in known and not Path(r).is_file():
            raise ConfigError(f"unknown recipe '{r}' (known: {', '.join(sorted(known))})")


def recipe_label(recipe: str) -> str:
    p = Path(recipe)
    return p.stem if p.suffix in (".yaml", ".yml") else recipe


def run_loop(scale: str | Scale, workdir: Path, recipes: list[str], seed: int = 0, workers: int = 2) -> list[dict[str, Any]]:
    from .embed import embed
    from .evaluate import aggregate, evaluate
    from .filters import run_filter
    from .pool.synth import synthesize
    from .report import format_table, write_results_table
    from .reshard import reshard
    from .train import train

    scale = load_scale(scale) if isinstance(scale, str) else scale
    if not scale.embedded:
        raise ConfigError(
            f"scale '{scale.name}' is a reference scale: `datacomp run` builds the embedded world; "
            "use the stage verbs (filter, reshard, train, evaluate) on a real pool"
        )
    _check_recipes(recipes)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kw):
        t0 = time.time()
        log.info("== %s", name)
        out = fn(*args, **kw)
        timings[name] = round(time.time() - t0, 2)
        log.info("== %s done in %.1fs", name, timings[name])
        return out

    t_start = time.time()
    pool = workdir / "pool"
    timed("synth", synthesize, pool, scale, seed=seed, workers=workers)
    timed("embed", embed, pool, teacher=True, scale=scale, seed=seed, workers=workers)

    rows: list[dict[str, Any]] = []
    shard_size = int(scale.world.get("shard_size", 10000))
    for recipe in recipes:
        label = recipe_label(recipe)
        subset = workdir / "subsets" / f"{label}.npy"
        summary = timed(f"filter/{label}", run_filter, pool, recipe, subset, workers=workers)
        shards = workdir / "shards" / label
        rm = timed(f"reshard/{label}", reshard, pool, subset, shards, shard_size=shard_size, workers=workers)
        run_dir = workdir / "runs" / label
        timed(f"train/{label}", train, scale, [shards], run_dir, seed=seed, workers=1)
        results = timed(f"evaluate/{label}", evaluate, run_dir, pool / "evalsets")
        agg = aggregate(results)
        row: dict[str, Any] = {
            "recipe": label,
            "dataset_size": int(summary["counts"]["kept"]),
            "resharded": int(rm.counts.get("output_count", 0)),
        }
        for r in sorted(results, key=lambda r: r["key"]):
            row[r["key"]] = r["metrics"].get("main_metric")
        row["average"] = agg.get("average")
        rows.append(row)

    timings["total"] = round(time.time() - t_start, 2)
    md, csv = write_results_table(rows, workdir)
    write_json(workdir / "run.json", {"scale": scale.name, "seed": seed, "recipes": recipes, "timings": timings, "rows": rows})
    print(format_table(rows))
    print(f"\nwrote {md} and {csv} ({timings['total']:.0f} s)")
    return rows
