"""Results tables: one row per recipe, one column per task's main metric, plus the average.

A row is ``{"recipe": str, "dataset_size": int, <task key>: main_metric | None, ..., "average": float | None}``;
other keys (e.g. ``resharded``) are kept as extra columns after ``dataset_size``.
``results.md`` names task columns by the registry's short names and prints metrics with three
decimals; ``results.csv`` keeps task keys as headers and full precision (for machines).
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..formats.atomic import write_text

LEAD = ("recipe", "dataset_size")
TAIL = ("average",)


def _task_short(key: str) -> str | None:
    from ..evaluate.registry import get_task

    try:
        return get_task(key).short
    except ConfigError:
        return None


def _registry_order() -> dict[str, int]:
    from ..evaluate.registry import load_tasks

    return {t.key: i for i, t in enumerate(load_tasks())}


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """recipe, dataset_size, other non-task keys, task keys in registry order, average."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    order = _registry_order()
    tasks = sorted((k for k in keys if k in order), key=order.__getitem__)
    unknown_metric = [k for k in keys if k not in order and "/" in k]  # unregistered task keys
    extra = [k for k in keys if k not in order and k not in LEAD and k not in TAIL and k not in unknown_metric]
    lead = [k for k in LEAD if k in keys or k == "recipe"]
    return lead + extra + tasks + unknown_metric + list(TAIL)


def _header(col: str) -> str:
    if col == "dataset_size":
        return "size"
    return _task_short(col) or col


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if col in ("dataset_size", "resharded") else str(v)
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cols = table_columns(rows)
    header = [_header(c) for c in cols]
    body = [[_fmt(c, r.get(c)) for c in cols] for r in rows]
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
    cols = table_columns(rows)
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
