"""``datacomp leaderboard``: every evaluated run under some directories, ranked per scale and track.

Runs are found as the report finds them (:mod:`datacomp.report.collect`: ``datacomp run`` work
directories, one seed or ``seed-N/``, and run directories holding ``eval_results.jsonl``). One
row per recipe of a work directory (mean ± sample std over its seeds) or per run directory, with
the suite's group scores, its average (the 38-task average, or the embedded suite's), how many
scored tasks it rests on, the subset size, the samples seen and the date of the evaluation. The
scale is the train manifest's (else the run's ``info.json``; else ``unknown``, with a note).

Rows are grouped into sections by (scale, track) and ranked inside a section by the average;
a row without an average (tasks missing) ranks last. The track is ``byod`` when the training data
came from a ``datacomp byod`` pool or mixed several sources, ``filtering`` otherwise. At a reference
scale the paper's baselines (``resources/published/table3.yaml``) and the released checkpoints'
ImageNet figures (``released_checkpoints.yaml``) are reference rows, unranked, in their place.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..formats.results import RESULTS_NAME
from .collect import Experiment, Run, collect
from .rows import GROUP_PREFIX, group_labels

log = logging.getLogger(__name__)

TRACKS = ("filtering", "byod")
KINDS = ("run", "paper", "released")
STD = "_std"
EVAL_MANIFEST = "eval_results.manifest.json"


@dataclass
class Section:
    scale: str
    track: str
    suite: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        from ..evaluate.registry import suite_aggregates

        return list(suite_aggregates(self.suite))


@dataclass
class Leaderboard:
    sections: list[Section]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"sections": [{"scale": s.scale, "track": s.track, "suite": s.suite, "rows": s.rows}
                             for s in self.sections], "notes": self.notes}


# ---------------------------------------------------------------- discovery


def _json(path: Path, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if path not in cache:
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            obj = {}
        cache[path] = obj if isinstance(obj, dict) else {}
    return cache[path]


def _track(run: Run, exp: Experiment, cache: dict[Path, dict[str, Any]]) -> str:
    """byod if the run's data came from a byod pool or several sources; filtering otherwise."""
    m = _json(run.run_dir / "manifest.json", cache)
    if len((m.get("extra") or {}).get("sources") or []) > 1:
        return "byod"
    pools = [w.pool for w in exp.worlds]
    for shards in (m.get("inputs") or {}):
        pool = (_json(Path(shards) / "manifest.json", cache).get("params") or {}).get("pool")
        if isinstance(pool, str):
            pools.append(Path(pool))
    return "byod" if any(_json(p / "manifest.json", cache).get("stage") == "byod" for p in pools) else "filtering"


def _info_scale(runs: list[Run], cache: dict[Path, dict[str, Any]]) -> str | None:
    """The scale the run directory's info.json names (``datacomp train`` writes it beside the manifest),
    or its info.pkl (a reference ``train.py`` run: read as plain data, never unpickling code)."""
    from ..errors import DatacompError
    from ..formats.info_pkl import read_info_pkl

    for r in runs:
        scale = _json(r.run_dir / "info.json", cache).get("scale")
        if not scale and (r.run_dir / "info.pkl").is_file():
            try:
                scale = read_info_pkl(r.run_dir / "info.pkl").get("scale")
            except DatacompError as e:
                log.warning("%s", e)
        if isinstance(scale, str) and scale:
            return scale
    return None


def _samples_seen(runs: list[Run], scale: str | None, cache: dict[Path, dict[str, Any]]) -> int | None:
    for r in runs:
        n = (_json(r.run_dir / "manifest.json", cache).get("counts") or {}).get("samples_seen")
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return _scale_samples(scale)


def _scale_samples(scale: str | None) -> int | None:
    from ..config import load_scale

    if not scale:
        return None
    try:
        return load_scale(scale).samples_seen
    except ConfigError:
        return None


def _date(runs: list[Run], cache: dict[Path, dict[str, Any]]) -> str | None:
    """UTC date of the latest evaluation (its manifest's time, else the results file's mtime)."""
    stamps = []
    for r in runs:
        created = _json(r.run_dir / EVAL_MANIFEST, cache).get("created")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            stamps.append(float(created))
            continue
        try:
            stamps.append((r.run_dir / RESULTS_NAME).stat().st_mtime)
        except OSError:
            pass
    return time.strftime("%Y-%m-%d", time.gmtime(max(stamps))) if stamps else None


def _run_rows(exp: Experiment, notes: list[str], cache: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    from ..evaluate.aggregate import infer_suite
    from ..evaluate.registry import load_tasks, suite_aggregates

    out = []
    for row in exp.rows:
        runs = [r for r in exp.runs if r.recipe == row["recipe"]]
        if not runs:
            continue
        scale = next((r.scale for r in runs if r.scale), None) or _info_scale(runs, cache) or "unknown"
        tracks = {_track(r, exp, cache) for r in runs}
        suite = infer_suite(k["key"] for r in runs for k in r.results)
        scored = [t.key for t in load_tasks(suite) if t.scored]
        entry: dict[str, Any] = {
            "scale": scale, "track": "byod" if "byod" in tracks else "filtering", "suite": suite, "rank": None,
            "kind": "run", "recipe": row["recipe"], "source": exp.label, "seeds": row.get("seeds", len(runs)),
            "dataset_size": row.get("dataset_size"), "samples_seen": _samples_seen(runs, scale, cache),
        }
        for g in suite_aggregates(suite):
            entry[g] = row.get(GROUP_PREFIX + g)
            if GROUP_PREFIX + g + STD in row:
                entry[g + STD] = row[GROUP_PREFIX + g + STD]
        entry["average"] = row.get("average")
        if "average" + STD in row:
            entry["average" + STD] = row["average" + STD]
        entry["n_tasks"] = sum(1 for k in scored if isinstance(row.get(k), (int, float)))
        entry["n_expected"] = len(scored)
        entry["date"] = _date(runs, cache)
        entry["path"] = str(runs[0].run_dir if len(runs) == 1 else exp.root)
        if scale == "unknown":
            notes.append(f"{entry['path']}: no train manifest naming the scale; ranked under scale 'unknown'")
        out.append(entry)
    return out


def _reference_rows(scale: str, suite: str, track: str, published: list, released: list) -> list[dict[str, Any]]:
    from ..evaluate.registry import load_tasks, suite_aggregates

    groups = list(suite_aggregates(suite))
    n38 = sum(1 for t in load_tasks("datacomp") if t.scored)
    seen = _scale_samples(scale)
    out = []
    base = {"scale": scale, "track": track, "suite": suite, "rank": None, "seeds": None, "samples_seen": seen}
    for p in published:
        if p.scale != scale:
            continue
        vals = {"imagenet": p.imagenet, "dist_shift": p.imagenet_dist_shifts, "vtab": p.vtab, "retrieval": p.retrieval}
        out.append({**base, "kind": "paper", "recipe": p.recipe, "source": f"paper Table {p.table}: {p.baseline}",
                    "dataset_size": p.dataset_size, **{g: vals.get(g) for g in groups}, "average": p.avg38,
                    "n_tasks": n38 if p.avg38 is not None else None, "n_expected": n38, "date": None, "path": None})
    for r in released:
        if r.scale != scale:
            continue
        out.append({**base, "kind": "released", "recipe": r.recipe, "source": f"released {r.model} {r.pretrained}",
                    "dataset_size": None, **{g: (r.imagenet if g == "imagenet" else None) for g in groups},
                    "average": None, "n_tasks": None, "n_expected": n38, "date": None, "path": None})
    return out


def _sort_key(row: dict[str, Any]) -> tuple:
    """By the average; rows without one after, by ImageNet (the released checkpoints' one figure)."""
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) else None

    avg, inet = num(row.get("average")), num(row.get("imagenet"))
    return (avg is None, -(avg if avg is not None else inet if inet is not None else -1.0), KINDS.index(row["kind"]),
            row["recipe"], row.get("source") or "")


def _section_order(sections: dict[tuple[str, str], Section]) -> list[Section]:
    from ..config import scale_names

    order = {n: i for i, n in enumerate(scale_names())}
    return [sections[k] for k in sorted(sections, key=lambda k: (order.get(k[0], len(order)), k[0], TRACKS.index(k[1])))]


def build_leaderboard(dirs: Sequence[str | Path], references: bool = True) -> Leaderboard:
    """Every evaluated run under ``dirs``, in sections per (scale, track), ranked by the average."""
    col = collect([Path(d) for d in dirs])
    notes = list(col.notes)
    cache: dict[Path, dict[str, Any]] = {}
    sections: dict[tuple[str, str], Section] = {}
    for exp in col.experiments:
        for row in _run_rows(exp, notes, cache):
            key = (row["scale"], row["track"])
            sec = sections.setdefault(key, Section(row["scale"], row["track"], row["suite"]))
            if row["suite"] != sec.suite:
                notes.append(f"{row['path']}: {row['suite']} suite results among {sec.suite} ones at scale "
                             f"{row['scale']}; left out of the leaderboard")
                continue
            sec.rows.append(row)
    refs = [s for s in sections.values() if references and s.suite == "datacomp"]
    if refs:
        from .published import load_published, load_released

        published, released = load_published(), load_released()
        for sec in refs:
            sec.rows += _reference_rows(sec.scale, sec.suite, sec.track, published, released)
    for sec in sections.values():
        sec.rows.sort(key=_sort_key)
        rank = 0
        for r in sec.rows:
            if r["kind"] == "run":
                rank += 1
                r["rank"] = rank
    return Leaderboard(sections=_section_order(sections), notes=notes)


# ---------------------------------------------------------------- output


def _labels(suite: str) -> dict[str, str]:
    """Group column labels, and the average named as the aggregate names it: "Average (38)"."""
    from ..evaluate.registry import load_tasks

    labels = group_labels(suite)
    n = sum(1 for t in load_tasks(suite) if t.scored)
    labels["average"] = f"Average ({n})" if suite == "datacomp" else f"Average ({n} tasks)"
    return labels


def _title(sec: Section) -> str:
    return f"scale {sec.scale} · {sec.track} track · ranked by {_labels(sec.suite)['average']}"


def _columns(sec: Section) -> list[tuple[str, str]]:
    labels = _labels(sec.suite)
    return ([("rank", "rank"), ("recipe", "recipe"), ("source", "from"), ("seeds", "seeds"), ("dataset_size", "size"),
             ("samples_seen", "samples seen")]
            + [(g, labels[GROUP_PREFIX + g]) for g in sec.groups]
            + [("average", labels["average"]), ("n_tasks", "tasks"), ("date", "date")])


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if key == "rank":
        return str(v) if v is not None else row["kind"]
    if key == "n_tasks":
        return f"{v}/{row['n_expected']}" if v is not None else "-"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key in ("dataset_size", "samples_seen"):
        return f"{round(v):,}"
    if isinstance(v, float):
        std = row.get(key + STD)
        return f"{v:.3f}" + (f" ± {std:.3f}" if isinstance(std, float) and not math.isnan(std) else "")
    return str(v)


def _grid(sec: Section) -> tuple[list[str], list[list[str]]]:
    cols = _columns(sec)
    return [h for _, h in cols], [[_cell(r, k) for k, _ in cols] for r in sec.rows]


def format_text(board: Leaderboard) -> str:
    """Aligned plain-text tables, one per section, for the terminal."""
    out = []
    for sec in board.sections:
        header, body = _grid(sec)
        widths = [max([len(header[i])] + [len(b[i]) for b in body]) for i in range(len(header))]
        left = {1, 2}  # recipe, from

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out += [_title(sec), line(header), "  ".join("-" * w for w in widths), *(line(b) for b in body), ""]
    if not board.sections:
        out.append("no evaluated runs found")
    return "\n".join(out).rstrip("\n") + "\n"


def format_markdown(board: Leaderboard) -> str:
    out = ["# Leaderboard", ""]
    for sec in board.sections:
        header, body = _grid(sec)
        out += [f"## {_title(sec)}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" if i in (1, 2) else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
        out.append("")
    if not board.sections:
        out.append("No evaluated runs found.")
    return "\n".join(out).rstrip("\n") + "\n"


CSV_LEAD = ("scale", "track", "suite", "rank", "kind", "recipe", "source", "seeds", "dataset_size", "samples_seen")
CSV_TAIL = ("average", "average_std", "n_tasks", "n_expected", "date", "path")


def format_csv(board: Leaderboard) -> str:
    """One flat table over every section: group columns by their registry names, ``<col>_std`` beside each."""
    groups: list[str] = []
    for sec in board.sections:
        groups += [g for g in sec.groups if g not in groups]
    cols = list(CSV_LEAD) + [c for g in groups for c in (g, g + STD)] + list(CSV_TAIL)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for sec in board.sections:
        for r in sec.rows:
            w.writerow(["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in cols])
    return buf.getvalue()


def format_json(board: Leaderboard) -> str:
    return json.dumps(board.to_json(), indent=2, allow_nan=False) + "\n"


FORMATS = {"text": format_text, "md": format_markdown, "csv": format_csv, "json": format_json}


def format_leaderboard(board: Leaderboard, fmt: str = "text") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown leaderboard format '{fmt}' (known: {', '.join(FORMATS)})")
    return FORMATS[fmt](board)


def format_html(board: Leaderboard, dirs: Sequence[str | Path]) -> str:
    """A static page (the report's HTML blocks and stylesheet): one table per section; reference rows
    in the report's 'paper' style."""
    from . import html

    body = [html.notes(board.notes, "Notes")]
    for sec in board.sections:
        header, cells = _grid(sec)
        body += [html.heading(2, _title(sec), anchor=f"{sec.scale}-{sec.track}"),
                 html.table(header, cells, classes=["" if r["kind"] == "run" else "paper" for r in sec.rows])]
    if not board.sections:
        body.append(html.para("No evaluated runs found."))
    body.append(html.explain([
        ("rank", "position among your runs in the section; paper = the DataComp paper's baseline (Table 3, or "
                 "Tables 25-28 where noted), released = the released OpenCLIP checkpoint's ImageNet top-1"),
        ("tasks", "scored tasks with a main metric; an average needs all of them"),
        ("mean ± std", "over the seeds of one recipe in a work directory (sample std, ddof=1)"),
    ]))
    n = sum(1 for s in board.sections for r in s.rows if r["kind"] == "run")
    lead = f"{n} evaluated run(s) under {', '.join(str(d) for d in dirs)}, ranked per scale and track."
    return html.page("Leaderboard", lead, body)


def write_html(board: Leaderboard, dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """``out_dir/index.html``, written atomically; -> its path."""
    from ..formats.atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    write_text(index, format_html(board, dirs))
    return index
