"""One results row per trained model: its recipe, dataset size, every task's main metric, the
suite's group scores (optional) and the average — the unit every results table is made of."""
from __future__ import annotations

from typing import Any

GROUP_PREFIX = "group/"


def result_row(recipe: str, results: list[dict[str, Any]], extra: dict[str, Any] | None = None,
               groups: bool = False) -> dict[str, Any]:
    """``{"recipe", **extra, <task key>: main_metric (key order), [group/<name>: score], "average"}``.

    Groups and the average are computed as the reference's aggregate script does
    (:func:`datacomp.evaluate.aggregate`): None unless every task they average has a score.
    """
    from ..evaluate import aggregate
    from ..formats.results import latest_by_key

    latest = latest_by_key(results)
    row: dict[str, Any] = {"recipe": recipe, **(extra or {})}
    for key in sorted(latest):
        row[key] = latest[key]["metrics"].get("main_metric")
    agg = aggregate(list(latest.values())) if latest else {}
    if groups and agg:
        from ..evaluate.registry import suite_aggregates

        for name in suite_aggregates(agg["suite"]):
            row[GROUP_PREFIX + name] = agg.get(name)
    row["average"] = agg.get("average")
    return row


def group_labels(suite: str) -> dict[str, str]:
    """``group/<name>`` column -> its label (the reference's names for the datacomp suite), then average."""
    from ..evaluate.aggregate import LABELS
    from ..evaluate.registry import suite_aggregates

    labels = LABELS.get(suite, {})
    out = {GROUP_PREFIX + n: labels.get(n, n) for n in suite_aggregates(suite)}
    out["average"] = labels.get("average", "Average")
    return out
