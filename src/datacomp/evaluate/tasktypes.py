"""The task types: what a task of each type carries, reads from its directory and computes.

``tasks.yaml`` gives every task a ``type``; this registry says, for each type, which function of
``zeroshot.py`` evaluates it (looked up when it runs, so reading the registry needs no torch),
which main metrics it computes, what each sample carries besides its image (a class label,
captions, per-sample metadata, or WinoGAViL's candidate sets) and which prompt files the task
directory holds (class names + templates, or the fairness objectives'). Adding a type is one
entry here and its runner in ``zeroshot.py``; the readers (``wds.py``, ``nlphuji.py``) and the
evaluation loop (``runner.py``) take everything else from the entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class TaskType:
    name: str
    runner: str  # function of zeroshot.py: (model, preprocess, tokenizer, evalset, batch_size, workers) -> (metrics, outputs)
    metrics: frozenset[str]  # main metrics it computes
    carries: str  # what a sample holds besides its image: label | captions | metadata | candidates
    prompts: str | None = None  # what the task directory holds for the text side: classes | objectives | None

    def run(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from . import zeroshot

        return getattr(zeroshot, self.runner)(*args, **kwargs)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("zeroshot_classification", "zeroshot_classification",
             frozenset({"acc1", "acc5", "mean_per_class_recall", "F1-macro_all", "acc_wg", "acc_top5_wg",
                        "acc_worst_region", "acc_worst_year"}), carries="label", prompts="classes"),
    TaskType("retrieval", "zeroshot_retrieval", frozenset({"mean_recall@1"}), carries="captions"),
    TaskType("winogavil", "winogavil", frozenset({"jaccard_score_10-12", "avg_jaccard_score"}), carries="candidates"),
    TaskType("fairness", "fairness_classification", frozenset(), carries="metadata", prompts="objectives"),
)}


def task_type(task: Any) -> TaskType:
    """The registry entry of ``task.type``; ConfigError naming the task for a type not here."""
    t = TASK_TYPES.get(task.type)
    if t is None:
        raise ConfigError(f"task {task.key}: evaluating type '{task.type}' is not implemented")
    return t
