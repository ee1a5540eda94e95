"""The task types: what a task of each type carries, reads from its directory and computes.

``tasks.yaml`` gives every task a ``type``; this registry says, for each type, which main metrics
it computes, what each sample carries besides its image (a class label, captions, per-sample
metadata, or WinoGAViL's candidate sets) and which prompt files the task directory holds (class
names + templates, or the fairness objectives'). The function that evaluates a type registers
itself here from ``zeroshot.py`` (``@evaluates("retrieval")``), so reading the registry needs no
torch and nothing here imports the models' code. Adding a type is one entry here and its
``@evaluates`` function; the readers (``wds.py``, ``nlphuji.py``) and the evaluation loop
(``runner.py``) take everything else from the entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

Runner = Callable[..., tuple[dict[str, Any], dict[str, Any]]]
_RUNNERS: dict[str, Runner] = {}  # type name -> its evaluation (registered by zeroshot.py)


@dataclass(frozen=True)
class TaskType:
    name: str
    metrics: frozenset[str]  # main metrics it computes
    carries: str  # what a sample holds besides its image: label | captions | metadata | candidates
    prompts: str | None = None  # what the task directory holds for the text side: classes | objectives | None

    def run(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model, preprocess, tokenizer, evalset, batch_size, workers) -> (metrics, outputs)."""
        fn = _RUNNERS.get(self.name)
        if fn is None:
            raise ConfigError(f"task type '{self.name}': no evaluation registered (import datacomp.evaluate.zeroshot)")
        return fn(*args, **kwargs)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("zeroshot_classification", frozenset({"acc1", "acc5", "mean_per_class_recall", "F1-macro_all", "acc_wg",
                                                   "acc_top5_wg", "acc_worst_region", "acc_worst_year"}),
             carries="label", prompts="classes"),
    TaskType("retrieval", frozenset({"mean_recall@1"}), carries="captions"),
    TaskType("winogavil", frozenset({"jaccard_score_10-12", "avg_jaccard_score"}), carries="candidates"),
    TaskType("fairness", frozenset(), carries="metadata", prompts="objectives"),
)}


def task_type(task: Any) -> TaskType:
    """The registry entry of ``task.type``; ConfigError naming the task for a type not here."""
    t = TASK_TYPES.get(task.type)
    if t is None:
        raise ConfigError(f"task {task.key}: evaluating type '{task.type}' is not implemented")
    return t


def evaluates(type_name: str) -> Callable[[Runner], Runner]:
    """Register the decorated function as the evaluation of task type ``type_name``."""
    if type_name not in TASK_TYPES:
        raise ValueError(f"unknown task type '{type_name}' (add it to TASK_TYPES first)")

    def register(fn: Runner) -> Runner:
        _RUNNERS[type_name] = fn
        return fn
    return register
