"""Make a CommonPool-format pool for benchmarks: metadata/{i:08d}.parquet (+ .npz) and targets/.

    python bench/make_pool.py OUT --rows 1000000 --shards 8 [--no-npz] [--seed 0]

Parquet: the CommonPool columns (uid, url, text, original_width/height, B/32 and L/14 scores,
face_bboxes, sha256). Captions are a realistic mix: English alt-text of several kinds (object
descriptions, product titles, stock-photo captions, file names, one or two words), other
languages (German, French, Spanish, Portuguese, Italian, Russian, Japanese, Chinese), multi-line
captions, and capitalisation and punctuation as alt-text has them. Image sizes follow the usual
web sizes with a tail of small and very wide images. Scores are drawn like CommonPool's
(mean ~0.25 for B/32, ~0.21 for L/14).

npz (same basename, same rows): b32_img, b32_txt (512-d), l14_img, l14_txt (768-d), float16,
L2-normalised, compressed like the reference; image embeddings are drawn around 256 "concept"
directions so k-means has structure. ``targets/l14_img.npy``: 2,000 embeddings around 40 of the
concepts (the image-based filter's target set). Deterministic in --seed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from datacomp.formats.pool import write_metadata  # noqa: E402

NOUNS = ("dog cat car house tree beach mountain river city street woman man child girl boy bird horse "
         "flower table chair sofa kitchen bedroom garden bridge boat train plane bicycle guitar piano "
         "book phone laptop camera shoe dress shirt jacket bag watch ring cake pizza coffee wine bottle "
         "lamp window door road forest lake sunset sky cloud snow rain field farm cow sheep lion tiger "
         "elephant bear fish shark whale butterfly bee apple orange banana tomato bread cheese soup").split()
ADJS = ("red blue green old new small large beautiful vintage modern white black wooden happy young "
        "little big golden dark bright cute luxury classic rustic abstract colorful").split()
PLACES = "Paris London New York Tokyo Berlin Rome California Texas Florida Sydney Canada Italy".split()
TEMPLATES = [
    "a {adj} {noun} on the {noun2}", "{Adj} {noun} with {noun2}", "photo of a {noun} in {place}",
    "{adj} {noun} and {adj2} {noun2} near the {noun3}", "The {noun} {place} {year}",
    "{Noun} {Noun2} {adj} {noun3} for sale - free shipping", "{Adj} {Noun} {size} {color} Women's {noun2}",
    "stock photo of {adj} {noun}", "{noun}", "{Noun} {Noun2}", "{place} {year}", "IMG_{num}.JPG",
    "DSC{num5}.jpg", "{adj} {noun} wallpaper hd {num}x{num2}", "{Adj} {noun}, {adj2} {noun2}.",
    "{Noun} of the {noun2}\n{place} {year}", "Buy {Adj} {Noun} Online | {Place} Store",
    "{adj} {noun} vector illustration isolated on white background",
]
FOREIGN = [
    "ein {de_adj} Hund am Strand bei Sonnenuntergang", "Haus mit Garten in {place} zu verkaufen",
    "une {fr_adj} maison au bord de la mer", "chat noir sur le canapé rouge",
    "una casa {es_adj} en la playa de {place}", "perro jugando en el parque con su dueño",
    "casa de praia com piscina em {place}", "vestido longo de festa para mulheres",
    "una bella vista del mare in {place}", "красивый закат над морем", "кошка спит на диване",
    "東京の夜景と美しい空", "猫がソファで寝ている", "美丽的日落和海滩", "新款女士连衣裙夏季",
]
DE_ADJ, FR_ADJ, ES_ADJ = ["kleiner", "großer", "schöner"], ["belle", "petite", "grande"], ["bonita", "grande", "vieja"]
SIZES = [(1024, 768), (800, 600), (640, 480), (1920, 1080), (500, 500), (1200, 800), (300, 300),
         (150, 150), (200, 200), (199, 300), (1000, 250), (2000, 500), (600, 200), (768, 1024), (1080, 1350)]
SIZE_P = np.array([14, 12, 10, 10, 8, 8, 6, 4, 3, 2, 3, 2, 2, 8, 8], float)


def captions(rng: np.random.Generator, n: int) -> list[str]:
    kind = rng.random(n)
    out = []
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    for k in kind:
        if k < 0.78:
            t = pick(TEMPLATES)
        else:
            t = pick(FOREIGN)
        noun, noun2, noun3 = pick(NOUNS), pick(NOUNS), pick(NOUNS)
        adj, adj2 = pick(ADJS), pick(ADJS)
        s = t.format(adj=adj, adj2=adj2, Adj=adj.capitalize(), noun=noun, noun2=noun2, noun3=noun3,
                     Noun=noun.capitalize(), Noun2=noun2.capitalize(), place=pick(PLACES), Place=pick(PLACES),
                     year=int(rng.integers(1990, 2024)), num=int(rng.integers(1000, 9999)),
                     num2=int(rng.integers(100, 999)), num5=f"{int(rng.integers(0, 99999)):05d}",
                     size=pick(["S", "M", "L", "XL"]), color=pick(["Black", "Red", "Navy"]),
                     de_adj=pick(DE_ADJ), fr_adj=pick(FR_ADJ), es_adj=pick(ES_ADJ))
        out.append(s)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_shard(out: Path, i: int, n: int, seed: int, concepts: dict[str, np.ndarray], npz: bool) -> None:
    rng = np.random.default_rng([seed, i])
    uids = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    uid_hex = [bytes(r).hex() for r in uids]
    sizes = np.array(SIZES)[rng.choice(len(SIZES), size=n, p=SIZE_P / SIZE_P.sum())]
    jitter = rng.integers(0, 3, size=(n, 2)) * (rng.random((n, 1)) < 0.3)
    w, h = sizes[:, 0] + jitter[:, 0], sizes[:, 1] + jitter[:, 1]
    b32 = np.clip(rng.normal(0.25, 0.045, n), -0.1, 0.5).astype(np.float32)
    l14 = np.clip(b32 - 0.04 + rng.normal(0, 0.03, n), -0.1, 0.5).astype(np.float32)
    table = pa.table({
        "uid": pa.array(uid_hex, pa.string()),
        "url": pa.array([f"https://img.example.com/{u[:8]}/{u[8:16]}.jpg" for u in uid_hex], pa.string()),
        "text": pa.array(captions(rng, n), pa.string()),
        "original_width": pa.array(w.astype(np.int64)),
        "original_height": pa.array(h.astype(np.int64)),
        "clip_b32_similarity_score": pa.array(b32),
        "clip_l14_similarity_score": pa.array(l14),
        "face_bboxes": pa.array([[]] * n, pa.list_(pa.list_(pa.float64()))),
        "sha256": pa.array([u * 2 for u in uid_hex], pa.string()),
    })
    write_metadata(out / "metadata" / f"{i:08d}.parquet", table)
    if npz:
        arrays = {}
        which = rng.integers(0, len(concepts["l14"]), n)
        for arch, d in (("b32", 512), ("l14", 768)):
            img = unit(concepts[arch][which] + rng.normal(0, 0.9 / np.sqrt(d), (n, d)).astype(np.float32))
            txt = unit(img + rng.normal(0, 1.2 / np.sqrt(d), (n, d)).astype(np.float32))
            arrays[f"{arch}_img"] = img.astype(np.float16)
            arrays[f"{arch}_txt"] = txt.astype(np.float16)
        np.savez_compressed(out / "metadata" / f"{i:08d}.npz", **arrays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-npz", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    concepts = {"b32": unit(rng.normal(size=(256, 512)).astype(np.float32)),
                "l14": unit(rng.normal(size=(256, 768)).astype(np.float32))}
    per = [a.rows // a.shards + (1 if i < a.rows % a.shards else 0) for i in range(a.shards)]
    t0 = time.time()
    for i, n in enumerate(per):
        make_shard(out, i, n, a.seed, concepts, not a.no_npz)
        print(f"shard {i}: {n} rows ({time.time() - t0:.0f}s)", flush=True)
    tdir = out / "targets"
    tdir.mkdir(exist_ok=True)
    which = rng.integers(0, 40, 2000)
    targets = unit(concepts["l14"][which] + rng.normal(0, 0.9 / np.sqrt(768), (2000, 768)).astype(np.float32))
    np.save(tdir / "l14_img.npy", targets.astype(np.float16))
    print(f"{a.rows} rows in {a.shards} shards -> {out} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
