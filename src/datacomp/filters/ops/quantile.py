"""Pool-wide thresholds.

``quantile_threshold`` with ``fraction`` f: threshold = the value at rank ``int(N·f)`` of all N
scores of the pool (every parquet, rows passing the step's ``where`` rules) sorted descending —
the reference's ``get_threshold``; keeping ``score >= threshold`` then keeps about N·f + 1 rows
plus ties. With ``threshold`` t instead, the value is t and the pool is not read.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..registry import GlobalOp, OpParamError, register


@register
class QuantileThreshold(GlobalOp):
    name = "quantile_threshold"
    description = "threshold = value at rank int(N*fraction) of the pool's scores sorted descending (or a given threshold)"
    required = ("column",)
    params = {"fraction": None, "threshold": None, "output": "threshold"}

    def setup(self) -> None:
        f, t = self.args["fraction"], self.args["threshold"]
        if (f is None) == (t is None):
            raise OpParamError(f"exactly one of 'fraction' and 'threshold' must be set (got fraction={f!r}, threshold={t!r})")
        if f is not None:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 < float(f) <= 1.0):
                raise OpParamError(f"'fraction' must be a number in (0, 1], got {f!r}")
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(float(t)):
                raise OpParamError(f"'threshold' must be a finite number, got {t!r}")

    def inputs(self) -> list[str]:
        return [self.args["column"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def needs_pool_pass(self) -> bool:
        return self.args["fraction"] is not None

    def map(self, store, mask: np.ndarray | None) -> np.ndarray:
        values = store.numpy(self.args["column"])
        return values if mask is None else values[mask]

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        out = self.args["output"]
        if self.args["threshold"] is not None:
            return {out: float(self.args["threshold"]), f"{out}_source": "given"}
        scores = np.concatenate(partials) if partials else np.empty(0)
        n = len(scores)
        if n == 0:
            raise OpParamError(f"no scores in column '{self.args['column']}' to take a quantile of")
        if np.isnan(scores).any():
            raise OpParamError(f"column '{self.args['column']}' has NaN values")
        fraction = float(self.args["fraction"])
        rank = int(n * fraction)  # the reference's int(len * fraction)
        rank = min(rank, n - 1)  # fraction 1.0: the smallest score, i.e. keep everything
        k = n - 1 - rank  # descending rank -> ascending index
        threshold = np.partition(scores, k)[k]
        return {out: float(threshold), f"{out}_source": "fraction", f"{out}_rank": rank, f"{out}_pool_rows": n,
                f"{out}_fraction": fraction}
