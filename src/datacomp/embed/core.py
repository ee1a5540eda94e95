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


def _encode(fn, batches) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for b in batches:
            outs.append(fn(b).float())
    if not outs:
        return np.zeros((0, 0), np.float32)
    x = torch.cat(outs)
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.numpy().astype(np.float32)


def embed_images(model: str, checkpoint: str | None, images: list[Any], batch_size: int = 256,
                 threads: int = 1) -> np.ndarray:
    """L2-normalised float32 image embeddings ``[len(images), dim]`` of PIL images with one model
    (loaded once per process, as the shard units load theirs)."""
    import torch

    from ..train.models import cached_open_clip

    torch.set_num_threads(max(1, threads))
    m, pre, _ = cached_open_clip(model, checkpoint)
    if not images:
        return np.zeros((0, int(getattr(m, "embed_dim", 0) or 0)), np.float32)
    pix = torch.stack([pre(im) for im in images])
    return _encode(m.encode_image, (pix[i:i + batch_size] for i in range(0, len(images), batch_size)))


def embed_shard(parquet: str, tar: str, specs: list[dict[str, Any]], batch_size: int = 256, threads: int = 1) -> dict[str, Any]:
    """Embed one metadata parquet + shard tar with every model in ``specs`` ({keys, model, checkpoint})."""
    import torch
    from PIL import Image

    from ..train.models import cached_open_clip

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
        model, pre, tok = cached_open_clip(spec["model"], spec.get("checkpoint"))
        key_pre = repr(pre)
        if key_pre not in pre_cache:
            pre_cache[key_pre] = torch.stack([pre(im) for im in images]) if images else None
        pix = pre_cache[key_pre]
        img = _encode(model.encode_image, (pix[i:i + batch_size] for i in range(0, len(images), batch_size))) if images else None
        if type(tok).__name__ == "SimpleTokenizer":
            key_tok = ("simple", tok.context_length, repr(getattr(tok, "clean_fn", None)), repr(getattr(tok, "reduction_fn", None)))
        else:
            key_tok = ("other", id(tok))
        if key_tok not in tok_cache:
            tok_cache[key_tok] = [tok(texts[i:i + batch_size]) for i in range(0, n, batch_size)]
        txt = _encode(model.encode_text, tok_cache[key_tok])
        dim = txt.shape[1] if n else int(getattr(model, "embed_dim", 0) or 0)
        img_full = np.zeros((n, dim), np.float32)
        if img is not None:
            for vec, rows in zip(img, image_rows):
                img_full[rows] = vec
        score = np.einsum("ij,ij->i", img_full, txt if n else np.zeros((0, dim), np.float32)).astype(np.float32)
        score[~present] = np.nan
        for k in spec["keys"]:
            arrays[f"{k}_img"] = img_full.astype(np.float16)
            arrays[f"{k}_txt"] = (txt if n else np.zeros((0, dim), np.float32)).astype(np.float16)
            scores[k] = score
            dims[k] = dim
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
