"""Pass 1 of the reshard: scan one input shard (see the package docstring).

The tar's headers and each sample's json are read (``formats.ustar`` or the compiled walk of
``_tar_kernels``), each uid's multiplicity in the subset is found for the whole shard at once,
and the selected samples' member offsets (with the small members' bytes) are saved as a
parquet scan file for the pack.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FormatError
from ..formats.atomic import atomic_path
from ..formats.shards import read_stats
from ..formats.tar import safe_member_name
from ..formats.ustar import EDGE, SMALL, WINDOW, Peek, nonzero_tail, read_headers
from .arrow import binary, bytes_array, gather, int32s, int64s, offsets_of, ranges
from .compiled import KERNELS, use_kernels
from .keys import hex_to_keys, is_uid, multiplicities, subset_keys

log = logging.getLogger(__name__)

_UID_RE = re.compile(rb'"uid"\s*:\s*"([0-9a-fA-F]{32})"')


def _uid_from_json(raw: bytes) -> Any:
    """The sample's uid, as ``json.loads(raw).get("uid")`` gives it (None if not a JSON object).

    Fast path for img2dataset's flat json: one ``{`` (so no nested object can hold the key),
    one ``"uid"`` and that key followed by a plain 32-hex string. Anything else — escapes,
    nesting, a repeated key, a non-string uid — goes to ``json.loads``.
    """
    if raw.count(b"{") == 1 and raw.count(b'"uid"') == 1:
        m = _UID_RE.search(raw)
        if m is not None:
            return m.group(1).decode("ascii")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return meta.get("uid") if isinstance(meta, dict) else None


class _Samples:
    """What a scan front end (:func:`_samples_py`, :func:`_samples_compiled`) found in a tar: the
    counts, and for its samples with a valid uid (in tar order) ``keys()`` (16-byte keys, as
    ``hex_to_keys``), ``images_whole(sel)`` (:func:`_images_look_whole` of samples ``sel``) and
    ``table(sel, mult)`` (their rows of the scan file)."""

    processed = no_uid = corrupt_samples = unsafe_members = 0
    error: str | None = None


def scan_unit(tar_path: str, subset_path: str, out_path: str, compiled: bool | None = None) -> dict[str, Any]:
    """Find the subset's samples in one tar; save (uid, multiplicity, member offsets) as parquet.
    ``compiled``: see :func:`use_kernels`."""
    tar = Path(tar_path)
    file_size = tar.stat().st_size
    found = _samples_compiled(tar, file_size) if use_kernels(compiled) else None
    if found is None:
        found = _samples_py(tar, file_size)
    keys = found.keys()
    mult = multiplicities(keys, subset_keys(subset_path)) if len(keys) else np.empty(0, np.int64)
    sel = np.nonzero(mult > 0)[0]
    # selected samples only: a broken image is skipped and counted, like a corrupt member
    whole = found.images_whole(sel)
    broken = int(len(sel) - whole.sum())
    if broken:
        log.warning("%s: %d selected samples have a broken image; skipped", tar, broken)
        sel = sel[whole]
    with atomic_path(out_path, suffix=".parquet") as tmp:
        pq.write_table(found.table(sel, mult[sel]), tmp)
    stats = stats_or_none(tar)
    return {
        "processed": found.processed,
        "matched": int(len(sel)),
        "emitted": int(mult[sel].sum()) if len(sel) else 0,
        "json_without_uid": found.no_uid,
        "corrupt_samples": found.corrupt_samples + broken,
        "broken_images": broken,
        "unsafe_members": found.unsafe_members,
        "error": found.error,
        "expected": None if stats is None else stats.get("successes"),
    }


class _PySamples(_Samples):
    def __init__(self, tar: Path, uids: list[str], members: list[list[tuple[str, int, int]]], peek: Peek):
        self.tar, self.uids, self.members, self.peek = tar, uids, members, peek

    def keys(self) -> np.ndarray:
        return hex_to_keys(self.uids)

    def images_whole(self, sel: np.ndarray) -> np.ndarray:
        if not len(sel):
            return np.ones(0, bool)
        fd = os.open(self.tar, os.O_RDONLY)
        try:
            return np.array([_images_look_whole(fd, self.members[i], self.peek) for i in sel], bool)
        finally:
            os.close(fd)

    def table(self, sel: np.ndarray, mult: np.ndarray) -> pa.Table:
        rows = [self.members[i] for i in sel]
        flat = [m for r in rows for m in r]
        lists = int32s(offsets_of(np.array([len(r) for r in rows], np.int64)))
        # the bytes of small members (txt, json) as the header walk read them, so the pack needs
        # no read for them; null for members it did not hold whole (images)
        small = [self.peek.small.get(o) for _, o, _ in flat]
        return pa.table({
            "uid": bytes_array(pa.string(), [self.uids[i].encode("ascii") for i in sel]),
            "mult": int64s(mult),
            "exts": pa.ListArray.from_arrays(lists, bytes_array(pa.string(), [e.encode("utf-8") for e, _, _ in flat])),
            "offsets": pa.ListArray.from_arrays(lists, int64s(np.array([o for _, o, _ in flat], np.int64))),
            "sizes": pa.ListArray.from_arrays(lists, int64s(np.array([z for _, _, z in flat], np.int64))),
            "small": pa.ListArray.from_arrays(lists, bytes_array(pa.binary(), small)),
        })



def _samples_py(tar: Path, file_size: int) -> _PySamples:
    """The header walk and sample grouping in Python (any tar ``tarfile`` reads)."""
    uids: list[str] = []
    members: list[list[tuple[str, int, int]]] = []
    peek = Peek()
    found = _PySamples(tar, uids, members, peek)
    entries, end_pos, error = read_headers(tar, file_size, peek)
    if error is None:
        tail = nonzero_tail(tar, end_pos, file_size)
        if tail is not None:  # a cut-off header: the last sample may be incomplete
            error = f"truncated or damaged after byte {tail}"
    found.error = error

    group_key: str | None = None
    group: list[tuple[str, int, int]] = []
    group_json: tuple[int, int] | None = None
    group_bad = False
    with open(tar, "rb") as f:

        def flush() -> None:
            nonlocal group_key, group, group_json, group_bad
            if group_key is None:
                return
            found.processed += 1
            if group_bad:
                found.corrupt_samples += 1
            else:
                uid = None
                if group_json is not None:
                    raw = peek.small.get(group_json[0])
                    if raw is None:
                        f.seek(group_json[0])
                        raw = f.read(group_json[1])
                    uid = _uid_from_json(raw)
                if is_uid(uid):
                    uids.append(uid.lower())
                    members.append(group)
                else:
                    found.no_uid += 1
            group_key, group, group_json, group_bad = None, [], None, False

        for name, offset, size, isfile in entries:
            if isfile is False:  # directories and the like; None is a link, counted below as unsafe
                continue
            base = name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            if key != group_key:
                flush()
                group_key = key
            if isfile is None or not safe_member_name(name):
                found.unsafe_members += 1
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
    return found


class _CompiledSamples(_Samples):
    def __init__(self, uid: np.ndarray, start: np.ndarray, end: np.ndarray, img: np.ndarray, members: tuple):
        self.uid, self.start, self.end, self.img = uid, start, end, img  # samples with a uid: members [start, end)
        self.m_off, self.m_size, self.exts, self.small = members  # every sample's members

    def keys(self) -> np.ndarray:
        if not len(self.uid):
            return np.empty(0, dtype="S16")
        return np.frombuffer(bytes.fromhex(self.uid.tobytes().decode("ascii")), dtype="S16")

    def images_whole(self, sel: np.ndarray) -> np.ndarray:
        return self.img[sel]

    def table(self, sel: np.ndarray, mult: np.ndarray) -> pa.Table:
        lists = offsets_of(self.end[sel] - self.start[sel])
        idx = ranges(self.start[sel], lists)  # the selected samples' members

        def column(values: pa.Array) -> pa.Array:
            return pa.ListArray.from_arrays(int32s(lists), values)

        ext_o, ext_b = self.exts
        small_o, small_b, held = self.small
        return pa.table({
            "uid": binary(pa.string(), offsets_of(np.full(len(sel), 32)), self.uid[sel].ravel()),
            "mult": int64s(mult),
            "exts": column(binary(pa.string(), *gather(ext_o, ext_b, idx))),
            "offsets": column(int64s(self.m_off[idx])),
            "sizes": column(int64s(self.m_size[idx])),
            "small": column(binary(pa.binary(), *gather(small_o, small_b, idx), held[idx])),
        })


def _samples_compiled(tar: Path, file_size: int) -> _CompiledSamples | None:
    """:func:`_samples_py` by the compiled walk (``_tar_kernels.walk``); None for a tar it does
    not handle (damage, pax or GNU headers, non-ASCII names), which then goes to Python."""
    k = KERNELS.get()
    fd = os.open(tar, os.O_RDONLY)
    try:
        code, end_pos, unsafe, state, first, uid, json_m, img, m_off, m_size, ext_o, ext_b, m_small, small_b = \
            k.walk(fd, file_size, WINDOW, SMALL, EDGE)
        if code != 0 or nonzero_tail(tar, end_pos, file_size) is not None:
            return None
        for i in np.nonzero(state == k.NEEDS_JSON)[0]:  # not the plain flat json: ask json.loads
            j = json_m[i]
            held = m_small[j] >= 0
            raw = small_b[m_small[j] : m_small[j] + m_size[j]].tobytes() if held else os.pread(fd, m_size[j], m_off[j])
            got = _uid_from_json(raw)
            if is_uid(got):
                uid[i] = np.frombuffer(got.lower().encode("ascii"), np.uint8)
                state[i] = k.OK
            else:
                state[i] = k.NO_JSON
    finally:
        os.close(fd)
    valid = np.nonzero(state == k.OK)[0]
    held = m_small >= 0  # members whose bytes are in small_b (in member order)
    found = _CompiledSamples(uid[valid], first[valid], first[valid + 1], img[valid],
                             (m_off, m_size, (ext_o, ext_b), (offsets_of(np.where(held, m_size, 0)), small_b, held)))
    found.processed = len(state)
    found.no_uid = int((state == k.NO_JSON).sum())
    found.corrupt_samples = int((state == k.BAD).sum())
    found.unsafe_members = int(unsafe)
    return found


def _edges(fd: int, off: int, size: int, peek: Peek) -> tuple[bytes, bytes]:
    small = peek.small.get(off)
    if small is not None:
        return small[:EDGE], small[-EDGE:]
    got = peek.edges.get(off)
    if got is not None:
        return got
    n = min(size, EDGE)
    return os.pread(fd, n, off), os.pread(fd, n, off + size - n)


def _images_look_whole(fd: int, group: list[tuple[str, int, int]], peek: Peek) -> bool:
    """Cheap integrity check of a sample's image members: signature and end marker, no decode.

    An empty image member fails. A member that starts like a JPEG (FF D8) must have its end
    marker (FF D9) in its last bytes, one that starts like a PNG its IEND chunk: a cut-off or
    partly overwritten file fails. Bytes in no known image format pass (the reference resharder
    never looks at image bytes; the trainer's decoder decides).
    """
    for ext, off, size in group:
        if ext not in ("jpg", "jpeg", "png", "webp"):
            continue
        if size == 0:
            return False
        head, tail = _edges(fd, off, size, peek)
        if head[:2] == b"\xff\xd8":
            if b"\xff\xd9" not in tail:
                return False
        elif head[:8] == b"\x89PNG\r\n\x1a\n":
            if b"IEND" not in tail[-12:]:
                return False
        elif head[:4] == b"RIFF" and size >= 12 and head[8:12] == b"WEBP":
            declared = int.from_bytes(head[4:8], "little") + 8
            if declared > size:
                return False
    return True



def stats_or_none(tar: Path) -> dict[str, Any] | None:
    try:
        return read_stats(tar)
    except FormatError as e:  # a corrupt stats file only loses the expected count
        log.warning("%s", e)
        return None

