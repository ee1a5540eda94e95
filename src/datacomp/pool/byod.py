"""Bring your own data: url/caption tables or existing webdataset shards become a pool.

Every later stage (embed, filters, reshard, train) then works on them unchanged.

uids. CommonPool's uid is a hash of (url, text) computed at URL extraction (DATACOMP.md §3.2).
We follow cc2dataset, the tool the paper names for that step: ``md5(text + url)`` over the UTF-8
bytes, as 32 lowercase hex characters (no separator). We could not check this against a released
CommonPool row (the example row in the reference gives no url), so treat it as our documented
choice: it is deterministic, 128-bit, and equal inputs give equal uids across runs and machines.
Rows with the same uid (same url and text) are kept once, the first time they occur.

* :func:`byod_metadata` — parquet/csv with a url and a caption column -> ``POOL/metadata``
  (CommonPool columns; scores NaN, no face boxes, sizes unknown until download). Then
  :func:`datacomp.pool.download.download` fetches the images as for CommonPool.
* :func:`byod_from_shards` — webdataset tars (image + txt and/or json, no uid) ->
  ``POOL/shards`` in img2dataset's layout with ``uid`` in each json, and ``POOL/metadata``
  parquet ``i`` holding shard ``i``'s samples in the same order. A sample without a url in its
  json gets ``url = "sha256:<hex of the image bytes>"``, so its uid depends on content only.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import ConfigError, FormatError, InputError, StageConflictError
from ..executors import Unit, run_units
from ..formats.atomic import atomic_path, replaced_dir
from ..formats.guard import check_apart, tree_records
from ..formats.manifest import Manifest
from ..formats.pool import POOL_COLUMNS, POOL_SCHEMA, write_metadata
from ..formats.shards import IMAGE_EXTS, ShardWriter, check_losses, list_shards, losses_record, sample_key
from ..formats.stage import StageOutput
from ..formats.tar import LINK, TarSamples
from .input_files import input_files

log = logging.getLogger(__name__)

STAGE = "byod"
URL_COLUMNS = ("url", "URL", "image_url", "img_url")
TEXT_COLUMNS = ("text", "caption", "TEXT", "alt", "alt_text")


def compute_uid(url: str, text: str) -> str:
    """CommonPool-style uid of one (url, text) pair (see the module docstring)."""
    return hashlib.md5(((text or "") + (url or "")).encode("utf-8")).hexdigest()


def compute_uids(urls: Sequence[str], texts: Sequence[str]) -> list[str]:
    md5 = hashlib.md5
    return [md5(((t or "") + (u or "")).encode("utf-8")).hexdigest() for u, t in zip(urls, texts)]


# ---- url/caption tables -> metadata ----------------------------------------------------------------

def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix in (".csv", ".tsv") or path.name.endswith((".csv.gz", ".tsv.gz")):
            delim = "\t" if ".tsv" in path.name else ","
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim, newlines_in_values=True),
                                  convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: cannot read table: {e}") from None
    raise InputError(f"{path}: not a .parquet, .csv or .tsv file")


def _pick(names: list[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise FormatError(f"{path}: no '{wanted}' column (columns: {', '.join(names)})")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise FormatError(f"{path}: no {what} column (looked for {', '.join(candidates)}; pass the column name)")


def _input_files(inputs) -> list[Path]:
    def named(p: Path) -> list[Path]:
        if not p.is_file():
            raise InputError(f"{p}: does not exist")
        return [p]

    return input_files(inputs, (".parquet", ".csv", ".tsv", ".csv.gz", ".tsv.gz"), ".parquet/.csv/.tsv", named)


def byod_metadata(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    pool: str | os.PathLike,
    url_col: str | None = None,
    text_col: str | None = None,
    rows_per_file: int = 500_000,
    overwrite: bool = False,
) -> Manifest:
    """url/caption parquet or csv files -> ``POOL/metadata/{i:08d}.parquet`` in CommonPool columns."""
    pool = Path(pool)
    mdir = pool / "metadata"
    if rows_per_file < 1:
        raise ConfigError(f"rows_per_file must be positive, got {rows_per_file}")
    files = _input_files(inputs)
    check_apart(mdir, {"table": files})
    params = {"inputs": [str(f.resolve()) for f in files], "url_col": url_col, "text_col": text_col,
              "rows_per_file": rows_per_file, "uid": "md5(text + url)"}
    # the metadata is built beside the old one and swapped in: the old output stands until then
    life = StageOutput(STAGE, pool, params, inputs={"tables": _fingerprints(files)}, overwrite=overwrite, replace="aside")
    if (mdir.is_dir() and any(mdir.iterdir()) and not overwrite and life.read_manifest() is None
            and life.read_pending() is None):
        raise StageConflictError(f"{mdir}: already holds metadata that no byod run made; pass --overwrite to replace it")
    done = life.begin()
    if done is not None:
        return done
    t0 = time.time()
    seen: set[str] = set()
    uids: list[str] = []
    urls: list[str] = []
    texts: list[str] = []
    rows_in = dropped_empty = dropped_dup = 0
    for f in files:
        t = _read_table(f)
        uc = _pick(t.column_names, url_col, URL_COLUMNS, "url", f)
        tc = _pick(t.column_names, text_col, TEXT_COLUMNS, "caption", f)
        u_list = t.column(uc).cast(pa.string()).to_pylist()
        t_list = t.column(tc).cast(pa.string()).to_pylist()
        rows_in += len(u_list)
        for u, x in zip(u_list, t_list):
            if not u:
                dropped_empty += 1
                continue
            x = x or ""
            uid = compute_uid(u, x)
            if uid in seen:
                dropped_dup += 1
                continue
            seen.add(uid)
            uids.append(uid)
            urls.append(u)
            texts.append(x)
    n = len(uids)
    n_files = max(1, -(-n // rows_per_file))
    with replaced_dir(mdir) as new:  # every table is read before the old metadata goes
        for i in range(n_files):
            sl = slice(i * rows_per_file, min(n, (i + 1) * rows_per_file))
            write_metadata(new / f"{i:08d}.parquet", _pool_table(uids[sl], urls[sl], texts[sl]))
    counts = {"input_rows": rows_in, "rows": n, "dropped_empty_url": dropped_empty, "dropped_duplicate_uid": dropped_dup,
              "metadata_files": n_files}
    return life.finish(Manifest(stage=STAGE, params=params, counts=counts, timings={"total": round(time.time() - t0, 3)}))


def _fingerprints(files: list[Path]) -> list[str]:
    """Name, size and modification time of each input table: a changed table is read again."""
    return [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]


def _pool_table(uids, urls, texts, widths=None, heights=None, sha=None) -> pa.Table:
    n = len(uids)
    return pa.table({
        "uid": pa.array(uids, pa.string()),
        "url": pa.array(urls, pa.string()),
        "text": pa.array(texts, pa.string()),
        "original_width": pa.array(widths if widths is not None else [None] * n, pa.int64()),
        "original_height": pa.array(heights if heights is not None else [None] * n, pa.int64()),
        "clip_b32_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "clip_l14_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "face_bboxes": pa.array([[] for _ in range(n)], pa.list_(pa.list_(pa.float64()))),
        "sha256": pa.array(sha if sha is not None else [None] * n, pa.string()),
    }, schema=POOL_SCHEMA)


# ---- existing webdataset shards -> pool -------------------------------------------------------------

def _read_tar_samples(path: str) -> tuple[list[tuple[str, dict[str, bytes]]], str | None]:
    """Samples of one tar (grouped by key), refusing members that escape the directory; a damaged
    tar keeps the samples before the damage (``formats.tar.TarSamples``); links are marked."""
    reader = TarSamples(path, on_damage="keep", links=True, stream_mode="r|*")
    return list(reader), reader.error


def _image(files: dict[str, bytes]) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTS:
        if ext in files:
            return ("jpg" if ext == "jpeg" else ext), files[ext]
    return None


def _describe(key: str, files: dict[str, bytes]) -> dict[str, Any] | None:
    img = _image(files)
    if img is None or LINK in files:
        return None
    meta: dict[str, Any] = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
            meta = meta if isinstance(meta, dict) else {}
        except (ValueError, UnicodeDecodeError):
            meta = {}
    text = files["txt"].decode("utf-8", "replace") if "txt" in files else str(meta.get("caption") or meta.get("text") or "")
    sha = hashlib.sha256(img[1]).hexdigest()
    url = meta.get("url")
    url = url if isinstance(url, str) and url else f"sha256:{sha}"
    return {"uid": compute_uid(url, text), "url": url, "text": text, "sha256": sha, "meta": meta, "ext": img[0]}


def scan_byod_unit(tar: str, out: str) -> dict[str, Any]:
    samples, error = _read_tar_samples(tar)
    uids, skipped, unsafe = [], 0, 0
    for key, files in samples:
        d = _describe(key, files)
        if d is None:
            unsafe += LINK in files
            skipped += LINK not in files
            uids.append(None)
        else:
            uids.append(d["uid"])
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(pa.table({"uid": pa.array(uids, pa.string())}), tmp)
    return {"samples": len(samples), "without_image": skipped, "with_link_member": unsafe, "error": error}


def write_byod_unit(index: int, tar: str, keep_path: str, pool: str) -> dict[str, Any]:
    from PIL import Image

    keep = pq.read_table(keep_path).column("keep").to_pylist()
    samples, _ = _read_tar_samples(tar)
    pool_p = Path(pool)
    rows: dict[str, list] = {k: [] for k in ("uid", "url", "text", "w", "h", "sha")}
    written = undecodable = 0
    with ShardWriter(pool_p / "shards" / f"{index:08d}.tar") as w:
        j = 0
        for (key, files), ok in zip(samples, keep):
            if not ok:
                continue
            d = _describe(key, files)
            ext, data = _image(files)
            try:
                with Image.open(io.BytesIO(data)) as im:  # header only: no full decode
                    width, height = im.size
            except Exception:  # noqa: BLE001 - any unreadable image is skipped and counted
                undecodable += 1
                continue
            skey = sample_key(index, j)
            j += 1
            row = {"uid": d["uid"], "url": d["url"], "caption": d["text"], "key": skey, "status": "success",
                   "error_message": None, "width": width, "height": height,
                   "original_width": width, "original_height": height, "sha256": d["sha256"]}
            record = {**{k: v for k, v in d["meta"].items() if k not in row}, **row}  # keep the source's extra fields
            w.write(skey, {ext: data, "txt": d["text"].encode("utf-8"), "json": json.dumps(record).encode("utf-8")},
                    record=row)
            for k, v in (("uid", d["uid"]), ("url", d["url"]), ("text", d["text"]), ("w", width), ("h", height), ("sha", d["sha256"])):
                rows[k].append(v)
            written += 1
    write_metadata(pool_p / "metadata" / f"{index:08d}.parquet",
                   _pool_table(rows["uid"], rows["url"], rows["text"], rows["w"], rows["h"], rows["sha"]))
    return {"written": written, "undecodable": undecodable}


def byod_from_shards(
    source: str | os.PathLike,
    pool: str | os.PathLike,
    workers: int = 2,
    executor: str = "local",
    overwrite: bool = False,
    strict: bool = False,
) -> Manifest:
    """Webdataset tars without CommonPool metadata -> a pool (shards + metadata); resumable.

    Damaged input tars are recorded in the manifest (``losses``); ``strict`` makes them an error."""
    source, pool = Path(source), Path(pool)
    check_apart(pool, {"shards": source})
    tars = list_shards(source / "shards" if (source / "shards").is_dir() else source)
    params = {"source": str(source.resolve()), "tars": [t.name for t in tars], "uid": "md5(text + url)"}
    work = pool / ".work-byod"
    life = StageOutput(STAGE, pool, params, overwrite=overwrite, owned=["shards", "metadata", work])
    done = life.begin()  # other params on a finished or unfinished pool: StageConflictError
    if done is not None:
        check_losses(done.extra.get("losses") or {}, strict)
        return done
    t0 = time.time()
    scan_units = [Unit(f"{i:08d}", (str(t), str(work / "scan" / f"{i:08d}.parquet"))) for i, t in enumerate(tars)]
    scans = run_units(scan_byod_unit, scan_units, work / "scan", workers=workers, executor=executor, desc="byod: scan")
    losses = losses_record({str(tars[int(n)]): s["error"] for n, s in scans.items() if s["error"]}, None)
    check_losses(losses, strict)  # before anything is written
    # global first-occurrence dedup on uid, in input order
    seen: set[str] = set()
    dup = 0
    for i, _ in enumerate(tars):
        kp = work / "keep" / f"{i:08d}.parquet"
        uids = pq.read_table(work / "scan" / f"{i:08d}.parquet").column("uid").to_pylist()
        keep = []
        for u in uids:
            ok = u is not None and u not in seen
            if u is not None and u in seen:
                dup += 1
            if ok:
                seen.add(u)
            keep.append(ok)
        if not kp.is_file():
            with atomic_path(kp, suffix=".parquet") as tmp:
                pq.write_table(pa.table({"keep": pa.array(keep, pa.bool_())}), tmp)
    units = [Unit(f"{i:08d}", (i, str(t), str(work / "keep" / f"{i:08d}.parquet"), str(pool))) for i, t in enumerate(tars)]
    res = run_units(write_byod_unit, units, work / "write", workers=workers, executor=executor, desc="byod: write")
    counts = {
        "input_tars": len(tars),
        "input_samples": sum(s["samples"] for s in scans.values()),
        "samples": sum(r["written"] for r in res.values()),
        "without_image": sum(s["without_image"] for s in scans.values()),
        "with_link_member": sum(s.get("with_link_member", 0) for s in scans.values()),
        "undecodable_images": sum(r["undecodable"] for r in res.values()),
        "duplicate_uids": dup,
        "damaged_tars": sorted(n for n, s in scans.items() if s["error"]),
    }
    m = Manifest(stage=STAGE, params=params, counts=counts, timings={"total": round(time.time() - t0, 3)},
                 extra={"losses": losses, "files": tree_records(pool, ["shards"])})  # not metadata/: embed adds to it
    life.finish(m)
    shutil.rmtree(work, ignore_errors=True)
    return m


__all__ = ["compute_uid", "compute_uids", "byod_metadata", "byod_from_shards", "POOL_COLUMNS"]
