"""Finding, opening and checking eval sets, one local directory per task under ``EVALSETS``.

Where a task's directory may be and how it is read depend on its source (``sources.py``: the
clip_benchmark wds layout of ``wds.py``, or the Hugging Face datasets of ``nlphuji.py``); what
its samples carry, on its type (``tasktypes.py``). ``open_evalset`` indexes a task directory
(tar headers plus the small label / caption members, no image decoding) and checks it;
``check_evalsets`` does that for a whole suite before a model is loaded. Images are decoded
later, by ``images.ImageDataset`` in DataLoader workers, reading each image straight from its
offset in the tar. An image that fails to decode is skipped and counted.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from .dataset import EvalSample, EvalSet, WinoExample
from .registry import Task, get_task, load_registry, load_tasks
from .sources import source_of
from .tasktypes import task_type
from .wds import CLASSNAMES, IMAGE_EXTS, TEMPLATES

__all__ = ["CLASSNAMES", "IMAGE_EXTS", "TEMPLATES", "EvalSample", "EvalSet", "WinoExample", "check_evalsets",
           "format_check", "open_evalset", "present_tasks", "task_root"]

log = logging.getLogger(__name__)


def task_root(evalsets: str | os.PathLike, task: Task) -> Path | None:
    """The task's directory under ``evalsets`` (the first of its source's candidates that exists)."""
    for c in source_of(task).dirs(Path(evalsets), task):
        if c.is_dir():
            return c
    return None


def open_evalset(evalsets: str | os.PathLike, task: Task | str) -> EvalSet:
    """Index and check one task's directory; raises InputError / FormatError naming task and file."""
    task = get_task(task) if isinstance(task, str) else task
    root = task_root(evalsets, task)
    if root is None:
        raise InputError(f"task {task.key}: eval set directory {Path(evalsets) / task.dirname} does not exist")
    task_type(task)  # a type nothing evaluates: ConfigError before any file is read
    return source_of(task).open(root, task)


def present_tasks(evalsets: str | os.PathLike) -> list[Task]:
    """Registry tasks whose directory exists under ``evalsets``, in registry order."""
    d = Path(evalsets)
    if not d.is_dir():
        raise InputError(f"{d}: eval sets directory does not exist")
    return [t for t in load_tasks() if task_root(d, t) is not None]


def _local_expectations(d: Path) -> dict[str, dict[str, Any]]:
    """``EVALSETS/tasks.json`` (written by the synth stage: key -> {"n", "num_classes", ...}), if any."""
    p = d / "tasks.json"
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s: unreadable, ignored (%s)", p, e)
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}


def check_evalsets(evalsets: str | os.PathLike, tasks: Iterable[str | Task] | None = None) -> dict[str, Any]:
    """Check eval sets against the registry before a model is loaded.

    ``tasks`` = keys to check (default: every task of each suite that has a directory present).
    Structural problems raise InputError / FormatError; size or class-count disagreements with
    the registry (or, where the registry leaves them open as for synth tasks, with
    ``EVALSETS/tasks.json`` written by the synth stage) are listed under each task's ``problems`` (and logged), not raised.
    Returns ``{"evalsets", "registry_version", "present": [...], "missing": [...], "unknown_dirs": [...]}``.
    """
    d = Path(evalsets)
    present = present_tasks(d)
    if tasks is None:
        suites = {t.suite for t in present}
        wanted = [t for t in load_tasks() if t.suite in suites]
    else:
        wanted = [get_task(t) if isinstance(t, str) else t for t in tasks]
    present_keys = {t.key for t in present}
    known_dirs = {t.dirname for t in load_registry().tasks} | {t.reference_dirname for t in load_registry().tasks}
    known_dirs.add("hf_cache")
    report: dict[str, Any] = {
        "evalsets": str(d),
        "registry_version": load_registry().version,
        "present": [],
        "missing": [t.key for t in wanted if t.key not in present_keys],
        "unknown_dirs": sorted(p.name for p in d.iterdir() if p.is_dir() and p.name not in known_dirs),
    }
    local = _local_expectations(d)
    for t in wanted:
        if t.key not in present_keys:
            continue
        es = open_evalset(d, t)
        problems = []
        size, classes, src = t.size, t.classes, "registry"
        if size is None and classes is None and t.key in local:
            size, classes, src = local[t.key].get("n"), local[t.key].get("num_classes"), "tasks.json"
        if size is not None and es.size != size:
            problems.append(f"{es.size} samples, {src} expects {size}")
        if classes is not None and es.classnames and len(es.classnames) != classes:
            problems.append(f"{len(es.classnames)} classes, {src} expects {classes}")
        for p in problems:
            log.warning("task %s (%s): %s", t.key, es.root, p)
        entry = {
            "key": t.key,
            "dir": str(es.root),
            "size": es.size,
            "expected_size": size,
            "classes": len(es.classnames) if es.classnames else None,
            "expected_classes": classes,
            "expected_from": src,
            "shards": len(es.shards),
            "problems": problems,
        }
        entry["layout"] = es.layout
        if task_type(t).carries == "captions":
            entry["captions"] = es.n_captions
        report["present"].append(entry)
    return report


def format_check(report: dict[str, Any]) -> list[str]:
    """``check_evalsets`` report -> printable lines (for ``datacomp evaluate --check``)."""
    lines = [f"eval sets {report['evalsets']} (task registry v{report['registry_version']})"]
    for e in report["present"]:
        exp = f"/{e['expected_size']}" if e.get("expected_size") is not None else ""
        extra = f", {e['captions']} captions" if "captions" in e else ""
        cls = f", {e['classes']} classes" if e.get("classes") else ""
        status = "ok" if not e["problems"] else "; ".join(e["problems"])
        lines.append(f"  present  {e['key']:<52} {e['size']}{exp} samples{cls}{extra}  [{status}]")
    for k in report["missing"]:
        lines.append(f"  missing  {k}")
    for d in report["unknown_dirs"]:
        lines.append(f"  unknown  {d}/ (not a registry task)")
    lines.append(f"{len(report['present'])} present, {len(report['missing'])} missing")
    return lines
