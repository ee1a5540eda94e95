"""CommonPool metadata: parquet columns, npz embedding keys, and the pool directory layout.

A pool directory holds ``metadata/*.parquet`` (+ ``.npz`` with the same basename and row order)
and ``shards/*.tar`` in img2dataset's layout. The embedded world also writes ``truth/`` (hidden
ground truth, never read by filters), ``curated/`` and ``evalsets/``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FormatError, InputError
from .atomic import atomic_path

POOL_COLUMNS = [
    "uid",
    "url",
    "text",
    "original_width",
    "original_height",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
    "face_bboxes",
    "sha256",
]
SCORE_COLUMNS = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score",
                 "dfn": "clip_dfn_similarity_score"}  # dfn: a data filtering network's (datacomp.embed.filter_network)
NPZ_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt")

POOL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("clip_b32_similarity_score", pa.float32()),
        ("clip_l14_similarity_score", pa.float32()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        ("sha256", pa.string()),
    ]
)


def metadata_dir(pool: str | os.PathLike) -> Path:
    return Path(pool) / "metadata"


def shards_dir(pool: str | os.PathLike) -> Path:
    return Path(pool) / "shards"


def require_pool_dir(pool: str | os.PathLike, need_shards: bool = False) -> Path:
    pool = Path(pool)
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    if not metadata_dir(pool).is_dir() and not need_shards:
        raise InputError(f"{pool}: not a pool (no metadata/ directory)")
    if need_shards and not shards_dir(pool).is_dir():
        raise InputError(f"{pool}: not a pool (no shards/ directory)")
    return pool


def list_parquets(pool_or_metadata: str | os.PathLike) -> list[Path]:
    """Sorted metadata parquet files of a pool (accepts the pool dir or its metadata dir)."""
    d = Path(pool_or_metadata)
    if (d / "metadata").is_dir():
        d = d / "metadata"
    if not d.is_dir():
        raise InputError(f"{d}: metadata directory does not exist")
    files = sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
    if not files:
        raise InputError(f"{d}: no .parquet metadata files")
    return files


def npz_path(parquet: str | os.PathLike) -> Path:
    return Path(parquet).with_suffix(".npz")


def parquet_num_rows(path: str | os.PathLike) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise FormatError(f"{path}: cannot read parquet: {e}") from None


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one Arrow array: its only chunk as it is (``combine_chunks`` would copy it),
    else the chunks concatenated."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def read_metadata(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read columns of one metadata parquet, checking that they exist (``uid`` always required)."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise FormatError(f"{path}: cannot read parquet: {e}") from None
    names = set(pf.schema_arrow.names)
    wanted = list(columns) if columns is not None else list(pf.schema_arrow.names)
    for col in ["uid", *wanted]:
        if col not in names:
            raise FormatError(f"{path}: parquet has no '{col}' column")
    return pf.read(columns=wanted)


def write_metadata(path: str | os.PathLike, table: pa.Table) -> None:
    """Write a metadata parquet atomically, in the pool schema's column order where present."""
    order = [c for c in POOL_COLUMNS if c in table.column_names] + [c for c in table.column_names if c not in POOL_COLUMNS]
    table = table.select(order)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_npz(path: str | os.PathLike, keys: Iterable[str], expected_rows: int | None = None, dim: int | None = None) -> dict[str, np.ndarray]:
    """Read embedding arrays from an npz, validating keys, row count and (optionally) dimension."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: npz embeddings file does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in keys:
                if k not in z.files:
                    raise FormatError(f"{path}: npz has no key '{k}' (has {', '.join(z.files) or 'none'})")
                out[k] = z[k]
    except FormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path}: cannot read npz: {e}") from None
    for k, a in out.items():
        if a.ndim != 2:
            raise FormatError(f"{path}: npz key '{k}' must be 2-D, got shape {a.shape}")
        if expected_rows is not None and a.shape[0] != expected_rows:
            raise FormatError(f"{path}: npz key '{k}' has {a.shape[0]} rows but its parquet has {expected_rows}")
        if dim is not None and a.shape[1] != dim:
            raise FormatError(f"{path}: npz key '{k}' has dimension {a.shape[1]}, expected {dim}")
    return out


UNIT_TOLERANCE = 0.02  # float16 embeddings hold the unit norm to ~1e-3


def check_unit_rows(a: np.ndarray, key: str, path: str | os.PathLike) -> None:
    """FormatError unless every row of ``a`` has unit L2 norm: CLIP scores are inner products of
    normalised embeddings, and a zero row would score 0 (and pass a threshold) instead of failing."""
    norms = np.linalg.norm(np.asarray(a, dtype=np.float32), axis=1)
    zero = norms == 0
    off = ~zero & ~(np.abs(norms - 1) <= UNIT_TOLERANCE)  # NaN norms count as off
    if zero.any():
        raise FormatError(f"{path}: npz key '{key}' has {int(zero.sum())} all-zero rows of {len(a)} "
                          "(no embedding: run `datacomp embed` on the pool, or drop those rows)")
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise FormatError(f"{path}: npz key '{key}' has {int(off.sum())} rows without unit norm "
                          f"(row {i}: norm {norms[i]:.4g}); CLIP embeddings must be L2-normalised")


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write an npz atomically (compressed, like the reference), merging with keys already there."""
    path = Path(path)
    merged: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            merged = {k: z[k] for k in z.files}
    merged.update(arrays)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **merged)


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays in an npz, read from the member headers only (no decompression of data)."""
    path = Path(path)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as f:
                    major, _minor = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, _ = read_header(f)
                shapes[name[: -len(".npy")]] = tuple(shape)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path}: cannot read npz: {e}") from None
    return shapes


def validate_pool(pool: str | os.PathLike, columns: Sequence[str] = ("uid",)) -> list[Path]:
    """Cheap structural check of a pool's metadata before a stage runs.

    Every parquet must be readable and have ``columns``; every npz beside a parquet must have the
    parquet's row count in each array. Returns the parquet list. Reads footers and headers only.
    ``pool`` is a pool directory or a bare directory of parquets (+ npz), as the reference's
    ``--metadata_dir`` takes.
    """
    if not Path(pool).is_dir() or (Path(pool) / "metadata").is_dir():
        require_pool_dir(pool)
    parquets = list_parquets(pool)
    for p in parquets:
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:
            raise FormatError(f"{p}: cannot read parquet: {e}") from None
        names = set(pf.schema_arrow.names)
        for col in columns:
            if col not in names:
                raise FormatError(f"{p}: parquet has no '{col}' column")
        z = npz_path(p)
        if z.is_file():
            rows = pf.metadata.num_rows
            for key, shape in npz_shapes(z).items():
                if not shape or shape[0] != rows:
                    raise FormatError(f"{z}: npz key '{key}' has {shape[0] if shape else 0} rows but {p.name} has {rows}")
    return parquets
