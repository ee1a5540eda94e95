"""``evaluate(run, evalsets)``: one model load, every task, one result line per task (resumable)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..formats.results import RESULTS_NAME, append_result, latest_by_key, read_results
from .evalsets import EvalSet, check_evalsets, open_evalset, present_tasks
from .model import ModelLoader, default_loader, load_model
from .registry import Task, get_task, registry_version
from .zeroshot import auto_batch_size, fairness_classification, winogavil, zeroshot_classification, zeroshot_retrieval

log = logging.getLogger(__name__)

# main metrics each task type computes here (the others raise before the model is loaded)
SUPPORTED_METRICS = {
    "zeroshot_classification": {"acc1", "acc5", "mean_per_class_recall", "F1-macro_all", "acc_wg",
                                "acc_top5_wg", "acc_worst_region", "acc_worst_year"},
    "retrieval": {"mean_recall@1"},
    "winogavil": {"jaccard_score_10-12", "avg_jaccard_score"},
    "fairness": set(),
}
RUNNERS = {
    "zeroshot_classification": zeroshot_classification,
    "retrieval": zeroshot_retrieval,
    "winogavil": winogavil,
    "fairness": fairness_classification,
}


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


def evaluate(
    run: str | os.PathLike,
    evalsets: str | os.PathLike,
    out: str | os.PathLike | None = None,
    tasks: list[str] | None = None,
    batch_size: int | None = None,
    model_loader: ModelLoader | None = None,
    workers: int = 2,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the model of training run ``run`` on the eval sets under ``evalsets``.

    ``tasks``: task keys (default: every registry task with a directory in ``evalsets``).
    Results go to ``out`` (default ``run/eval_results.jsonl``), one line per task as it finishes;
    tasks already in ``out`` are skipped. ``model_loader(run) -> (model, preprocess, tokenizer)``
    overrides how the model is loaded. ``batch_size`` None = chosen for the device. Returns the result rows of the selected tasks (already
    present or new), in registry / request order.
    """
    run = Path(run)
    evalsets = Path(evalsets)
    out = Path(out) if out is not None else run / RESULTS_NAME
    if not evalsets.is_dir():
        raise InputError(f"{evalsets}: eval sets directory does not exist")
    selected = _select_tasks(evalsets, tasks)
    version = registry_version()

    existing = latest_by_key(read_results(out, repair=True))
    todo = [t for t in selected if t.key not in existing]
    if len(todo) < len(selected):
        log.info("%s: %d task(s) already evaluated, skipped", out, len(selected) - len(todo))
    for t in selected:
        old = existing.get(t.key, {}).get("registry_version", version)
        if old != version:
            log.warning("%s: task %s was evaluated under task registry v%s (now v%s); delete its line to redo it",
                        out, t.key, old, version)

    # check every eval set before paying for a model load
    report = check_evalsets(evalsets, [t.key for t in todo]) if todo else None
    if report and report["missing"]:
        raise InputError(f"{evalsets}: no eval set for task(s) {', '.join(report['missing'])}")
    opened: dict[str, EvalSet] = {t.key: open_evalset(evalsets, t) for t in todo}

    if todo:
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
    return [existing[t.key] for t in selected]
