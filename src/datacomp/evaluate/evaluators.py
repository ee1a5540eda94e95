"""The evaluators: the metrics a task computes beyond its type's own (worst group, macro F1, ...).

``tasks.yaml`` may give a task an ``evaluator``; this registry says, for each, which task types
it applies to and what the task must declare for it (per-sample ``metadata`` fields, the
``group_by`` fields among them). The function that computes a classification evaluator's
metrics registers itself here from ``zeroshot.py`` (``@extra_metrics("group")``), the way a task
type's evaluation does in ``tasktypes.py``, so reading the registry needs no torch. ``fairface``
has no such function: the fairness type's evaluation computes its tables; the entry checks the
task declares the fields they read. Adding an evaluator is one entry here and its
``@extra_metrics`` function; ``registry.py`` checks tasks against the entry and
``zeroshot_classification`` calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

# (logits, labels, evalset, indices of the samples that decoded, task) -> metrics, in output order
ExtraMetrics = Callable[..., dict[str, Any]]
_METRICS: dict[str, ExtraMetrics] = {}  # evaluator name -> its metrics (registered by zeroshot.py)


@dataclass(frozen=True)
class Evaluator:
    name: str
    types: frozenset[str]  # task types it applies to
    needs_metadata: bool = False  # the task lists its per-sample metadata fields
    needs_group_by: bool = False  # ... and the fields among them whose combinations are the groups

    def check(self, task: Any, where: str) -> None:
        """ConfigError naming ``where`` and the task when the task lacks what this evaluator reads."""
        if task.type not in self.types:
            raise ConfigError(f"{where}: task {task.key}: evaluator '{self.name}' does not apply to type '{task.type}'")
        if self.needs_metadata and not task.metadata:
            raise ConfigError(f"{where}: task {task.key}: evaluator '{self.name}' needs 'metadata' fields")
        if self.needs_group_by and not (task.group_by and set(task.group_by) <= set(task.metadata or ())):
            raise ConfigError(f"{where}: task {task.key}: 'group_by' must name fields of 'metadata'")

    def metrics(self, *args: Any) -> dict[str, Any]:
        """(logits, labels, evalset, indices, task) -> the extra metrics ({} for an evaluator whose
        figures its task type computes)."""
        fn = _METRICS.get(self.name)
        return fn(*args) if fn is not None else {}


_CLS = frozenset({"zeroshot_classification"})
EVALUATORS: dict[str, Evaluator] = {e.name: e for e in (
    Evaluator("group", _CLS, needs_metadata=True, needs_group_by=True),  # top-k accuracy per group, the worst
    Evaluator("wilds_iwildcam", _CLS),  # acc_avg, macro recall and F1
    Evaluator("wilds_fmow", _CLS, needs_metadata=True),  # worst year, worst region other than "Other"
    Evaluator("fairface", frozenset({"fairness"}), needs_metadata=True),  # race / gender / age / toxicity tables
)}


def evaluator_of(task: Any) -> Evaluator | None:
    """The registry entry of ``task.evaluator`` (None when the task has none); ConfigError naming
    the task for a name not here."""
    if task.evaluator is None:
        return None
    e = EVALUATORS.get(task.evaluator)
    if e is None:
        raise ConfigError(f"task {task.key}: unknown evaluator '{task.evaluator}' (known: {', '.join(EVALUATORS)})")
    return e


def extra_metrics(name: str) -> Callable[[ExtraMetrics], ExtraMetrics]:
    """Register the decorated function as the metrics of evaluator ``name``."""
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator '{name}' (add it to EVALUATORS first)")

    def register(fn: ExtraMetrics) -> ExtraMetrics:
        _METRICS[name] = fn
        return fn
    return register
