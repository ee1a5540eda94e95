"""Reshard: multiplicities, missing uids, shard size, contiguous numbering, resume, corrupt input."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datacomp.errors import InputError, StageConflictError
from datacomp.formats.shards import ShardWriter, iter_samples, list_shards, read_stats
from datacomp.formats.uids import make_subset, read_subset, uids_to_pairs, write_subset
from datacomp.reshard import reshard
from datacomp.reshard import keys as rkeys
from datacomp.reshard import resharder as rs


def _uid(i: int) -> str:
    return f"{(i * 2654435761) % (1 << 64):016x}{i:016x}"


def _make_shards(root: Path, n_shards: int = 3, per_shard: int = 7, extra=None) -> dict[str, bytes]:
    """img2dataset-like pool shards; returns uid -> image bytes."""
    images = {}
    d = root / "shards"
    k = 0
    for s in range(n_shards):
        with ShardWriter(d / f"{s:08d}.tar") as w:
            for i in range(per_shard):
                uid = _uid(k)
                img = f"IMG{k}".encode() * 3
                images[uid] = img
                meta = {"uid": uid, "key": f"{s:08d}{i:04d}", "caption": f"cap {k}", "status": "success"}
                w.write(f"{s:08d}{i:04d}", {"jpg": img, "txt": f"cap {k}".encode(), "json": json.dumps(meta).encode()})
                k += 1
            if extra and s in extra:
                for key, files in extra[s]:
                    w.write(key, files, record={"key": key})
    return images


def _subset(tmp: Path, uids: list[str], name: str = "subset.npy") -> Path:
    path = tmp / name
    write_subset(path, make_subset(uids_to_pairs(uids)))
    return path


def _read_out(out: Path) -> list[tuple[str, dict[str, bytes]]]:
    samples = []
    for tar in list_shards(out):
        samples.extend((s.key, s.files) for s in iter_samples(tar))
    return samples


def test_duplicates_missing_and_shard_size(tmp_path: Path):
    pool = tmp_path / "pool"
    images = _make_shards(pool)
    all_uids = list(images)
    chosen = all_uids[::2]
    subset_uids = chosen + [chosen[0], chosen[0], chosen[3]] + [_uid(10_000), _uid(10_001), _uid(10_001)]
    subset = _subset(tmp_path, subset_uids)
    out = tmp_path / "out"
    m = reshard(pool, subset, out, shard_size=4, workers=1)

    samples = _read_out(out)
    keys = [k for k, _ in samples]
    expected_keys = []
    counts = {u: subset_uids.count(u) for u in set(subset_uids)}
    for u in all_uids:  # input order, then j
        expected_keys += [f"{u}-{j}" for j in range(counts.get(u, 0))]
    assert keys == expected_keys
    for k, files in samples:
        uid = k.rsplit("-", 1)[0]
        assert files["jpg"] == images[uid]
        assert json.loads(files["json"])["uid"] == uid
        assert set(files) == {"jpg", "txt", "json"}

    tars = sorted(out.glob("*.tar"))
    n_out = (len(expected_keys) + 3) // 4
    assert [t.name for t in tars] == [f"{i:08d}.tar" for i in range(n_out)]
    sizes = [read_stats(t)["successes"] for t in tars]
    assert sizes == [4] * (n_out - 1) + [len(expected_keys) - 4 * (n_out - 1)]
    assert json.loads((out / f"{0:08d}_stats.json").read_text()) == {"successes": 4}

    meta = json.loads((out / "meta.json").read_text())
    assert meta["output_shard_count"] == n_out == m.counts["output_shard_count"]
    assert meta["output_count"] == len(expected_keys)
    assert meta["processed_count"] == len(all_uids)
    assert meta["missing_uid_count"] == 2 and meta["missing_subset_rows"] == 3
    assert meta["args"]["shard_size"] == 4
    assert np.array_equal(np.load(out / "sample_ids.npy"), np.asarray(read_subset(subset)))
    assert (out / "manifest.json").is_file() and not (out / ".work").exists()


def test_same_output_for_any_worker_count_and_reuse(tmp_path: Path):
    pool = tmp_path / "pool"
    images = _make_shards(pool, n_shards=4, per_shard=9)
    subset = _subset(tmp_path, list(images)[1::3] * 2)
    a = reshard(pool / "shards", subset, tmp_path / "a", shard_size=5, workers=1)  # a dir of tars works too
    b = reshard(pool, subset, tmp_path / "b", shard_size=5, workers=2)
    assert a.counts["output_count"] == b.counts["output_count"]
    for ta, tb in zip(sorted((tmp_path / "a").glob("*.tar")), sorted((tmp_path / "b").glob("*.tar"))):
        assert ta.name == tb.name and ta.read_bytes() == tb.read_bytes()
    # same params: reused; other params: conflict unless overwrite
    again = reshard(pool, subset, tmp_path / "b", shard_size=5, workers=2)
    assert again.created == b.created
    with pytest.raises(StageConflictError):
        reshard(pool, subset, tmp_path / "b", shard_size=3, workers=1)
    c = reshard(pool, subset, tmp_path / "b", shard_size=3, workers=1, overwrite=True)
    assert c.counts["output_shard_count"] == (c.counts["output_count"] + 2) // 3
    assert len(list((tmp_path / "b").glob("*.tar"))) == c.counts["output_shard_count"]


def test_resume_after_kill(tmp_path: Path, monkeypatch):
    pool = tmp_path / "pool"
    images = _make_shards(pool, n_shards=3, per_shard=6)
    subset = _subset(tmp_path, list(images))
    out = tmp_path / "out"
    real = rs.pack_unit
    done = []

    def dying(out_tar, segs):
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append(out_tar)
        return real(out_tar, segs)

    monkeypatch.setattr(rs, "pack_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        reshard(pool, subset, out, shard_size=4, workers=1)
    assert not (out / "manifest.json").exists()
    scans = []
    real_scan = rs.scan_unit
    monkeypatch.setattr(rs, "scan_unit", lambda *a: scans.append(a) or real_scan(*a))
    packs = []
    monkeypatch.setattr(rs, "pack_unit", lambda o, s: packs.append(o) or real(o, s))
    m = reshard(pool, subset, out, shard_size=4, workers=1)
    assert scans == []  # every input shard was scanned before the kill
    assert len(packs) == m.counts["output_shard_count"] - 2
    assert [k for k, _ in _read_out(out)] == [f"{u}-0" for u in images]


def test_corrupt_members_skipped(tmp_path: Path):
    pool = tmp_path / "pool"
    bad_json = [("bad0001", {"jpg": b"x", "json": b'{"caption": "no uid"}'}),
                ("bad0002", {"jpg": b"y", "json": b"not json"}),
                ("bad0003", {"jpg": b"z", "json": json.dumps({"uid": "0x" + "a" * 30}).encode()})]
    images = _make_shards(pool, n_shards=2, per_shard=4, extra={0: bad_json})
    # a member escaping the directory, then a truncated tar
    evil = pool / "shards" / "00000002.tar"
    with tarfile.open(evil, "w") as tf:
        for name, data in [("../evil.jpg", b"e"), ("../evil.json", json.dumps({"uid": _uid(99)}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    trunc_src = pool / "shards" / "00000001.tar"
    trunc = pool / "shards" / "00000003.tar"
    trunc.write_bytes(trunc_src.read_bytes()[:2500])
    subset = _subset(tmp_path, list(images) + [_uid(99)])
    m = reshard(pool, subset, tmp_path / "out", shard_size=100, workers=1, include_unfinished=True)
    c = m.counts
    assert c["json_without_uid_count"] == 3
    assert c["unsafe_member_count"] == 2
    assert c["corrupt_sample_count"] == 2  # the escaping sample and the cut-off one
    assert c["corrupt_shard_count"] == 1 and "00000003.tar" in json.loads((tmp_path / "out" / "meta.json").read_text())["corrupt_shards"]
    keys = [k for k, _ in _read_out(tmp_path / "out")]
    assert all(not k.startswith(_uid(99)) for k in keys)
    assert set(k.rsplit("-", 1)[0] for k in keys) == set(images)
    # the truncated copy of shard 1 contributes its intact leading samples a second time
    assert len(keys) == c["output_count"] >= len(images)


def test_bad_inputs(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        reshard(tmp_path / "nope", tmp_path / "s.npy", tmp_path / "out")
    pool = tmp_path / "pool"
    images = _make_shards(pool, n_shards=1, per_shard=2)
    with pytest.raises(InputError, match="subset file does not exist"):
        reshard(pool, tmp_path / "s.npy", tmp_path / "out")
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "something.txt").write_text("x")
    with pytest.raises(StageConflictError):
        reshard(pool, _subset(tmp_path, list(images)), tmp_path / "out2")


def test_membership_is_vectorised_and_exact():
    rng = np.random.default_rng(0)
    uids = [rng.bytes(16).hex() for _ in range(500)] + ["00" * 16, "ff" * 16, "ab" + "00" * 15]
    sub = make_subset(uids_to_pairs(uids[::3] + uids[::6]))
    keys = rkeys.pairs_to_keys(sub)
    mult = rkeys.multiplicities(rkeys.hex_to_keys(uids), keys)
    expect = [sum(1 for x in (uids[::3] + uids[::6]) if x == u) for u in uids]
    assert mult.tolist() == expect


def test_long_member_names_use_tarfile_fallback(tmp_path: Path):
    shards = tmp_path / "tars"
    shards.mkdir()
    key = "k" * 150  # GNU long-name headers: the fast header reader hands over to tarfile
    uid = _uid(7)
    with tarfile.open(shards / "00000000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for ext, data in [("jpg", b"IMG"), ("json", json.dumps({"uid": uid}).encode())]:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    m = reshard(shards, _subset(tmp_path, [uid]), tmp_path / "out", workers=1, include_unfinished=True)
    assert m.counts["output_count"] == 1
    assert _read_out(tmp_path / "out") == [(f"{uid}-0", {"jpg": b"IMG", "json": json.dumps({"uid": uid}).encode()})]


def test_empty_and_all_missing_subsets(tmp_path: Path):
    pool = tmp_path / "pool"
    _make_shards(pool, n_shards=2, per_shard=3)
    with pytest.raises(InputError, match="empty.npy: the subset is empty"):
        reshard(pool, _subset(tmp_path, [], "empty.npy"), tmp_path / "e", workers=1)
    assert not (tmp_path / "e").exists()
    m = reshard(pool, _subset(tmp_path, [], "empty.npy"), tmp_path / "e", workers=1, allow_empty=True)
    assert m.counts["output_shard_count"] == 0 and m.counts["output_count"] == 0
    m = reshard(pool, _subset(tmp_path, [_uid(500), _uid(501)], "gone.npy"), tmp_path / "g", workers=1)
    assert m.counts["output_count"] == 0 and m.counts["missing_uid_count"] == 2
    assert json.loads((tmp_path / "g" / "meta.json").read_text())["output_shard_count"] == 0
