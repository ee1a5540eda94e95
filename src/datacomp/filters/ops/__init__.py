"""Filter op families; importing this package registers every op.

One module per family: language (fastText language ID), caption (word/char counts),
image_size (min side, aspect ratio), clip_score (teacher CLIP scores from the parquet or npz),
metadata (any parquet column as is), quantile (pool-wide thresholds).
"""
from __future__ import annotations

from . import caption, clip_score, image_size, language, metadata, quantile  # noqa: F401
