"""``datacomp run``: the whole loop — pool, embed, filter, reshard, train, evaluate, report —
for several recipes at one embedded scale, over one or several seeds, in one work directory.

One seed (``--seed N``, or ``--seeds N``): under WORKDIR ``pool/``, ``subsets/<recipe>.npy``
(+ .json), ``shards/<recipe>/``, ``runs/<recipe>/`` (checkpoints, eval_results.jsonl),
``results.md``, ``results.csv``, ``run.json`` (stage timings), ``report/index.html``
(:mod:`datacomp.report.build`: every recipe ever run into WORKDIR, not only this call's).

Several seeds (``--seeds 0,1,2``): one world per seed, ``WORKDIR/seed-N/`` holding exactly the
one-seed layout above, then ``WORKDIR/results.md`` and ``results.csv`` with the mean ± sample
std (ddof=1) over seeds of every task and the average, a ``seeds`` column (how many seeds a row
rests on), ``results_per_seed.csv`` (one row per seed and recipe) and ``run.json``.

Seed N is a new world *and* a new training seed: the pool, the curated pairs, the downstream
suite, the teachers and every CLIP are drawn or trained with seed N. On the embedded world the
data draw is itself a source of variance, just as CommonPool's sample of the web is for the real
benchmark, so the spread over seeds measures both, not only the training noise.

Recipes are shipped names or YAML files, plus two pseudo-recipes that bracket every filter
(:mod:`datacomp.filters.reference_subsets`): ``oracle`` (the world's clean pairs: the ceiling)
and ``random_basic`` (a seeded random subset of basic_filter's size: the floor).
Every stage reuses finished output, so a killed run resumes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
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
    from .filters.recipe import load_recipe
    from .filters.reference_subsets import PSEUDO_RECIPES

    if not recipes:
        raise ConfigError("no recipes given (--recipes a,b,c)")
    known = _known_recipes() | set(PSEUDO_RECIPES)
    for r in recipes:
        if r not in known and not Path(r).is_file():
            raise ConfigError(f"unknown recipe '{r}' (known: {', '.join(sorted(known))})")
        if r not in PSEUDO_RECIPES:
            load_recipe(r)  # a bad recipe file fails here, before the world is built
    labels = [recipe_label(r) for r in recipes]
    dup = next((lab for i, lab in enumerate(labels) if lab in labels[:i]), None)
    if dup is not None:
        raise ConfigError(f"recipe '{dup}' given twice (--recipes; a YAML file is named by its stem)")


def check_seeds(seeds: list[int]) -> list[int]:
    if not seeds:
        raise ConfigError("no seeds given (--seeds 0,1,2)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"seed {s!r} is not a non-negative integer (--seeds 0,1,2)")
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if dup is not None:
        raise ConfigError(f"seed {dup} given twice (--seeds)")
    return list(seeds)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ConfigError naming the bad item."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    out: list[int] = []
    for x in items:
        try:
            out.append(int(x))
        except ValueError:
            raise ConfigError(f"--seeds: '{x}' is not an integer (e.g. --seeds 0,1,2)") from None
    return check_seeds(out)


def recipe_label(recipe: str) -> str:
    p = Path(recipe)
    return p.stem if p.suffix in (".yaml", ".yml") else recipe


def seed_dir(workdir: Path, seed: int, n_seeds: int) -> Path:
    """Where seed ``seed``'s world lives: WORKDIR itself for one seed, else WORKDIR/seed-N."""
    return Path(workdir) if n_seeds == 1 else Path(workdir) / f"seed-{seed}"


@dataclass
class LoopResult:
    rows: list[dict[str, Any]]                      # one per recipe (mean over seeds, ``<key>_std``, ``seeds``)
    per_seed: dict[int, list[dict[str, Any]]]       # seed -> its rows, as one-seed runs report them
    timings: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


def default_jobs() -> int:
    """Trainings at once by default: two where there are two cores (an embedded-scale training is
    one compute thread and a light loader, so one at a time leaves the second core idle), else one."""
    from .train.launchers import cpu_count

    return 2 if cpu_count() >= 2 else 1


def job_threads(jobs: int) -> int:
    """CPU threads of each training when ``jobs`` > 1 run at once: the cores shared out, less one
    per training for its data-loader worker. On a machine with up to 2 cores per job that is what a
    lone ``datacomp train`` uses (cores − 1), so the trainings, and their results, do not depend on
    ``jobs`` there (with ``jobs`` 1 the run leaves the thread count to the trainer itself)."""
    from .train.launchers import cpu_count

    return max(1, cpu_count() // max(1, jobs) - 1)


def _run_world(scale: Scale, workdir: Path, recipes: list[str], seed: int, workers: int,
               jobs: int = 1) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One seed's world: the one-seed layout under ``workdir``; -> (rows, stage timings).

    synth, embed and each recipe's filter and reshard run one after the other; then the recipes'
    trainings and evaluations, ``jobs`` at a time (each training is its own process with
    :func:`job_threads` threads, and nothing else runs in this process meanwhile, so the order in
    which they finish changes no result)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from .embed import embed, filter_network
    from .embed.filter_network import recipes_need_network
    from .evaluate import evaluate
    from .filters import run_filter
    from .filters.reference_subsets import build_reference_subset, is_pseudo_recipe
    from .pool.synth import synthesize
    from .reshard import reshard
    from .train import train

    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kw):
        t0 = time.time()
        log.info("== %s (seed %d)", name, seed)
        out = fn(*args, **kw)
        timings[name] = round(time.time() - t0, 2)
        log.info("== %s done in %.1fs", name, timings[name])
        return out

    t_start = time.time()
    pool = workdir / "pool"
    timed("synth", synthesize, pool, scale, seed=seed, workers=workers)
    timed("embed", embed, pool, teacher=True, scale=scale, seed=seed, workers=workers, jobs=jobs)
    if recipes_need_network(recipes):  # a recipe ranks by the data filtering network (dfn_top_30)
        timed("filter_network", filter_network, pool, scale=scale, seed=seed, workers=workers)

    shard_size = int(scale.world.get("shard_size", 10000))
    prepared = []
    for recipe in recipes:
        label = recipe_label(recipe)
        subset = workdir / "subsets" / f"{label}.npy"
        if is_pseudo_recipe(recipe):
            summary = timed(f"filter/{label}", build_reference_subset, recipe, pool, subset, seed=seed, workers=workers)
        else:
            summary = timed(f"filter/{label}", run_filter, pool, recipe, subset, workers=workers)
        shards = workdir / "shards" / label
        rm = timed(f"reshard/{label}", reshard, pool, subset, shards, shard_size=shard_size, workers=workers)
        prepared.append((label, summary, rm, shards))

    threads = job_threads(jobs) if jobs > 1 else None  # one at a time: exactly a lone training's default

    # Off the main thread an evaluation loads in-process (workers 0): torch registers a data
    # loader's worker pids for the SIGCHLD handler it installed in the main thread, and a worker
    # exiting before its pids are unregistered makes that handler raise in the waiting main
    # thread ("DataLoader worker exited unexpectedly"; seen once in CI). Same results either way.
    eval_kw: dict[str, Any] = {} if jobs == 1 else {"workers": 0}

    def train_and_evaluate(label: str, shards: Path) -> list[dict[str, Any]]:
        run_dir = workdir / "runs" / label
        timed(f"train/{label}", train, scale, [shards], run_dir, seed=seed, workers=1, threads=threads)
        return timed(f"evaluate/{label}", evaluate, run_dir, pool / "evalsets", **eval_kw)["results"]

    if threads is not None and len(prepared) > 1:
        log.info("== training and evaluating %d recipes, %d at a time (%d thread(s) each)", len(prepared), jobs, threads)
    if jobs == 1:  # in this thread, as before --jobs existed
        results = [train_and_evaluate(label, shards) for label, _, _, shards in prepared]
        return _rows(prepared, results), {**timings, "total": round(time.time() - t_start, 2)}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futures = [ex.submit(train_and_evaluate, label, shards) for label, _, _, shards in prepared]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for f in pending:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]
    rows = _rows(prepared, [f.result() for f in futures])
    timings["total"] = round(time.time() - t_start, 2)
    return rows, timings


def _rows(prepared: list, results: list) -> list[dict[str, Any]]:
    from .report.rows import result_row

    return [result_row(label, res, {"dataset_size": int(summary["counts"]["kept"]),
                                    "resharded": int(rm.counts.get("output_count", 0))})
            for (label, summary, rm, _), res in zip(prepared, results)]


def run_seeds(scale: str | Scale, workdir: Path, recipes: list[str], seeds: list[int], workers: int = 2,
              echo: bool = True, jobs: int | None = None) -> LoopResult:
    """The loop for every seed (one world each; see the module docstring), then the seed tables.

    Prints the final table when ``echo``. A finished seed, like a finished stage, is reused.
    ``jobs``: trainings (and the teachers' trainings) at once (default :func:`default_jobs`).
    """
    from .report import aggregate_seeds, format_csv, format_table, per_seed_rows, write_results_table
    from .formats.atomic import write_text

    scale = load_scale(scale) if isinstance(scale, str) else scale
    if not scale.embedded:
        raise ConfigError(
            f"scale '{scale.name}' is a reference scale: `datacomp run` builds the embedded world; "
            "use the stage verbs (filter, reshard, train, evaluate) on a real pool"
        )
    _check_recipes(recipes)
    seeds = check_seeds(list(seeds))
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer (--jobs), got {jobs!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    per_seed: dict[int, list[dict[str, Any]]] = {}
    seed_timings: dict[str, dict[str, float]] = {}
    for seed in seeds:
        wd = seed_dir(workdir, seed, len(seeds))
        rows, timings = _run_world(scale, wd, recipes, seed, workers, jobs)
        per_seed[seed] = rows
        seed_timings[str(seed)] = timings
        if len(seeds) > 1:  # each seed directory is a complete one-seed work directory
            write_results_table(aggregate_seeds({seed: rows}), wd)
            write_json(wd / "run.json", {"scale": scale.name, "seed": seed, "recipes": recipes,
                                         "timings": timings, "rows": rows})
    total = round(time.time() - t_start, 2)
    rows = aggregate_seeds(per_seed)
    md, csv = write_results_table(rows, workdir)
    paths = {"results_md": md, "results_csv": csv}
    if len(seeds) == 1:
        timings = {**seed_timings[str(seeds[0])], "total": total}
        write_json(workdir / "run.json", {"scale": scale.name, "seed": seeds[0], "recipes": recipes,
                                          "timings": timings, "rows": rows})
    else:
        per = workdir / "results_per_seed.csv"
        write_text(per, format_csv(per_seed_rows(per_seed)))
        paths["results_per_seed_csv"] = per
        timings = {"seeds": seed_timings, "total": total}
        write_json(workdir / "run.json", {"scale": scale.name, "seeds": seeds, "recipes": recipes,
                                          "timings": timings, "rows": rows,
                                          "per_seed": {str(s): r for s, r in per_seed.items()}})
    from .report.build import build_report

    rep = build_report([workdir], workdir / "report")
    paths["report"] = rep.index
    for note in rep.notes:
        log.warning("report: %s", note)
    if echo:
        print(format_table(rows))
        also = f", {paths['results_per_seed_csv']}" if len(seeds) > 1 else ""
        print(f"\nwrote {md} and {csv}{also} ({total:.0f} s)")
        print(f"report: {rep.index}")
    return LoopResult(rows=rows, per_seed=per_seed, timings=timings, paths=paths)


def run_loop(scale: str | Scale, workdir: Path, recipes: list[str], seed: int = 0, workers: int = 2,
             seeds: list[int] | None = None, jobs: int | None = None) -> list[dict[str, Any]]:
    """:func:`run_seeds` over ``seeds`` (default ``[seed]``); -> the table's rows (one per recipe)."""
    return run_seeds(scale, workdir, recipes, seeds if seeds is not None else [seed], workers=workers, jobs=jobs).rows

from ._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'run_seeds')  # datacomp.run(...) calls run_seeds
