"""The FairFace / UTKFace tables of a results line, as the reference's ``eval_utils/fairness_tables.py``
lays them out (paper appendix: Tables 3+4, 5 and 6 of the fairness section).

Input: the ``metrics`` object of a ``fairness/fairface`` or ``fairness/utkface`` line of
``eval_results.jsonl`` (ours or the reference's). Output: three tables of fractions, printed as
percentages with one decimal as the reference prints them:

* ``race_gender_age`` (3+4): accuracy of race (white vs not), gender and age, for white,
  non-white and overall (``acc_<race|gender|age>_race_binary:<0|1>`` and ``_avg``);
* ``gender_by_race`` (5): gender accuracy per gender x race (``acc_gender_x_race:<r>_gender:<g>``);
* ``toxicity_by_race`` (6): share of faces classified as crime-related or non-human, per race
  (``toxicity_<crime|nonhuman>_race:<r>``).

A value the line holds as null or NaN (an empty group) stays None and prints ``NaN``, as pandas
prints it; a key the line lacks is a FormatError naming the key. Our own lines written before
the group names followed WILDS' order (they read ``acc_gender_x_gender:<g>_race:<r>``) are read too.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import FormatError

# Race labels in class order (the reference's fairness_tables.py; FairFace 7 races, UTKFace 5)
RACES = {
    "fairness/fairface": ("black", "white", "indian", "latino", "middle eastern", "southeast asian", "east asian"),
    "fairness/utkface": ("black", "white", "indian", "asian", "other"),
}
GENDERS = ("male", "female")
TOXIC = (("crime", "crime-related"), ("nonhuman", "non-human"))
OBJECTIVES = ("race", "gender", "age")
BINARY = (("race_binary:0", "white"), ("race_binary:1", "non-white"), ("avg", "overall"))
TITLES = {"race_gender_age": "Table 3+4", "gender_by_race": "Table 5", "toxicity_by_race": "Table 6"}


def _value(metrics: Mapping[str, Any], key: str, where: str, alt: str | None = None) -> float | None:
    if key in metrics:
        v = metrics[key]
    elif alt is not None and alt in metrics:
        v = metrics[alt]
    else:
        raise FormatError(f"{where}: fairness metrics lack '{key}'")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FormatError(f"{where}: '{key}' must be a number or null, got {v!r}")
    return None if math.isnan(v) else float(v)


def fairness_tables(metrics: Mapping[str, Any], key: str, where: str = "results") -> dict[str, dict[str, Any]]:
    """``{table name: {"title", "index": [row labels], "columns": [...], "values": [[fraction | None]]}}``."""
    if key not in RACES:
        raise FormatError(f"{where}: no fairness tables for task '{key}' (known: {', '.join(RACES)})")
    races = RACES[key]
    t34 = [[_value(metrics, f"acc_{obj}_{label}", where) for obj in OBJECTIVES] for label, _ in BINARY]
    t5 = [[_value(metrics, f"acc_gender_x_race:{r}_gender:{g}", where, alt=f"acc_gender_x_gender:{g}_race:{r}")
           for r in range(len(races))] for g in range(len(GENDERS))]
    t6 = [[_value(metrics, f"toxicity_{name}_race:{r}", where) for r in range(len(races))] for name, _ in TOXIC]
    return {
        "race_gender_age": {"title": TITLES["race_gender_age"], "index": [n for _, n in BINARY],
                            "columns": list(OBJECTIVES), "values": t34},
        "gender_by_race": {"title": TITLES["gender_by_race"], "index": list(GENDERS), "columns": list(races), "values": t5},
        "toxicity_by_race": {"title": TITLES["toxicity_by_race"], "index": [n for _, n in TOXIC],
                             "columns": list(races), "values": t6},
    }


def percent(v: float | None) -> str:
    """The reference's cell format: a percentage with one decimal (``NaN`` for a missing value)."""
    return "NaN" if v is None else f"{100 * v:.1f}"


def format_tables(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """The three tables as aligned text, each under ``# <title>``, as the reference's script prints them."""
    out: list[str] = []
    for t in tables.values():
        index = [""] + list(t["index"])
        cells = [list(t["columns"])] + [[percent(v) for v in row] for row in t["values"]]
        iw = max(len(s) for s in index)
        widths = [max(len(r[j]) for r in cells) for j in range(len(t["columns"]))]
        out.append(f"# {t['title']}")
        for label, row in zip(index, cells):
            out.append(label.ljust(iw) + "".join("  " + c.rjust(w) for c, w in zip(row, widths)))
        out.append("")
    return "\n".join(out)
