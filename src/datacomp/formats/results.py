"""``eval_results.jsonl``: one JSON object per task, appended as each task finishes.

A line is what the reference's evaluate.py writes,
``{"key": <task key>, "dataset": <display name>, "metrics": {..., "main_metric": <float|null>}}``,
plus ``"registry_version"`` beside ``metrics`` (the reference's readers ignore extra keys).

Appends are atomic per line: the whole line is written with one call, then flushed and fsynced.
A crash can still leave a torn last line (no trailing newline / not JSON); ``read_results``
ignores it and, with ``repair=True``, rewrites the file atomically without it. A malformed line
anywhere else is a FormatError.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .atomic import write_text

log = logging.getLogger(__name__)

RESULTS_NAME = "eval_results.jsonl"


def validate_result(row: Any, where: str = "result") -> dict[str, Any]:
    """Check one result object; returns it. Raises FormatError naming ``where``."""
    if not isinstance(row, dict):
        raise FormatError(f"{where}: a result must be a JSON object")
    for k in ("key", "dataset", "metrics"):
        if k not in row:
            raise FormatError(f"{where}: result lacks '{k}'")
    if not isinstance(row["key"], str) or not row["key"]:
        raise FormatError(f"{where}: 'key' must be a non-empty string")
    m = row["metrics"]
    if not isinstance(m, dict) or "main_metric" not in m:
        raise FormatError(f"{where}: task {row['key']}: 'metrics' must be an object with 'main_metric'")
    mm = m["main_metric"]
    if mm is not None and (not isinstance(mm, (int, float)) or isinstance(mm, bool) or math.isnan(mm)):
        raise FormatError(f"{where}: task {row['key']}: main_metric must be a number or null, got {mm!r}")
    return row


def result_line(row: dict[str, Any]) -> str:
    validate_result(row)
    try:
        return json.dumps(row, allow_nan=False, default=_default) + "\n"
    except (ValueError, TypeError) as e:
        raise FormatError(f"task {row['key']}: result is not plain JSON ({e})") from None


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _parse_line(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{where}: malformed result line ({str(e).splitlines()[0][:200]})") from None
    return validate_result(obj, where)


def read_results(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """Every result in file order ([] if the file does not exist).

    A torn last line (unparsable, or cut before its newline) is ignored, and removed from the
    file when ``repair``; a complete last line that only lacks its newline is kept (``repair``
    adds the newline). A malformed line before the last one raises FormatError.
    """
    return read_results_torn(path, repair)[0]


def read_results_torn(path: str | os.PathLike, repair: bool = False) -> tuple[list[dict[str, Any]], int]:
    """:func:`read_results` and how many bytes of a torn last line it ignored (0: none)."""
    p = Path(path)
    if not p.is_file():
        return [], 0
    data = p.read_bytes()
    parts = data.split(b"\n")
    complete, tail = parts[:-1], parts[-1]  # tail = bytes after the last newline
    rows: list[dict[str, Any]] = []
    keep = len(data)  # bytes to keep on repair
    pos = 0
    last_content = max((i for i, r in enumerate(complete) if r.strip()), default=-1)
    for i, raw in enumerate(complete):
        if raw.strip():
            try:
                rows.append(_parse_line(raw, f"{p}:{i + 1}"))
            except FormatError:
                if i == last_content and not tail.strip():
                    keep = pos  # torn last line that happens to end with a newline
                    break
                raise
        pos += len(raw) + 1
    if tail.strip() and keep == len(data):
        try:
            rows.append(_parse_line(tail, f"{p}:{len(complete) + 1}"))
        except FormatError:
            keep = pos
    if keep < len(data):
        log.warning("%s: ignoring a torn last line (%d bytes)", p, len(data) - keep)
        if repair:
            write_text(p, data[:keep].decode("utf-8", errors="replace"))
    elif repair and tail.strip():
        write_text(p, data.decode("utf-8") + "\n")
    return rows, len(data) - keep


def append_result(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one result line: a single write, flush and fsync."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = result_line(row).encode("utf-8")
    with open(p, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def done_keys(rows: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in rows}


def latest_by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last result of each task (a re-evaluated task supersedes earlier lines)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[r["key"]] = r
    return out
