"""Any parquet column as a score column, unchanged (e.g. a column a user added to the pool)."""
from __future__ import annotations

import pyarrow as pa

from ..registry import OpParamError, ShardContext, ShardOp, register


@register
class Column(ShardOp):
    name = "column"
    description = "expose parquet column(s) as they are, so keep rules can use them"
    required = ("columns",)
    params = {}
    cache = False

    def setup(self) -> None:
        cols = self.args["columns"]
        if isinstance(cols, str):
            cols = [cols]
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise OpParamError("'columns' must be a column name or a list of them")
        if "uid" in cols:
            raise OpParamError("'uid' cannot be a score column")
        self.cols = list(cols)

    def inputs(self) -> list[str]:
        return list(self.cols)

    def outputs(self) -> list[str]:
        return list(self.cols)

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        return {c: columns[c] for c in self.cols}
