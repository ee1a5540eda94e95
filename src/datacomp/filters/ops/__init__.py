"""Filter op families; importing this package registers every op.

One module per family: language (fastText / CLD3 language ID), caption (word, fastText token and
char counts), image_size (min side, aspect ratio), clip_score (teacher CLIP scores from the parquet
or npz), concepts (WordNet concept match, text-based), clusters (k-means, target clusters,
nearest centroid: image-based), metadata (any parquet column as is), quantile (pool-wide
thresholds). A new op is a class with ``@register`` in a new module here: every module of this
package (names not starting with ``_``) is imported, so nothing else needs editing.
"""
from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
