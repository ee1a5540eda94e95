"""The paper's published baseline results (``resources/published/table3.yaml``) as typed rows.

Used to compare what the embedded world ranks with what DataComp reported (``bench/fidelity.py``).
Each row names the paper's baseline, our recipe for it, the scale and the source table; a value
the reference does not give is ``None``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import resource_path
from ..errors import ConfigError

METRICS = ("imagenet", "imagenet_dist_shifts", "vtab", "retrieval", "avg38")
FIELDS = ("scale", "baseline", "recipe", "dataset_size", *METRICS, "table")


@dataclass(frozen=True)
class PublishedRow:
    scale: str
    baseline: str
    recipe: str
    dataset_size: int | None
    imagenet: float | None
    imagenet_dist_shifts: float | None
    vtab: float | None
    retrieval: float | None
    avg38: float | None
    table: str


def _rows(path: Path, what: str) -> list:
    """The ``rows`` list of a published-figures YAML file (one-line ConfigErrors naming it)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rows' list")
    return raw["rows"]


def published_path() -> Path:
    return resource_path("published", "table3.yaml")


def load_published(path: str | os.PathLike | None = None) -> list[PublishedRow]:
    """Every row of the published-results file (default: the bundled one), checked."""
    path = Path(path) if path is not None else published_path()
    out: list[PublishedRow] = []
    seen: set[tuple[str, str]] = set()
    for i, r in enumerate(_rows(path, "published-results"), 1):
        where = f"{path}: row {i}"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(r).__name__}")
        missing = [f for f in FIELDS if f not in r]
        unknown = [f for f in r if f not in FIELDS]
        if missing or unknown:
            raise ConfigError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        for f in ("scale", "baseline", "recipe"):
            if not isinstance(r[f], str) or not r[f]:
                raise ConfigError(f"{where}: '{f}' must be a non-empty string")
        for f in METRICS:
            v = r[f]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1
                                  or math.isnan(v)):
                raise ConfigError(f"{where}: '{f}' must be a number in [0, 1] or null, got {v!r}")
        size = r["dataset_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ConfigError(f"{where}: 'dataset_size' must be a positive integer or null, got {size!r}")
        key = (r["scale"], r["recipe"])
        if key in seen:
            raise ConfigError(f"{where}: recipe '{r['recipe']}' at scale '{r['scale']}' appears twice")
        seen.add(key)
        out.append(PublishedRow(scale=r["scale"], baseline=r["baseline"], recipe=r["recipe"], dataset_size=size,
                                **{f: (None if r[f] is None else float(r[f])) for f in METRICS}, table=str(r["table"])))
    return out


def published_metric(scale: str, metric: str = "avg38", path: str | os.PathLike | None = None) -> dict[str, float]:
    """``{recipe: value}`` of one metric at one paper scale (rows where it is given)."""
    if metric not in METRICS:
        raise ConfigError(f"unknown published metric '{metric}' (known: {', '.join(METRICS)})")
    rows = [r for r in load_published(path) if r.scale == scale]
    if not rows:
        scales = sorted({r.scale for r in load_published(path)})
        raise ConfigError(f"no published results for scale '{scale}' (known: {', '.join(scales)})")
    return {r.recipe: getattr(r, metric) for r in rows if getattr(r, metric) is not None}


# ---------------------------------------------------------------- released checkpoints

RELEASED_FIELDS = ("scale", "recipe", "model", "pretrained", "imagenet")


@dataclass(frozen=True)
class ReleasedRow:
    """One released OpenCLIP checkpoint: the baseline it was trained on and its ImageNet top-1."""

    scale: str
    recipe: str
    model: str
    pretrained: str
    imagenet: float


def released_path() -> Path:
    return resource_path("published", "released_checkpoints.yaml")


def load_released(path: str | os.PathLike | None = None) -> list[ReleasedRow]:
    """Every row of the released-checkpoints file (default: the bundled one), checked."""
    path = Path(path) if path is not None else released_path()
    out: list[ReleasedRow] = []
    for i, r in enumerate(_rows(path, "released-checkpoints"), 1):
        where = f"{path}: row {i}"
        if not isinstance(r, dict) or sorted(r) != sorted(RELEASED_FIELDS):
            raise ConfigError(f"{where}: expected exactly the fields {', '.join(RELEASED_FIELDS)}")
        for f in RELEASED_FIELDS[:4]:
            if not isinstance(r[f], str) or not r[f]:
                raise ConfigError(f"{where}: '{f}' must be a non-empty string")
        v = r["imagenet"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"{where}: 'imagenet' must be a number in [0, 1], got {v!r}")
        out.append(ReleasedRow(**{f: r[f] for f in RELEASED_FIELDS[:4]}, imagenet=float(v)))
    return out


# ---------------------------------------------------------------- score thresholds (Table 16)

@dataclass(frozen=True)
class ScoreThreshold:
    arch: str        # b32 | l14: the clip_{arch}_similarity_score column
    threshold: float
    keep: float      # fraction of CommonPool small at or above the threshold


def load_score_thresholds(path: str | os.PathLike | None = None) -> list[ScoreThreshold]:
    """Table 16's threshold -> kept-fraction rows (``resources/published/table16.yaml``), checked."""
    path = Path(path) if path is not None else resource_path("published", "table16.yaml")
    out: list[ScoreThreshold] = []
    for i, r in enumerate(_rows(path, "score-threshold"), 1):
        where = f"{path}: row {i}"
        if not isinstance(r, dict) or set(r) != {"arch", "threshold", "keep"}:
            raise ConfigError(f"{where}: expected a mapping with exactly arch, threshold, keep")
        if r["arch"] not in ("b32", "l14"):
            raise ConfigError(f"{where}: 'arch' must be b32 or l14, got {r['arch']!r}")
        for f in ("threshold", "keep"):
            v = r[f]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"{where}: '{f}' must be a number in [0, 1], got {v!r}")
        out.append(ScoreThreshold(r["arch"], float(r["threshold"]), float(r["keep"])))
    return out
