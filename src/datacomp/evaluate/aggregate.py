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


def infer_suite(keys: Iterable[str]) -> str:
    """The suite most of these task keys belong to ('datacomp' or 'synth')."""
    return _infer_suite(keys)


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


def aggregate_file(path: str | os.PathLike, suite: str | None = None, strict: bool = False) -> dict[str, Any]:
    """:func:`aggregate` of one results file (ours or the reference's) plus what ``datacomp aggregate`` shows.

    Adds ``file``; ``lines`` (result lines read) and ``superseded`` (earlier lines of a task
    evaluated again: the latest counts); ``unscored`` (tasks outside the suite's scored set that
    carry a main metric); ``fairness_tables`` (the FairFace / UTKFace tables of the lines present,
    :mod:`datacomp.evaluate.fairness_tables`) and ``notes``: one line each for what would make
    the reference's ``aggregate_scores.py`` (which counts every line with a main metric and
    asserts 38) read the file differently, and for fairness lines that lack a table's keys.
    ``strict``: an InputError naming the file unless all scored tasks are present.
    """
    from ..errors import FormatError
    from .fairness_tables import RACES, fairness_tables

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: results file does not exist" if not p.exists() else f"{p}: not a file")
    rows = read_results(p)
    if not rows:
        raise FormatError(f"{p}: holds no results")
    latest = latest_by_key(rows)
    try:
        agg = aggregate(list(latest.values()), suite=suite, strict=strict)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
    scored = {t.key for t in load_tasks(agg["suite"]) if t.scored}
    notes: list[str] = []
    superseded = len(rows) - len(latest)
    if superseded:
        notes.append(f"{superseded} earlier line(s) of re-evaluated tasks superseded by later ones; the reference's "
                     "aggregate_scores.py counts every line")
    unscored = [k for k, r in latest.items() if k not in scored and r["metrics"].get("main_metric") is not None]
    if unscored:
        notes.append(f"{len(unscored)} task(s) outside the {agg['suite']} suite's scored set carry a main metric, not "
                     f"averaged here (the reference's script would count them): {', '.join(unscored[:5])}"
                     f"{'...' if len(unscored) > 5 else ''}")
    fair: dict[str, Any] = {}
    for key in RACES:
        if key in latest:
            try:
                fair[key] = {"dataset": latest[key]["dataset"],
                             "tables": fairness_tables(latest[key]["metrics"], key, f"{p}: {key}")}
            except FormatError as e:
                if strict:
                    raise
                notes.append(f"{e}; no fairness tables for it")
    agg.update(file=str(p), lines=len(rows), superseded=superseded, unscored=unscored, fairness_tables=fair,
               notes=notes)
    return agg


def format_aggregate(agg: dict[str, Any]) -> str:
    """Text for one file: a header line, then ``<label>: <value>`` lines (for a complete datacomp
    file exactly the lines the reference's aggregate_scores.py prints), the missing tasks, notes
    and the fairness tables."""
    from .fairness_tables import format_tables

    lines = [f"{agg['file']}: {agg['suite']} suite, {agg['n_tasks']} of {agg['n_expected']} scored tasks"
             + ("" if agg["complete"] else " (incomplete)")]
    if agg["suite"] == "datacomp" and agg["complete"]:
        lines += [f"{label}: {value:.3f}" for label, value in agg["reference"].items()]
    else:
        lines += [f"{label}: {value}" for label, value in describe(agg)]
    if agg["missing"]:
        lines.append(f"missing ({len(agg['missing'])}): {', '.join(agg['missing'])}")
    lines += [f"note: {n}" for n in agg.get("notes", ())]
    for key, f in agg.get("fairness_tables", {}).items():
        lines += ["", f"{f['dataset']} ({key})", format_tables(f["tables"]).rstrip("\n")]
    return "\n".join(lines) + "\n"
