"""A tiny finished world for the hostile-input campaign, and the tools to damage and check it.

``build_world(root)`` writes, in well under a second: a pool (``metadata/`` parquet + npz with
unit embeddings, ``shards/`` one tar with ``_stats.json``), a subset of it, a finished reshard
of that subset (``resharded/``, a valid training-data directory), a CSV url/caption table and
a valid recipe. ``snapshot(root)`` hashes every file under a root so a case can assert that
nothing that existed before was changed or removed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from datacomp.formats.pool import write_metadata, write_npz
from datacomp.formats.shards import ShardWriter, sample_key
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset

ROWS = 6
UIDS = [f"{i + 1:032x}" for i in range(ROWS)]
VALID_RECIPE = "name: ok\nsteps: []\nkeep: []\n"


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def jpeg(i: int) -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i % 256, 90, 200)).save(b, format="JPEG")
    return b.getvalue()


def build_pool(pool: Path) -> Path:
    write_metadata(pool / "metadata" / "00000000.parquet", pa.table({
        "uid": UIDS,
        "url": [f"http://x/{i}.jpg" for i in range(ROWS)],
        "text": [f"a red star number {i}" for i in range(ROWS)],
        "original_width": [300] * ROWS,
        "original_height": [300] * ROWS,
        "clip_b32_similarity_score": pa.array([0.3] * ROWS, pa.float32()),
        "clip_l14_similarity_score": pa.array([0.3] * ROWS, pa.float32()),
    }))
    write_npz(pool / "metadata" / "00000000.npz", {f"{k}_{m}": _unit(ROWS, 8, s)
                                                   for s, (k, m) in enumerate([(k, m) for k in ("b32", "l14") for m in ("img", "txt")])})
    with ShardWriter(pool / "shards" / "00000000.tar") as w:
        for i, u in enumerate(UIDS):
            w.write(sample_key(0, i), {"jpg": jpeg(i), "txt": f"a red star number {i}".encode(),
                                       "json": json.dumps({"uid": u}).encode()})
    return pool


def build_world(root: Path) -> Path:
    from datacomp.reshard import reshard

    pool = build_pool(root / "pool")
    write_subset(root / "subset.npy", make_subset(uids_to_pairs(UIDS[:4])))
    reshard(pool, root / "subset.npy", root / "resharded", shard_size=2, workers=1)
    (root / "table.csv").write_text("url,caption\n" + "".join(f"http://y/{i}.jpg,caption {i}\n" for i in range(3)))
    (root / "recipe.yaml").write_text(VALID_RECIPE)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (links not followed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files of ``before`` that are gone or differ in ``after``."""
    return sorted(k for k, v in before.items() if after.get(k) != v)
