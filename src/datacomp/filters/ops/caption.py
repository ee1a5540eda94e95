"""Caption length: word counts (Python ``str.split()`` or fastText's tokenizer) and characters.

Both are exact re-statements of the reference's per-row Python, computed on the UTF-8 bytes of
the whole column at once (see ``_text.py``); nothing is cached (recomputing beats a cache read).
"""
from __future__ import annotations

import pyarrow as pa

from ..registry import ShardContext, ShardOp, register
from ._text import as_text, fasttext_token_count, words_and_chars


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
        words, chars = words_and_chars(as_text(columns[self.args["text"]]))
        return {"caption_words": pa.array(words), "caption_chars": pa.array(chars)}


@register
class CaptionTokens(ShardOp):
    name = "caption_tokens"
    description = "caption_fasttext_tokens = len(fasttext.tokenize(text)) (one token per run of non-blanks, plus '</s>' per newline)"
    params = {"text": "text"}
    cache = False

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        return ["caption_fasttext_tokens"]

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        return {"caption_fasttext_tokens": pa.array(fasttext_token_count(as_text(columns[self.args["text"]])))}
