"""Reshard, continued: content-exact output on a damaged pool, local == Ray, kill + resume in a
subprocess, path escapes, shuffle buffer, face blurring, and the fast tar writer's bytes."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp.formats.pool import POOL_SCHEMA
from datacomp.formats.shards import ShardWriter, iter_samples, list_shards, read_stats
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.reshard import reshard
from datacomp.reshard.fasttar import FastTarWriter


def _uid(i: int) -> str:
    return f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}{i:016x}"


def _jpeg(i: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pool(root: Path, n_shards: int = 4, per_shard: int = 6) -> dict[str, bytes]:
    imgs = {}
    k = 0
    for s in range(n_shards):
        with ShardWriter(root / "shards" / f"{s:08d}.tar") as w:
            for i in range(per_shard):
                uid = _uid(k)
                imgs[uid] = _jpeg(k)
                w.write(f"{s:08d}{i:04d}", {"jpg": imgs[uid], "txt": f"caption {k}".encode(),
                                            "json": json.dumps({"uid": uid, "caption": f"caption {k}"}).encode()})
                k += 1
    return imgs


def _subset(path: Path, uids: list[str]) -> Path:
    write_subset(path, make_subset(uids_to_pairs(uids)))
    return path


def _read(out: Path) -> list[tuple[str, dict[str, bytes]]]:
    res = []
    for t in list_shards(out):
        res.extend((s.key, s.files) for s in iter_samples(t))
    return res


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name not in ("meta.json", "manifest.json")}


def test_fast_tar_writer_is_byte_identical_to_shard_writer(tmp_path: Path):
    samples = [(f"{_uid(j)}-{j}", {"json": b'{"uid": 1}', "jpg": os.urandom(1000 + 700 * j), "txt": b"x" * j,
                                   "cls": b"3", "webp": b"w" * 511}) for j in range(25)]
    samples += [("k" * 95, {"jpg": b"long"}), ("\u00fc-x", {"jpg": b"non-ascii"})]
    with ShardWriter(tmp_path / "a.tar", write_parquet=False, write_stats=False) as w:
        for k, f in samples:
            w.write(k, f)
    with FastTarWriter(tmp_path / "b.tar") as w:
        for k, f in samples:
            w.add(k, list(f.items()))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_damaged_pool_exact_content(tmp_path: Path):
    pool = tmp_path / "pool"
    imgs = _pool(pool, n_shards=3, per_shard=5)
    uids = list(imgs)
    d = pool / "shards"
    # shard 3: broken JPEGs (cut off; garbage after SOI), a json without uid, a good sample
    bad_cut, bad_garbage, no_uid_img, good = _uid(900), _uid(901), _jpeg(902), _uid(903)
    imgs[good] = _jpeg(903)
    with ShardWriter(d / "00000003.tar") as w:
        w.write("000000030000", {"jpg": _jpeg(900)[:-200], "json": json.dumps({"uid": bad_cut}).encode()})
        w.write("000000030001", {"jpg": b"\xff\xd8" + os.urandom(300), "json": json.dumps({"uid": bad_garbage}).encode()})
        w.write("000000030002", {"jpg": no_uid_img, "json": b'{"caption": "no uid here"}'})
        w.write("000000030003", {"jpg": imgs[good], "json": json.dumps({"uid": good}).encode()})
    # shard 4: members escaping the directory (relative and absolute); shard 5: a truncated copy of shard 0
    with tarfile.open(d / "00000004.tar", "w") as tf:
        for name, data in [("../escape.jpg", b"e"), ("../escape.json", json.dumps({"uid": _uid(950)}).encode()),
                           ("/abs/x.jpg", b"a"), ("/abs/x.json", json.dumps({"uid": _uid(951)}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw0 = (d / "00000000.tar").read_bytes()
    (d / "00000005.tar").write_bytes(raw0[: len(raw0) // 2])
    missing = [_uid(5000), _uid(5001)]
    chosen = uids[::2] + [uids[1]] * 3 + [bad_cut, bad_garbage, good, _uid(950), _uid(951)] + missing
    subset = _subset(tmp_path / "s.npy", chosen)
    m = reshard(pool, subset, tmp_path / "out", shard_size=4, workers=1, include_unfinished=True)
    c = m.counts
    got = _read(tmp_path / "out")
    # exactly the expected samples, by content: input order, one per occurrence
    mult = {u: chosen.count(u) for u in set(chosen)}
    expected = [(f"{u}-{j}", imgs[u]) for u in uids + [good] for j in range(mult.get(u, 0))]
    assert [(k, f["jpg"]) for k, f in got[: len(expected)]] == expected
    # then the truncated copy of shard 0: its intact leading samples, the one cut in half dropped
    shard0 = [s.meta["uid"] for s in iter_samples(d / "00000000.tar")]
    tail = [k for k, _ in got[len(expected):]]
    intact = next(n for n in range(len(shard0)) if tail == [f"{u}-{j}" for u in shard0[:n] for j in range(mult.get(u, 0))])
    assert 1 <= intact < len(shard0)
    assert c["processed_count"] == 15 + 4 + 2 + intact + 1 and c["corrupt_sample_count"] == 2 + 2 + 1
    for k, f in got:
        assert json.loads(f["json"])["uid"] == k.rsplit("-", 1)[0]
    assert c["broken_image_count"] == 2
    assert c["json_without_uid_count"] == 1
    assert c["unsafe_member_count"] == 4
    assert c["corrupt_shard_count"] == 1 and c["missing_uid_count"] >= 2
    assert [read_stats(t)["successes"] for t in list_shards(tmp_path / "out")][:-1] == [4] * (c["output_shard_count"] - 1)
    assert not (tmp_path / "escape.jpg").exists() and not Path("/abs/x.jpg").exists()


def test_local_and_ray_outputs_identical(tmp_path: Path, monkeypatch):
    pytest.importorskip("ray")
    from datacomp.reshard import resharder as rs

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pool = tmp_path / "pool"
    imgs = _pool(pool, n_shards=4, per_shard=5)
    subset = _subset(tmp_path / "s.npy", list(imgs)[::2] * 2 + [_uid(777)])
    a = reshard(pool, subset, tmp_path / "local", shard_size=3, workers=2, executor="local", shuffle_bufsize=7, seed=3)
    b = reshard(pool, subset, tmp_path / "ray", shard_size=3, workers=2, executor="ray", shuffle_bufsize=7, seed=3)
    # and local worker processes (small pools run in-process unless these thresholds say otherwise)
    monkeypatch.setattr(rs, "SCAN_PARALLEL_MIN", 0)
    monkeypatch.setattr(rs, "PACK_PARALLEL_MIN", 0)
    c = reshard(pool, subset, tmp_path / "procs", shard_size=3, workers=2, executor="local", shuffle_bufsize=7, seed=3)
    assert a.counts == b.counts == c.counts
    assert _files(tmp_path / "local") == _files(tmp_path / "ray") == _files(tmp_path / "procs")
    assert len(_files(tmp_path / "local")) == 2 * a.counts["output_shard_count"] + 1  # tars, stats, sample_ids


def test_kill_mid_way_and_rerun(tmp_path: Path):
    pool = tmp_path / "pool"
    imgs = _pool(pool, n_shards=6, per_shard=8)
    subset = _subset(tmp_path / "s.npy", list(imgs) + list(imgs)[::3])
    ref = reshard(pool, subset, tmp_path / "ref", shard_size=5, workers=1)
    out = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from datacomp.reshard import resharder as rs\n"
        "real = rs.pack_unit\n"
        "def slow(*a):\n"
        "    time.sleep(0.3)\n"
        "    return real(*a)\n"
        "rs.pack_unit = slow\n"
        "rs.reshard(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=5, workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(pool), str(subset), str(out)], start_new_session=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and len(list((out / ".work" / "pack" / ".done").glob("*.json"))) < 3:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    m = reshard(pool, subset, out, shard_size=5, workers=1)
    assert m.counts == ref.counts
    assert _files(out) == _files(tmp_path / "ref")
    keys = [k for k, _ in _read(out)]
    assert len(keys) == len(set(keys)) == ref.counts["output_count"]


def test_shuffle_buffer(tmp_path: Path):
    pool = tmp_path / "pool"
    imgs = _pool(pool, n_shards=3, per_shard=10)
    subset = _subset(tmp_path / "s.npy", list(imgs) + list(imgs)[:4])
    reshard(pool, subset, tmp_path / "p", shard_size=8, workers=1)
    reshard(pool, subset, tmp_path / "s1", shard_size=8, workers=1, shuffle_bufsize=10, seed=1)
    reshard(pool, subset, tmp_path / "s2", shard_size=8, workers=2, shuffle_bufsize=10, seed=1)
    p = [k for k, _ in _read(tmp_path / "p")]
    s1 = [k for k, _ in _read(tmp_path / "s1")]
    assert sorted(s1) == sorted(p) and s1 != p
    assert _files(tmp_path / "s1") == _files(tmp_path / "s2")  # deterministic for a seed
    pos = {k: i for i, k in enumerate(p)}
    assert all(i // 10 == pos[k] // 10 for i, k in enumerate(s1))  # moved within its window only


def test_face_blur_from_metadata(tmp_path: Path):
    pytest.importorskip("cv2")
    from datacomp.pool.blur import blur_faces

    pool = tmp_path / "pool"
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray((rng.random((6, 8, 3)) * 200).astype(np.uint8)).resize((160, 120), Image.BICUBIC), np.int32)
    stripes = np.zeros((120, 160, 1), np.int32)
    stripes[:, ::4] = 50  # high-frequency detail that blurring removes
    arr = np.clip(smooth + stripes, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    face_img = buf.getvalue()
    uids = [_uid(1), _uid(2)]
    with ShardWriter(pool / "shards" / "00000000.tar") as w:
        w.write("000000000000", {"png": face_img, "json": json.dumps({"uid": uids[0]}).encode()})
        w.write("000000000001", {"jpg": _jpeg(2), "json": json.dumps({"uid": uids[1]}).encode()})
    box = [0.25, 0.25, 0.5, 0.6]
    n = 2
    (pool / "metadata").mkdir()
    pq.write_table(pa.table({
        "uid": uids, "url": ["u1", "u2"], "text": ["a", "b"],
        "original_width": pa.array([160, 64], pa.int64()), "original_height": pa.array([120, 48], pa.int64()),
        "clip_b32_similarity_score": pa.array(np.zeros(n, np.float32)), "clip_l14_similarity_score": pa.array(np.zeros(n, np.float32)),
        "face_bboxes": pa.array([[box], []], pa.list_(pa.list_(pa.float64()))), "sha256": pa.array([None, None], pa.string()),
    }, schema=POOL_SCHEMA), pool / "metadata" / "00000000.parquet")
    m = reshard(pool, _subset(tmp_path / "s.npy", uids), tmp_path / "out", workers=1, apply_blur=True)
    assert m.counts["blur_count"] == 1
    got = dict(_read(tmp_path / "out"))
    blurred = got[f"{uids[0]}-0"]
    assert set(blurred) == {"webp", "json"}
    out = np.asarray(Image.open(io.BytesIO(blurred["webp"])).convert("RGB"))
    # lossless-enough webp (quality 100) of exactly what blur_faces gives for the decoded image
    import cv2

    bgr = cv2.imdecode(np.frombuffer(face_img, np.uint8), cv2.IMREAD_COLOR)
    expect = cv2.cvtColor(blur_faces(bgr, [box]), cv2.COLOR_BGR2RGB)
    assert np.abs(out.astype(int) - expect.astype(int)).mean() < 4  # webp q100 is near-lossless
    # inside the box the stripes are smoothed away; far outside the grown box pixels are untouched
    def detail(a):
        return np.abs(np.diff(a.astype(int), axis=1)).mean()

    assert detail(out[40:65, 50:70]) < detail(arr[40:65, 50:70]) / 3
    assert np.abs(expect[:, 140:].astype(int) - arr[:, 140:].astype(int)).max() <= 1
    assert got[f"{uids[1]}-0"]["jpg"] == _jpeg(2)  # no face: the bytes are copied


def test_blur_algorithm_parameters():
    pytest.importorskip("cv2")
    from datacomp.pool.blur import blur_faces

    img = np.zeros((100, 200, 3), np.uint8)
    img[:, ::2] = 255  # stripes: any blur changes them
    assert blur_faces(img, []) is img
    out = blur_faces(img, [[0.5, 0.5, 0.6, 0.7]])  # box 20x20 px at (100, 50): grown by 2 px a side
    changed = np.argwhere(np.any(out != img, axis=2))
    # sigma = 2, kernel 2*ceil(8)+1 = 17: the blurred mask reaches at most 8 px beyond the grown box
    assert changed[:, 1].min() >= 98 - 8 and changed[:, 1].max() <= 122 + 8
    assert changed[:, 0].min() >= 48 - 8 and changed[:, 0].max() <= 72 + 8
    assert 5 < out[60, 110].mean() < 250 and abs(int(out[60, 110, 0]) - 127) < 40  # centre is averaged


def test_overwrite_builds_beside_and_keeps_the_old_output_on_failure(tmp_path: Path, monkeypatch):
    """--overwrite writes the new shards beside the old output and swaps them in when complete: a
    failing overwrite leaves the old output byte for byte (and reusable); meta.json names the final
    directory; files that are not the reshard's stay."""
    import datacomp.reshard.resharder as resharder

    imgs = _pool(tmp_path / "pool", n_shards=3, per_shard=4)
    uids = sorted(imgs)
    out = tmp_path / "out"
    reshard(tmp_path / "pool", _subset(tmp_path / "a.npy", uids[:6]), out, shard_size=4, workers=1,
            include_unfinished=True)
    (out / "NOTES.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(resharder, "pack_units", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        reshard(tmp_path / "pool", _subset(tmp_path / "b.npy", uids[3:]), out, shard_size=4, workers=1,
                include_unfinished=True, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (tmp_path / ".out.swap-new").is_dir()
    again = reshard(tmp_path / "pool", tmp_path / "a.npy", out, shard_size=4, workers=1, include_unfinished=True)
    assert again.params["subset"] == str((tmp_path / "a.npy").resolve())  # the old output, reused
    assert not list(tmp_path.glob(".out.swap-*"))
    monkeypatch.undo()
    m = reshard(tmp_path / "pool", tmp_path / "b.npy", out, shard_size=4, workers=1, include_unfinished=True,
                overwrite=True)
    assert m.counts["output_count"] == len(uids) - 3 and not list(tmp_path.glob(".out.swap-*"))
    assert sorted(json.loads(f["json"])["uid"] for _, f in _read(out)) == uids[3:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["output_dir"] == str(out.resolve()) == meta["args"]["output_dir"]
    assert (out / "NOTES.txt").read_text() == "mine" and not (out / ".work").exists()
