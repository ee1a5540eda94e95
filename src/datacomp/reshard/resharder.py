"""The reshard stage (see the package docstring for the algorithm)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, FormatError, InputError, StageConflictError
from ..executors import Unit, run_units
from ..formats.atomic import atomic_path, write_json
from ..formats.manifest import MANIFEST_NAME, Manifest, check_reusable, manifest_digest, write_manifest
from ..formats.shards import SHARD_FORMAT, ShardWriter, list_shards, read_stats
from ..formats.uids import read_subset

log = logging.getLogger(__name__)

STAGE = "reshard"
WORK = ".work"
SAMPLE_IDS = "sample_ids.npy"
META = "meta.json"


# ---- uid membership ------------------------------------------------------------------------------

def pairs_to_keys(pairs: np.ndarray) -> np.ndarray:
    """``u8,u8`` pairs -> 16-byte big-endian strings, whose byte order is the (hi, lo) order."""
    words = np.empty((len(pairs), 2), dtype=">u8")
    words[:, 0] = pairs["f0"]
    words[:, 1] = pairs["f1"]
    return words.view("S16").ravel()


def hex_to_keys(uids: list[str]) -> np.ndarray:
    """32-hex uids (validated by the caller) -> the same 16-byte keys, in one conversion."""
    if not uids:
        return np.empty(0, dtype="S16")
    return np.frombuffer(bytes.fromhex("".join(uids)), dtype="S16")


@lru_cache(maxsize=1)
def _subset_keys(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return pairs_to_keys(np.asarray(read_subset(path, mmap=True)))


def subset_keys(path: str) -> np.ndarray:
    st = os.stat(path)
    return _subset_keys(path, st.st_mtime_ns, st.st_size)


def multiplicities(keys: np.ndarray, sorted_subset_keys: np.ndarray) -> np.ndarray:
    """How many times each key occurs in the sorted subset (two vectorised binary searches)."""
    left = sorted_subset_keys.searchsorted(keys, side="left")
    right = sorted_subset_keys.searchsorted(keys, side="right")
    return (right - left).astype(np.int64)


_HEX = frozenset("0123456789abcdefABCDEF")


def _is_uid(u: Any) -> bool:
    return isinstance(u, str) and len(u) == 32 and _HEX.issuperset(u)


# ---- pass 1: scan one input shard ---------------------------------------------------------------

def _safe_name(name: str) -> bool:
    return not (name.startswith("/") or name.startswith("\\") or ".." in name.replace("\\", "/").split("/"))


class _Fallback(Exception):
    """A header the fast reader does not handle (pax, GNU long names, base-256 sizes)."""


def _octal(field: bytes) -> int:
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _read_headers_fast(tar: Path, file_size: int) -> tuple[list[tuple[str, int, int, bool]], int, str | None]:
    """Headers of a plain ustar/GNU tar: [(name, data offset, size, regular file)], end, error.

    About 5x faster than ``tarfile`` (which parses every header field in Python); data is skipped
    by seeking. Raises _Fallback for anything unusual so ``tarfile`` handles it instead.
    """
    entries: list[tuple[str, int, int, bool]] = []
    pos = 0
    with open(tar, "rb") as f:
        while pos < file_size:
            f.seek(pos)
            hdr = f.read(512)
            if len(hdr) < 512:
                return entries, pos, f"cut-off header at byte {pos}"
            if hdr[0] == 0 and hdr.count(0) == 512:
                return entries, pos, None  # end-of-archive block
            try:
                chk = _octal(hdr[148:156])
                if hdr[124] & 0x80:
                    raise _Fallback("base-256 size")
                size = _octal(hdr[124:136])
            except ValueError:
                return entries, pos, f"bad header at byte {pos}"
            if chk != sum(hdr) - sum(hdr[148:156]) + 256:
                return entries, pos, f"bad header checksum at byte {pos}"
            flag = hdr[156:157]
            if flag in (b"x", b"g", b"L", b"K"):
                raise _Fallback(f"header type {flag!r}")
            name = hdr[0:100].split(b"\0", 1)[0]
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            entries.append((name.decode("utf-8", "surrogateescape"), pos + 512, size, flag in (b"0", b"\0", b"7")))
            pos += 512 + (size + 511) // 512 * 512
    return entries, pos, None


def _read_headers(tar: Path, file_size: int) -> tuple[list[tuple[str, int, int, bool]], int, str | None]:
    try:
        return _read_headers_fast(tar, file_size)
    except _Fallback:
        pass
    entries: list[tuple[str, int, int, bool]] = []
    try:
        with tarfile.open(tar, "r:") as tf:  # random-access mode: data is skipped by seeking
            for m in tf:
                entries.append((m.name, m.offset_data, m.size, m.isfile()))
            return entries, tf.offset, None
    except (tarfile.TarError, OSError, EOFError) as e:
        return entries, 0, f"{type(e).__name__}: {e}"


def scan_unit(tar_path: str, subset_path: str, out_path: str) -> dict[str, Any]:
    """Find the subset's samples in one tar; save (uid, multiplicity, member offsets) as parquet."""
    tar = Path(tar_path)
    file_size = tar.stat().st_size
    keys_sorted = subset_keys(subset_path)
    processed = 0
    no_uid = 0
    corrupt_samples = 0
    unsafe_members = 0
    error = None
    uids: list[str] = []
    members: list[list[tuple[str, int, int]]] = []

    entries, end_pos, error = _read_headers(tar, file_size)
    if error is None:
        tail = _nonzero_tail(tar, end_pos, file_size)
        if tail is not None:  # a cut-off header: the last sample may be incomplete
            error = f"truncated or damaged after byte {tail}"

    group_key: str | None = None
    group: list[tuple[str, int, int]] = []
    group_json: tuple[int, int] | None = None
    group_bad = False
    with open(tar, "rb") as f:

        def flush() -> None:
            nonlocal processed, no_uid, corrupt_samples, group_key, group, group_json, group_bad
            if group_key is None:
                return
            processed += 1
            if group_bad:
                corrupt_samples += 1
            else:
                uid = None
                if group_json is not None:
                    f.seek(group_json[0])
                    try:
                        meta = json.loads(f.read(group_json[1]))
                        uid = meta.get("uid") if isinstance(meta, dict) else None
                    except (ValueError, UnicodeDecodeError):
                        uid = None
                if _is_uid(uid):
                    uids.append(uid.lower())
                    members.append(group)
                else:
                    no_uid += 1
            group_key, group, group_json, group_bad = None, [], None, False

        for name, offset, size, isfile in entries:
            if not isfile:
                continue
            base = name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            if key != group_key:
                flush()
                group_key = key
            if not _safe_name(name):
                unsafe_members += 1
                group_bad = True
                continue
            if offset + size > file_size:
                group_bad = True  # cut-off member
                continue
            ext = ext.lower()
            group.append((ext, offset, size))
            if ext == "json":
                group_json = (offset, size)
        if error is not None:
            group_bad = True  # the sample in progress at the damage is dropped
            log.warning("%s: %s; kept the samples before the damage", tar, error)
        flush()

    keys = hex_to_keys(uids)
    mult = multiplicities(keys, keys_sorted) if len(keys) else np.empty(0, np.int64)
    sel = np.nonzero(mult > 0)[0]
    table = pa.table({
        "uid": pa.array([uids[i] for i in sel], pa.string()),
        "mult": pa.array(mult[sel], pa.int64()),
        "exts": pa.array([[e for e, _, _ in members[i]] for i in sel], pa.list_(pa.string())),
        "offsets": pa.array([[o for _, o, _ in members[i]] for i in sel], pa.list_(pa.int64())),
        "sizes": pa.array([[s for _, _, s in members[i]] for i in sel], pa.list_(pa.int64())),
    })
    with atomic_path(out_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    stats = _stats_or_none(tar)
    return {
        "processed": processed,
        "matched": int(len(sel)),
        "emitted": int(mult[sel].sum()) if len(sel) else 0,
        "json_without_uid": no_uid,
        "corrupt_samples": corrupt_samples,
        "unsafe_members": unsafe_members,
        "error": error,
        "expected": None if stats is None else stats.get("successes"),
    }


def _nonzero_tail(tar: Path, start: int, file_size: int) -> int | None:
    """Offset of the first non-zero byte after the last member (a cut-off tar), or None."""
    with open(tar, "rb") as f:
        f.seek(start)
        pos = start
        while pos < file_size:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                return pos + next(i for i, b in enumerate(chunk) if b)
            pos += len(chunk)
    return None


def _stats_or_none(tar: Path) -> dict[str, Any] | None:
    try:
        return read_stats(tar)
    except FormatError as e:  # a corrupt stats file only loses the expected count
        log.warning("%s", e)
        return None


# ---- pass 2: pack one output shard ---------------------------------------------------------------

def pack_unit(out_tar: str, segments: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    """Write output shard ``out_tar`` from segments (input tar, scan parquet, first, last emitted
    index within that input shard, end exclusive)."""
    count = 0
    with ShardWriter(out_tar, write_parquet=False, write_stats=False) as w:
        for tar_path, scan_path, start, end in segments:
            table = pq.read_table(scan_path)
            uids = table.column("uid").to_pylist()
            mult = table.column("mult").to_numpy()
            exts = table.column("exts").to_pylist()
            offsets = table.column("offsets").to_pylist()
            sizes = table.column("sizes").to_pylist()
            row = np.repeat(np.arange(len(uids)), mult)  # emitted index -> scan row
            first = np.concatenate([[0], np.cumsum(mult)[:-1]]) if len(mult) else np.empty(0, np.int64)
            with open(tar_path, "rb") as f:
                cached_row, files = -1, {}
                for e in range(start, end):
                    r = int(row[e])
                    if r != cached_row:
                        files = {}
                        for ext, off, size in zip(exts[r], offsets[r], sizes[r]):
                            f.seek(off)
                            data = f.read(size)
                            if len(data) != size:
                                raise InputError(f"{tar_path}: shard changed while resharding (short read at {off})")
                            files[ext] = data
                        cached_row = r
                    j = e - int(first[r])
                    w.write(f"{uids[r]}-{j}", files)
                    count += 1
    write_json(Path(out_tar).with_name(Path(out_tar).stem + "_stats.json"), {"successes": count}, indent=None)
    return {"successes": count}


# ---- the stage -----------------------------------------------------------------------------------

def _input_shards(pool: Path) -> list[Path]:
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    d = pool / "shards" if (pool / "shards").is_dir() else pool
    return list_shards(d)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _our_files(out: Path) -> list[Path]:
    names = []
    for p in out.iterdir():
        n = p.name
        if (n.endswith(".tar") and n[:-4].isdigit()) or (n.endswith("_stats.json") and n[:-11].isdigit()) \
                or n in (META, SAMPLE_IDS, MANIFEST_NAME, WORK, ".done") or (n.startswith(".") and ".tmp" in n):
            names.append(p)
    return names


def _clear(out: Path) -> None:
    for p in _our_files(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def reshard(
    pool: str | os.PathLike,
    subset: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 10000,
    workers: int = 2,
    executor: str = "local",
    overwrite: bool = False,
) -> Manifest:
    """Write the subset's samples of ``pool`` (a pool dir with shards/, or a dir of tars) to ``out``."""
    t_start = time.time()
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    pool, subset, out = Path(pool), Path(subset), Path(out)
    shards = _input_shards(pool)
    sub = read_subset(subset, mmap=True)  # validates dtype and order
    params = {
        "pool": str(pool.resolve()),
        "input_shards": [p.name for p in shards],
        "subset": str(subset.resolve()),
        "subset_sha256": _sha256(subset),
        "shard_size": shard_size,
        "output_shard_format": SHARD_FORMAT,
    }
    existing = check_reusable(out, STAGE, params, overwrite)
    if existing is not None:
        log.info("%s: already resharded with these parameters, reusing it", out)
        shutil.rmtree(out / WORK, ignore_errors=True)
        return existing

    work = out / WORK
    params_file = work / "params.json"
    if out.is_dir():
        prev = None
        if params_file.is_file():
            try:
                prev = json.loads(params_file.read_text())
            except json.JSONDecodeError:
                prev = None
        if prev is not None and prev == json.loads(json.dumps(params)):
            log.info("%s: resuming an unfinished reshard", out)
        elif any(out.iterdir()):
            if not overwrite:
                raise StageConflictError(f"{out}: output directory is not empty and holds no unfinished reshard "
                                         "with these parameters; pass --overwrite to replace it")
            _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    if not params_file.is_file():
        write_json(params_file, params)

    ids_path = out / SAMPLE_IDS
    if not ids_path.is_file():
        with atomic_path(ids_path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(sub), allow_pickle=False)
    n_subset = len(sub)
    del sub

    # pass 1: scan ------------------------------------------------------------------------------
    t0 = time.time()
    scan_dir = work / "scan"
    weights = {}
    missing_stats = []
    for p in shards:
        st = _stats_or_none(p)
        if st is None:
            missing_stats.append(p.name)
        weights[p.name] = max(1, int((st or {}).get("successes") or 1))
    units = [Unit(p.stem, (str(p), str(ids_path), str(scan_dir / f"{p.stem}.parquet")), weights[p.name]) for p in shards]
    scans = run_units(scan_unit, units, scan_dir, workers=workers, executor=executor,
                      desc="reshard: scan", unit_label="samples")
    t_scan = time.time() - t0

    # plan: emitted sequence in input order, cut into output shards of shard_size
    emitted = [scans[p.stem]["emitted"] for p in shards]
    total = int(sum(emitted))
    n_out = (total + shard_size - 1) // shard_size
    starts = np.concatenate([[0], np.cumsum(emitted)]).astype(np.int64)
    pack_units = []
    for o in range(n_out):
        lo, hi = o * shard_size, min((o + 1) * shard_size, total)
        segs = []
        for i, p in enumerate(shards):
            a, b = max(lo, int(starts[i])), min(hi, int(starts[i + 1]))
            if a < b:
                segs.append((str(p), str(scan_dir / f"{p.stem}.parquet"), a - int(starts[i]), b - int(starts[i])))
        pack_units.append(Unit(f"{o:08d}", (str(out / SHARD_FORMAT.format(o)), segs), hi - lo))

    # pass 2: pack ------------------------------------------------------------------------------
    t0 = time.time()
    packed = run_units(pack_unit, pack_units, work / "pack", workers=workers, executor=executor,
                       desc="reshard: write", unit_label="samples")
    t_pack = time.time() - t0
    # stale shards from an earlier, larger output cannot survive: _clear ran unless params matched
    for p in out.glob("*.tar"):
        if p.stem.isdigit() and int(p.stem) >= n_out:
            p.unlink()
            p.with_name(p.stem + "_stats.json").unlink(missing_ok=True)

    # missing uids: unique subset uids not found in any input shard
    found = [pq.read_table(scan_dir / f"{p.stem}.parquet", columns=["uid", "mult"]) for p in shards]
    found_t = pa.concat_tables(found) if found else pa.table({"uid": pa.array([], pa.string()), "mult": pa.array([], pa.int64())})
    found_uids = found_t.column("uid").to_numpy(zero_copy_only=False)
    found_unique, first_idx = np.unique(found_uids, return_index=True) if len(found_uids) else (np.empty(0), np.empty(0, np.int64))
    found_rows = int(found_t.column("mult").to_numpy()[first_idx].sum()) if len(first_idx) else 0
    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    keys = pairs_to_keys(np.asarray(ids))
    n_unique = int(len(np.unique(keys))) if len(keys) else 0
    del ids, keys
    missing_uids = n_unique - int(len(found_unique))
    missing_rows = n_subset - found_rows
    duplicated_in_pool = int(len(found_uids) - len(found_unique))

    processed = int(sum(s["processed"] for s in scans.values()))
    mismatches = {p.name: {"expected": scans[p.stem]["expected"], "found": scans[p.stem]["processed"]}
                  for p in shards if scans[p.stem]["expected"] is not None and scans[p.stem]["expected"] != scans[p.stem]["processed"]}
    corrupt_shards = {p.name: scans[p.stem]["error"] for p in shards if scans[p.stem]["error"]}
    if missing_uids:
        log.warning("%d uids of the subset (%d subset rows) were not found in the input shards", missing_uids, missing_rows)
    for name, mm in mismatches.items():
        log.warning("%s: expected %s samples but found %s", name, mm["expected"], mm["found"])
    counts = {
        "input_shard_count": len(shards),
        "subset_count": n_subset,
        "subset_unique_uids": n_unique,
        "processed_count": processed,
        "matched_count": int(sum(s["matched"] for s in scans.values())),
        "output_count": total,
        "output_shard_count": n_out,
        "missing_uid_count": missing_uids,
        "missing_subset_rows": missing_rows,
        "uids_in_several_input_samples": duplicated_in_pool,
        "json_without_uid_count": int(sum(s["json_without_uid"] for s in scans.values())),
        "corrupt_sample_count": int(sum(s["corrupt_samples"] for s in scans.values())),
        "unsafe_member_count": int(sum(s["unsafe_members"] for s in scans.values())),
        "corrupt_shard_count": len(corrupt_shards),
    }
    assert sum(r["successes"] for r in packed.values()) == total
    timings = {"scan": round(t_scan, 3), "write": round(t_pack, 3), "total": round(time.time() - t_start, 3)}
    meta = {
        **counts,
        "blur_count": 0,
        "args": {**params, "output_dir": str(out.resolve()), "workers": workers, "executor": executor},
        "shards_without_stats": missing_stats,
        "count_mismatches": mismatches,
        "corrupt_shards": corrupt_shards,
        "timings": timings,
        "samples_per_second": round(processed / timings["total"], 1) if timings["total"] > 0 else None,
        "cwd": os.getcwd(),
    }
    write_json(out / META, meta)
    inputs = {"pool": manifest_digest(pool)} if (pool / MANIFEST_NAME).is_file() else {}
    manifest = Manifest(stage=STAGE, params=params, inputs=inputs, counts=counts, timings=timings,
                        extra={"meta": META, "sample_ids": SAMPLE_IDS,
                               "shards": f"{{{0:08d}..{max(n_out - 1, 0):08d}}}.tar" if n_out else None})
    write_manifest(out, manifest)
    shutil.rmtree(work, ignore_errors=True)
    log.info("reshard: %d of %d subset rows written as %d samples in %d shards (%d uids missing)",
             found_rows, n_subset, total, n_out, missing_uids)
    return manifest
