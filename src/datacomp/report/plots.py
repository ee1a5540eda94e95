"""The report's figures (matplotlib, SVG): the same inputs give the same bytes.

Every figure is written with a fixed ``svg.hashsalt`` (the ids matplotlib puts in an SVG), no
date in its metadata and text kept as text (``svg.fonttype: none``), so re-running the report on
unchanged inputs rewrites identical files.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..formats.atomic import write_bytes

STYLE = {"svg.hashsalt": "datacomp-report", "svg.fonttype": "none", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 96}
KEPT, DROPPED = "#2c7fb8", "#d95f0e"
LOSS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?\bLoss: ([0-9.]+)")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as SVG atomically, without a date, and close it."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "datacomp"}, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _figure(w: float, h: float):
    """A new figure (call inside :func:`_style`)."""
    return _plt().figure(figsize=(w, h))


def _style():
    return _plt().rc_context(STYLE)


def average_vs_size(rows: list[dict[str, Any]], chance: float | None, path: Path) -> Path | None:
    """The paper's figure: suite average against subset size, one point per recipe (± std over seeds)."""
    pts = [r for r in rows if r.get("average") is not None and r.get("dataset_size")]
    if not pts:
        return None
    with _style():
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        for i, r in enumerate(pts):
            ax.errorbar(r["dataset_size"], r["average"], yerr=r.get("average_std") or 0, fmt="o",
                        color=f"C{i % 10}", capsize=3, label=r["recipe"])
            ax.annotate(r["recipe"], (r["dataset_size"], r["average"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1)
            ax.annotate("chance", (ax.get_xlim()[0], chance), textcoords="offset points", xytext=(2, 2),
                        fontsize=7, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("subset size (samples, log scale)")
        ax.set_ylabel("average over the suite")
        ax.grid(alpha=0.3)
        return save(fig, path)


def per_task_bars(rows: list[dict[str, Any]], tasks: Sequence[tuple[str, str]], path: Path) -> Path | None:
    """One group of bars per task (``(key, label)``), one bar per recipe, std as error bars."""
    rows = [r for r in rows if any(r.get(k) is not None for k, _ in tasks)]
    if not rows or not tasks:
        return None
    with _style():
        fig = _figure(max(6.4, 0.25 * len(tasks) * len(rows) + 1), 4.0)
        ax = fig.add_subplot()
        width = 0.8 / len(rows)
        x = np.arange(len(tasks))
        for i, r in enumerate(rows):
            vals = [r.get(k) if r.get(k) is not None else math.nan for k, _ in tasks]
            errs = [r.get(k + "_std") or 0 for k, _ in tasks]
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, vals, width, yerr=errs, capsize=1.5,
                   color=f"C{i % 10}", label=r["recipe"], error_kw={"lw": 0.6})
        ax.set_xticks(x, [lab for _, lab in tasks], rotation=30, ha="right")
        ax.set_ylabel("main metric")
        ax.legend(fontsize=7, ncol=2, frameon=False)
        ax.grid(axis="y", alpha=0.3)
        return save(fig, path)


def parse_loss(log: Path) -> list[tuple[float, float]]:
    """(samples seen, loss) points from an open_clip training log (``out.log``)."""
    pts = []
    if not log.is_file():
        return pts
    for line in log.read_text(errors="replace").splitlines():
        m = LOSS.search(line)
        if m:
            epoch, done, total, loss = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
            pts.append((epoch * total + done, loss))
    return pts


def loss_curves(curves: dict[str, list[tuple[float, float]]], path: Path) -> Path | None:
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    with _style():
        fig = _figure(6.4, 3.6)
        ax = fig.add_subplot()
        for i, (name, pts) in enumerate(curves.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=f"C{i % 10}", lw=1.2, label=name)
        ax.set_xlabel("samples seen")
        ax.set_ylabel("contrastive loss")
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
        return save(fig, path)


def score_histograms(scores: dict[str, np.ndarray], kept: dict[str, np.ndarray], path: Path) -> Path | None:
    """Per recipe (a row of panels), per score column (a panel): histogram of kept vs dropped rows."""
    if not kept or not scores:
        return None
    cols = list(scores)
    with _style():
        fig = _figure(3.2 * len(cols), 1.7 * len(kept) + 0.4)
        axes = fig.subplots(len(kept), len(cols), squeeze=False, sharex="col")
        for i, (recipe, mask) in enumerate(kept.items()):
            for j, col in enumerate(cols):
                ax = axes[i][j]
                v = scores[col]
                bins = np.linspace(float(np.nanmin(v)), float(np.nanmax(v)), 41)
                ax.hist(v[~mask], bins=bins, color=DROPPED, alpha=0.6, label="dropped")
                ax.hist(v[mask], bins=bins, color=KEPT, alpha=0.6, label="kept")
                ax.set_title(f"{recipe}: {col}", fontsize=8, loc="left")
                ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7, frameon=False)
        fig.tight_layout()
        return save(fig, path)


def funnel(removed: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Per recipe: rows removed by each rule, marginal (rule alone) and sequential (in recipe order)."""
    removed = {k: v for k, v in removed.items() if v}
    if not removed:
        return None
    with _style():
        fig = _figure(6.4, sum(0.32 * len(v) + 0.6 for v in removed.values()) + 0.3)
        axes = fig.subplots(len(removed), 1, squeeze=False,
                            gridspec_kw={"height_ratios": [len(v) + 1 for v in removed.values()]})
        for ax, (recipe, rules) in zip(axes[:, 0], removed.items()):
            y = np.arange(len(rules))
            ax.barh(y - 0.2, [r["marginal"] for r in rules], 0.4, color="#9ecae1", label="marginal")
            ax.barh(y + 0.2, [r["sequential"] for r in rules], 0.4, color="#3182bd", label="sequential")
            ax.set_yticks(y, [r["rule"] for r in rules], fontsize=7)
            ax.invert_yaxis()
            ax.set_title(recipe, fontsize=8, loc="left")
            ax.tick_params(axis="x", labelsize=7)
        axes[0, 0].legend(fontsize=7, frameon=False)
        axes[-1, 0].set_xlabel("rows removed")
        fig.tight_layout()
        return save(fig, path)


def composition_bars(comps: dict[str, dict[str, Any]], labels: dict[str, str], path: Path) -> Path | None:
    """Stacked bars: each subset's kept rows by caption kind and by image kind (share of the subset)."""
    comps = {k: v for k, v in comps.items() if v["kept"]}
    if not comps:
        return None
    with _style():
        fig = _figure(6.8, 0.3 * len(comps) + 1.6)
        axes = fig.subplots(1, 2, sharey=True)
        names = list(comps)
        y = np.arange(len(names))
        for ax, field, title in ((axes[0], "caption_kind", "caption kind"), (axes[1], "image_kind", "image kind")):
            kinds: list[str] = []
            for c in comps.values():
                kinds += [k for k in c[field] if k not in kinds]
            left = np.zeros(len(names))
            for i, kind in enumerate(kinds):
                share = np.array([comps[n][field].get(kind, 0) / comps[n]["kept"] for n in names])
                ax.barh(y, share, left=left, color=f"C{i % 10}", label=labels.get(kind, kind))
                left += share
            ax.set_title(title, fontsize=8, loc="left")
            ax.set_xlim(0, 1)
            ax.set_xlabel("share of the subset")
            ax.legend(fontsize=6, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
        axes[0].set_yticks(y, names, fontsize=7)
        axes[0].invert_yaxis()
        fig.tight_layout()
        return save(fig, path)


def pr_curves(curves: Sequence[tuple[str, Sequence[tuple[float, float, bool]]]], path: Path) -> Path | None:
    """Precision against recall, one line per ``(label, [(recall, precision, is_default), ...])`` in
    threshold order; the default threshold's point is a star. Points without a precision (nothing
    removed) are left out."""
    lines = [(label, [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]) for label, pts in curves]
    lines = [(label, pts) for label, pts in lines if pts]
    if not lines:
        return None
    with _style():
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        for i, (label, pts) in enumerate(lines):
            color = f"C{i % 10}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, lw=1.2, ms=3.5, label=label)
            for r, pr, default in pts:
                if default:
                    ax.plot([r], [pr], "*", color=color, ms=12, mec="black", mew=0.6)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("recall (right / planted copies)")
        ax.set_ylabel("precision (right / removed or flagged)")
        ax.legend(fontsize=7, frameon=False, loc="best")
        ax.grid(alpha=0.3)
        return save(fig, path)
