"""Results tables: one row per recipe, one column per task's main metric, plus the average.

A row is ``{"recipe": str, "dataset_size": int, <task key>: main_metric | None, ..., "average": float | None}``;
other keys (e.g. ``resharded``, ``seeds``) are kept as extra columns after ``dataset_size``
(``seed`` and ``seeds`` come right after ``recipe``).
``results.md`` names task columns by the registry's short names and prints metrics with three
decimals; ``results.csv`` keeps task keys as headers and full precision (for machines).

Rows over several seeds (:func:`aggregate_seeds`) hold each column's mean under its own key and
the sample standard deviation (ddof=1) under ``<key>_std``: Markdown and the terminal show
``mean ± std`` in one cell, CSV gives the ``<key>_std`` column right after its ``<key>`` column.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..formats.atomic import write_text

LEAD = ("recipe", "seed", "seeds", "dataset_size")
TAIL = ("average",)
STD = "_std"


def _task_short(key: str) -> str | None:
    from ..evaluate.registry import get_task

    try:
        return get_task(key).short
    except ConfigError:
        return None


def registry_order() -> dict[str, int]:
    from ..evaluate.registry import load_tasks

    return {t.key: i for i, t in enumerate(load_tasks())}


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """recipe, dataset_size, other non-task keys, task keys in registry order, average.

    ``<key>_std`` columns are not listed (they belong to ``<key>``'s cell; see :func:`csv_columns`).
    """
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    keys = [k for k in keys if not _is_std(k, keys)]
    order = registry_order()
    tasks = sorted((k for k in keys if k in order), key=order.__getitem__)
    unknown_metric = [k for k in keys if k not in order and "/" in k]  # unregistered task keys
    extra = [k for k in keys if k not in order and k not in LEAD and k not in TAIL and k not in unknown_metric]
    lead = [k for k in LEAD if k in keys or k == "recipe"]
    return lead + extra + tasks + unknown_metric + list(TAIL)


def _is_std(key: str, keys: list[str]) -> bool:
    return key.endswith(STD) and key[: -len(STD)] in keys


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`table_columns`, each followed by its ``<key>_std`` column where a row has one."""
    present = {k for r in rows for k in r}
    out: list[str] = []
    for c in table_columns(rows):
        out.append(c)
        if c + STD in present:
            out.append(c + STD)
    return out


def column_header(col: str) -> str:
    if col == "dataset_size":
        return "size"
    return _task_short(col) or col


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if col in COUNTS else str(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if col in COUNTS else f"{v:.3f}"
    return str(v)


COUNTS = ("dataset_size", "resharded")


def format_cell(col: str, row: dict[str, Any]) -> str:
    text = _fmt(col, row.get(col))
    std = row.get(col + STD)
    if text != "-" and std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {_fmt(col, float(std))}"
    return text


def _cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cols = table_columns(rows)
    header = [column_header(c) for c in cols]
    body = [[format_cell(c, r) for c in cols] for r in rows]
    return header, body


def format_markdown(rows: list[dict[str, Any]]) -> str:
    header, body = _cells(rows)
    numeric = [i > 0 for i in range(len(header))]
    sep = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table for the terminal."""
    header, body = _cells(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    return "\n".join(out)


def format_csv(rows: list[dict[str, Any]]) -> str:
    cols = csv_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (repr(r[c]) if isinstance(r.get(c), float) else r.get(c)) for c in cols])
    return buf.getvalue()


def write_results_table(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/results.md`` and ``out_dir/results.csv`` atomically; -> (md_path, csv_path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, cv = out_dir / "results.md", out_dir / "results.csv"
    write_text(md, format_markdown(rows))
    write_text(cv, format_csv(rows))
    return md, cv


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _number(v: Any) -> float | None:
    """``v`` as a float if it is a number (not a bool), else None."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def aggregate_seeds(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several seeds -> one row per recipe: mean and sample std (ddof=1) of every numeric column.

    ``per_seed`` maps a seed to its rows (one per recipe). Recipes keep the order in which they
    first appear. ``seeds`` is how many seeds have a row for the recipe: every mean and std in the
    row is over exactly those seeds, so a column that is missing (``None``, NaN) in any of them is
    ``None`` rather than a mean over fewer seeds. With one seed the row comes back as it was (ints
    stay ints, no ``<key>_std``) plus ``seeds: 1``. Non-numeric columns keep the first seed's value.
    """
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for seed in per_seed:
        for r in per_seed[seed]:
            if "recipe" not in r:
                raise ConfigError(f"seed {seed}: a results row has no 'recipe'")
            by_recipe.setdefault(r["recipe"], []).append(r)
    out: list[dict[str, Any]] = []
    for recipe, rows in by_recipe.items():
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys and k not in ("recipe", "seed", "seeds") and not k.endswith(STD)]
        agg: dict[str, Any] = {"recipe": recipe, "seeds": len(rows)}
        for k in keys:
            values = [r.get(k) for r in rows]
            if len(rows) == 1:
                agg[k] = values[0]  # one seed: the value as it was
                continue
            nums = [_number(v) for v in values]
            if any(v is None or _is_nan(v) for v in values):
                agg[k], agg[k + STD] = None, None
            elif any(v is None for v in nums):  # a text column: the first seed's value
                agg[k] = values[0]
            else:
                agg[k] = sum(nums) / len(nums)
                agg[k + STD] = sample_std(nums)
        out.append(agg)
    return out


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def per_seed_rows(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (seed, recipe), seed order then recipe order, with a ``seed`` column."""
    return [{"recipe": r["recipe"], "seed": int(seed), **{k: v for k, v in r.items() if k not in ("recipe", "seed")}}
            for seed in per_seed for r in per_seed[seed]]
