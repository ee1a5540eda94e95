"""The reshard's plan and accounting, from the scan results: which emitted samples go into which
output shard (the pack units: all at once, or, for a plain reshard, as the scans come in), the
face boxes to blur, the losses to damaged input and the subset's uids not found.

The emitted sequence is every selected sample once per occurrence of its uid in the subset, in
input order (or shuffled within consecutive windows, seeded); output shard ``o`` holds emitted
samples ``[o*S, (o+1)*S)``, so numbering never depends on the worker count or timing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..executors import Unit
from ..formats.atomic import atomic_path
from ..formats.shards import SHARD_FORMAT, losses_record
from .arrow import numbers, read_parquet, uid_keys
from .keys import pairs_to_keys

Segment = tuple[str, str, int, int]  # (input tar, scan file, first, end) emitted indices of that shard


def scan_path(scan_dir: Path, shard: Path) -> Path:
    return scan_dir / f"{shard.stem}.parquet"


def shuffled_sources(lo: int, hi: int, bufsize: int, seed: int, total: int) -> np.ndarray:
    """Emitted indices feeding output positions [lo, hi) when the sequence is shuffled in windows."""
    out = []
    for w in range(lo // bufsize, (hi - 1) // bufsize + 1):
        w0, w1 = w * bufsize, min((w + 1) * bufsize, total)
        perm = np.random.default_rng([seed, w]).permutation(w1 - w0) + w0
        out.append(perm[max(lo, w0) - w0 : min(hi, w1) - w0])
    return np.concatenate(out) if out else np.empty(0, np.int64)


def collect_bboxes(pool: Path, scan_paths: list[Path], work: Path) -> str:
    """uid -> face_bboxes for the selected samples that have faces, from POOL/metadata (one file)."""
    import pyarrow.compute as pc

    path = work / "bboxes.parquet"
    if path.is_file():
        return str(path)
    selected = pa.concat_tables([pq.read_table(p, columns=["uid"]) for p in scan_paths]).column("uid") \
        if scan_paths else pa.chunked_array([], pa.string())
    parts = []
    for f in sorted((pool / "metadata").glob("*.parquet")):
        names = pq.ParquetFile(f).schema_arrow.names
        if "face_bboxes" not in names or "uid" not in names:
            continue
        t = pq.read_table(f, columns=["uid", "face_bboxes"])
        has = pc.fill_null(pc.greater(pc.list_value_length(t.column("face_bboxes")), 0), False)
        t = t.filter(has)
        t = t.filter(pc.is_in(t.column("uid"), value_set=selected.combine_chunks() if len(selected) else pa.array([], pa.string())))
        parts.append(t)
    table = pa.concat_tables(parts) if parts else pa.table({"uid": pa.array([], pa.string()),
                                                            "face_bboxes": pa.array([], pa.list_(pa.list_(pa.float64())))})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return str(path)


def plain_segments(lo: int, hi: int, shards: list[Path], starts: list[int], scan_dir: Path) -> list[Segment]:
    """The (tar, scan file, first, end) segments of emitted samples [lo, hi) in input order;
    ``starts[i]``: emitted index of shard i's first sample (known for a prefix of the shards)."""
    segs = []
    for i in range(len(starts) - 1):
        a, b = max(lo, int(starts[i])), min(hi, int(starts[i + 1]))
        if a < b:
            p = shards[i]
            segs.append((str(p), str(scan_path(scan_dir, p)), a - int(starts[i]), b - int(starts[i])))
    return segs



def scan_losses(shards: list[Path], scans: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(count mismatches, unreadable shards, :func:`losses_record`) from the scan's results."""
    mismatches = {p.name: {"expected": scans[p.stem]["expected"], "found": scans[p.stem]["processed"]}
                  for p in shards if scans[p.stem]["expected"] is not None and scans[p.stem]["expected"] != scans[p.stem]["processed"]}
    corrupt = {p.name: scans[p.stem]["error"] for p in shards if scans[p.stem]["error"]}
    damaged = {}
    for p in shards:
        why = [corrupt[p.name]] if p.name in corrupt else []
        if p.name in mismatches:
            why.append(f"{mismatches[p.name]['found']} of {mismatches[p.name]['expected']} samples readable")
        if why:
            damaged[str(p)] = "; ".join(why)
    lost = sum(max(0, m["expected"] - m["found"]) for m in mismatches.values())
    return mismatches, corrupt, losses_record(damaged, lost)


def pack_units(shards: list[Path], emitted: list[int], scan_dir: Path, out: Path, shard_size: int,
               options: dict[str, Any], shuffle_bufsize: int = 0, seed: int = 0) -> list[Unit]:
    """Every output shard's pack unit, ``(out tar, segments[, options])``; ``emitted[i]``: how
    many samples input shard i emits. Shuffled: each unit lists the input shards it draws from
    and the explicit ``order`` of (segment, emitted index)."""
    total = int(sum(emitted))
    n_out = (total + shard_size - 1) // shard_size
    starts = np.concatenate([[0], np.cumsum(emitted)]).astype(np.int64)
    units = []
    for o in range(n_out):
        lo, hi = o * shard_size, min((o + 1) * shard_size, total)
        if shuffle_bufsize:
            src = shuffled_sources(lo, hi, shuffle_bufsize, seed, total)
            shard_of = np.searchsorted(starts, src, side="right") - 1
            used = sorted(set(shard_of.tolist()))
            seg_of = {i: k for k, i in enumerate(used)}
            segs = [(str(shards[i]), str(scan_path(scan_dir, shards[i])), 0, int(emitted[i])) for i in used]
            order = [(seg_of[i], int(e - starts[i])) for i, e in zip(shard_of.tolist(), src.tolist())]
            unit_opts: dict[str, Any] | None = {**options, "order": order}
        else:
            segs = plain_segments(lo, hi, shards, starts.tolist(), scan_dir)
            unit_opts = options or None
        args = (str(out / SHARD_FORMAT.format(o)), segs) + ((unit_opts,) if unit_opts else ())
        units.append(Unit(f"{o:08d}", args, hi - lo))
    return units


class PlainPacks:
    """The pack units of a plain reshard (input order, no options) released as the scans come in:
    called with the scan results so far, it returns the output shards whose samples all lie in
    input shards scanned already, before the remaining scans (``executors.run_pipelined``)."""

    def __init__(self, shards: list[Path], scan_dir: Path, out: Path, shard_size: int):
        self.shards, self.scan_dir, self.out, self.shard_size = shards, scan_dir, out, shard_size
        self.starts = [0]  # emitted index of each input shard's first sample, for a prefix of them
        self.next_out = 0

    def __call__(self, scans: dict[str, dict[str, Any]]) -> list[Unit]:
        shards, starts = self.shards, self.starts
        while len(starts) <= len(shards) and shards[len(starts) - 1].stem in scans:
            starts.append(starts[-1] + int(scans[shards[len(starts) - 1].stem]["emitted"]))
        known, final = starts[-1], len(starts) == len(shards) + 1
        units = []
        while True:
            lo = self.next_out * self.shard_size
            hi = lo + self.shard_size
            if final:
                if lo >= known:
                    break
                hi = min(hi, known)
            elif hi > known:
                break
            segs = plain_segments(lo, hi, shards, starts, self.scan_dir)
            units.append(Unit(f"{self.next_out:08d}", (str(self.out / SHARD_FORMAT.format(self.next_out)), segs), hi - lo))
            self.next_out += 1
        return units


def found_counts(shards: list[Path], scan_dir: Path, subset_pairs: np.ndarray) -> dict[str, int]:
    """What the scans found of the subset: unique subset uids, those found in no input shard,
    the subset rows they account for, and uids found in several input samples."""
    found = [read_parquet(scan_path(scan_dir, p), ["uid", "mult"]) for p in shards]
    found_uids = np.concatenate([uid_keys(t.column("uid").combine_chunks()) for t in found] or [np.empty(0, "S32")])
    found_mult = np.concatenate([numbers(t.column("mult").combine_chunks(), np.int64) for t in found]
                                or [np.empty(0, np.int64)])
    found_unique, first_idx = np.unique(found_uids, return_index=True) if len(found_uids) else (np.empty(0), np.empty(0, np.int64))
    keys = pairs_to_keys(np.asarray(subset_pairs))
    n_unique = int(len(np.unique(keys))) if len(keys) else 0
    return {
        "subset_unique_uids": n_unique,
        "found_rows": int(found_mult[first_idx].sum()) if len(first_idx) else 0,
        "missing_uids": n_unique - int(len(found_unique)),
        "duplicated_in_pool": int(len(found_uids) - len(found_unique)),
    }
