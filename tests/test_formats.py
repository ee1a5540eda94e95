"""Formats: uids, subset files, manifests, atomic writes, shards."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacomp.errors import FormatError, InputError
from datacomp.formats import atomic
from datacomp.formats.manifest import Manifest, mark_done, read_manifest, read_marker, write_manifest
from datacomp.formats.shards import ShardWriter, iter_samples, read_stats, sample_key
from datacomp.formats.uids import (
    SUBSET_DTYPE, make_subset, pair_to_uid, pairs_to_uids, read_subset, uid_to_pair, uids_to_pairs, write_subset,
)

uid_ints = st.integers(min_value=0, max_value=2**128 - 1)


@given(st.lists(uid_ints, max_size=50))
@settings(max_examples=60, deadline=None)
def test_uid_roundtrip_and_reference_split(values):
    uids = [f"{v:032x}" for v in values]
    pairs = uids_to_pairs(uids)
    assert pairs.dtype == SUBSET_DTYPE
    for u, v, p in zip(uids, values, pairs):
        # the reference: hi = int(first 16 hex chars), lo = int(last 16)
        assert (int(p["f0"]), int(p["f1"])) == (int(u[:16], 16), int(u[16:], 16)) == uid_to_pair(u)
        assert pair_to_uid(p["f0"], p["f1"]) == u
    assert pairs_to_uids(pairs) == uids


@given(st.lists(uid_ints, max_size=60))
@settings(max_examples=60, deadline=None)
def test_subset_sorted_like_reference_and_roundtrips(tmp_path_factory, values):
    uids = [f"{v:032x}" for v in values] * 2  # duplicates allowed
    sub = make_subset(uids_to_pairs(uids))
    ref = np.array([uid_to_pair(u) for u in uids], dtype=SUBSET_DTYPE)
    ref.sort()  # numpy structured sort = by f0 then f1, as the reference does
    assert np.array_equal(sub, ref)
    path = tmp_path_factory.mktemp("s") / "subset.npy"
    write_subset(path, sub)
    back = read_subset(path)
    assert back.dtype == SUBSET_DTYPE and np.array_equal(back, ref)
    # np.load reads it the same way the reference resharder does
    assert np.array_equal(np.load(path), ref)


def test_raw_memmap_subset_is_read(tmp_path):
    sub = make_subset(uids_to_pairs([f"{i:032x}" for i in range(5)]))
    raw = tmp_path / "subset.bin"
    sub.tofile(raw)
    assert np.array_equal(read_subset(raw), sub)


def test_bad_subset_files(tmp_path):
    uns = np.array([(2, 0), (1, 0)], dtype=SUBSET_DTYPE)
    p = tmp_path / "unsorted.npy"
    np.save(p, uns)
    with pytest.raises(FormatError, match="unsorted.npy: subset uids are not sorted"):
        read_subset(p)
    p2 = tmp_path / "wrongtype.npy"
    np.save(p2, np.arange(4, dtype=np.int64))
    with pytest.raises(FormatError, match="wrongtype.npy.*dtype 'u8,u8'"):
        read_subset(p2)
    p3 = tmp_path / "odd.bin"
    p3.write_bytes(b"x" * 17)
    with pytest.raises(FormatError, match="odd.bin.*multiple of 16"):
        read_subset(p3)
    with pytest.raises(InputError, match="missing.npy: subset file does not exist"):
        read_subset(tmp_path / "missing.npy")
    with pytest.raises(FormatError):
        write_subset(tmp_path / "x.npy", uns)
    assert not (tmp_path / "x.npy").exists()


def test_bad_uid_strings():
    with pytest.raises(ValueError, match="not 32 hex"):
        uids_to_pairs(["abc"])
    with pytest.raises(ValueError, match="non-hex"):
        uids_to_pairs(["z" * 32])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.json"
    atomic.write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]


def test_manifest_and_markers_round_trip(tmp_path):
    write_manifest(tmp_path, Manifest(stage="s", params={"a": 1}, counts={"n": 3}))
    m = read_manifest(tmp_path)
    assert m is not None and (m.stage, m.params, m.counts) == ("s", {"a": 1}, {"n": 3})
    mark_done(tmp_path, "u0", {"rows": 1})
    assert read_marker(tmp_path, "u0") == {"rows": 1}


def test_shard_writer_layout_and_determinism(tmp_path):
    def write(d):
        with ShardWriter(d / "00000003.tar") as w:
            for i in range(3):
                meta = {"uid": f"{i:032x}", "key": sample_key(3, i), "status": "success"}
                w.write(sample_key(3, i), {"jpg": b"img%d" % i, "txt": b"cap", "json": json.dumps(meta).encode()})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a")
    write(tmp_path / "b")
    assert (tmp_path / "a/00000003.tar").read_bytes() == (tmp_path / "b/00000003.tar").read_bytes()
    samples = list(iter_samples(tmp_path / "a/00000003.tar"))
    assert [s.key for s in samples] == ["000000030000", "000000030001", "000000030002"]
    assert samples[1].meta["uid"] == f"{1:032x}" and samples[1].image_bytes() == b"img1" and samples[1].text == "cap"
    assert read_stats(tmp_path / "a/00000003.tar")["successes"] == 3
    assert (tmp_path / "a/00000003.parquet").is_file()


def test_shard_writer_crash_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "00000000.tar") as w:
            w.write("000000000000", {"txt": b"x"})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt"])
def test_tar_member_escaping_is_rejected(tmp_path, name):
    p = tmp_path / "bad.tar"
    with tarfile.open(p, "w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FormatError, match="escape"):
        list(iter_samples(p))


def test_truncated_tar_is_a_format_error(tmp_path):
    with ShardWriter(tmp_path / "00000000.tar") as w:
        w.write("000000000000", {"txt": b"x" * 5000, "json": b"{}"})
    data = (tmp_path / "00000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:700])
    with pytest.raises(FormatError, match="cut.tar"):
        list(iter_samples(tmp_path / "cut.tar"))


def test_link_file_is_atomic_and_leaves_no_temporary(tmp_path):
    """link_file: dst gets src's bytes (a hard link); linking again onto the same file is a no-op that
    leaves no temporary name (a rename of a hard link onto another of its names does nothing)."""
    import os

    from datacomp.formats.atomic import link_file

    src, dst = tmp_path / "a.bin", tmp_path / "b.bin"
    src.write_bytes(b"weights")
    link_file(src, dst)
    link_file(src, dst)
    assert dst.read_bytes() == b"weights" and os.path.samefile(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
    other = tmp_path / "c.bin"
    other.write_bytes(b"new weights")
    link_file(other, dst)  # a different file replaces it
    assert dst.read_bytes() == b"new weights" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.bin"]
