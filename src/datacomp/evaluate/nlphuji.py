"""Flickr / MSCOCO retrieval and WinoGAViL in their Hugging Face (``nlphuji/*``) form.

The reference loads them with ``datasets.load_dataset("nlphuji/<name>", split="test",
cache_dir=EVALSETS/hf_cache)``. We read, without the ``datasets`` package, either

- parquet files anywhere under the task directory (a snapshot of the dataset's parquet
  export, what ``download_evalsets`` stores: ``EVALSETS/<task-dir>/**/*.parquet``), or
- the arrow files of a ``datasets`` cache (``EVALSETS/hf_cache/nlphuji___<name>/**/*test*.arrow``,
  arrow IPC streams as ``datasets`` writes them).

Columns: retrieval ``image`` (an Image feature: struct ``{bytes, path}`` or plain binary) and
``caption`` (list of strings, or one string); WinoGAViL ``candidate_images`` (list of Image),
``cue`` (string), ``candidates`` and ``associations`` (lists of strings). An image given only by
``path`` is read from that path (absolute, or relative to the file that names it).

Indexing reads only the text columns; image bytes are loaded when the task is evaluated.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InputError
from .dataset import EvalSample, EvalSet, WinoExample
from .registry import Task
from .tasktypes import task_type

log = logging.getLogger(__name__)


def _is_test(p: Path) -> bool:
    """The test split's files: ``test/0000.parquet``, ``<name>-test.arrow``, ``test-00000-of-00001.parquet``."""
    return p.parent.name == "test" or "test" in p.stem.split("-")


def data_files(root: Path) -> tuple[str, list[Path]]:
    """('parquet' | 'arrow', the test split's files) under ``root``, sorted; parquet preferred.
    A parquet set without split names is taken whole."""
    parquet = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if parquet:
        test = [p for p in parquet if _is_test(p)]
        return "parquet", test or parquet
    arrow = sorted(p for p in root.rglob("*.arrow") if p.is_file() and _is_test(p))
    return "arrow", arrow


def read_table(path: Path, kind: str, columns: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            return pq.read_table(path, columns=columns)
        with pa.memory_map(str(path)) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                table = pa.ipc.open_file(src).read_all()
        return table.select(columns) if columns else table
    except KeyError as e:
        raise FormatError(f"{path}: lacks column {e}") from None
    except (pa.ArrowException, OSError) as e:
        raise FormatError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0][:200]})") from None


def _columns(path: Path, kind: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            return list(pq.read_schema(path).names)
        return read_table(path, kind).column_names
    except (pa.ArrowException, OSError) as e:
        raise FormatError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0][:200]})") from None


def _image_bytes(value: Any, where: Path) -> bytes:
    """An Image feature value ({bytes, path} or bytes) -> encoded image bytes (b'' if unreadable)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        p = value.get("path")
        if p:
            for cand in (Path(p), where.parent / p):
                if cand.is_file():
                    return cand.read_bytes()
    return b""  # decodes as a failed image: skipped and counted


def open_nlphuji(root: Path, task: Task) -> EvalSet:
    kind, files = data_files(root)
    if not files:
        raise InputError(f"task {task.key}: {root} holds no test parquet / arrow files of {task.hf_repo}")
    retrieval = task_type(task).carries == "captions"  # else WinoGAViL's candidate sets
    want = ["image", "caption"] if retrieval else ["candidate_images", "cue", "candidates", "associations"]
    text_cols = want[1:]
    samples: list[EvalSample] = []
    examples: list[WinoExample] = []
    refs: list[tuple[int, int, int]] = []  # (file, row, list index) of each sample's image
    for fi, path in enumerate(files):
        cols = _columns(path, kind)
        missing = [c for c in want if c not in cols]
        if missing:
            raise FormatError(f"task {task.key}: {path} lacks column(s) {', '.join(missing)} (has {', '.join(cols[:8])})")
        table = read_table(path, kind, text_cols).to_pydict()
        n = len(table[text_cols[0]])
        for row in range(n):
            key = f"{path.stem}/{row}"
            if retrieval:
                caps = table["caption"][row]
                caps = [caps] if isinstance(caps, str) else list(caps or [])
                caps = [c.strip() for c in caps if c and c.strip()]
                if not caps:
                    raise FormatError(f"task {task.key}: {path}: row {row} has no caption")
                samples.append(EvalSample(key=key, shard=-1, offset=len(refs), size=-1, captions=caps))
                refs.append((fi, row, -1))
            else:
                cue = table["cue"][row]
                cands = list(table["candidates"][row] or [])
                assoc = set(table["associations"][row] or [])
                if not cue or not cands:
                    raise FormatError(f"task {task.key}: {path}: row {row} has no cue or no candidates")
                idx = []
                for j in range(len(cands)):
                    idx.append(len(samples))
                    samples.append(EvalSample(key=f"{key}/{j}", shard=-1, offset=len(refs), size=-1))
                    refs.append((fi, row, j))
                gold = np.isin(np.asarray(cands, dtype=object), np.asarray(list(assoc), dtype=object))
                examples.append(WinoExample(cue=str(cue), images=idx, gold=gold))
    if not samples:
        raise FormatError(f"task {task.key}: {root}: no rows in {', '.join(str(f) for f in files[:3])}")
    image_col = want[0]

    def load_blobs() -> list[bytes]:
        out: list[bytes] = [b""] * len(refs)
        by_file: dict[int, list[int]] = {}
        for i, (fi, _, _) in enumerate(refs):
            by_file.setdefault(fi, []).append(i)
        for fi, ids in by_file.items():
            col = read_table(files[fi], kind, [image_col]).column(image_col).to_pylist()
            for i in ids:
                _, row, j = refs[i]
                v = col[row] if j < 0 else (col[row] or [None] * (j + 1))[j] if j < len(col[row] or []) else None
                out[i] = _image_bytes(v, files[fi])
        return out

    return EvalSet(task=task, root=root, shards=list(files), samples=samples, examples=examples,
                   blob_loader=load_blobs, layout=kind)
