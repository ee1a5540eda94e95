"""``evaluate(run, evalsets)``: one model load, every task, one result line per task (resumable).

What is evaluated (``target.py``): one of our training runs, a reference ``train.py`` run
(``info.pkl``), or ``model=ARCH, checkpoint=CKPT``. The stage's lifecycle is
:class:`datacomp.formats.stage.StageOutput`: its parameters are the target (our run: its
manifest's digest; otherwise the architecture), the eval sets directory and the precision
(recorded when it is not fp32, the precision of every results file made before the option
existed); its input is the checkpoint's sha256, so results are never reused for other weights.
Each result line says which precision made it (``precision.py``). Each result
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
from ..formats.manifest import Manifest
from ..formats.results import RESULTS_NAME, append_result, latest_by_key, read_results
from ..formats.stage import StageOutput
from .evalsets import EvalSet, check_evalsets, open_evalset, present_tasks
from .model import ModelLoader
from .precision import Precision, resolve_precision
from .registry import Task, get_task, load_tasks, registry_version, suite_of
from .target import EvalTarget, model_target, run_target
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


def results_manifest_path(out: Path) -> Path:
    """``RESULTS.manifest.json`` beside ``RESULTS.jsonl``."""
    return out.with_name(f"{out.stem}.manifest.json")


def results_output(target: EvalTarget, evalsets: Path, out: Path, precision: Precision, overwrite: bool = False,
                   checkpoint_digest: str | None = None) -> StageOutput:
    """The lifecycle of results file ``out`` of ``target`` on ``evalsets`` at ``precision``."""
    params = {**target.params(), "evalsets": str(evalsets.resolve())}
    if precision.name != "fp32":
        params["precision"] = precision.name
    inputs = {"checkpoint": checkpoint_digest or target.checkpoint_digest()}
    return StageOutput(STAGE, out.parent, params, inputs=inputs, overwrite=overwrite, manifest=results_manifest_path(out),
                       owned=[out], pending=f".{out.stem}.params.json", where=out)


def strict_missing(selected: list[Task]) -> tuple[str, list[str]]:
    """(suite, its scored tasks not in ``selected``): the suite is the one most selected tasks belong to."""
    suites = [suite_of(t.key) for t in selected]
    suite = max(set(suites), key=suites.count) if suites else "datacomp"
    keys = {t.key for t in selected}
    return suite, [t.key for t in load_tasks(suite) if t.scored and t.key not in keys]


def evaluate(
    run: str | os.PathLike | None,
    evalsets: str | os.PathLike,
    out: str | os.PathLike | None = None,
    tasks: list[str] | None = None,
    batch_size: int | None = None,
    model_loader: ModelLoader | None = None,
    workers: int = 2,
    device: str | None = None,
    overwrite: bool = False,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    precision: str | None = "reference",
    strict: bool = False,
) -> Manifest:
    """Evaluate training run ``run`` (ours or the reference's), or ``model`` with ``checkpoint``,
    on the eval sets under ``evalsets``.

    ``tasks``: task keys (default: every registry task with a directory in ``evalsets``).
    Results go to ``out`` (default ``run/eval_results.jsonl``; required with ``model``), one line
    per task as it finishes; tasks already in ``out`` are skipped. ``model_loader(run) -> (model,
    preprocess, tokenizer)`` overrides how one of our runs is loaded. ``batch_size`` None = chosen
    for the device. ``precision``: ``reference`` (amp_fp16 on CUDA, fp32 on CPU), ``fp32``,
    ``amp_fp16`` or ``amp_bf16``. ``strict``: refuse (before any work) a task selection that does
    not cover every scored task of its suite. Returns the manifest; ``manifest["results"]`` holds
    the result rows of the selected tasks (already present or new), in registry / request order.
    """
    if (run is None) == (model is None):
        raise InputError("evaluate needs a training run or a model (--run RUN, or --model ARCH --checkpoint CKPT)")
    if model is None and checkpoint is not None:
        raise InputError("--checkpoint goes with --model (a run evaluates its own final checkpoint)")
    if model is not None and out is None:
        raise InputError("evaluate --model needs --out RESULTS.jsonl (there is no run directory to write into)")
    evalsets = Path(evalsets)
    out = Path(out) if out is not None else Path(run) / RESULTS_NAME
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prec = resolve_precision(precision, dev)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    if not evalsets.is_dir():
        raise InputError(f"{evalsets}: eval sets directory does not exist")
    selected = _select_tasks(evalsets, tasks)
    if strict:
        suite, absent = strict_missing(selected)
        if absent:
            raise InputError(f"{evalsets}: --strict needs every scored task of the {suite} suite; {len(absent)} "
                             f"missing: {', '.join(absent[:8])}{'...' if len(absent) > 8 else ''}")
    # check every eval set still to do, and the run, before anything is written or a model loaded
    missing = [t for t in selected if t.key not in latest_by_key(read_results(out))]
    report = check_evalsets(evalsets, [t.key for t in missing]) if missing else None
    if report and report["missing"]:
        raise InputError(f"{evalsets}: no eval set for task(s) {', '.join(report['missing'])}")
    target = run_target(run) if run is not None else model_target(model, checkpoint)
    digest = target.checkpoint_digest()
    life = results_output(target, evalsets, out, prec, overwrite, digest)
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
        if t.key in existing and existing[t.key].get("precision", "fp32") != prec.name:
            log.warning("%s: task %s was evaluated at %s (now %s)", out, t.key,
                        existing[t.key].get("precision", "fp32"), prec.name)
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
        _run_tasks(target, out, todo, opened, existing, batch_size, model_loader, workers, dev, prec)
    old_tasks = [k for k in ((life.previous.extra.get("tasks") or []) if life.previous else []) if k in existing]
    return _manifest(life, out, selected, existing, len(todo), target, digest, keep=old_tasks)


def _manifest(life: StageOutput, out: Path, selected: list[Task], existing: dict[str, Any], evaluated: int,
              target: EvalTarget, digest: str, keep: list[str] | None = None) -> Manifest:
    keys = list(dict.fromkeys([*(keep or []), *(t.key for t in selected)]))
    ck = target.checkpoint_file()
    m = Manifest(stage=STAGE, params=life.params, inputs=life.inputs, counts={"tasks": len(keys), "evaluated": evaluated},
                 extra={"tasks": keys, "results": [existing[t.key] for t in selected],
                        "target": {"kind": target.kind, "model": target.model,
                                   "checkpoint": str(ck if ck is not None else target.checkpoint),
                                   "checkpoint_digest": digest,
                                   "run": str(target.run) if target.run is not None else None},
                        "files": file_records(out.parent, [out.name])})
    return life.finish(m)


def _run_tasks(target: EvalTarget, out: Path, todo: list[Task], opened: dict[str, EvalSet], existing: dict[str, Any],
               batch_size: int | None, model_loader: ModelLoader | None, workers: int, dev: torch.device,
               prec: Precision) -> None:
    """One model load, then each task in order; its result line is appended as it finishes."""
    version = registry_version()
    t0 = time.time()
    model, preprocess, tokenizer = target.load(str(dev), model_loader)
    model = model.to(dev).eval()
    bs = batch_size or auto_batch_size(dev)
    log.info("loaded model of %s in %.1fs (%s, %s)", target.describe, time.time() - t0, dev, prec.name)
    for k, t in enumerate(todo, 1):
        t1 = time.time()
        log.info("evaluate %s: task %d of %d: %s", target.describe, k, len(todo), t.key)
        es = opened[t.key]
        metrics, _ = RUNNERS[t.type](model, preprocess, tokenizer, es, bs, workers, prec)
        metrics["main_metric"] = metrics.get(t.main_metric) if t.main_metric else None
        row = {"key": t.key, "dataset": t.name, "metrics": metrics, "registry_version": version,
               "precision": prec.name}
        append_result(out, row)
        existing[t.key] = row
        log.info("%s: %s = %s (%d images, %.1fs)", t.key, t.main_metric, metrics["main_metric"],
                 metrics.get("n_samples", 0), time.time() - t1)
