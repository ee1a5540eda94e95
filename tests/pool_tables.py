"""A CommonPool-format metadata table for filter tests (shared by several test files)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def pool_table(texts, widths, heights, b32, l14, uids) -> pa.Table:
    n = len(texts)
    return pa.table({
        "uid": pa.array(uids, pa.string()),
        "url": pa.array([f"http://x/{i}.jpg" for i in range(n)], pa.string()),
        "text": pa.array(texts, pa.string()),
        "original_width": pa.array(widths, pa.int64()),
        "original_height": pa.array(heights, pa.int64()),
        "clip_b32_similarity_score": pa.array(np.asarray(b32, np.float32), pa.float32()),
        "clip_l14_similarity_score": pa.array(np.asarray(l14, np.float32), pa.float32()),
        "sha256": pa.array(["0" * 64] * n, pa.string()),
    })
