"""Keep rules on Arrow columns: ``column op value`` (or ``@global``), nulls never pass."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from .recipe import Rule

_CMP = {"==": pc.equal, "!=": pc.not_equal, ">": pc.greater, ">=": pc.greater_equal,
        "<": pc.less, "<=": pc.less_equal}


def _scalar(value: Any, column: pa.Array) -> pa.Scalar:
    """The rule's value as an Arrow scalar. A number compared with a float32 column is a float32,
    as NumPy/pandas compare ``float32_array >= 0.28`` (the reference's comparisons)."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and pa.types.is_float32(column.type)):
        return pa.scalar(np.float32(value), pa.float32())
    return pa.scalar(value)


def eval_rule(rule: Rule, column: pa.Array, globals_: dict[str, Any], source: str) -> np.ndarray:
    """Boolean mask of the rows that satisfy ``rule`` (nulls never do)."""
    value = globals_[rule.ref] if rule.ref is not None else rule.value
    try:
        if rule.op in _CMP:
            res = _CMP[rule.op](column, _scalar(value, column))
        else:
            res = pc.is_in(column, value_set=pa.array(value))
            if rule.op == "not in":
                res = pc.invert(res)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ConfigError(f"{source}: rule '{rule.text}' cannot compare column of type {column.type} "
                          f"with {value!r}: {e}") from None
    return np.asarray(res.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
