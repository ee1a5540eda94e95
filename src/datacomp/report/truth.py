"""What a subset is made of, from the embedded world's hidden truth (``POOL/truth/*.parquet``).

The world records, for every pool row, the kind of its caption (``english``: a matching English
caption; ``mismatched``, ``foreign``: other language, ``junk``, ``boilerplate``), the kind of its
image (``normal``, ``tiny``, ``banner``, ``textonly``), whether the pair is clean, whether it is a
duplicate of another row and whether its image is a copy of an eval-set image. A subset's
composition counts those kinds among its kept rows; precision and recall are of the clean pairs
(share of kept rows that are clean; share of the pool's clean pairs kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_KINDS = ("english", "mismatched", "foreign", "junk", "boilerplate")
IMAGE_KINDS = ("normal", "tiny", "banner", "textonly")
KIND_LABELS = {"english": "matching English", "mismatched": "mismatched", "foreign": "other language",
               "junk": "junk", "boilerplate": "boilerplate", "normal": "normal", "tiny": "tiny",
               "banner": "banner", "textonly": "text-only"}
COLUMNS = ("uid", "caption_kind", "image_kind", "clean", "duplicate_of", "eval_copy")


@dataclass(frozen=True)
class Truth:
    """The truth columns of a pool, in pool row order (shard order, then row order)."""

    uids: list[str]
    pairs: np.ndarray          # "u8,u8" uid pairs, same order
    caption_kind: np.ndarray   # str
    image_kind: np.ndarray     # str
    clean: np.ndarray          # bool
    duplicate: np.ndarray      # bool: the row duplicates another one
    eval_copy: np.ndarray      # bool: its image copies an eval-set image

    def __len__(self) -> int:
        return len(self.uids)


def truth_files(pool: Path) -> list[Path]:
    return sorted((Path(pool) / "truth").glob("*.parquet"))


def load_truth(pool: Path) -> Truth | None:
    """The pool's truth, or None when the pool has none (a downloaded pool)."""
    import pyarrow.parquet as pq

    from ..formats.uids import uids_to_pairs

    files = truth_files(pool)
    if not files:
        return None
    tables = [pq.read_table(p, columns=list(COLUMNS)) for p in files]

    def col(name: str) -> list[Any]:
        return [v for t in tables for v in t.column(name).to_pylist()]

    uids = col("uid")
    return Truth(uids=uids, pairs=uids_to_pairs(uids),
                 caption_kind=np.array(col("caption_kind"), dtype=object),
                 image_kind=np.array(col("image_kind"), dtype=object),
                 clean=np.array(col("clean"), dtype=bool),
                 duplicate=np.array([v is not None for v in col("duplicate_of")], dtype=bool),
                 eval_copy=np.array([v is not None for v in col("eval_copy")], dtype=bool))


def kept_mask(pairs: np.ndarray, subset: Path) -> np.ndarray:
    """Which of ``pairs`` (a pool's uids, in row order) the subset ``.npy`` keeps."""
    from ..formats.uids import read_subset

    return np.isin(pairs, read_subset(subset, mmap=False))


def _counts(values: np.ndarray, known: tuple[str, ...]) -> dict[str, int]:
    kinds = list(known) + sorted({str(v) for v in values} - set(known))
    return {k: int((values == k).sum()) for k in kinds}


def composition(truth: Truth, kept: np.ndarray) -> dict[str, Any]:
    """Counts of every caption and image kind among the kept rows, clean precision and recall,
    duplicates and eval copies kept (with the pool's totals beside them)."""
    n = int(kept.sum())
    clean_kept = int((truth.clean & kept).sum())
    clean_pool = int(truth.clean.sum())
    return {
        "kept": n,
        "pool": len(truth),
        "caption_kind": _counts(truth.caption_kind[kept], CAPTION_KINDS),
        "image_kind": _counts(truth.image_kind[kept], IMAGE_KINDS),
        "clean": clean_kept,
        "clean_precision": clean_kept / n if n else None,
        "clean_recall": clean_kept / clean_pool if clean_pool else None,
        "duplicates": int((truth.duplicate & kept).sum()),
        "pool_duplicates": int(truth.duplicate.sum()),
        "eval_copies": int((truth.eval_copy & kept).sum()),
        "pool_eval_copies": int(truth.eval_copy.sum()),
    }


def truth_composition(seed_dir: Path, recipe: str) -> dict[str, float] | None:
    """Share of clean pairs in one world's subset ``subsets/<recipe>.npy`` and share of the pool's
    clean pairs it keeps (None without truth, without the subset, or for an empty subset)."""
    seed_dir = Path(seed_dir)
    subset = seed_dir / "subsets" / f"{recipe}.npy"
    truth = load_truth(seed_dir / "pool") if subset.is_file() else None
    if truth is None:
        return None
    kept = kept_mask(truth.pairs, subset)
    if not kept.any():
        return None
    c = composition(truth, kept)
    return {"clean_share": c["clean_precision"], "clean_recall": c["clean_recall"] or 0.0}
