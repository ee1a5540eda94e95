"""The curation ops (``semdedup``, ``decontaminate``) measured against the embedded world's truth.

The world plants copies and records them in ``POOL/truth/*.parquet``: ``duplicate_of`` (the uid of
the pool row a row copies; ``duplicate_kind`` exact or near) and ``eval_copy`` (the eval-set image
``task:id`` a row copies; ``eval_copy_kind``).

* semdedup: a removal (uid, the uid it matched) is *right* when both rows are in one planted group
  (a source and its copies); precision = right / removed, recall = right / planted copies (the
  ideal removes every copy and keeps one row of each group).
* decontaminate: a flagged row (uid, its nearest eval image) is right when that image is the one it
  copies; precision = right / flagged, recall = right / eval copies.

The ops' own tables give every threshold without recomputing anything: the default row is what the
filter run removed (``duplicates.parquet``, ``contamination.parquet``); the sweep reads the
candidates the ops record down to their ``sweep_floor`` (``matches.parquet``, ``nearest.parquet``)
with the ops' own rules (:func:`~datacomp.filters.ops.semdedup.is_duplicate`,
:func:`~datacomp.filters.ops.decontaminate.is_contaminated`). :func:`world_curves` finds them in a
work directory's filter sidecars; :func:`curation_section` is the report's section;
``bench/curation.py`` prints the same curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import html as H
from . import plots

THRESHOLDS = (0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995)  # the sweep (cosine)
OPS = {  # op -> (what it does to a row, its default table and its pair column, its sweep table and pair column)
    "semdedup": ("removed", ("duplicates", "kept_uid"), ("matches", "match_uid")),
    "decontaminate": ("flagged", ("table", "eval_id"), ("nearest", "eval_id")),
}
KINDS = ("exact", "near")


@dataclass(frozen=True)
class CopyTruth:
    """The planted copies of one world (uid -> ...)."""

    group: dict[str, str]             # every row -> its planted group: the uid it copies, else its own
    duplicate_kind: dict[str, str]    # each planted duplicate -> exact | near | "" (not recorded)
    eval_copy: dict[str, str]         # each eval copy -> 'task:image id'
    eval_copy_kind: dict[str, str]    # each eval copy -> exact | near | ""

    def planted(self, op: str) -> dict[str, int]:
        """The planted copies an op should find: total and per kind."""
        kinds = self.duplicate_kind if op == "semdedup" else self.eval_copy_kind
        vals = list(kinds.values())
        return {"total": len(vals), **{k: vals.count(k) for k in KINDS}}


def load_copy_truth(pool: Path) -> CopyTruth | None:
    """The pool's planted copies, or None (no ``truth/``, or a truth without the copy columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(pool) / "truth").glob("*.parquet"))
    if not files:
        return None
    names = set(pq.read_schema(files[0]).names)
    if not {"uid", "duplicate_of", "eval_copy"} <= names:
        return None
    cols = [c for c in ("uid", "duplicate_of", "duplicate_kind", "eval_copy", "eval_copy_kind") if c in names]
    t = pa.concat_tables([pq.read_table(p, columns=cols) for p in files])
    col = {c: t.column(c).to_pylist() for c in cols}
    n = t.num_rows
    dkind = col.get("duplicate_kind") or [None] * n
    ekind = col.get("eval_copy_kind") or [None] * n
    return CopyTruth(
        group={u: (d or u) for u, d in zip(col["uid"], col["duplicate_of"])},
        duplicate_kind={u: k or "" for u, d, k in zip(col["uid"], col["duplicate_of"], dkind) if d},
        eval_copy={u: e for u, e in zip(col["uid"], col["eval_copy"]) if e},
        eval_copy_kind={u: k or "" for u, e, k in zip(col["uid"], col["eval_copy"], ekind) if e})


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def dedup_scores(pairs: Sequence[tuple[str, str]], truth: CopyTruth) -> dict[str, Any]:
    """Precision and recall of removals (uid, the uid it matched) against the planted duplicates;
    ``right_exact`` / ``right_near``: right removals by the kind of the copy in the pair."""
    planted = truth.planted("semdedup")
    right = {k: 0 for k in ("total", *KINDS)}
    for u, k in pairs:
        g = truth.group.get(u)
        if g is not None and g == truth.group.get(k):
            right["total"] += 1
            kind = truth.duplicate_kind.get(u) or truth.duplicate_kind.get(k)
            if kind in right:
                right[kind] += 1
    n = len(pairs)
    return {"removed": n, "right": right["total"], "planted": planted["total"],
            "precision": _ratio(right["total"], n), "recall": _ratio(right["total"], planted["total"]),
            **{f"right_{k}": right[k] for k in KINDS}}


def contamination_scores(flags: Sequence[tuple[str, str]], truth: CopyTruth) -> dict[str, Any]:
    """Precision and recall of flagged rows (uid, the 'task:image id' it matched) against the eval copies."""
    planted = truth.planted("decontaminate")
    right = {k: 0 for k in ("total", *KINDS)}
    for u, e in flags:
        if e is not None and truth.eval_copy.get(u) == e:
            right["total"] += 1
            kind = truth.eval_copy_kind.get(u)
            if kind in right:
                right[kind] += 1
    n = len(flags)
    return {"flagged": n, "right": right["total"], "copies": planted["total"],
            "precision": _ratio(right["total"], n), "recall": _ratio(right["total"], planted["total"]),
            **{f"right_{k}": right[k] for k in KINDS}}


def _rule(op: str):
    if op == "semdedup":
        from ..filters.ops.semdedup import is_duplicate

        return is_duplicate
    from ..filters.ops.decontaminate import is_contaminated

    return is_contaminated


def _score(op: str, pairs: Sequence[tuple[str, str]], truth: CopyTruth) -> dict[str, Any]:
    return dedup_scores(pairs, truth) if op == "semdedup" else contamination_scores(pairs, truth)


@dataclass
class Curve:
    """One op's precision and recall along its threshold sweep (rows in threshold order; the row
    ``default`` is the filter run's own output)."""

    op: str
    label: str
    threshold: float
    floor: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> str:
        return OPS[self.op][0]


def op_curve(op: str, default: dict[str, list], sweep: dict[str, list], threshold: float, floor: float,
             truth: CopyTruth, label: str | None = None, thresholds: Sequence[float] = THRESHOLDS) -> Curve:
    """The curve from the op's tables as columns (``default``: what the run removed or flagged,
    ``sweep``: its candidates at or above ``floor``, with ``similarity``): one row per threshold of
    ``thresholds`` at or above the floor, and the run's own at ``threshold``."""
    _, (_, dcol), (_, scol) = OPS[op]
    rule = _rule(op)
    rows = [{**_score(op, list(zip(default["uid"], default[dcol])), truth), "threshold": float(threshold),
             "default": True}]
    sims = np.asarray(sweep["similarity"], np.float32)
    pairs = list(zip(sweep["uid"], sweep[scol]))
    for t in thresholds:
        if t < floor or math.isclose(t, threshold, rel_tol=0, abs_tol=1e-12):
            continue
        chosen = [pairs[i] for i in np.flatnonzero(rule(sims, t))]
        rows.append({**_score(op, chosen, truth), "threshold": float(t), "default": False})
    rows.sort(key=lambda r: r["threshold"])
    return Curve(op=op, label=label or op, threshold=float(threshold), floor=float(floor), rows=rows)


# ---- a work directory's filter runs -----------------------------------------------------------------

def _locate(recorded: Any, pool: Path) -> Path | None:
    """A table a sidecar names: where it was written, else at the default score cache of ``pool``
    (a relative path, or a work directory copied elsewhere)."""
    if not isinstance(recorded, str) or not recorded:
        return None
    p = Path(recorded)
    if p.is_absolute() and p.is_file():
        return p
    alt = pool / "cache" / "globals" / p.parent.name / p.name
    return alt if alt.is_file() else None


def curation_steps(side: dict[str, Any]) -> list[tuple[str, str]]:
    """(op, global-value prefix) of each semdedup / decontaminate step of a filter sidecar's recipe."""
    steps = ((side.get("resolved") or {}).get("steps")) or []
    return [(s["op"], str(s.get("output") or s["op"])) for s in steps if isinstance(s, dict) and s.get("op") in OPS]


def _columns(path: Path, names: Sequence[str]) -> dict[str, list]:
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=list(names))
    return {c: t.column(c).to_pylist() for c in names}


def world_curves(world, truth: CopyTruth, notes: list[str]) -> list[Curve]:
    """Every semdedup / decontaminate step of the world's filter runs, as curves (one per distinct
    pair of tables; recipes that share them share the curve). What cannot be read is a note."""
    found: dict[tuple[str, str], tuple[str, dict[str, Any], str, list[str]]] = {}
    for recipe in world.recipes():
        side = world.filter_sidecar(recipe) or {}
        g = side.get("globals") or {}
        sidecar = world.root / "subsets" / f"{recipe}.json"
        for op, prefix in curation_steps(side):
            _, (dkey, _), (skey, _) = OPS[op]
            dpath, spath = _locate(g.get(f"{prefix}_{dkey}"), world.pool), _locate(g.get(f"{prefix}_{skey}"), world.pool)
            if dpath is None or spath is None or f"{prefix}_sweep_floor" not in g:
                notes.append(f"{sidecar}: its {op} step has no sweep table ({skey}.parquet: a filter run made before "
                             f"the ops recorded one, or its score cache is gone); re-run the filter with --overwrite "
                             f"for its precision-recall curve")
                continue
            key = (str(dpath), str(spath))
            if key in found:
                found[key][3].append(recipe)
            else:
                found[key] = (op, g, prefix, [recipe])
    import pyarrow as pa

    curves = []
    for (dpath, spath), (op, g, prefix, recipes) in found.items():
        _, (_, dcol), (_, scol) = OPS[op]
        try:
            default = _columns(Path(dpath), ["uid", dcol])
            sweep = _columns(Path(spath), ["uid", scol, "similarity"])
        except (OSError, KeyError, pa.ArrowException) as e:
            notes.append(f"{spath}: cannot read the {op} tables ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "no precision-recall curve for it")
            continue
        label = f"{op} ({', '.join(recipes)})"
        curves.append(op_curve(op, default, sweep, float(g[f"{prefix}_threshold"]), float(g[f"{prefix}_sweep_floor"]),
                               truth, label))
    return sorted(curves, key=lambda c: (c.op, c.label))


# ---- the report's section ------------------------------------------------------------------------------

def _f(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def _planted(truth: CopyTruth, op: str) -> str:
    p = truth.planted(op)
    what = "duplicates of other pool rows" if op == "semdedup" else "copies of eval-set test images"
    return f"{p['total']:,} {what} ({p['exact']:,} exact, {p['near']:,} near)"


def curation_section(b, world, idx: int, which: str) -> str:
    """The report's "Curation ops against the world's truth" for one world (``b``: the build, for its
    figures and notes); empty when the world has no truth or no semdedup / decontaminate run."""
    if not any(curation_steps(world.filter_sidecar(r) or {}) for r in world.recipes()):
        return ""
    truth = load_copy_truth(world.pool)
    if truth is None:
        return ""
    curves = world_curves(world, truth, b.notes)
    if not curves:
        return ""
    ops = sorted({c.op for c in curves})
    body, classes = [], []
    for c in curves:
        for r in c.rows:
            body.append([c.label, f"{r['threshold']:g}" + (" (default)" if r["default"] else ""), f"{r[c.count]:,}",
                         f"{r['right']:,}", f"{r['right_exact']:,}", f"{r['right_near']:,}", _f(r["precision"]),
                         _f(r["recall"])])
            classes.append("default" if r["default"] else "")
    src = b.plot(plots.pr_curves, f"e{idx}-curation-pr.svg",
                 [(c.label, [(r["recall"], r["precision"], r["default"]) for r in c.rows]) for c in curves])
    planted = "; ".join(_planted(truth, op) for op in ops)
    return "\n".join(p for p in [
        H.heading(3, f"Curation ops against the world's truth{which}"),
        H.para(f"Planted in this world (POOL/truth/): {planted}. semdedup removes a row when its best earlier match "
               "in its k-means cluster has cosine > threshold; a removal is right when both rows are one planted "
               "group. decontaminate flags a row when its nearest eval image has cosine ≥ threshold; right when that "
               "is the image it copies. Precision: right / removed (flagged); recall: right / planted. The default "
               "row is the filter run's own output; the other thresholds come from the candidates the op recorded "
               "down to its sweep floor (matches.parquet, nearest.parquet)."),
        H.figure(src, "Precision against recall along each op's threshold sweep (the star: the default threshold).",
                 "curation precision-recall") if src else "",
        H.table(["op (recipes)", "threshold (cosine)", "removed / flagged", "right", "right: exact copies",
                 "right: near copies", "precision", "recall"], body, classes)] if p)
