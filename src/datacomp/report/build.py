"""``datacomp report WORKDIR [WORKDIR...] --out DIR``: one static page, ``DIR/index.html``, with
the results, the published baselines, plots, the filter funnel, ground truth, the curation ops'
precision and recall against the world's truth (semdedup, decontaminate) and sample grids.

Figures go to ``DIR/plots/*.svg`` and thumbnails to ``DIR/samples/``; files a previous build
left there that this one did not write are removed. Every file is written atomically, and the
same inputs give byte-identical files (no dates, fixed order, fixed sampling).
What is missing or unreadable in the inputs is listed on the page and returned as notes, one
line each; the page holds everything the inputs do allow.

The stage's lifecycle is :class:`datacomp.formats.stage.StageOutput`: its parameters are the work
directories and the sample count, its input the state of every file under the work directories
(small files by content, larger ones by size and mtime, run.json by its seed; the report
directory itself excluded). Unchanged inputs reuse the finished
report; changed ones rebuild it in place (files are replaced atomically, stale ones removed);
a report directory built with other parameters is refused unless ``overwrite``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatacompError
from ..formats.atomic import write_text
from ..formats.guard import file_records
from ..formats.manifest import Manifest
from ..formats.stage import StageOutput
from . import html as H
from . import plots
from .chance import chance_results
from .collect import Experiment, World, collect
from .curation import curation_section
from .rows import GROUP_PREFIX, group_labels, result_row
from .samples import load_pool_table, pick, sample_cards, thumbnails, uid_order
from .tables import column_header, format_cell, registry_order
from .truth import KIND_LABELS, composition, kept_mask, load_truth

log = logging.getLogger(__name__)

PAPER_SCALES = ("small", "medium")
PAPER_METRICS = (("imagenet", GROUP_PREFIX + "imagenet"), ("imagenet_dist_shifts", GROUP_PREFIX + "dist_shift"),
                 ("vtab", GROUP_PREFIX + "vtab"), ("retrieval", GROUP_PREFIX + "retrieval"), ("avg38", "average"))
FUNNEL_TERMS = (
    ("marginal", "rows that fail this rule on its own, whatever the other rules say: how strict the rule is."),
    ("sequential", "rows this rule removes among those that passed every earlier rule, in the recipe's order: "
                   "what the rule adds to the ones before it (the sequential counts add up to the rows removed)."),
)


STAGE = "report"


class Report(Manifest):
    """The report stage's manifest, read as what the page is: its index, notes and build time."""

    @property
    def index(self) -> Path:
        return Path(self.extra["index"])

    @property
    def notes(self) -> list[str]:
        return list(self.extra.get("notes") or [])

    @property
    def seconds(self) -> float:
        return float(self.timings.get("total", 0.0))


class _Build:
    def __init__(self, out: Path, n_samples: int):
        self.out = out
        self.n_samples = n_samples
        self.written: set[Path] = set()
        self.notes: list[str] = []

    def plot(self, fn, name: str, *args) -> str | None:
        path = self.out / "plots" / name
        try:
            got = fn(*args, path)
        except ValueError as e:  # a figure the data cannot make (e.g. no finite value) is a note, not a failure
            self.notes.append(f"{name}: figure not drawn ({e})")
            return None
        if got is None:
            return None
        self.written.add(path)
        return f"plots/{name}"


def _tasks(rows: list[dict[str, Any]]) -> list[str]:
    order = registry_order()
    keys = {k for r in rows for k in r if k in order}
    return sorted(keys, key=order.__getitem__)


def _results_section(b: _Build, exp: Experiment, idx: int) -> str:
    rows = exp.rows
    if not rows:
        return H.para("No evaluated runs: nothing to tabulate yet.")
    tasks = _tasks(rows)
    groups = group_labels(exp.suite)
    evalsets = exp.worlds[0].pool / "evalsets" if exp.worlds else None
    try:
        chance = result_row("chance", chance_results(tasks, evalsets), groups=True)
    except DatacompError as e:
        b.notes.append(f"{e}; no chance row")
        chance = None
    several = any(r.get("seeds", 1) > 1 for r in rows)
    cols = ["recipe", "seeds", "dataset_size", *groups, *tasks]
    header = [groups.get(c) or ("subset size" if c == "dataset_size" else column_header(c)) for c in cols]
    body = [[format_cell(c, r) for c in cols] for r in rows]
    classes = [""] * len(rows)
    if chance is not None:
        body.append(["chance", "", ""] + [format_cell(c, chance) for c in cols[3:]])
        classes.append("chance")
    text = ("Mean ± sample std (ddof=1) over the seeds column's count of worlds. " if several else "") + \
        "Group columns average their tasks as the reference's aggregate script does; per-task columns show each task's main metric."
    parts = [H.heading(3, "Results"), H.para(text), H.table(header, body, classes)]
    avg = chance.get("average") if chance else None
    figs = [(b.plot(plots.average_vs_size, f"e{idx}-average-vs-size.svg", rows, avg),
             "Suite average against subset size, one point per recipe (error bars: std over seeds).", "average vs size"),
            (b.plot(plots.per_task_bars, f"e{idx}-per-task.svg", rows, [(t, column_header(t)) for t in tasks]),
             "Each task's main metric per recipe.", "per-task bars")]
    parts += [H.figure(src, cap, alt) for src, cap, alt in figs if src]
    return "\n".join(parts)


def _published_section(exp: Experiment) -> str:
    from ..config import load_scale
    from .published import load_published
    from .ranking import spearman

    scale_name = exp.scale
    if not scale_name or not exp.rows:
        return ""
    try:
        embedded = load_scale(scale_name).embedded
    except ConfigError:
        return H.para(f"Scale '{scale_name}' is not a known scale: no published baselines to compare with.")
    published = load_published()
    src = "DataComp paper (resources/published/table3.yaml: Table 3, clip_score_b32_30 from Tables 25/26)"
    if not embedded:
        paper = [p for p in published if p.scale == scale_name]
        if not paper:
            return H.para(f"The paper publishes no baselines at scale '{scale_name}'.")
        header = ["source", "recipe", "size"] + [lab for lab in ("ImageNet", "ImageNet dist. shifts", "VTAB",
                                                                   "Retrieval", "Average (38)")]
        body, classes = [], []
        for r in exp.rows:
            body.append(["yours", r["recipe"], format_cell("dataset_size", r)] +
                        [format_cell(col, r) for _, col in PAPER_METRICS])
            classes.append("")
        for p in paper:
            body.append([f"paper ({p.table})", f"{p.baseline} [{p.recipe}]",
                         "-" if p.dataset_size is None else f"{p.dataset_size:,}"] +
                        ["-" if getattr(p, m) is None else f"{getattr(p, m):.3f}" for m, _ in PAPER_METRICS])
            classes.append("paper")
        return "\n".join([H.heading(3, f"Published baselines at scale '{scale_name}'"),
                          H.para(f"Your rows beside the paper's at the same scale. Source: {src}."),
                          H.table(header, body, classes)])
    ours = {r["recipe"]: r["average"] for r in exp.rows if r.get("average") is not None}
    body = []
    for s in PAPER_SCALES:
        table = {p.recipe: p.avg38 for p in published if p.scale == s and p.avg38 is not None}
        names = [n for n in ours if n in table]
        rho = spearman([ours[n] for n in names], [table[n] for n in names]) if len(names) >= 3 else None
        body.append([s, str(len(names)), "-" if rho is None else f"{rho:+.2f}", ", ".join(names) or "-"])
    return "\n".join([
        H.heading(3, "Published baselines: does this world rank them as the paper does?"),
        H.para("Spearman's rank correlation between your recipes' averages and the paper's Avg (38) over the "
               f"recipes both have (at least 3 needed; +1 = the same order). Source: {src}."),
        H.table(["paper scale", "recipes", "Spearman ρ", "recipes compared"], body)])


def _loss_section(b: _Build, exp: Experiment, idx: int) -> str:
    seed = min((r.seed for r in exp.runs), default=None)
    curves = {r.recipe: plots.parse_loss(r.run_dir / "out.log") for r in exp.runs if r.seed == seed}
    src = b.plot(plots.loss_curves, f"e{idx}-loss.svg", curves)
    if not src:
        return ""
    which = f" (seed {seed})" if len({r.seed for r in exp.runs}) > 1 else ""
    return H.figure(src, f"Training loss per recipe from the runs' open_clip logs (out.log){which}.", "loss curves")


def _world_sections(b: _Build, exp: Experiment, world: World, idx: int) -> str:
    parts: list[str] = []
    which = f" — seed {world.seed}'s world" if len(exp.worlds) > 1 else ""
    recipes = world.recipes()
    # funnel
    removed = {}
    for r in recipes:
        side = world.filter_sidecar(r) or {}
        if side.get("removed_by"):
            removed[r] = [x for x in side["removed_by"] if isinstance(x, dict) and "rule" in x]
    if removed:
        src = b.plot(plots.funnel, f"e{idx}-funnel.svg", removed)
        body = [[r, x["rule"], f"{x.get('marginal', 0):,}", f"{x.get('sequential', 0):,}"]
                for r, xs in removed.items() for x in xs]
        parts += [H.heading(3, f"Filter funnel{which}"), H.explain(FUNNEL_TERMS),
                  H.figure(src, "Rows removed by each rule of each recipe.", "filter funnel") if src else "",
                  H.table(["recipe", "rule", "marginal", "sequential"], body)]
    pool = load_pool_table(world.pool)
    truth = load_truth(world.pool)
    if pool is None:
        b.notes.append(f"{world.pool}: pool not found (no metadata/*.parquet); no score histograms or sample grids")
    kept: dict[str, np.ndarray] = {}
    for r in recipes:
        if not world.subset(r).is_file():
            b.notes.append(f"{world.subset(r)}: subset missing; '{r}' has no histogram, truth or samples")
        elif pool is not None:
            kept[r] = kept_mask(pool.pairs, world.subset(r))
    # score histograms
    if pool is not None and kept:
        scores = {name: pool.columns[col].astype(float) for col, name in
                  (("clip_l14_similarity_score", "L/14 score"), ("clip_b32_similarity_score", "B/32 score"))
                  if col in pool.columns}
        src = b.plot(plots.score_histograms, f"e{idx}-scores.svg", scores, kept)
        if src:
            parts += [H.heading(3, f"Score distributions, kept vs dropped{which}"),
                      H.figure(src, "CLIP score histograms of the rows each recipe keeps (blue) and drops (orange).",
                               "score histograms")]
    # ground truth
    if truth is not None:
        comps = {"(pool)": composition(truth, np.ones(len(truth), dtype=bool))}
        for r in recipes:
            if world.subset(r).is_file():
                comps[r] = composition(truth, kept_mask(truth.pairs, world.subset(r)))
        parts.append(_truth_table(comps, which))
        src = b.plot(plots.composition_bars, f"e{idx}-truth.svg", comps, KIND_LABELS)
        if src:
            parts.append(H.figure(src, "What each subset is made of, by caption kind and image kind.", "composition"))
    parts.append(curation_section(b, world, idx, which))
    # samples
    if pool is not None and kept:
        parts.append(_samples_section(b, world, pool, truth, kept, idx, which))
    return "\n".join(p for p in parts if p)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _truth_table(comps: dict[str, dict[str, Any]], which: str) -> str:
    caption_kinds: list[str] = []
    image_kinds: list[str] = []
    for c in comps.values():
        caption_kinds += [k for k in c["caption_kind"] if k not in caption_kinds]
        image_kinds += [k for k in c["image_kind"] if k not in image_kinds]
    header = (["subset", "rows", "clean precision", "clean recall"]
              + [f"caption: {KIND_LABELS.get(k, k)}" for k in caption_kinds]
              + [f"image: {KIND_LABELS.get(k, k)}" for k in image_kinds] + ["duplicates", "eval copies"])
    body = []
    for name, c in comps.items():
        n = c["kept"]
        body.append([name, f"{n:,}", _pct(c["clean_precision"]), _pct(c["clean_recall"])]
                    + [f"{c['caption_kind'].get(k, 0):,}" for k in caption_kinds]
                    + [f"{c['image_kind'].get(k, 0):,}" for k in image_kinds]
                    + [f"{c['duplicates']:,}", f"{c['eval_copies']:,} / {c['pool_eval_copies']:,}"])
    return "\n".join([
        H.heading(3, f"Ground truth: what each subset is made of{which}"),
        H.para("From the embedded world's hidden truth (POOL/truth/). Clean precision: share of the subset that is "
               "clean pairs; clean recall: share of the pool's clean pairs the subset keeps. Counts are rows of the "
               "subset; eval copies: kept rows whose image copies an eval-set image / all such rows in the pool."),
        H.table(header, body)])


def _samples_section(b: _Build, world: World, pool, truth, kept: dict[str, np.ndarray], idx: int, which: str) -> str:
    order = uid_order(pool.pairs)
    picks = {r: pick(order, m, b.n_samples) for r, m in kept.items()}
    wanted = {pool.uids[i] for k, d in picks.values() for i in (*k, *d)}
    rel = f"samples/e{idx}"
    thumbs = thumbnails(world.pool, wanted, b.out / rel, rel)
    b.written |= {b.out / p for p in thumbs.values()}
    if wanted - set(thumbs):
        b.notes.append(f"{world.pool / 'shards'}: {len(wanted - set(thumbs))} of {len(wanted)} sampled images "
                       "not found in the pool's shards; their cards show no image")
    kinds = None
    if truth is not None:
        at = {u: i for i, u in enumerate(truth.uids) if u in wanted}
        by_uid = {u: f"{KIND_LABELS.get(truth.caption_kind[i], truth.caption_kind[i])} caption, "
                     f"{KIND_LABELS.get(truth.image_kind[i], truth.image_kind[i])} image" for u, i in at.items()}
        kinds = {i: by_uid[u] for i, u in enumerate(pool.uids) if u in by_uid}
    parts = [H.heading(3, f"Samples{which}"),
             H.para(f"For each recipe the first {b.n_samples} kept and {b.n_samples} dropped pool rows in uid order "
                    "(uids are hashes: an unbiased, reproducible sample); scores are the pool's CLIP scores.")]
    for r, (k, d) in picks.items():
        cards_k = sample_cards(pool, k, kinds)
        cards_d = sample_cards(pool, d, kinds)
        for c in cards_k + cards_d:
            c["thumb"] = thumbs.get(c["uid"])
        for c, why in zip(cards_d, _reasons(b, world, pool, r, d)):
            c["why"] = why
        parts += [H.heading(4, f"{r}: kept"), H.grid(cards_k, "kept"), H.heading(4, f"{r}: dropped"),
                  H.grid(cards_d, "dropped")]
    return "\n".join(parts)


def _reasons(b: _Build, world: World, pool, recipe: str, rows: list[int]) -> list[str | None]:
    """The rule that dropped each row (None where the recipe has no rules: a pseudo-recipe)."""
    from ..filters.explain import explain_rows

    side = world.filter_sidecar(recipe) or {}
    if not rows or not (side.get("resolved") or {}).get("keep") and not side.get("removed_by"):
        return [None] * len(rows)
    try:
        why = explain_rows(world.pool, side, pool.by_shard(rows))
    except DatacompError as e:
        b.notes.append(f"{world.root / 'subsets' / (recipe + '.json')}: cannot say which rule dropped each sample ({e})")
        return [None] * len(rows)
    located = [(stem, i) for i_pool in rows for stem, ii in pool.by_shard([i_pool]).items() for i in ii]
    return [why.get(loc) for loc in located]


def _experiment(b: _Build, exp: Experiment, idx: int) -> str:
    seeds = sorted({w.seed for w in exp.worlds} or {r.seed for r in exp.runs})
    desc = [f"scale {exp.scale or 'unknown'}", f"{len(exp.rows)} evaluated recipe(s)"]
    if exp.worlds:
        desc.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    parts = [H.heading(2, exp.label, f"e{idx}"), H.para("; ".join(desc))]
    parts += [_results_section(b, exp, idx), _published_section(exp), _loss_section(b, exp, idx)]
    if exp.worlds:
        parts.append(_world_sections(b, exp, exp.worlds[0], idx))
    return "\n".join(p for p in parts if p)


def _remove_stale(out: Path, written: set[Path]) -> None:
    for sub, ext in (("plots", ".svg"), ("samples", ".png")):
        d = out / sub
        if d.is_dir():
            for p in sorted(d.rglob(f"*{ext}")):
                if p not in written:
                    p.unlink()


SMALL_INPUT = 1 << 20  # bytes; larger inputs (shards, checkpoints) count by size and mtime


def inputs_digest(workdirs: list[Path], out: Path) -> str:
    """Every file under ``workdirs`` but ``out`` (what the report reads from): its name and content
    (up to SMALL_INPUT bytes) or size and mtime (larger), run.json by its seed."""
    h = hashlib.sha256()
    skip = out.resolve()
    for w in sorted(p.resolve() for p in workdirs):
        for d, dirs, files in os.walk(w):
            dirs[:] = sorted(x for x in dirs if Path(d, x).resolve() != skip)
            for f in sorted(files):
                try:
                    st = os.stat(os.path.join(d, f))
                except OSError:
                    continue
                rel = os.path.relpath(os.path.join(d, f), w)
                if f == "run.json":  # rewritten by every run (its timings); the report reads its seed only
                    try:
                        seed = json.loads(Path(d, f).read_text()).get("seed")
                    except (OSError, ValueError, AttributeError):
                        seed = "unreadable"
                    h.update(f"{rel}:seed={seed}\n".encode())
                    continue
                if st.st_size <= SMALL_INPUT:  # tables, manifests, eval results: by content, so a rewrite of the same bytes is no change
                    try:
                        h.update(f"{rel}:{hashlib.sha256(Path(d, f).read_bytes()).hexdigest()}\n".encode())
                        continue
                    except OSError:
                        pass
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_report(workdirs: list[str | Path], out: str | Path, n_samples: int = 8, overwrite: bool = False) -> Report:
    """Build ``out/index.html`` from every run under ``workdirs``; -> its manifest (index, notes)."""
    t0 = time.time()
    out = Path(out)
    dirs = [Path(w) for w in workdirs]
    params = {"workdirs": [str(w.resolve()) for w in dirs], "samples": int(n_samples)}
    life = StageOutput(STAGE, out, params, inputs={"tree": inputs_digest(dirs, out)}, overwrite=overwrite,
                       replace="aside")
    done = life.begin()
    if done is not None:  # what is not the report's own is still removed
        _remove_stale(out, {out / p for p in done.extra.get("files") or {}})
        return Report(**{f.name: getattr(done, f.name) for f in fields(Manifest)})
    coll = collect(dirs)
    b = _Build(out, n_samples)
    b.notes += coll.notes
    sections = [_experiment(b, e, i) for i, e in enumerate(coll.experiments)]
    lead = ("Inputs: " + ", ".join(str(w) for w in workdirs) +
            ". Built by `datacomp report`; static, offline, every figure and thumbnail beside this file.")
    body = [H.notes(b.notes, "Missing or unusable inputs (the rest of the report is built from what there is):")]
    if not coll.experiments:
        body.append(H.para("No runs were found under the given directories."))
    body += sections
    index = out / "index.html"
    write_text(index, H.page("DataComp report", lead, body))
    b.written.add(index)
    _remove_stale(out, b.written)
    rep = Report(stage=STAGE, params=params, counts={"experiments": len(coll.experiments), "files": len(b.written)},
                 timings={"total": round(time.time() - t0, 3)},
                 extra={"index": str(index), "notes": b.notes,
                        "files": file_records(out, [str(p.relative_to(out)) for p in b.written])})
    life.finish(rep)
    return rep
