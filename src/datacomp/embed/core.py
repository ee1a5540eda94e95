"""Embed a pool with CLIP models: npz embeddings + cosine score columns, one shard per unit.

For each ``metadata/{i}.parquet`` the unit reads ``shards/{i}.tar``, matches samples to rows by
the ``uid`` in each sample's json, and writes, for every key set ``k`` (``b32``, ``l14``, ...):

- ``metadata/{i}.npz``: ``k_img``, ``k_txt`` (float16, L2-normalised, parquet row order; other
  keys already in the npz are kept);
- the parquet's ``clip_{k}_similarity_score`` column (float32, cosine of the two float32
  embeddings), rewritten atomically with every other column unchanged.

Text embeddings come from the parquet's ``text`` column, so every row has one. A row whose uid
has no sample in the tar (a failed download) gets a **zero image vector and a NaN score**: it
cannot be trained on (the resharder skips it), NaN fails every score threshold, and a zero row is
easy to recognise (norm 0). Tar samples whose uid is not in the parquet are ignored (counted).
"""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import FormatError
from ..formats.pool import npz_path, read_metadata, write_metadata, write_npz
from ..formats.shards import iter_samples

log = logging.getLogger(__name__)


def score_column(key: str) -> str:
    return f"clip_{key}_similarity_score"


def _encode(fn, batches, device: str = "cpu") -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for b in batches:
            outs.append(fn(b.to(device)).float())
    if not outs:
        return np.zeros((0, 0), np.float32)
    x = torch.cat(outs)
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.cpu().numpy().astype(np.float32)


def _model(model: str, checkpoint: str | None, device: str) -> tuple[Any, Any, Any]:
    """The process's cached model; on the CPU under the same cache key as callers that name no device."""
    from ..train.models import cached_open_clip

    return cached_open_clip(model, checkpoint) if device == "cpu" else cached_open_clip(model, checkpoint, device)


def apply_score_scale(x: np.ndarray, scale: dict[str, float] | None, side: str) -> np.ndarray:
    """Unit embeddings with a modality gap: ``[sqrt(a) x, sqrt(1-a) u]`` with 2-d unit vectors
    u_img = (1, 0), u_txt = (c, sqrt(1-c^2)), so every pair's cosine becomes ``a cos + (1-a) c``
    (an affine map of the teacher's score onto OpenAI CLIP's scale; see ``score_scale``) and
    every row stays unit-norm. Image-image cosines become ``a cos + (1-a)``: neighbours unchanged.
    ``scale`` None: ``x`` unchanged."""
    if not scale:
        return x
    a, c = float(scale["a"]), float(scale["c"])
    u = (1.0, 0.0) if side == "img" else (c, float(np.sqrt(max(0.0, 1.0 - c * c))))
    out = np.empty((x.shape[0], x.shape[1] + 2), np.float32)
    out[:, :-2] = np.sqrt(a) * x
    out[:, -2:] = np.sqrt(1.0 - a) * np.asarray(u, np.float32)
    zero = ~np.any(x != 0, axis=1)  # a missing image stays a zero vector
    out[zero] = 0.0
    return out


A_MAX = 0.95  # the least shrink of a fitted score scale


def fit_score_scale(raw: np.ndarray, english: np.ndarray, anchors: list[dict[str, Any]]) -> dict[str, Any]:
    """(a, c) of :func:`apply_score_scale` from two anchors ``{keep, score, english}``: the raw
    threshold that keeps the fraction ``keep`` of the sample's rows (counting only rows whose
    caption is English when ``english``) is mapped to ``score``. Rows with NaN (no image) count in
    the denominator and never pass, as in the filters."""
    if len(anchors) != 2:
        raise ValueError("score_scale needs exactly two anchors")
    pts = []
    ok = np.isfinite(raw)
    for an in anchors:
        mask = ok & (english if an.get("english") else True)
        vals = np.sort(raw[mask])[::-1]
        k = int(round(float(an["keep"]) * len(raw)))
        if not 1 <= k <= len(vals):
            raise ValueError(f"score_scale anchor keep={an['keep']} is not reachable on {len(vals)} of {len(raw)} rows")
        pts.append((float(vals[k - 1]), float(an["score"])))
    (r1, s1), (r2, s2) = pts
    if abs(r1 - r2) < 1e-6:
        raise ValueError("score_scale anchors fall on the same raw score")
    a = (s1 - s2) / (r1 - r2)
    b = s1 - a * r1
    clamped = False
    if not (0 < a <= A_MAX and abs(b) <= 1 - a):
        # a weak teacher whose scores spread less than CLIP's: keep the first anchor exactly with
        # the largest slope a gap allows (the second anchor is then missed; recorded)
        a = 0.999 * min(A_MAX, (1 - s1) / max(1e-6, 1 - r1), (1 + s1) / max(1e-6, 1 + r1))
        b, clamped = s1 - a * r1, True
    if not 0 < a < 1 or not -1 <= b / (1 - a) <= 1:
        raise ValueError(f"score_scale fit a={a:.3f}, b={b:.3f} is not a modality gap (needs 0 < a < 1, |b| <= 1 - a)")
    return {"a": round(a, 6), "c": round(b / (1 - a), 6), "b": round(b, 6), "clamped": clamped,
            "anchors": [{"raw": round(r, 4), **an} for (r, _), an in zip(pts, anchors)], "sample_rows": int(len(raw))}


def embed_images(model: str, checkpoint: str | None, images: list[Any], batch_size: int = 256,
                 threads: int = 1, device: str = "cpu") -> np.ndarray:
    """L2-normalised float32 image embeddings ``[len(images), dim]`` of PIL images with one model
    (loaded once per process, as the shard units load theirs) on ``device``."""
    import torch

    torch.set_num_threads(max(1, threads))
    m, pre, _ = _model(model, checkpoint, device)
    if not images:
        return np.zeros((0, int(getattr(m, "embed_dim", 0) or 0)), np.float32)
    pix = torch.stack([pre(im) for im in images])
    return _encode(m.encode_image, (pix[i:i + batch_size] for i in range(0, len(images), batch_size)), device)


def embed_shard(parquet: str, tar: str, specs: list[dict[str, Any]], batch_size: int = 256, threads: int = 1,
                write: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Embed one metadata parquet + shard tar with every model in ``specs`` ({keys, model, checkpoint,
    score_scale}) on ``device`` ("cpu", or "cuda" in a task that holds a GPU); ``write=False``
    writes nothing and returns the scores and texts instead."""
    import torch
    from PIL import Image

    torch.set_num_threads(max(1, threads))
    t0 = time.time()
    table = read_metadata(parquet)
    if "text" not in table.column_names:
        raise FormatError(f"{parquet}: parquet has no 'text' column")
    uids = table.column("uid").to_pylist()
    texts = [t if t is not None else "" for t in table.column("text").to_pylist()]
    n = len(uids)
    rows_of: dict[str, list[int]] = {}
    for i, u in enumerate(uids):
        rows_of.setdefault(u, []).append(i)

    images: list[Any] = []
    image_rows: list[list[int]] = []
    extra = 0
    for sample in iter_samples(tar):
        meta = sample.meta
        uid = meta.get("uid")
        if uid is None:
            raise FormatError(f"{tar}: sample '{sample.key}' has no uid in its json")
        rows = rows_of.get(uid)
        if rows is None:
            extra += 1
            continue
        data = sample.image_bytes()
        if data is None:
            continue
        try:
            im = Image.open(io.BytesIO(data))
            im = im.convert("RGB")
        except Exception as e:  # PIL raises many types for bad bytes
            log.warning("%s: sample '%s' has an unreadable image (%s); treating it as missing", tar, sample.key, e)
            continue
        images.append(im)
        image_rows.append(rows)
    present = np.zeros(n, bool)
    for rows in image_rows:
        present[rows] = True
    t_read = time.time() - t0

    arrays: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    pre_cache: dict[str, Any] = {}
    tok_cache: dict[tuple, list[Any]] = {}  # teachers usually share one tokenizer
    for spec in specs:
        model, pre, tok = _model(spec["model"], spec.get("checkpoint"), device)
        key_pre = repr(pre)
        if key_pre not in pre_cache:
            pre_cache[key_pre] = torch.stack([pre(im) for im in images]) if images else None
        pix = pre_cache[key_pre]
        img = _encode(model.encode_image, (pix[i:i + batch_size] for i in range(0, len(images), batch_size)),
                      device) if images else None
        if type(tok).__name__ == "SimpleTokenizer":
            key_tok = ("simple", tok.context_length, repr(getattr(tok, "clean_fn", None)), repr(getattr(tok, "reduction_fn", None)))
        else:
            key_tok = ("other", id(tok))
        if key_tok not in tok_cache:
            tok_cache[key_tok] = [tok(texts[i:i + batch_size]) for i in range(0, n, batch_size)]
        txt = _encode(model.encode_text, tok_cache[key_tok], device)
        dim = txt.shape[1] if n else int(getattr(model, "embed_dim", 0) or 0)
        img_full = np.zeros((n, dim), np.float32)
        if img is not None:
            for vec, rows in zip(img, image_rows):
                img_full[rows] = vec
        img_full = apply_score_scale(img_full, spec.get("score_scale"), "img")
        if n:
            txt = apply_score_scale(txt, spec.get("score_scale"), "txt")
        dim = img_full.shape[1]
        score = np.einsum("ij,ij->i", img_full, txt if n else np.zeros((0, dim), np.float32)).astype(np.float32)
        score[~present] = np.nan
        for k in spec["keys"]:
            arrays[f"{k}_img"] = img_full.astype(np.float16)
            arrays[f"{k}_txt"] = (txt if n else np.zeros((0, dim), np.float32)).astype(np.float16)
            scores[k] = score
            dims[k] = dim
    if not write:
        return {"scores": scores, "texts": texts, "present": present}
    write_npz(npz_path(parquet), arrays)
    for k, sc in scores.items():
        col = score_column(k)
        arr = pa.array(sc, pa.float32())
        if col in table.column_names:
            table = table.set_column(table.column_names.index(col), col, arr)
        else:
            table = table.append_column(col, arr)
    write_metadata(parquet, table)
    dt = time.time() - t0
    return {
        "rows": n,
        "images": int(present.sum()),
        "missing_images": int(n - present.sum()),
        "extra_samples": extra,
        "dims": dims,
        "mean_score": {k: (float(np.nanmean(v)) if present.any() else None) for k, v in scores.items()},
        "seconds": round(dt, 3),
        "read_seconds": round(t_read, 3),
        "pid": os.getpid(),
    }
