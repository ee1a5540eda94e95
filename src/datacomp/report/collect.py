"""Find every run under the report's input directories and turn them into results rows.

Three layouts are recognised, at any depth (``pool/``, ``shards/``, ``subsets/`` and ``report/``
directories are not searched):

* a one-seed work directory: ``runs/<recipe>/eval_results.jsonl`` beside ``pool/`` and
  ``subsets/<recipe>.npy`` (``datacomp run``, or the stage verbs run by hand into that layout);
* a several-seed work directory: ``seed-N/`` directories, each a one-seed work directory
  (``datacomp run --seeds``); its rows are the mean ± std over the seeds that have the recipe;
* a run directory: ``eval_results.jsonl`` (``datacomp evaluate``) beside ``manifest.json``
  (``datacomp train``), e.g. one model trained at a reference scale; run directories side by side
  in one directory make one table (a row each).

Every recipe found is a row: a second ``datacomp run`` with other recipes into the same work
directory adds rows. What cannot be used (no runs, a run without results, a torn results line, an
unreadable file) becomes a one-line note the page shows; the rest of the report is still built.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatacompError
from ..formats.results import RESULTS_NAME, read_results_torn
from .rows import result_row

SKIP_DIRS = {"pool", "shards", "subsets", "report", "checkpoints", "model", ".done"}
SEED_DIR = re.compile(r"^seed-(\d+)$")
MAX_DEPTH = 4


@dataclass
class Run:
    """One trained and (perhaps) evaluated model."""

    recipe: str
    seed: int
    run_dir: Path
    results: list[dict[str, Any]]
    size: int | None
    scale: str | None


@dataclass
class World:
    """One seed's work directory: ``pool/``, ``subsets/``, ``runs/``."""

    seed: int
    root: Path

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    def subset(self, recipe: str) -> Path:
        return self.root / "subsets" / f"{recipe}.npy"

    def filter_sidecar(self, recipe: str) -> dict[str, Any] | None:
        return _read_json(self.root / "subsets" / f"{recipe}.json", [])

    def recipes(self) -> list[str]:
        """Every recipe with a subset or a run directory, in name order."""
        names = {p.stem for p in (self.root / "subsets").glob("*.npy")}
        names |= {p.name for p in (self.root / "runs").iterdir() if p.is_dir()} if (self.root / "runs").is_dir() else set()
        return sorted(names)


@dataclass
class Experiment:
    """A work directory (one or several seeds) or a lone run directory: one results table."""

    root: Path
    label: str
    worlds: list[World]
    runs: list[Run]
    rows: list[dict[str, Any]] = field(default_factory=list)          # one per recipe, over seeds
    per_seed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def scale(self) -> str | None:
        return next((r.scale for r in self.runs if r.scale), None)

    @property
    def suite(self) -> str:
        from ..evaluate.registry import suite_of

        keys = [r["key"] for run in self.runs for r in run.results]
        return "datacomp" if keys and all(suite_of(k) == "datacomp" for k in keys) else "synth"

    def recipes(self) -> list[str]:
        names: list[str] = []
        for w in self.worlds:
            names += [n for n in w.recipes() if n not in names]
        names += [r.recipe for r in self.runs if r.recipe not in names]
        return names


@dataclass
class Collection:
    experiments: list[Experiment]
    notes: list[str]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path}: not valid JSON ({str(e).splitlines()[0]}); ignored")
        return None
    return obj if isinstance(obj, dict) else None


def _run_scale(run_dir: Path, notes: list[str]) -> tuple[str | None, int | None]:
    """(scale name, unique training samples) from the train stage's manifest."""
    m = _read_json(run_dir / "manifest.json", notes) or {}
    scale = (m.get("params") or {}).get("scale") or {}
    name = scale.get("name") if isinstance(scale, dict) else scale if isinstance(scale, str) else None
    size = (m.get("counts") or {}).get("unique_samples")
    return name, int(size) if isinstance(size, int) else None


def _read_run(run_dir: Path, recipe: str, seed: int, world: World | None, notes: list[str]) -> Run | None:
    path = run_dir / RESULTS_NAME
    if not path.is_file():
        notes.append(f"{run_dir}: no eval results ({RESULTS_NAME} missing: not evaluated yet?); "
                     f"'{recipe}' is left out of the results table")
        return None
    try:
        results, torn = read_results_torn(path)
    except DatacompError as e:
        notes.append(f"{e}; '{recipe}' is left out of the results table")
        return None
    if torn:
        notes.append(f"{path}: ignored a torn last line ({torn} bytes; an evaluation was interrupted?)")
    if not results:
        notes.append(f"{path}: holds no results; '{recipe}' is left out of the results table")
        return None
    scale, size = _run_scale(run_dir, notes)
    if world is not None:
        side = world.filter_sidecar(recipe)
        kept = ((side or {}).get("counts") or {}).get("kept")
        size = int(kept) if isinstance(kept, int) else size
    return Run(recipe=recipe, seed=seed, run_dir=run_dir, results=results, size=size, scale=scale)


def _world_runs(world: World, notes: list[str]) -> list[Run]:
    runs_dir = world.root / "runs"
    if not runs_dir.is_dir():
        return []
    out = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        run = _read_run(d, d.name, world.seed, world, notes)
        if run is not None:
            out.append(run)
    return out


def _world_seed(root: Path, notes: list[str]) -> int:
    m = SEED_DIR.match(root.name)
    if m:
        return int(m.group(1))
    seed = (_read_json(root / "run.json", notes) or {}).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _is_world(d: Path) -> bool:
    return (d / "runs").is_dir() or (d / "subsets").is_dir()


def _discover(d: Path, label: str, notes: list[str], depth: int = 0) -> list[Experiment]:
    seed_dirs = sorted((p for p in d.iterdir() if p.is_dir() and SEED_DIR.match(p.name) and _is_world(p)),
                       key=lambda p: int(SEED_DIR.match(p.name).group(1)))
    if seed_dirs:
        worlds = [World(int(SEED_DIR.match(p.name).group(1)), p) for p in seed_dirs]
    elif _is_world(d):
        worlds = [World(_world_seed(d, notes), d)]
    elif (d / RESULTS_NAME).is_file():
        run = _read_run(d, d.name, 0, None, notes)
        return [Experiment(root=d, label=label, worlds=[], runs=[run] if run else [])]
    else:
        if depth >= MAX_DEPTH:
            return []
        children = sorted(p for p in d.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)
        lone = [c for c in children if (c / RESULTS_NAME).is_file() and not _is_world(c)]
        out: list[Experiment] = []
        if lone:  # run directories side by side (e.g. one per recipe at a reference scale): one table
            runs = [r for c in lone if (r := _read_run(c, c.name, 0, None, notes)) is not None]
            out.append(Experiment(root=d, label=label, worlds=[], runs=runs))
        for child in children:
            if child not in lone:
                out += _discover(child, f"{label}/{child.name}", notes, depth + 1)
        return out
    runs = [r for w in worlds for r in _world_runs(w, notes)]
    return [Experiment(root=d, label=label, worlds=worlds, runs=runs)]


def _rows(exp: Experiment) -> None:
    from .tables import aggregate_seeds

    seeds = sorted({r.seed for r in exp.runs})
    exp.per_seed = {s: [result_row(r.recipe, r.results, {"dataset_size": r.size}, groups=True)
                        for r in exp.runs if r.seed == s] for s in seeds}
    exp.rows = aggregate_seeds(exp.per_seed)


def collect(workdirs: list[Path]) -> Collection:
    """Every experiment under ``workdirs`` (in the order given), with rows and notes."""
    notes: list[str] = []
    experiments: list[Experiment] = []
    for wd in workdirs:
        wd = Path(wd)
        if not wd.is_dir():
            notes.append(f"{wd}: not a directory; skipped")
            continue
        found = _discover(wd, str(wd), notes)
        if not any(e.runs or e.worlds for e in found):
            notes.append(f"{wd}: no runs found (expected runs/<recipe>/{RESULTS_NAME}, seed-N/runs/..., "
                         f"or a run directory holding {RESULTS_NAME})")
        for e in found:
            if e.worlds and not e.runs:
                notes.append(f"{e.root}: no evaluated runs yet; the results table is empty")
            _rows(e)
            experiments.append(e)
    return Collection(experiments=experiments, notes=notes)
