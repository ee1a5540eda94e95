"""Fidelity of the embedded world: does it rank DataComp's baselines the way the paper does?

    .venv/bin/python bench/fidelity.py [--scale synth_demo] [--seeds 0,1,2] [--workdir DIR]
                                       [--workers 2] [--recipes a,b,...] [--record]

Runs the whole loop (``datacomp run``, :func:`datacomp.run.run_seeds`) for the eight DataComp
baselines plus the two reference subsets, ``oracle`` (the world's clean pairs: the ceiling) and
``random_basic`` (random, basic_filter's size: the floor), on one world per seed, then prints:

* per recipe: the keep fraction (subset / pool, mean over seeds), what the subset is made of
  according to the world's hidden truth (share of clean pairs, share of the pool's clean pairs
  kept; mean over seeds), the suite average as mean ±
  sample std (ddof=1) over seeds, its rank among the recipes run (1 = best mean), and the
  paper's Avg (38) and rank at small and medium scale (``resources/published/table3.yaml``:
  Table 3; ``clip_score_b32_30`` from Tables 25/26);
* Spearman's rank correlation between the eight baselines' mean averages and the paper's Avg (38)
  at small and at medium (tie-aware: average ranks; medium has a tie at 0.328), also per seed; and,
  to say which scale the world behaves like, at large and xlarge (xlarge: the five baselines it ran);
* the gaps the paper's ordering rests on, no_filter < basic_filter < clip_score_l14_30, and the
  brackets random_basic < basic_filter and clip_score_l14_30 < oracle. A gap is the mean over
  seeds of the paired difference ``average(b) - average(a)`` in the same world; σ is the sample
  std (ddof=1) of that per-seed difference (the seed-to-seed spread of the gap itself, not a
  standard error); a gap *holds* when it exceeds 2σ. With one seed there is no σ and only the
  sign is reported;
* when ``english_only`` / ``english_caption_length`` ran too (``--recipes``), what basic_filter's
  rules are worth on the world (its average minus theirs, paired over seeds) beside the paper's
  (Tables 3, 25-27: on CommonPool the image rules are worth about nothing);
* per teacher, the fraction of each world's pool at or above each of Table 16's CLIP-score
  thresholds beside CommonPool's (``resources/published/table16.yaml``): the score scale is fitted
  to two anchors, the other rows check the rest of the distribution;
* the wall time of this invocation.

Resumable: the work directory (default /tmp/datacomp-fidelity/<scale>) keeps every finished
stage, so a re-run after a kill, or with more seeds, computes only what is missing. ``--record``
appends a dated section (machine: nproc, load average, Python) to bench/RESULTS.md.
Measured on the 2-core machine with the default ``--jobs`` (two trainings at once), synth_demo and
3 seeds: 1,852 s for the default 10 recipes, 280 s more for ``english_only`` and
``english_caption_length`` (bench/RESULTS.md, 2026-12-06, student at batch 128; 2,562 s for all 12
at batch 64).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from datacomp.report.ranking import rankdata, spearman  # noqa: F401  (re-exported)
from datacomp.report.truth import truth_composition  # noqa: F401  (re-exported)

BASELINES = ("no_filter", "basic_filter", "text_based", "image_based", "laion2b", "clip_score_b32_30",
             "clip_score_l14_30", "image_based_clip_score_l14_30")
REFERENCES = ("oracle", "random_basic")
PAPER_SCALES = ("small", "medium", "large", "xlarge")  # ρ against each (xlarge ran 5 of the 8 baselines)
TABLE_SCALES = ("small", "medium")  # the paper's columns in the table (the targets)
GAPS = (("no_filter", "basic_filter", "ordering"), ("basic_filter", "clip_score_l14_30", "ordering"),
        ("random_basic", "basic_filter", "bracket"), ("clip_score_l14_30", "oracle", "bracket"))
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
TEACHER_NAMES = {"b32": "B/32", "l14": "L/14"}  # score column clip_{key}_similarity_score
# What basic_filter's rules are worth (paper Tables 25-27): basic_filter against itself without its
# image rules, and without its caption-length rules too. Reported when both recipes of a pair ran.
RULE_PAIRS = (("english_caption_length", "basic_filter", "image size + aspect"),
              ("english_only", "basic_filter", "caption length + image size + aspect"))


# ---- pure functions -----------------------------------------------------------------------------

def _std(values: Sequence[float]) -> float | None:
    from datacomp.report.tables import sample_std

    return sample_std(values)


def seed_averages(per_seed: dict[int, list[dict[str, Any]]]) -> dict[str, dict[int, float]]:
    """recipe -> {seed: average} (seeds whose average is None are left out)."""
    out: dict[str, dict[int, float]] = {}
    for seed, rows in per_seed.items():
        for r in rows:
            if r.get("average") is not None:
                out.setdefault(r["recipe"], {})[seed] = float(r["average"])
    return out


def fidelity_rows(per_seed: dict[int, list[dict[str, Any]]], pool_size: int,
                  published: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per recipe (first seed's order): keep fraction, mean/std average, our rank, the paper's.

    ``published`` maps a paper scale to ``{recipe: Avg (38)}``. Ranks: 1 = best, ties averaged;
    ours among every recipe with an average, the paper's among the recipes it has at that scale.
    """
    recipes: list[str] = []
    for rows in per_seed.values():
        recipes += [r["recipe"] for r in rows if r["recipe"] not in recipes]
    avgs = seed_averages(per_seed)
    sizes: dict[str, list[float]] = {}
    for rows in per_seed.values():
        for r in rows:
            sizes.setdefault(r["recipe"], []).append(r["dataset_size"] / pool_size)
    out: list[dict[str, Any]] = []
    for rec in recipes:
        vals = list(avgs.get(rec, {}).values())
        out.append({"recipe": rec, "seeds": len(vals),
                    "keep": sum(sizes[rec]) / len(sizes[rec]),
                    "average": sum(vals) / len(vals) if vals else None,
                    "average_std": _std(vals)})
    scored = [r for r in out if r["average"] is not None]
    for r, rank in zip(scored, rankdata([-r["average"] for r in scored])):
        r["rank"] = rank
    for scale, table in published.items():
        names = [r["recipe"] for r in out if r["recipe"] in table]
        ranks = dict(zip(names, rankdata([-table[n] for n in names])))
        for r in out:
            r[f"paper_{scale}"] = table.get(r["recipe"])
            r[f"paper_{scale}_rank"] = ranks.get(r["recipe"])
    return out


def add_composition(rows: list[dict[str, Any]], seed_dirs: Sequence[Path]) -> None:
    """Mean clean share / recall over the seeds into each row (keys absent where no truth)."""
    for r in rows:
        comp = [c for d in seed_dirs if (c := truth_composition(d, r["recipe"])) is not None]
        if comp:
            r["clean_share"] = sum(c["clean_share"] for c in comp) / len(comp)
            r["clean_recall"] = sum(c["clean_recall"] for c in comp) / len(comp)


def score_checks(seed_dirs: Sequence[Path], thresholds: Sequence[Any]) -> list[dict[str, Any]]:
    """Per Table 16 row: the fraction of each seed's pool whose teacher score is >= its threshold.

    The world's score scale is fitted to two anchors per teacher; the other rows test whether the
    whole distribution looks like OpenAI CLIP's on CommonPool. A seed whose pool has no metadata yet is
    skipped; a row without a score (NaN) never passes, as in the filters."""
    import numpy as np

    from datacomp.formats.pool import list_parquets, read_metadata

    scores: list[dict[str, np.ndarray]] = []
    for d in seed_dirs:
        parquets = list_parquets(Path(d) / "pool") if (Path(d) / "pool" / "metadata").is_dir() else []
        if not parquets:
            continue
        cols = {a: [] for a in TEACHER_NAMES}
        for p in parquets:
            t = read_metadata(p, [f"clip_{a}_similarity_score" for a in cols])
            for a in cols:
                cols[a].append(t.column(f"clip_{a}_similarity_score").to_numpy(zero_copy_only=False))
        scores.append({a: np.concatenate(v).astype(np.float64) for a, v in cols.items()})
    out = []
    for th in thresholds:
        per = [float(np.mean(np.nan_to_num(s[th.arch], nan=-np.inf) >= th.threshold)) for s in scores]
        if per:
            out.append({"arch": th.arch, "threshold": th.threshold, "keep_paper": th.keep,
                        "keep": sum(per) / len(per), "per_seed": per})
    return out


def rank_correlations(per_seed: dict[int, list[dict[str, Any]]], published: dict[str, dict[str, float]],
                      baselines: Sequence[str] = BASELINES) -> dict[str, dict[str, Any]]:
    """Per paper scale: Spearman's rho of the baselines' mean averages, and of each seed's, against the paper's."""
    avgs = seed_averages(per_seed)
    out: dict[str, dict[str, Any]] = {}
    for scale, table in published.items():
        names = [b for b in baselines if b in table and b in avgs and len(avgs[b]) == len(per_seed)]
        mean = [sum(avgs[b].values()) / len(avgs[b]) for b in names]
        paper = [table[b] for b in names]
        out[scale] = {"n": len(names), "recipes": names, "rho": spearman(mean, paper),
                      "per_seed": {s: spearman([avgs[b][s] for b in names], paper) for s in per_seed}}
    return out


def gap_checks(per_seed: dict[int, list[dict[str, Any]]], pairs=GAPS) -> list[dict[str, Any]]:
    """For each (a, b, kind): the mean paired gap average(b) - average(a) over the seeds that ran
    both, σ = sample std of the per-seed gaps, holds = gap > 2σ (one seed: gap > 0, no σ)."""
    avgs = seed_averages(per_seed)
    out = []
    for a, b, kind in pairs:
        if a not in avgs or b not in avgs:
            continue
        seeds = [s for s in per_seed if s in avgs[a] and s in avgs[b]]
        if not seeds:
            continue
        d = [avgs[b][s] - avgs[a][s] for s in seeds]
        gap = sum(d) / len(d)
        sigma = _std(d)
        out.append({"a": a, "b": b, "kind": kind, "seeds": len(d), "gap": gap, "sigma": sigma,
                    "two_sigma": None if sigma is None else 2 * sigma,
                    "holds": gap > 0 if sigma is None else gap > 2 * sigma,
                    "positive_seeds": sum(x > 0 for x in d)})
    return out


def rule_checks(per_seed: dict[int, list[dict[str, Any]]], published: dict[str, dict[str, float]],
                pairs=RULE_PAIRS) -> list[dict[str, Any]]:
    """For each (without, with, rules) pair that ran in every seed: the world's paired gap
    ``average(with) - average(without)`` and its seed σ (:func:`gap_checks`), beside the paper's gap
    at each scale that publishes both recipes (None where it does not)."""
    out = []
    for g in gap_checks(per_seed, pairs):
        if g["seeds"] < len(per_seed):
            continue
        lo, hi = g["a"], g["b"]
        out.append({"without": lo, "with": hi, "rules": g["kind"], "seeds": g["seeds"], "gap": g["gap"],
                    "sigma": g["sigma"],
                    "paper": {sc: (t[hi] - t[lo] if lo in t and hi in t else None) for sc, t in published.items()}})
    return out


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _rank(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f}" if v == int(v) else f"{v:.1f}")


def format_report(scale: str, seeds: Sequence[int], rows: list[dict[str, Any]], corr: dict[str, dict[str, Any]],
                  gaps: list[dict[str, Any]], wall_s: float, checks: Sequence[dict[str, Any]] = (),
                  rules: Sequence[dict[str, Any]] = ()) -> str:
    """The report as Markdown (printed, and appended to RESULTS.md by --record)."""
    from datacomp.evaluate.registry import load_tasks

    n_tasks = sum(t.main_metric is not None for t in load_tasks("synth"))
    lines = [f"Scale `{scale}`, seeds {','.join(map(str, seeds))}; average = mean of the world's {n_tasks} task scores; "
             "± = sample std over seeds (ddof=1); rank 1 = best.", ""]
    head = ["recipe", "seeds", "keep", "clean share", "clean recall", "average", "rank"]
    shown = [s for s in corr if s in TABLE_SCALES]
    for s in shown:
        head += [f"paper {s} Avg(38)", f"paper {s} rank"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in sorted(rows, key=lambda r: (r.get("rank") is None, r.get("rank") or 0)):
        avg = _f(r["average"]) + ("" if r["average_std"] is None else f" ± {r['average_std']:.3f}")
        comp = [f"{100 * r[k]:.0f}%" if k in r else "-" for k in ("clean_share", "clean_recall")]
        cells = [r["recipe"], str(r["seeds"]), f"{100 * r['keep']:.1f}%", *comp, avg, _rank(r.get("rank"))]
        for s in shown:
            cells += [_f(r.get(f"paper_{s}")), _rank(r.get(f"paper_{s}_rank"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for s, c in corr.items():
        per = ", ".join(f"seed {k}: {_f(v, '.2f')}" for k, v in c["per_seed"].items())
        lines.append(f"- Spearman ρ vs the paper's {s} Avg (38), {c['n']} baselines: **{_f(c['rho'], '.2f')}** "
                     f"(per seed: {per})")
    lines.append("")
    lines.append("Gaps (mean over seeds of the paired difference b − a in the same world; σ = sample std of "
                 "that per-seed difference; holds = gap > 2σ):")
    lines.append("")
    lines += ["| a < b | kind | gap | 2σ | b > a in seeds | holds |", "|---|---|---:|---:|---:|---|"]
    for g in gaps:
        two = _f(g["two_sigma"]) if g["two_sigma"] is not None else "n/a (1 seed: sign only)"
        lines.append(f"| {g['a']} < {g['b']} | {g['kind']} | {g['gap']:+.3f} | {two} | "
                     f"{g['positive_seeds']}/{g['seeds']} | {'yes' if g['holds'] else 'no'} |")
    if rules:
        lines += ["", "What basic_filter's rules are worth (its average minus that of basic_filter without them; "
                  "the paper's from Tables 3 and 25-27, '-' where a scale lacks a row):", "",
                  "| rules | world gap ± σ | " + " | ".join(f"paper {s}" for s in TABLE_SCALES) + " |",
                  "|---|---:|" + "---:|" * len(TABLE_SCALES)]
        for r in rules:
            sig = "" if r["sigma"] is None else f" ± {r['sigma']:.3f}"
            paper = " | ".join("-" if r["paper"].get(s) is None else f"{r['paper'][s]:+.3f}" for s in TABLE_SCALES)
            lines.append(f"| {r['rules']} ({r['without']} → {r['with']}) | {r['gap']:+.3f}{sig} | {paper} |")
    if checks:
        lines += ["", "Teacher scores against Table 16 (fraction of the pool with a score ≥ the threshold; "
                  "the fit's anchors: B/32 median 0.247 and LAION-2B's rule, L/14 0.243 and 0.129):", "",
                  "| teacher | threshold | CommonPool keeps | world keeps | per seed |", "|---|---:|---:|---:|---|"]
        for c in checks:
            per = " / ".join(f"{100 * v:.1f}%" for v in c["per_seed"])
            lines.append(f"| {TEACHER_NAMES[c['arch']]} | {c['threshold']:.3f} | "
                         f"{100 * c['keep_paper']:.0f}% | {100 * c['keep']:.1f}% | {per} |")
    lines += ["", f"Wall time of this invocation: {wall_s:.0f} s (stages finished by earlier invocations are reused)."]
    return "\n".join(lines) + "\n"


def machine_line(load_start: tuple[float, float, float], load_end: tuple[float, float, float]) -> str:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # as `nproc`
    return (f"Machine: nproc {nproc}, {platform.machine()} {platform.system()}, Python "
            f"{platform.python_version()}; load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} "
            f"at the start, {'/'.join(f'{x:.1f}' for x in load_end)} at the end.")


def record_section(path: Path, title: str, machine: str, body: str) -> None:
    """Append ``## title``, the machine line and ``body`` to a results file (bench/RESULTS.md)."""
    from datacomp.formats.atomic import write_text

    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    write_text(path, old.rstrip("\n") + "\n" + f"\n## {title}\n\n{machine}\n\n{body}")


def record(path: Path, title_time: datetime, machine: str, report: str) -> None:
    record_section(path, f"Fidelity to the paper's baseline ranking (`bench/fidelity.py`), "
                         f"{title_time.strftime('%Y-%m-%d %H:%M UTC')}", machine, report)


# ---- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="synth_demo", help="an embedded scale (default %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one world each (default %(default)s)")
    ap.add_argument("--recipes", default=",".join(BASELINES + REFERENCES), help="default: the eight baselines, oracle, random_basic")
    ap.add_argument("--workdir", help="work directory (default /tmp/datacomp-fidelity/<scale>); reused on a re-run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="trainings at once (datacomp run --jobs; default one per core, at most 4)")
    ap.add_argument("--record", action="store_true", help=f"append a dated section to {RESULTS_MD}")
    a = ap.parse_args(argv)

    import logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from datacomp.config import load_scale
    from datacomp.errors import DatacompError
    from datacomp.report.published import load_score_thresholds, published_metric
    from datacomp.run import parse_seeds, run_seeds

    try:
        seeds = parse_seeds(a.seeds)
        scale = load_scale(a.scale)
        recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
        workdir = Path(a.workdir) if a.workdir else Path("/tmp/datacomp-fidelity") / scale.name
        published = {s: published_metric(s) for s in PAPER_SCALES}
        started = datetime.now(timezone.utc)
        load_start = os.getloadavg()
        t0 = time.time()
        res = run_seeds(scale, workdir, recipes, seeds, workers=a.workers, echo=False, jobs=a.jobs)
        wall = time.time() - t0
    except DatacompError as e:
        print(f"fidelity: error: {e}", file=sys.stderr)
        return e.exit_code
    rows = fidelity_rows(res.per_seed, int(scale.pool_size), published)
    from datacomp.run import seed_dir

    dirs = [seed_dir(workdir, s, len(seeds)) for s in seeds]
    add_composition(rows, dirs)
    report = format_report(scale.name, seeds, rows, rank_correlations(res.per_seed, published),
                           gap_checks(res.per_seed), wall, score_checks(dirs, load_score_thresholds()),
                           rule_checks(res.per_seed, published))
    print()
    print(report)
    print(f"work directory: {workdir} (tables: {res.paths['results_md']})")
    if a.record:
        record(RESULTS_MD, started, machine_line(load_start, os.getloadavg()), report)
        print(f"recorded in {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
