"""The chance row: what a uniformly random predictor scores on each task.

Registry tasks carry a closed-form ``chance`` (``resources/tasks.yaml``). The embedded world's
tasks get theirs from the eval sets the world wrote (``POOL/evalsets/tasks.json``): 1/classes for
a classification task (top-1, mean per-class recall and worst-group accuracy alike), 1/images for
retrieval recall@1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FormatError


def _world_chance(evalsets: Path | None) -> dict[str, float]:
    if evalsets is None or not (evalsets / "tasks.json").is_file():
        return {}
    path = evalsets / "tasks.json"
    try:
        tasks = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    out: dict[str, float] = {}
    for key, t in tasks.items():
        if t.get("type") == "classification" and t.get("num_classes"):
            out[key] = 1.0 / int(t["num_classes"])
        elif t.get("type") == "retrieval" and t.get("n"):
            out[key] = 1.0 / int(t["n"])
    return out


def chance_results(keys: list[str], evalsets: Path | None = None) -> list[dict[str, Any]]:
    """Result lines (``eval_results.jsonl`` shape) holding each task's chance as its main metric;
    a task whose chance is unknown is left out."""
    from ..evaluate.registry import get_task
    from ..errors import ConfigError

    world = _world_chance(evalsets)
    out = []
    for key in keys:
        value = world.get(key)
        if value is None:
            try:
                value = get_task(key).chance
            except ConfigError:
                value = None
        if value is not None:
            out.append({"key": key, "dataset": key, "metrics": {"main_metric": value}})
    return out
