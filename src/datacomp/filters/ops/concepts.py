"""Text-based concept match (the reference's ``text_based`` baseline, ImageNet-21k variant).

A caption matches when any whitespace token (``text.split()``, no lower-casing or punctuation
stripping by us) has a first WordNet synset (``wordnet.synsets(token)[0]``, NLTK, WordNet 3.0 —
NLTK lower-cases and lemmatises inside) whose offset is in the id list (``nXXXXXXXX`` ->
``int(XXXXXXXX)``; the part of speech is not compared, as in the reference).

Tokens are looked up once per distinct token: per shard the captions are split into one Arrow
array of tokens (``_text.py``), its distinct values go through a per-process memo, and the
answers are mapped back to rows with NumPy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..registry import OpParamError, ShardContext, ShardOp, register
from ..wordnet import bundled_ids, check_dir, load_wordnet, read_wnids
from ._text import as_text, py_split_tokens

# (wordnet root, ids file) -> {token: matched}; lives as long as the worker process
_MEMO: dict[tuple[str, str], dict[str, bool]] = {}


def resolve_ids(ids: str) -> Path:
    return bundled_ids() if ids in ("in21k", "imagenet21k") else Path(ids).expanduser()


class ConceptMatcher:
    """token -> whether its first synset's offset is in the id set, memoised per distinct token."""

    def __init__(self, wordnet_dir: str | None, ids: str):
        self.root = str(check_dir(wordnet_dir))
        self.ids_path = resolve_ids(ids)
        self.offsets = read_wnids(self.ids_path)
        self.memo = _MEMO.setdefault((self.root, str(self.ids_path)), {})
        self._wn = None
        self.lookups = 0

    def first_offset_in(self, token: str) -> bool:
        hit = self.memo.get(token)
        if hit is None:
            if self._wn is None:
                self._wn = load_wordnet(self.root)
            synsets = self._wn.synsets(token)
            hit = bool(synsets) and synsets[0].offset() in self.offsets
            self.memo[token] = hit
            self.lookups += 1
        return hit

    def match_rows(self, text: pa.Array) -> np.ndarray:
        """Per row: does any token of ``text.split()`` match."""
        text = as_text(text)
        tokens, rows = py_split_tokens(text)
        out = np.zeros(len(text), dtype=bool)
        if len(tokens) == 0:
            return out
        enc = pc.dictionary_encode(tokens)
        distinct = enc.dictionary.to_pylist()
        hits = np.fromiter((self.first_offset_in(t) for t in distinct), dtype=bool, count=len(distinct))
        tok_hit = hits[enc.indices.to_numpy(zero_copy_only=False)]
        out[rows[tok_hit]] = True
        return out


@register
class ConceptMatch(ShardOp):
    name = "concept_match"
    description = "concept_match = some caption token's first WordNet synset is in an id list (ImageNet-21k by default)"
    params = {"text": "text", "ids": "in21k", "wordnet_dir": None, "output": "concept_match"}

    def setup(self) -> None:
        if not isinstance(self.args["ids"], str) or not self.args["ids"]:
            raise OpParamError("'ids' must be 'in21k' or a path to a file of WordNet ids")
        if self.args["wordnet_dir"] is not None and not isinstance(self.args["wordnet_dir"], str):
            raise OpParamError("'wordnet_dir' must be a directory path (holding corpora/wordnet)")

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def cache_identity(self) -> dict[str, Any]:
        ids = resolve_ids(self.args["ids"])
        root = check_dir(self.args["wordnet_dir"])
        return {"ids_size": ids.stat().st_size if ids.is_file() else None,
                "wordnet_size": (root / "data.noun").stat().st_size}

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        matcher = ConceptMatcher(self.args["wordnet_dir"], self.args["ids"])
        return {self.args["output"]: pa.array(matcher.match_rows(columns[self.args["text"]]))}
