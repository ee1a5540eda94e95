"""The evaluation task registry: ``resources/tasks.yaml`` as typed objects.

Two suites: ``datacomp`` (the reference's 40 tasks, 38 of them scored) and ``synth`` (every task
whose key starts with ``synth/``: the embedded world's analogues).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import yaml

from ..config import resource_path
from ..errors import ConfigError
from .evaluators import evaluator_of
from .tasktypes import TASK_TYPES

SUITES = ("datacomp", "synth")
SYNTH_PREFIX = "synth/"


@dataclass(frozen=True)
class Task:
    key: str
    name: str
    short: str
    type: str
    main_metric: str | None
    group: str
    size: int | None = None
    classes: int | None = None
    chance: float | None = None
    # extra metrics (WILDS, Dollar Street, GeoDE, FairFace, synth worst-group tasks): evaluators.EVALUATORS
    evaluator: str | None = None
    metadata: tuple[str, ...] | None = None  # per-sample metadata fields, in .npy column order
    group_by: tuple[str, ...] | None = None  # fields whose combinations are the groups ("group")
    topk: int = 1  # accuracy per group: top-1 (acc_*) or top-5 (acc_top5_*)
    value_names: dict[str, list[str]] | None = field(default=None, hash=False)  # field -> names of its integer values
    source: str = "wds"  # wds (clip_benchmark layout) | nlphuji (HF dataset: parquet / arrow)
    hf_repo: str | None = None  # where `download_evalsets` fetches it from

    @property
    def dirname(self) -> str:
        """Eval-set directory name (clip_benchmark convention: '/' -> '-')."""
        return task_dirname(self.key)

    @property
    def reference_dirname(self) -> str:
        """The reference's local folder name: ``wds_<key, fairness/ dropped, '/' -> '-'>_test``."""
        return "wds_" + self.key.removeprefix("fairness/").replace("/", "-") + "_test"

    @property
    def repo(self) -> str:
        """Hugging Face dataset repo of the eval set (the reference's sources)."""
        return self.hf_repo or "djghosh/" + self.reference_dirname

    @property
    def suite(self) -> str:
        return suite_of(self.key)

    @property
    def scored(self) -> bool:
        return self.main_metric is not None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("metadata", "group_by"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class Registry:
    version: int
    tasks: tuple[Task, ...]
    aggregates: dict[str, dict[str, list[str]]]  # suite -> aggregate name -> groups


def task_dirname(key: str) -> str:
    return key.replace("/", "-")


@lru_cache(maxsize=None)
def load_registry() -> Registry:
    path = resource_path("tasks.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or "version" not in raw or "tasks" not in raw:
        raise ConfigError(f"{path}: task registry needs 'version' and 'tasks'")
    tasks = []
    seen = set()
    for t in raw["tasks"]:
        t = dict(t)
        for k in ("metadata", "group_by"):
            if t.get(k) is not None:
                t[k] = tuple(t[k])
        try:
            task = Task(**t)
        except TypeError as e:
            raise ConfigError(f"{path}: task {t.get('key')}: {e}") from None
        if task.type not in TASK_TYPES:
            raise ConfigError(f"{path}: task {task.key}: unknown type '{task.type}'")
        try:
            evaluator = evaluator_of(task)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        if evaluator is not None:
            evaluator.check(task, str(path))
        if task.key in seen:
            raise ConfigError(f"{path}: task {task.key} listed twice")
        seen.add(task.key)
        tasks.append(task)
    aggregates = {s: dict(v.get("aggregates", {})) for s, v in (raw.get("suites") or {}).items()}
    return Registry(version=int(raw["version"]), tasks=tuple(tasks), aggregates=aggregates)


def registry_version() -> int:
    return load_registry().version


def load_tasks(suite: str | None = None) -> list[Task]:
    """Every task in registry order, or those of one suite ('datacomp' or 'synth')."""
    tasks = list(load_registry().tasks)
    if suite is None:
        return tasks
    if suite not in SUITES:
        raise ConfigError(f"unknown task suite '{suite}' (known: {', '.join(SUITES)})")
    return [t for t in tasks if t.suite == suite]


def get_task(key: str) -> Task:
    for t in load_registry().tasks:
        if t.key == key:
            return t
    raise ConfigError(f"unknown task '{key}' (see `datacomp info tasks`)")


def suite_of(key: str) -> str:
    """The suite of a task key: 'synth' for the world's (``synth/...``), else 'datacomp'."""
    return "synth" if key.startswith(SYNTH_PREFIX) else "datacomp"


def suite_aggregates(suite: str) -> dict[str, list[str]]:
    """Aggregate name -> the task groups it averages, for one suite."""
    if suite not in SUITES:
        raise ConfigError(f"unknown task suite '{suite}' (known: {', '.join(SUITES)})")
    return dict(load_registry().aggregates.get(suite, {}))
