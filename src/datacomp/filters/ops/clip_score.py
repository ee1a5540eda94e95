"""Teacher CLIP scores: the parquet's ``clip_{arch}_similarity_score`` column, or recomputed from
the npz embeddings (cosine of the L2-normalised ``{arch}_img`` and ``{arch}_txt``).

Scores are NaN in a pool that has not been through ``datacomp embed``; that is an error naming
the parquet, never a silently empty subset.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import FormatError
from ...formats.pool import SCORE_COLUMNS, check_unit_rows, npz_path, read_npz
from ..registry import OpParamError, ShardContext, ShardOp, register


def check_finite(values: np.ndarray, column: str, where: Any) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise FormatError(f"{where}: column '{column}' has {int(bad.sum())} NaN/missing/infinite values "
                          f"of {len(values)} (run `datacomp embed` on the pool first)")


@register
class ClipScore(ShardOp):
    name = "clip_score"
    description = "teacher CLIP image-text score clip_{arch}_similarity_score, from the parquet or recomputed from the npz"
    params = {"arch": "l14", "source": "parquet", "dim": None, "output": None}

    def setup(self) -> None:
        if self.args["arch"] not in SCORE_COLUMNS:
            raise OpParamError(f"'arch' must be one of {', '.join(SCORE_COLUMNS)}, got {self.args['arch']!r}")
        if self.args["source"] not in ("parquet", "npz"):
            raise OpParamError(f"'source' must be parquet or npz, got {self.args['source']!r}")
        if self.args["dim"] is not None and not (isinstance(self.args["dim"], int) and self.args["dim"] > 0):
            raise OpParamError(f"'dim' must be a positive integer, got {self.args['dim']!r}")
        self.column = SCORE_COLUMNS[self.args["arch"]]
        self.out = self.args["output"] or self.column

    @property
    def cache(self) -> bool:  # type: ignore[override]
        return self.args["source"] == "npz"  # reading one parquet column is cheaper than a cache

    def reads_npz(self) -> bool:
        return self.args["source"] == "npz"

    def inputs(self) -> list[str]:
        return [self.column] if self.args["source"] == "parquet" else []

    def outputs(self) -> list[str]:
        return [self.out]

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        if self.args["source"] == "parquet":
            values = columns[self.column].to_numpy(zero_copy_only=False)
            values = np.asarray(values, dtype=np.float32) if values.dtype != np.float64 else values
            check_finite(values, self.column, ctx.parquet)
            return {self.out: pa.array(values)}
        arch = self.args["arch"]
        keys = [f"{arch}_img", f"{arch}_txt"]
        path = npz_path(ctx.parquet)
        arrays = read_npz(path, keys, expected_rows=ctx.num_rows, dim=self.args["dim"])
        img, txt = arrays[keys[0]], arrays[keys[1]]
        if ctx.rows is not None:
            img, txt = img[ctx.rows], txt[ctx.rows]
        if img.shape[1] != txt.shape[1]:
            raise FormatError(f"{path}: '{keys[0]}' has dimension {img.shape[1]} but '{keys[1]}' has {txt.shape[1]}")
        for k, a in zip(keys, (img, txt)):
            check_unit_rows(a, k, path)
        scores = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32)).astype(np.float32)
        check_finite(scores, f"{keys[0]}·{keys[1]}", path)
        return {self.out: pa.array(scores)}
