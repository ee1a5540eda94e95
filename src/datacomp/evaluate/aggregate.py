"""Suite scores from eval_results.jsonl, as the reference's aggregate_scores.py computes them.

datacomp suite: rows whose main_metric is null are dropped; exactly the 38 scored tasks must
remain for an "Average (38)"; ImageNet = imagenet1k; ImageNet dist. shifts = mean of the 6 shift
sets; VTAB = mean of 13; Retrieval = mean of Flickr, MSCOCO, WinoGAViL; Average = plain mean.
synth suite: the same groups over the synth tasks (concepts; style + clutter shifts; retrieval;
attributes count + position) and the plain mean over all of them.

With tasks missing, no group or average is reported under its own name: the value is None and a
``partial_*`` entry says over how many tasks it was taken (``strict=True`` raises instead).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from statistics import fmean
from typing import Any, Iterable

from ..errors import ConfigError, InputError
from ..formats.results import latest_by_key, read_results
from .registry import SUITES, load_registry, load_tasks, suite_aggregates, suite_of

log = logging.getLogger(__name__)

# reference aggregate_scores.py labels (datacomp) and the synth analogues
LABELS = {
    "datacomp": {"imagenet": "ImageNet", "dist_shift": "ImageNet dist. shifts", "vtab": "VTAB",
                 "retrieval": "Retrieval", "average": "Average"},
    "synth": {"imagenet": "Concepts", "dist_shift": "Concept shifts", "vtab": "Long tail",
              "retrieval": "Retrieval", "fairness": "Worst group", "other": "Attributes", "average": "Average"},
}


def _infer_suite(keys: Iterable[str]) -> str:
    known = {t.key for t in load_registry().tasks}
    counts = {s: 0 for s in SUITES}
    for k in keys:
        if k in known:
            counts[suite_of(k)] += 1
    if counts["datacomp"] and counts["synth"]:
        log.warning("results hold both suites; aggregating the larger one (use suite=...)")
    return "datacomp" if counts["datacomp"] > counts["synth"] else "synth"


def aggregate(
    results: list[dict[str, Any]] | str | os.PathLike, suite: str | None = None, strict: bool = False
) -> dict[str, Any]:
    """Suite scores. ``results`` = result rows or an eval_results.jsonl path.

    Returns ``{"suite", "registry_version", "complete", "n_tasks", "n_expected", "missing",
    <aggregate>: value | None ..., "average": value | None, "partial": {...}, "labels": {...}}``;
    for the datacomp suite also ``"reference"``: the reference script's printed names -> values.
    """
    if isinstance(results, (str, os.PathLike)):
        results = read_results(Path(results))
    rows = latest_by_key(list(results))
    suite = suite or _infer_suite(rows)
    if suite not in SUITES:
        raise ConfigError(f"unknown task suite '{suite}' (known: {', '.join(SUITES)})")
    scored = [t for t in load_tasks(suite) if t.scored]
    values: dict[str, float] = {}
    for t in scored:
        r = rows.get(t.key)
        mm = r["metrics"].get("main_metric") if r else None
        if mm is not None:
            values[t.key] = float(mm)
    missing = [t.key for t in scored if t.key not in values]
    complete = not missing
    if strict and not complete:
        raise InputError(
            f"{suite} suite: an average needs all {len(scored)} scored tasks, {len(values)} have a main metric "
            f"(missing: {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''})"
        )
    out: dict[str, Any] = {
        "suite": suite,
        "registry_version": load_registry().version,
        "complete": complete,
        "n_tasks": len(values),
        "n_expected": len(scored),
        "missing": missing,
    }
    partial: dict[str, Any] = {}
    for name, groups in suite_aggregates(suite).items():
        members = [t.key for t in scored if t.group in groups]
        have = [values[k] for k in members if k in values]
        full = len(have) == len(members) and members
        out[name] = fmean(have) if full else None
        if not full and have:
            partial[name] = {"value": fmean(have), "n": len(have), "of": len(members)}
    out["average"] = fmean(values.values()) if complete and values else None
    if not complete and values:
        partial["average"] = {"value": fmean(values.values()), "n": len(values), "of": len(scored)}
    out["partial"] = partial
    labels = dict(LABELS.get(suite, {}))
    labels["average"] = f"Average ({len(scored)})" if suite == "datacomp" else f"Average ({len(scored)} tasks)"
    out["labels"] = labels
    if suite == "datacomp":
        out["reference"] = {LABELS["datacomp"][k]: out.get(k) for k in ("imagenet", "dist_shift", "vtab", "retrieval", "average")}
    return out


def describe(agg: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) pairs; incomplete values say 'partial, n/N'."""
    out = []
    for key, label in agg.get("labels", {}).items():
        v = agg.get(key)
        if v is not None:
            out.append((label, f"{v:.3f}"))
        elif key in agg.get("partial", {}):
            p = agg["partial"][key]
            base = label.split(" (")[0]
            out.append((f"{base} (partial, {p['n']}/{p['of']})", f"{p['value']:.3f}"))
        else:
            out.append((label, "-"))
    return out
