"""Failure accounting of a download: every attempt img2dataset recorded, the reason of each
failure by kind, the success rate over all rounds, and the retry list ``download/failed.parquet``."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..formats.atomic import atomic_path
from .supervise import shard_ids

STATE_DIR = "download"
RETRIES_DIR = "url_retries"  # STATE_DIR/url_retries/<shard>.json: img2dataset's re-attempts per shard (pool/i2d.py)

_KINDS = [
    ("http_404", re.compile(r"HTTP Error 404")),
    ("http_4xx", re.compile(r"HTTP Error 4\d\d")),
    ("http_5xx", re.compile(r"HTTP Error 5\d\d")),
    ("redirect_loop", re.compile(r"redirect|HTTP Error 3\d\d", re.I)),
    ("too_large", re.compile(r"file too large")),
    ("too_slow", re.compile(r"download too slow")),
    ("timeout", re.compile(r"timed out|timeout", re.I)),
    ("decompression_bomb", re.compile(r"CV_IO_MAX_IMAGE_PIXELS|image area too large|DecompressionBomb")),
    ("not_an_image", re.compile(r"decoding error|cannot identify image", re.I)),
    ("connection", re.compile(r"Connection|urlopen error|Remote end closed|IncompleteRead|reset by peer", re.I)),
    ("disallowed", re.compile(r"X-Robots-Tag")),
    ("hash_mismatch", re.compile(r"hash mismatch")),
]


def failure_kind(message: str | None) -> str:
    if not message:
        return "unknown"
    for kind, rx in _KINDS:
        if rx.search(message):
            return kind
    return "other"


def retry_counts(d: Path) -> dict[str, int]:
    """``{"url_retries": re-attempts made, "urls_retried": URLs attempted more than once}`` over the
    shards img2dataset finished (each at most ``--retries`` re-attempts per URL)."""
    total = {"url_retries": 0, "urls_retried": 0}
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            total["url_retries"] += int(rec.get("retries", 0) or 0)
            total["urls_retried"] += int(rec.get("urls_retried", 0) or 0)
    return total


def read_attempts(shards: Path) -> pa.Table:
    """All rows img2dataset recorded in finished shards: uid, url, text, status, error, shard."""
    done, _ = shard_ids(shards)
    tables = []
    for i in done:
        p = shards / f"{i:08d}.parquet"
        if not p.is_file():
            continue
        t = pq.read_table(p)
        cols = {
            "uid": t.column("uid") if "uid" in t.column_names else pa.nulls(len(t), pa.string()),
            "url": t.column("url"),
            "text": t.column("caption") if "caption" in t.column_names else pa.nulls(len(t), pa.string()),
            "status": t.column("status"),
            "error_message": t.column("error_message").cast(pa.string()),
            "shard": pa.array([i] * len(t), pa.int64()),
        }
        tables.append(pa.table(cols))
    if not tables:
        return pa.table({"uid": pa.array([], pa.string()), "url": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                         "status": pa.array([], pa.string()), "error_message": pa.array([], pa.string()),
                         "shard": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


def summarize(pool: str | os.PathLike) -> dict[str, Any]:
    """Success rate and failure reasons by kind over all rounds; writes the retry list.

    A uid counts as downloaded if any round fetched it; as failed (with the reason of its last
    attempt) otherwise.
    """
    pool = Path(pool)
    shards = pool / "shards"
    t = read_attempts(shards)
    uids = t.column("uid").to_pylist()
    status = t.column("status").to_pylist()
    errors = t.column("error_message").to_pylist()
    urls = t.column("url").to_pylist()
    texts = t.column("text").to_pylist()
    ok = {u for u, s in zip(uids, status) if s == "success"}
    last_fail: dict[str, tuple[str, str, str]] = {}
    for u, s, e, url, text in zip(uids, status, errors, urls, texts):
        if s != "success" and u not in ok:
            last_fail[u] = (e or s or "", url, text)
    attempted = set(uids)
    kinds = Counter(failure_kind(e) for e, _, _ in last_fail.values())
    examples: dict[str, str] = {}
    for e, _, _ in last_fail.values():
        examples.setdefault(failure_kind(e), (e or "")[:200])
    success_rows = sum(1 for s in status if s == "success")
    summary = {
        "attempted_uids": len(attempted),
        "downloaded_uids": len(ok),
        "failed_uids": len(last_fail),
        "success_rate": round(len(ok) / len(attempted), 6) if attempted else None,
        "failure_kinds": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failure_examples": examples,
        "shards": len(shard_ids(shards)[0]),
        "samples_in_shards": success_rows,
        **retry_counts(pool / STATE_DIR / RETRIES_DIR),
    }
    failed = sorted(last_fail)
    table = pa.table({
        "uid": pa.array(failed, pa.string()),
        "url": pa.array([last_fail[u][1] for u in failed], pa.string()),
        "text": pa.array([last_fail[u][2] for u in failed], pa.string()),
        "kind": pa.array([failure_kind(last_fail[u][0]) for u in failed], pa.string()),
        "error": pa.array([last_fail[u][0] for u in failed], pa.string()),
    })
    state = pool / STATE_DIR
    with atomic_path(state / "failed.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return summary
