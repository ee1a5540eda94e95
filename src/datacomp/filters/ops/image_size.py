"""Image size from the metadata: shorter side and aspect ratio of the original image."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..registry import ShardContext, ShardOp, register


@register
class ImageSize(ShardOp):
    name = "image_size"
    description = ("image_min_side = min(original_width, original_height), "
                   "image_aspect = max/min of the two (inf when a side is 0 or missing)")
    params = {"width": "original_width", "height": "original_height"}
    cache = False

    def inputs(self) -> list[str]:
        return [self.args["width"], self.args["height"]]

    def outputs(self) -> list[str]:
        return ["image_min_side", "image_aspect"]

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        def ints(col: pa.Array) -> np.ndarray:
            if col.null_count:
                col = col.fill_null(0)
            a = col.to_numpy(zero_copy_only=False)  # zero-copy for an int64 column without nulls
            return a if a.dtype == np.int64 else a.astype(np.int64)

        w = ints(columns[self.args["width"]])
        h = ints(columns[self.args["height"]])
        lo = np.minimum(w, h)
        hi = np.maximum(w, h)
        with np.errstate(divide="ignore", invalid="ignore"):
            aspect = hi / lo  # float64 division, as the reference's pandas expression
        aspect[lo <= 0] = np.inf
        return {"image_min_side": pa.array(lo), "image_aspect": pa.array(aspect, pa.float64())}
