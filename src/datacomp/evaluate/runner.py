"""``evaluate(run, evalsets)``: one model load, every task, one result line per task (resumable).

The stage's lifecycle is :class:`datacomp.formats.stage.StageOutput`: its parameters are the run
(its manifest's digest) and the eval sets directory; each result
line is a finished unit (a re-run evaluates only the tasks missing from the results file); the
manifest ``RESULTS.manifest.json`` (beside ``RESULTS.jsonl``) lists the tasks and records the
results file. Results made with other parameters are refused unless ``overwrite``, which
starts the results file anew. Asking for more tasks than a finished output holds extends it; a
line written under another task registry version is kept, with a warning.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..formats.guard import file_records
from ..formats.manifest import Manifest, manifest_digest
from ..formats.results import RESULTS_NAME, append_result, latest_by_key, read_results
from ..formats.stage import StageOutput
from .evalsets import EvalSet, check_evalsets, open_evalset, present_tasks
from .model import ModelLoader, default_loader, load_model
from .registry import Task, get_task, registry_version
from .tasktypes import TASK_TYPES
from .zeroshot import auto_batch_size

log = logging.getLogger(__name__)

# main metrics each task type computes and the function that evaluates it (``tasktypes.TASK_TYPES``)
SUPPORTED_METRICS = {name: set(t.metrics) for name, t in TASK_TYPES.items()}
RUNNERS = {name: t.run for name, t in TASK_TYPES.items()}


def _supported(task: Task) -> bool:
    metrics = SUPPORTED_METRICS.get(task.type)
    return metrics is not None and (task.main_metric is None or task.main_metric in metrics)


def _select_tasks(evalsets: Path, tasks: list[str] | None) -> list[Task]:
    if tasks is None:
        present = present_tasks(evalsets)
        if not present:
            raise InputError(f"{evalsets}: no eval set directory of a known task (see `datacomp info tasks`)")
        selected = [t for t in present if _supported(t)]
        for t in present:
            if not _supported(t):
                log.warning("task %s: %s '%s' is not implemented; skipped (suite average will be partial)",
                            t.key, t.type, t.main_metric)
        return selected
    out, seen = [], set()
    for k in tasks:
        t = get_task(k)
        if not _supported(t):
            raise ConfigError(f"task {t.key}: main metric '{t.main_metric}' ({t.type}) is not implemented")
        if t.key not in seen:
            seen.add(t.key)
            out.append(t)
    return out


STAGE = "evaluate"


def results_output(run: Path, evalsets: Path, out: Path, overwrite: bool = False) -> StageOutput:
    """The lifecycle of results file ``out`` of ``run`` on ``evalsets``."""
    params = {"run_manifest": manifest_digest(run), "evalsets": str(evalsets.resolve())}
    return StageOutput(STAGE, out.parent, params, overwrite=overwrite, manifest=out.with_name(f"{out.stem}.manifest.json"),
                       owned=[out], pending=f".{out.stem}.params.json", where=out)


def evaluate(
    run: str | os.PathLike,
    evalsets: str | os.PathLike,
    out: str | os.PathLike | None = None,
    tasks: list[str] | None = None,
    batch_size: int | None = None,
    model_loader: ModelLoader | None = None,
    workers: int = 2,
    device: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Evaluate the model of training run ``run`` on the eval sets under ``evalsets``.

    ``tasks``: task keys (default: every registry task with a directory in ``evalsets``).
    Results go to ``out`` (default ``run/eval_results.jsonl``), one line per task as it finishes;
    tasks already in ``out`` are skipped. ``model_loader(run) -> (model, preprocess, tokenizer)``
    overrides how the model is loaded. ``batch_size`` None = chosen for the device. Returns the
    manifest; ``manifest["results"]`` holds the result rows of the selected tasks (already present
    or new), in registry / request order.
    """
    run = Path(run)
    evalsets = Path(evalsets)
    out = Path(out) if out is not None else run / RESULTS_NAME
    if not evalsets.is_dir():
        raise InputError(f"{evalsets}: eval sets directory does not exist")
    selected = _select_tasks(evalsets, tasks)
    # check every eval set still to do, and the run, before anything is written or a model loaded
    missing = [t for t in selected if t.key not in latest_by_key(read_results(out))]
    report = check_evalsets(evalsets, [t.key for t in missing]) if missing else None
    if report and report["missing"]:
        raise InputError(f"{evalsets}: no eval set for task(s) {', '.join(report['missing'])}")
    if not run.is_dir():
        raise InputError(f"{run}: training run directory does not exist")
    life = results_output(run, evalsets, out, overwrite)
    done = life.begin()
    if done is not None and all(t.key in (done.extra.get("tasks") or []) for t in selected):
        existing = latest_by_key(read_results(out))
        if all(t.key in existing for t in selected):
            done.extra["results"] = [existing[t.key] for t in selected]  # the rows asked for (the file lists all)
            return done

    existing = latest_by_key(read_results(out, repair=True))
    todo = [t for t in selected if t.key not in existing]
    if len(todo) < len(selected):
        log.info("%s: %d task(s) already evaluated, skipped", out, len(selected) - len(todo))
    version = registry_version()
    for t in selected:
        old = existing.get(t.key, {}).get("registry_version", version)
        if old != version:
            log.warning("%s: task %s was evaluated under task registry v%s (now v%s); delete its line to redo it",
                        out, t.key, old, version)
    if todo:
        if {t.key for t in todo} - {t.key for t in missing}:  # --overwrite emptied the results file
            report = check_evalsets(evalsets, [t.key for t in todo])
            if report["missing"]:
                raise InputError(f"{evalsets}: no eval set for task(s) {', '.join(report['missing'])}")
        opened: dict[str, EvalSet] = {t.key: open_evalset(evalsets, t) for t in todo}
        _run_tasks(run, out, todo, opened, existing, batch_size, model_loader, workers, device)
    old_tasks = [k for k in ((life.previous.extra.get("tasks") or []) if life.previous else []) if k in existing]
    return _manifest(life, out, selected, existing, len(todo), keep=old_tasks)


def _manifest(life: StageOutput, out: Path, selected: list[Task], existing: dict[str, Any], evaluated: int,
              keep: list[str] | None = None) -> Manifest:
    keys = list(dict.fromkeys([*(keep or []), *(t.key for t in selected)]))
    m = Manifest(stage=STAGE, params=life.params, counts={"tasks": len(keys), "evaluated": evaluated},
                 extra={"tasks": keys, "results": [existing[t.key] for t in selected],
                        "files": file_records(out.parent, [out.name])})
    return life.finish(m)


def _run_tasks(run: Path, out: Path, todo: list[Task], opened: dict[str, EvalSet], existing: dict[str, Any],
               batch_size: int | None, model_loader: ModelLoader | None, workers: int, device: str | None) -> None:
    """One model load, then each task in order; its result line is appended as it finishes."""
    version = registry_version()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = model_loader or default_loader()
    t0 = time.time()
    if loader is load_model:
        model, preprocess, tokenizer = load_model(run, device=str(dev))
    else:
        model, preprocess, tokenizer = loader(run)
    model = model.to(dev).eval()
    bs = batch_size or auto_batch_size(dev)
    log.info("loaded model of %s in %.1fs (%s)", run, time.time() - t0, dev)
    for k, t in enumerate(todo, 1):
        t1 = time.time()
        log.info("evaluate %s: task %d of %d: %s", run, k, len(todo), t.key)
        es = opened[t.key]
        metrics, _ = RUNNERS[t.type](model, preprocess, tokenizer, es, bs, workers)
        metrics["main_metric"] = metrics.get(t.main_metric) if t.main_metric else None
        row = {"key": t.key, "dataset": t.name, "metrics": metrics, "registry_version": version}
        append_result(out, row)
        existing[t.key] = row
        log.info("%s: %s = %s (%d images, %.1fs)", t.key, t.main_metric, metrics["main_metric"],
                 metrics.get("n_samples", 0), time.time() - t1)
