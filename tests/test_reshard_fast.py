"""Reshard fast paths: the uid parse against ``json``, in-kernel range copies in the tar writer,
the thread / process / in-process executors giving the same bytes, and the buffered pack path."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp.formats.shards import ShardWriter
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.reshard import fasttar
from datacomp.reshard import resharder as rs
from datacomp.reshard.fasttar import FastTarWriter, Range

U = "0123456789abcdef0123456789ABCDEF"


def _json_uid(raw: bytes):
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return meta.get("uid") if isinstance(meta, dict) else None


@pytest.mark.parametrize("raw", [
    b'{"uid": "%s", "caption": "x"}' % U.encode(),
    b'{"caption":"a {brace}","uid":"%s"}' % U.encode(),
    b'{ "uid" :\t"%s" }' % U.encode(),
    b'{"uid": "\\u0030123456789abcdef0123456789abcdef"}',  # escaped digit: json decodes it
    b'{"\\u0075id": "%s"}' % U.encode(),  # escaped key
    b'{"uid": "%s", "uid": "%s"}' % (U.encode(), b"f" * 32),  # repeated key: json keeps the last
    b'{"meta": {"uid": "%s"}}' % U.encode(),  # nested only: no top-level uid
    b'{"meta": {"uid": "%s"}, "uid": "%s"}' % (U.encode(), b"e" * 32),
    b'{"caption": "say \\"uid\\": \\"%s\\""}' % U.encode(),  # inside a string
    b'{"uid": 12345}',
    b'{"uid": null}',
    b'{"uid": ["%s"]}' % U.encode(),
    b'{"uid": "%s0"}' % U.encode(),  # 33 characters
    b'{"uid": "xyz"}',
    b'{"caption": "no uid"}',
    b'["uid", "%s"]' % U.encode(),
    b'"uid"',
    b"",
    b"not json",
    b'{"uid": "\\u0030123456789abcdef0123456789abcde',  # cut off
])
def test_fast_uid_parse_matches_json(raw: bytes):
    got = rs._uid_from_json(raw)
    assert got == _json_uid(raw)
    assert rs._is_uid(got) == rs._is_uid(_json_uid(raw))


def test_fast_uid_parse_is_lenient_with_broken_flat_json():
    # like the resharder always was: a flat object's uid is kept even if the rest is not JSON
    raw = b'{"uid": "%s", "caption": "\xff"}' % U.encode()
    assert _json_uid(raw) is None and rs._uid_from_json(raw) == U


def test_header_checksum_test_is_exact_for_real_headers():
    good = fasttar.ustar_header("abc.jpg", 12345)
    chk = int(good[148:154], 8)
    assert rs._header_sum_ok(good, chk)
    assert not rs._header_sum_ok(good, chk + 1)
    bad = bytearray(good)
    bad[10] ^= 0x01
    assert not rs._header_sum_ok(bytes(bad), chk)


def _write(path: Path, items) -> bytes:
    with FastTarWriter(path) as w:
        for key, members in items:
            w.add(key, members)
    return path.read_bytes()


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_range_members_same_bytes_as_in_memory(tmp_path: Path, monkeypatch, kernel_copy: bool):
    """Ranges (adjacent ones merged into one copy with patched gaps, others copied alone, from
    two inputs) give the same tar as the same bytes handed over in memory."""
    if not kernel_copy:
        monkeypatch.setattr(fasttar, "_cfr_ok", False)
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 30_000, 40)]
    src = tmp_path / "src.bin"
    src.write_bytes(b"".join(blobs))
    src2 = tmp_path / "src2.bin"
    src2.write_bytes(b"".join(reversed(blobs)))
    offs = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).tolist()
    fd, fd2 = os.open(src, os.O_RDONLY), os.open(src2, os.O_RDONLY)
    try:
        mem, rng_items = [], []
        total = offs[-1]
        for i, b in enumerate(blobs):
            members_mem = [("jpg", b), ("txt", b"caption %d" % i), ("json", b'{"i": %d}' % i)]
            if i % 7 == 3:  # from the second file (not adjacent to its neighbours)
                r = Range(fd2, total - offs[i + 1], len(b))
            else:
                r = Range(fd, offs[i], len(b))
            mem.append((f"k{i}-0", members_mem))
            rng_items.append((f"k{i}-0", [("jpg", r)] + members_mem[1:]))
            if i % 5 == 0:  # the same data twice in a row
                mem.append((f"k{i}-1", members_mem))
                rng_items.append((f"k{i}-1", [("jpg", r)] + members_mem[1:]))
        a = _write(tmp_path / "a.tar", mem)
        b = _write(tmp_path / "b.tar", rng_items)
        # adjacency without gaps, and a tiny batch so groups end at batch boundaries
        with FastTarWriter(tmp_path / "c.tar", batch_bytes=50_000) as w:
            for i in range(0, len(blobs) - 1, 2):
                w.add(f"p{i}", [("bin", Range(fd, offs[i], len(blobs[i]))), ("cls", b"1")])
        with FastTarWriter(tmp_path / "d.tar", batch_bytes=50_000) as w:
            for i in range(0, len(blobs) - 1, 2):
                w.add(f"p{i}", [("bin", blobs[i]), ("cls", b"1")])
    finally:
        os.close(fd)
        os.close(fd2)
    assert a == b
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "d.tar").read_bytes()


def test_range_past_end_of_input_fails(tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(fasttar.ShortInput):
            _write(tmp_path / "a.tar", [("k", [("jpg", Range(fd, 50, 20_000))])])
    finally:
        os.close(fd)
    assert not (tmp_path / "a.tar").exists()


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _uid(i: int) -> str:
    return f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}{i:016x}"


def _pool(root: Path, n_shards=3, per_shard=7) -> list[str]:
    uids = []
    k = 0
    for s in range(n_shards):
        with ShardWriter(root / "shards" / f"{s:08d}.tar") as w:
            for i in range(per_shard):
                uid = _uid(k)
                files = {"jpg": _jpeg(k), "txt": f"caption {k}".encode(), "json": json.dumps({"uid": uid}).encode()}
                if k % 4 == 1:
                    files["cls"] = b"x" * 3000  # a mid-size member (read, not range-copied)
                w.write(f"{s:08d}{i:04d}", files)
                uids.append(uid)
                k += 1
    return uids


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and p.name not in ("meta.json", "manifest.json")}


def test_executors_and_pack_paths_give_identical_bytes(tmp_path: Path, monkeypatch):
    pool = tmp_path / "pool"
    uids = _pool(pool)
    sub = tmp_path / "s.npy"
    write_subset(sub, make_subset(uids_to_pairs(uids + uids[::3] + [_uid(999)])))
    ref = rs.reshard(pool, sub, tmp_path / "ref", shard_size=4, workers=1)
    want = _outputs(tmp_path / "ref")
    for i, kw in enumerate([dict(workers=2), dict(workers=3), dict(workers=2, executor="threads")]):
        m = rs.reshard(pool, sub, tmp_path / f"t{i}", shard_size=4, **kw)
        assert m.counts == ref.counts and _outputs(tmp_path / f"t{i}") == want
    # the buffered (user-space) pack path, used for blurring, writes the same bytes
    real = rs._pack_ranges
    monkeypatch.setattr(rs, "_pack_ranges", lambda out_tar, segs, tables, order:
                        rs._pack_buffered(out_tar, segs, tables, order, {}, {})[0])
    rs.reshard(pool, sub, tmp_path / "buf", shard_size=4, workers=2)
    assert _outputs(tmp_path / "buf") == want
    monkeypatch.setattr(rs, "_pack_ranges", real)
    # worker processes (above the thresholds) too
    monkeypatch.setattr(rs, "SCAN_PARALLEL_MIN", 0)
    monkeypatch.setattr(rs, "PACK_PARALLEL_MIN", 0)
    rs.reshard(pool, sub, tmp_path / "procs", shard_size=4, workers=2)
    assert _outputs(tmp_path / "procs") == want


def test_local_executor_uses_threads_below_the_thresholds():
    assert rs._local_mode("local", 10, 100) == "threads"
    assert rs._local_mode("local", 100, 100) == "local"
    assert rs._local_mode("ray", 10, 100) == "ray"
    assert rs._local_mode("threads", 10**9, 100) == "threads"


def test_pack_reads_small_members_when_scan_file_lacks_them(tmp_path: Path):
    """A scan file from an older version (no ``small`` column) still packs the same bytes."""
    pool = tmp_path / "pool"
    uids = _pool(pool, n_shards=1, per_shard=6)
    ids = tmp_path / "ids.npy"
    np.save(ids, make_subset(uids_to_pairs(uids)))
    tar = pool / "shards" / "00000000.tar"
    scan = tmp_path / "scan.parquet"
    assert rs.scan_unit(str(tar), str(ids), str(scan))["emitted"] == 6
    rs.pack_unit(str(tmp_path / "a.tar"), [(str(tar), str(scan), 0, 6)])
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(scan).drop(["small"]), old)
    rs.pack_unit(str(tmp_path / "b.tar"), [(str(tar), str(old), 0, 6)])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_pipelined_passes_resume_after_a_failure(tmp_path: Path, monkeypatch):
    """workers >= 2: output shards are packed while later input shards are scanned; a failure
    part-way leaves markers that a re-run honours, and the bytes match a one-worker run."""
    pool = tmp_path / "pool"
    uids = _pool(pool, n_shards=4, per_shard=5)
    sub = tmp_path / "s.npy"
    write_subset(sub, make_subset(uids_to_pairs(uids + uids[:4])))
    rs.reshard(pool, sub, tmp_path / "ref", shard_size=3, workers=1)
    real, calls = rs.pack_unit, []

    def failing(out_tar, segs, *rest):
        calls.append(out_tar)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(out_tar, segs, *rest)

    monkeypatch.setattr(rs, "pack_unit", failing)
    with pytest.raises(RuntimeError):
        rs.reshard(pool, sub, tmp_path / "out", shard_size=3, workers=2)
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(rs, "pack_unit", lambda *a: calls.append(a[0]) or real(*a))
    n_before = len(calls)
    m = rs.reshard(pool, sub, tmp_path / "out", shard_size=3, workers=2)
    assert len(calls) - n_before < m.counts["output_shard_count"]  # finished shards were kept
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "ref")
