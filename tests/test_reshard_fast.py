"""Reshard fast paths: the uid parse against ``json``, in-kernel range copies in the tar writer,
the thread / process / in-process executors giving the same bytes, and the buffered pack path."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp.formats.shards import ShardWriter
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.reshard import fasttar
from datacomp.formats import ustar
from datacomp.reshard import compiled as rcompiled
from datacomp.reshard import pack as rpack
from datacomp.reshard import resharder as rs
from datacomp.reshard import scan as rscan
from datacomp.reshard.keys import is_uid
from datacomp.reshard.fasttar import FastTarWriter, Range

U = "0123456789abcdef0123456789ABCDEF"


def _json_uid(raw: bytes):
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return meta.get("uid") if isinstance(meta, dict) else None


JSONS = [
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
]


@pytest.mark.parametrize("raw", JSONS)
def test_fast_uid_parse_matches_json(raw: bytes):
    got = rscan._uid_from_json(raw)
    assert got == _json_uid(raw)
    assert is_uid(got) == is_uid(_json_uid(raw))


def test_fast_uid_parse_is_lenient_with_broken_flat_json():
    # like the resharder always was: a flat object's uid is kept even if the rest is not JSON
    raw = b'{"uid": "%s", "caption": "\xff"}' % U.encode()
    assert _json_uid(raw) is None and rscan._uid_from_json(raw) == U


def test_header_checksum_test_is_exact_for_real_headers():
    good = fasttar.ustar_header("abc.jpg", 12345)
    chk = int(good[148:154], 8)
    assert ustar.header_sum_ok(good, chk)
    assert not ustar.header_sum_ok(good, chk + 1)
    bad = bytearray(good)
    bad[10] ^= 0x01
    assert not ustar.header_sum_ok(bytes(bad), chk)


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
    with monkeypatch.context() as python_only:
        python_only.setattr(rscan, "use_kernels", lambda compiled: False)
        python_only.setattr(rpack, "use_kernels", lambda compiled: False)
        ref = rs.reshard(pool, sub, tmp_path / "ref", shard_size=4, workers=1)
        want = _outputs(tmp_path / "ref")
        for i, kw in enumerate([dict(workers=2), dict(workers=3), dict(workers=2, executor="threads")]):
            m = rs.reshard(pool, sub, tmp_path / f"t{i}", shard_size=4, **kw)
            assert m.counts == ref.counts and _outputs(tmp_path / f"t{i}") == want
        # the buffered (user-space) pack path, used for blurring, writes the same bytes
        python_only.setattr(rpack, "_pack_ranges", lambda out_tar, segs, tables, order:
                            rpack._pack_buffered(out_tar, segs, tables, order, {}, {})[0])
        rs.reshard(pool, sub, tmp_path / "buf", shard_size=4, workers=2)
        assert _outputs(tmp_path / "buf") == want
    # the compiled kernels (a run of KERNEL_MIN samples or more), in threads and in worker processes
    monkeypatch.setattr(rs, "KERNEL_MIN", 0)
    for i, workers in enumerate([1, 2]):
        m = rs.reshard(pool, sub, tmp_path / f"k{i}", shard_size=4, workers=workers)
        assert m.counts == ref.counts and _outputs(tmp_path / f"k{i}") == want
    monkeypatch.setattr(rs, "SCAN_PARALLEL_MIN", 0)
    monkeypatch.setattr(rs, "PACK_PARALLEL_MIN", 0)
    rs.reshard(pool, sub, tmp_path / "procs", shard_size=4, workers=2)
    assert _outputs(tmp_path / "procs") == want


def test_local_executor_uses_threads_below_the_thresholds():
    assert rs._local_mode("local", 10, 100) == "threads"
    assert rs._local_mode("local", 100, 100) == "local"
    assert rs._local_mode("ray", 10, 100) == "ray"
    assert rs._local_mode("threads", 10**9, 100) == "threads"


@pytest.mark.parametrize("compiled", [False, True])
def test_pack_reads_small_members_when_scan_file_lacks_them(tmp_path: Path, compiled: bool):
    """A scan file from an older version (no ``small`` column) still packs the same bytes."""
    if compiled:
        _kernels()
    pool = tmp_path / "pool"
    uids = _pool(pool, n_shards=1, per_shard=6)
    ids = tmp_path / "ids.npy"
    np.save(ids, make_subset(uids_to_pairs(uids)))
    tar = pool / "shards" / "00000000.tar"
    scan = tmp_path / "scan.parquet"
    assert rs.scan_unit(str(tar), str(ids), str(scan))["emitted"] == 6
    rs.pack_unit(str(tmp_path / "a.tar"), [(str(tar), str(scan), 0, 6)], {"compiled": False})
    old = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(scan).drop(["small"]), old)
    rs.pack_unit(str(tmp_path / "b.tar"), [(str(tar), str(old), 0, 6)], {"compiled": compiled})
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


# ---- compiled kernels (``_tar_kernels``) against the Python code ----------------------------------

def _kernels():
    """The compiled kernels; skip where numba is not installed, fail where they do not load."""
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    k = rcompiled.KERNELS.get()
    assert k is not None, "numba is installed but the reshard kernels do not load"
    return k


def test_compiled_uid_parse_never_disagrees_with_python():
    """The kernel's flat-json match answers only where ``_uid_from_json`` gives the same uid;
    everything else (nesting, escapes, repeats, other whitespace) is left to json.loads."""
    k = _kernels()
    cases = JSONS + [
        b'{"uid":\x0b"%s"}' % U.encode(),  # \v: \s in the bytes regex
        b'{"uid":\x1c"%s"}' % U.encode(),  # \x1c: str whitespace, not \s for bytes
        b'{"uid":"%s"' % U.encode(),  # cut off right after the value
        b'{"uid"uid": "%s"}' % U.encode(),  # "uid" twice, overlapping
        b'{"x": "\xc3\xa9", "uid": "%s"}' % U.encode(),
    ]
    answered = 0
    for raw in cases:
        out = np.zeros(32, np.uint8)
        if k._flat_uid(np.frombuffer(raw, np.uint8), 0, len(raw), out):
            answered += 1
            assert out.tobytes().decode() == rscan._uid_from_json(raw).lower(), raw
    assert answered >= 5


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def _patched(data: bytes, member: int, edit) -> bytes:
    """``data`` with the header of its ``member``-th member edited (checksum kept valid)."""
    buf, pos = bytearray(data), 0
    for _ in range(member):
        size = int(buf[pos + 124 : pos + 135], 8)
        pos += 512 + (size + 511) // 512 * 512
    block = buf[pos : pos + 512]
    edit(block)
    buf[pos : pos + 512] = block
    return bytes(buf)


def _tar(members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """A tar of (name, bytes) members (a ``None`` body: a directory; a tar type flag: a link)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if body is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif body in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.type, info.linkname = body, "s0.jpg"
                tf.addfile(info)
            else:
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _members_end(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.getmembers()
        return tf.offset


def _hostile_members() -> list:
    """Samples that exercise every rule of the scan, all plain enough for the compiled walk."""
    jpg, png = _jpeg(1), b"\x89PNG\r\n\x1a\n" + b"x" * 4000 + b"\0\0\0\0IEND\xaeB`\x82"
    u = [_uid(1000 + i) for i in range(20)]
    big = json.dumps({"uid": u[3], "exif": "e" * 3000}).encode()
    return [
        ("s0.jpg", jpg), ("s0.txt", b"t"), ("s0.json", json.dumps({"uid": u[0]}).encode()),
        ("s1.JPG", jpg), ("s1.Json", json.dumps({"uid": u[1].upper()}).encode()),  # case folded
        ("d/s2.jpg", jpg), ("d/s2.seg.png", png), ("d/s2.json", b'{"meta": {"uid": "x"}, "uid": "%s"}' % u[2].encode()),
        ("dir", None), ("noext", b"zz"),  # skipped, without ending the sample
        ("s3.jpg", jpg), ("s3.json", big),  # a json bigger than the walk's window
        ("s4.jpg", jpg[:-2]), ("s4.json", json.dumps({"uid": u[4]}).encode()),  # JPEG without its end
        ("s5.png", png[:-12]), ("s5.json", json.dumps({"uid": u[5]}).encode()),  # PNG without IEND
        ("s6.webp", b"RIFF\xff\0\0\0WEBPVP8 " + b"w" * 40), ("s6.json", json.dumps({"uid": u[6]}).encode()),
        ("s7.jpg", b""), ("s7.json", json.dumps({"uid": u[7]}).encode()),  # empty image
        ("s8.jpg", b"\xff\xd8\xff\xd9"), ("s8.json", json.dumps({"uid": u[8]}).encode()),  # tiny whole JPEG
        ("s9.jpg", jpg), ("../s9.json", json.dumps({"uid": u[9]}).encode()),  # escapes: sample dropped
        ("s10.jpg", jpg), ("/abs/s10.json", json.dumps({"uid": u[10]}).encode()),
        ("s11.jpg", jpg), ("a\\..\\s11.txt", b"t"), ("s11.json", json.dumps({"uid": u[11]}).encode()),
        ("s12.jpg", jpg), ("s12.json", b'{"caption": "no uid"}'),
        ("s13.jpg", jpg), ("s13.json", b'{"uid": "\\u0030%s"}' % u[13][1:].encode()),  # escaped digit
        ("s14.jpg", jpg), ("s14.json", b"not json"),
        ("s15.jpg", jpg), ("s15.json", json.dumps({"uid": u[0]}).encode()),  # repeats s0's uid
        ("s16.jpg", jpg), ("s16.json", b'{"uid": "xyz"}'),
        ("s16.json", json.dumps({"uid": u[16]}).encode()),  # the last json counts
        ("s17.txt", b"only text"),
        ("..", b"x"), ("s18.jpg", jpg), ("s18.json", json.dumps({"uid": u[18]}).encode()),
        ("s19.jpg", jpg), ("s19.cls", b"c" * 1536), ("s19.bin", b"b" * 1537), ("s19.z", b""),
        ("s19.json", json.dumps({"uid": u[19]}).encode()),
    ]


def _hostile_tars() -> dict[str, tuple[bytes, bool]]:
    """name -> (tar bytes, whether the compiled walk takes it)."""
    members = _hostile_members()
    plain = _tar(members)
    uid_json = json.dumps({"uid": _uid(1000)}).encode()

    def non_octal(b):
        b[124:136] = b"0000000001x\0"
        _fix_checksum(b)

    def spaced_size(b):  # old tars: space-padded octal, read by the Python fallback
        b[124:136] = b" %10o " % int(b[124:135], 8)
        _fix_checksum(b)

    def seven_digit_checksum(b):
        _fix_checksum(b)
        b[148:156] = b"%07o\0" % int(b[148:154], 8)

    def base256(b):
        b[124:136] = b"\x80" + (int(b[124:135], 8)).to_bytes(11, "big")
        _fix_checksum(b)

    def bad_checksum(b):
        b[0] ^= 1

    return {
        "plain": (plain, True),
        "bad checksum": (_patched(plain, 4, bad_checksum), False),
        "non-octal size": (_patched(plain, 2, non_octal), False),
        "space-padded size": (_patched(plain, 2, spaced_size), False),
        "7-digit checksum": (_patched(plain, 1, seven_digit_checksum), False),
        "base-256 size": (_patched(plain, 0, base256), False),
        "GNU long name": (_tar(members[:3] + [("L" * 120 + ".jpg", b"x"), ("s.json", uid_json)], tarfile.GNU_FORMAT),
                          False),
        "pax header": (_tar(members[:3] + [("é.jpg", b"x"), ("é.json", uid_json)], tarfile.PAX_FORMAT), False),
        "non-ASCII name": (_tar(members[:3] + [("é.jpg", b"x"), ("é.jpé", b"y"), ("é.json", uid_json)],
                                tarfile.GNU_FORMAT), False),
        "link members": (_tar(members[:3] + [("l1.jpg", tarfile.SYMTYPE), ("l1.json", uid_json),
                                             ("l2.jpg", tarfile.LNKTYPE), ("l2.json", uid_json)]), True),
        "ustar prefix": (_tar(members[:3] + [("p" * 90 + "/" + "q" * 20 + ".jpg", b"x")]), False),
        "truncated in an image": (plain[: len(plain) // 2], False),
        "truncated in a header": (plain[: 512 * 3 + 100], False),
        "no end-of-archive": (plain[: _members_end(plain)], False),
        "garbage after the end": (plain + b"junk", False),
        "empty": (b"", False),
    }


@pytest.mark.parametrize("case", list(_hostile_tars()))
def test_compiled_scan_and_pack_match_python(tmp_path: Path, case: str):
    """On plain and hostile tars the compiled walk either gives exactly the Python scan's
    result or declines (then the Python code runs), and the packs are byte-identical."""
    _kernels()
    data, compiled = _hostile_tars()[case]
    tar = tmp_path / "00000000.tar"
    tar.write_bytes(data)
    assert (rscan._samples_compiled(tar, len(data)) is not None) == compiled
    uids = [_uid(1000 + i) for i in range(20)] + [_uid(1000)]
    ids = tmp_path / "ids.npy"
    np.save(ids, make_subset(uids_to_pairs(uids)))
    res, tables, tars = {}, {}, {}
    for c in (False, True):
        scan = tmp_path / f"scan{c}.parquet"
        res[c] = rs.scan_unit(str(tar), str(ids), str(scan), c)
        tables[c] = pq.read_table(scan)
        rs.pack_unit(str(tmp_path / f"out{c}.tar"), [(str(tar), str(scan), 0, res[c]["emitted"])], {"compiled": c})
        tars[c] = (tmp_path / f"out{c}.tar").read_bytes()
    assert res[True] == res[False]
    assert tables[True].equals(tables[False])
    assert tars[True] == tars[False]
    if case == "link members":  # a link is an unsafe member: its sample is dropped, in both walks
        assert res[True]["unsafe_members"] == 2
    if case == "plain":  # the rules above, as the scan applied them
        # 23 samples: "a\\..\\s11.txt" is a sample of its own (key "a\\": names split on "/"
        # only), so s11 is two; unsafe: s9, s10, "a\\", ".."; broken: s4-s7; no uid: s11's jpg,
        # s12, s14, s17; s0's uid twice in the subset, and again in s15
        assert res[True] == {"processed": 23, "matched": 10, "emitted": 12, "json_without_uid": 4,
                             "corrupt_samples": 4 + 4, "broken_images": 4, "unsafe_members": 4,
                             "error": None, "expected": None}


def test_compiled_layout_matches_fast_tar_writer(tmp_path: Path, monkeypatch):
    """Many batches (a tiny batch size), two input shards in one output, keys up to "-11",
    members sorted (jpg, txt, json, then by name), held and copied members, in-kernel or
    user-space copies: same bytes as the Python writer; and a failed ``pwrite`` in the kernel
    is redone (and raised) in Python."""
    k = _kernels()
    pool = tmp_path / "pool"
    uids = _pool(pool, n_shards=2, per_shard=9)
    ids = tmp_path / "ids.npy"
    np.save(ids, make_subset(uids_to_pairs(uids + [uids[4]] * 11 + uids[::3])))
    segs = []
    for tar in sorted((pool / "shards").glob("*.tar")):
        scan = tmp_path / f"{tar.stem}.parquet"
        segs.append((str(tar), str(scan), 1, rs.scan_unit(str(tar), str(ids), str(scan), True)["emitted"]))
    rs.pack_unit(str(tmp_path / "py.tar"), segs, {"compiled": False})
    want = (tmp_path / "py.tar").read_bytes()
    monkeypatch.setattr(rpack, "_LAYOUT_BATCH", 700)
    assert rpack._pack_compiled(str(tmp_path / "k.tar"), segs) == sum(e - s for _, _, s, e in segs)
    assert (tmp_path / "k.tar").read_bytes() == want
    with monkeypatch.context() as m:  # copies through user space where copy_file_range is refused
        m.setattr(fasttar, "_cfr_ok", False)
        rpack._pack_compiled(str(tmp_path / "user.tar"), segs)
    assert (tmp_path / "user.tar").read_bytes() == want
    failing = type("K", (), {"lay_out": k.lay_out, "pwrite_all": staticmethod(lambda fd, mem, writes: 0)})
    monkeypatch.setattr(rpack, "KERNELS", type("M", (), {"get": staticmethod(lambda: failing)}))
    rpack._pack_compiled(str(tmp_path / "redone.tar"), segs)
    assert (tmp_path / "redone.tar").read_bytes() == want
    monkeypatch.setattr(fasttar, "_pwrite_all", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        rpack._pack_compiled(str(tmp_path / "full.tar"), segs)
    assert not (tmp_path / "full.tar").exists()
