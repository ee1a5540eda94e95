"""Sample grids: for each recipe, a deterministic handful of kept and of dropped pool rows, with
their thumbnail (read from the pool's shards), caption and scores.

The rows shown are the first kept and the first dropped ones in uid order: uids are hashes, so
that order is an unbiased sample, and the same inputs always show the same rows.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..formats.atomic import write_bytes
from ..formats.pool import list_parquets, shards_dir
from ..formats.shards import IMAGE_EXTS

META_COLUMNS = ("uid", "text", "original_width", "original_height", "clip_l14_similarity_score",
                "clip_b32_similarity_score")
THUMB = 96


@dataclass(frozen=True)
class PoolTable:
    """The pool's metadata columns the report uses, in row order (shard order, then row order)."""

    uids: list[str]
    pairs: np.ndarray
    columns: dict[str, np.ndarray]
    shards: tuple[tuple[str, int], ...]  # (metadata parquet stem, rows), in order

    def __len__(self) -> int:
        return len(self.uids)

    def by_shard(self, rows: list[int]) -> dict[str, list[int]]:
        """Pool row indices -> {shard stem: rows within that shard}."""
        starts = np.cumsum([0] + [n for _, n in self.shards])
        out: dict[str, list[int]] = {}
        for i in rows:
            k = int(np.searchsorted(starts, i, side="right")) - 1
            out.setdefault(self.shards[k][0], []).append(int(i - starts[k]))
        return out


def load_pool_table(pool: Path) -> PoolTable | None:
    """The pool's metadata (None when ``pool/metadata/*.parquet`` is missing)."""
    import pyarrow.parquet as pq

    from ..formats.uids import uids_to_pairs

    try:
        files = list_parquets(pool)
    except InputError:
        return None
    tables = []
    for p in files:
        names = set(pq.read_schema(p).names)
        tables.append(pq.read_table(p, columns=[c for c in META_COLUMNS if c in names]))
    cols: dict[str, np.ndarray] = {}
    for c in META_COLUMNS:
        if all(c in t.column_names for t in tables):
            cols[c] = np.concatenate([t.column(c).to_numpy(zero_copy_only=False) for t in tables])
    uids = [str(u) for u in cols.pop("uid")]
    shards = tuple((p.stem, t.num_rows) for p, t in zip(files, tables))
    return PoolTable(uids=uids, pairs=uids_to_pairs(uids), columns=cols, shards=shards)


def uid_order(pairs: np.ndarray) -> np.ndarray:
    """Row indices in uid order (the hex uids' order is their (hi, lo) pairs' order)."""
    return np.lexsort((pairs["f1"], pairs["f0"]))


def pick(order: np.ndarray, kept: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Row indices of the first ``n`` kept and the first ``n`` dropped rows in ``order`` (:func:`uid_order`)."""
    k = order[kept[order]][:n]
    d = order[~kept[order]][:n]
    return [int(i) for i in k], [int(i) for i in d]


def _shard_keys(pool: Path, wanted: set[str]) -> dict[Path, dict[str, str]]:
    """tar -> {key: uid} for the wanted uids, from the shards' parquet (img2dataset's ``key``, ``uid``)."""
    import pyarrow.parquet as pq

    out: dict[Path, dict[str, str]] = {}
    for p in sorted(shards_dir(pool).glob("*.parquet")):
        tar = p.with_suffix(".tar")
        names = set(pq.read_schema(p).names)
        if not tar.is_file() or not {"key", "uid"} <= names:
            continue
        t = pq.read_table(p, columns=["key", "uid"])
        hits = {k: u for k, u in zip(t.column("key").to_pylist(), t.column("uid").to_pylist()) if u in wanted}
        if hits:
            out[tar] = hits
    return out


def thumbnails(pool: Path, uids: set[str], out_dir: Path, rel: str) -> dict[str, str]:
    """Write a PNG thumbnail of each uid's image found in ``pool/shards``; -> uid -> path relative
    to the page (``rel``/<uid>.png). Uids whose image is not in the shards are left out."""
    from PIL import Image

    from ..formats.ustar import tar_members

    found: dict[str, str] = {}
    for tar, keys in _shard_keys(pool, uids).items():
        with open(tar, "rb") as f:
            for name, offset, size, regular in tar_members(tar):
                stem, dot, ext = name.rpartition(".")
                if not regular or not dot or ext.lower() not in IMAGE_EXTS or stem not in keys or keys[stem] in found:
                    continue
                f.seek(offset)
                try:
                    img = Image.open(io.BytesIO(f.read(size))).convert("RGB")
                except OSError:
                    continue
                img.thumbnail((THUMB, THUMB))
                buf = io.BytesIO()
                img.save(buf, format="PNG", optimize=False)
                uid = keys[stem]
                write_bytes(out_dir / f"{uid}.png", buf.getvalue())
                found[uid] = f"{rel}/{uid}.png"
    return found


def sample_cards(table: PoolTable, rows: list[int], truth_kinds: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """What a grid shows of each row: uid, caption, scores, original size, the truth's kind."""
    c = table.columns
    out = []
    for i in rows:
        card: dict[str, Any] = {"uid": table.uids[i], "caption": str(c["text"][i]) if "text" in c else ""}
        for col, name in (("clip_l14_similarity_score", "L/14"), ("clip_b32_similarity_score", "B/32")):
            if col in c and c[col][i] is not None and not np.isnan(c[col][i]):
                card[name] = float(c[col][i])
        if "original_width" in c and "original_height" in c:
            card["size"] = f"{int(c['original_width'][i])}×{int(c['original_height'][i])}"
        if truth_kinds is not None and i in truth_kinds:
            card["truth"] = truth_kinds[i]
        out.append(card)
    return out
