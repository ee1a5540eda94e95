"""A tiny shapes-and-colours image-text world for tests and benchmarks of train/embed.

Not the embedded world (that is :mod:`datacomp.pool.synth`): just enough PIL-drawn pairs, in
img2dataset's shard layout plus CommonPool metadata parquets, to exercise open_clip training and
embedding quickly and without depending on the synth package.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw

from ..formats.pool import POOL_SCHEMA, write_metadata
from ..formats.shards import SHARD_FORMAT, ShardWriter, sample_key

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: str, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    rng = rng or random.Random(0)
    bg = tuple(rng.randint(150, 255) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    m = rng.randint(2, size // 6)
    box = (m, m, size - 1 - rng.randint(2, size // 6), size - 1 - rng.randint(2, size // 6))
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return im


def uid_of(shard: int, i: int, seed: int) -> str:
    return hashlib.md5(f"{seed}-{shard}-{i}".encode()).hexdigest()


def write_toy_shards(out: str | Path, n_shards: int = 2, per_shard: int = 64, seed: int = 0,
                     size: int = 32, metadata: str | Path | None = None, drop: tuple[int, ...] = ()) -> list[Path]:
    """Write ``n_shards`` tars of ``per_shard`` pairs to ``out`` (and parquets to ``metadata``).

    Sample indices in ``drop`` are listed in the parquet but missing from the tar (failed downloads).
    """
    out = Path(out)
    rng = random.Random(seed)
    tars = []
    for s in range(n_shards):
        rows = []
        path = out / SHARD_FORMAT.format(s)
        with ShardWriter(path) as w:
            for i in range(per_shard):
                shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
                text = f"a {colour} {shape}"
                uid = uid_of(s, i, seed)
                rows.append({"uid": uid, "url": f"http://toy/{uid}.jpg", "text": text, "original_width": size,
                             "original_height": size, "clip_b32_similarity_score": float("nan"),
                             "clip_l14_similarity_score": float("nan"), "face_bboxes": [], "sha256": "0" * 64})
                key = sample_key(s, i)
                rec = {"uid": uid, "key": key, "caption": text, "status": "success"}
                if i in drop:
                    w.add_failed(dict(rec, status="failed_to_download"))
                    continue
                buf = io.BytesIO()
                draw(shape, colour, size, rng).save(buf, format="JPEG", quality=90)
                w.write(key, {"jpg": buf.getvalue(), "txt": text.encode(), "json": json.dumps(rec).encode()}, rec)
        tars.append(path)
        if metadata is not None:
            write_metadata(Path(metadata) / f"{s:08d}.parquet", pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return tars
