"""Caption length: whitespace word count (Python ``str.split()``) and character count (``len``)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..registry import ShardContext, ShardOp, register


@register
class CaptionLength(ShardOp):
    name = "caption_length"
    description = "caption_words = len(text.split()), caption_chars = len(text) (null text counts as '')"
    params = {"text": "text"}
    cache = False

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        return ["caption_words", "caption_chars"]

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        text = columns[self.args["text"]].fill_null("")
        # str.split() is the reference's definition of a word (Unicode whitespace as Python sees
        # it, which differs from Arrow's for a few control characters), so count in Python.
        words = np.fromiter((len(t.split()) for t in text.to_pylist()), dtype=np.int64, count=len(text))
        chars = pc.utf8_length(text).cast(pa.int64())  # code points, as Python's len()
        return {"caption_words": pa.array(words), "caption_chars": chars}
