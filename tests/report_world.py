"""A small work directory in the layout `datacomp run` writes, for report tests (no training).

``make_world(root, seed)`` writes ``pool/`` (metadata, shards with images, truth, eval-set task
list), ``subsets/<recipe>.npy`` + ``.json`` and ``runs/<recipe>/`` (eval_results.jsonl, the
train manifest, an open_clip log) for the recipes in RECIPES; every value is a function of the
seed, so two calls give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datacomp.evaluate.registry import load_tasks
from datacomp.filters import run_filter
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from pool_tables import pool_table

N = 40
CAPTION_KINDS = ["english", "foreign", "junk", "mismatched", "boilerplate"]
IMAGE_KINDS = ["normal", "tiny", "banner", "normal"]
SPANISH = "una foto de un perro rojo sobre un fondo liso con una mesa"
# recipe -> (rows kept: a function of the row index, removed_by), or None: run the shipped recipe
# (basic_filter drops the Spanish captions, rows i % 3 == 0, and the images 150 px high, i % 4 == 1)
RECIPES = {
    "no_filter": (lambda i: True, []),
    "basic_filter": None,
}


def uids(seed: int) -> list[str]:
    return [hashlib.md5(f"{seed}-{i}".encode()).hexdigest() for i in range(N)]


def _image(i: int) -> bytes:
    img = Image.new("RGB", (32, 24), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            tf.addfile(info, io.BytesIO(data))


def truth_table(seed: int) -> pa.Table:
    u = uids(seed)
    return pa.table({
        "uid": u,
        "caption_kind": [CAPTION_KINDS[i % 5] for i in range(N)],
        "image_kind": [IMAGE_KINDS[i % 4] for i in range(N)],
        "clean": [i % 5 == 0 and IMAGE_KINDS[i % 4] == "normal" for i in range(N)],
        "duplicate_of": [u[0] if i % 7 == 6 else None for i in range(N)],
        "eval_copy": ["synth/concepts:3" if i % 11 == 10 else None for i in range(N)],
    })


def write_results(run: Path, seed: int, offset: float = 0.0, tasks: list[str] | None = None) -> None:
    keys = tasks if tasks is not None else [t.key for t in load_tasks("synth") if t.scored]
    lines = [json.dumps({"key": k, "dataset": k, "metrics": {"main_metric": round(0.1 + offset + 0.01 * j + 0.02 * seed, 6)}})
             for j, k in enumerate(keys)]
    (run / "eval_results.jsonl").write_text("\n".join(lines) + "\n")


def add_run(root: Path, recipe: str, seed: int, offset: float, scale: str = "synth_test") -> Path:
    run = root / "runs" / recipe
    run.mkdir(parents=True, exist_ok=True)
    write_results(run, seed, offset)
    (run / "manifest.json").write_text(json.dumps({"stage": "train", "params": {"scale": {"name": scale}},
                                                   "counts": {"unique_samples": N}}))
    (run / "out.log").write_text("".join(
        f"2026-01-01,00:00:0{s} | INFO | Train Epoch: 0 [{s * 10}/{N} ({25 * s}%)] Data (t): 0.1 "
        f"Loss: {5 - s - offset:.4f} ({5 - s:.4f})\n" for s in range(1, 5)))
    return run


def make_world(root: Path, seed: int = 0, recipes: dict | None = None) -> Path:
    recipes = RECIPES if recipes is None else recipes
    u = uids(seed)
    pool = root / "pool"
    for d in ("metadata", "shards", "truth", "evalsets"):
        (pool / d).mkdir(parents=True, exist_ok=True)
    texts = [SPANISH if i % 3 == 0 else f"a photo of a red dog number {i} on a plain background" for i in range(N)]
    heights = [150 if i % 4 == 1 else 200 + i for i in range(N)]
    b32 = [0.15 + 0.003 * ((i * 7 + seed) % N) for i in range(N)]
    l14 = [0.14 + 0.004 * ((i * 13 + seed) % N) for i in range(N)]
    pq.write_table(pool_table(texts, [300 + i for i in range(N)], heights, b32, l14, u),
                   pool / "metadata" / "00000000.parquet")
    keys = [f"{i:012d}" for i in range(N)]
    pq.write_table(pa.table({"key": keys, "uid": u}), pool / "shards" / "00000000.parquet")
    _tar(pool / "shards" / "00000000.tar",
         [m for i, k in enumerate(keys) for m in ((f"{k}.png", _image(i)), (f"{k}.txt", texts[i].encode()))])
    pq.write_table(truth_table(seed), pool / "truth" / "00000000.parquet")
    (pool / "evalsets" / "tasks.json").write_text(json.dumps({
        "synth/concepts": {"type": "classification", "n": 100, "num_classes": 24},
        "synth/retrieval": {"type": "retrieval", "n": 50, "num_classes": None}}))
    for j, (recipe, spec) in enumerate(recipes.items()):
        subset = root / "subsets" / f"{recipe}.npy"
        if spec is None:
            run_filter(pool, recipe, subset, workers=1)
        else:
            keep, removed = spec
            kept = [x for i, x in enumerate(u) if keep(i)]
            write_subset(subset, make_subset(uids_to_pairs(kept)))
            subset.with_suffix(".json").write_text(json.dumps({
                "recipe": recipe, "counts": {"pool_rows": N, "kept": len(kept)}, "removed_by": removed}))
        add_run(root, recipe, seed, offset=0.05 * j)
    (root / "run.json").write_text(json.dumps({"scale": "synth_test", "seed": seed}))
    return root


def kept_rows(root: Path, recipe: str, seed: int = 0) -> list[int]:
    """Pool rows the world's subset keeps (row order)."""
    from datacomp.formats.uids import read_subset

    kept = set(read_subset(root / "subsets" / f"{recipe}.npy", mmap=False).tolist())
    return [i for i, p in enumerate(uids_to_pairs(uids(seed)).tolist()) if p in kept]


def basic_filter_reason(i: int) -> str | None:
    """The rule basic_filter drops row ``i`` by, as the report words it (None: kept)."""
    if i % 3 == 0:
        return "language == en (was es)"
    if i % 4 == 1:
        return "image_min_side >= 200 (was 150)"
    return None
