"""Bring your own data: url/caption tables and uid-less webdataset shards become pools."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp.errors import FormatError, InputError, StageConflictError
from datacomp.formats.pool import POOL_COLUMNS, list_parquets, read_metadata
from datacomp.formats.shards import iter_samples, list_shards, read_stats
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.pool.byod import byod_from_shards, byod_metadata, compute_uid
from datacomp.reshard import reshard


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20 + i, 30, 3), i * 7 % 255, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_uid_is_md5_of_text_then_url():
    assert compute_uid("http://x/a.jpg", "a cat") == hashlib.md5(b"a cathttp://x/a.jpg").hexdigest()
    assert len(compute_uid("http://x", "")) == 32


def test_named_input_files_one_rule(tmp_path: Path):
    """byod --table and download --metadata read a directory the same way (its files with the
    stage's endings, name order, hidden ones left out) and keep their own rules for a named file."""
    from datacomp.pool.byod import _input_files
    from datacomp.pool.metadata_fetch import _local_metadata_files

    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "empty"
    for d in (a, b, empty):
        d.mkdir()
    table = pa.table({"uid": ["0" * 32], "url": ["http://x/a.jpg"], "text": ["a cat"]})
    for f in (a / "x.parquet", a / ".x.parquet.tmp.parquet", b / "x.parquet"):
        pq.write_table(table, f)
    (a / "y.csv.gz").write_bytes(b"")
    (a / "notes.md").write_text("not a table\n")
    assert _input_files(a) == [a / "x.parquet", a / "y.csv.gz"]
    assert _local_metadata_files(a) == [a / "x.parquet"]
    (tmp_path / "list.txt").write_text(f"{a / 'x.parquet'}\n\n")
    assert _local_metadata_files(tmp_path / "list.txt") == [a / "x.parquet"]
    with pytest.raises(InputError, match=r"empty: no \.parquet/\.csv/\.tsv files$"):
        _input_files([a, empty])
    with pytest.raises(InputError, match=r"empty: no \.parquet metadata files$"):
        _local_metadata_files(empty)
    with pytest.raises(InputError, match=r"^metadata files must have distinct names: x\.parquet$"):
        _local_metadata_files([a, b])
    with pytest.raises(InputError, match=r"nope\.csv: does not exist$"):
        _input_files(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"notes\.md: not a parquet file, a directory of them"):
        _local_metadata_files(a / "notes.md")


def test_metadata_from_csv_and_parquet(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text('url,caption\nhttp://h/1.jpg,"one, with comma"\nhttp://h/2.jpg,two\n,empty url\n'
                               'http://h/1.jpg,"one, with comma"\n')
    pq.write_table(pa.table({"URL": ["http://h/3.jpg", "http://h/2.jpg"], "caption": ["three", "two"]}), src / "b.parquet")
    m = byod_metadata(src, tmp_path / "pool", rows_per_file=2)
    assert m.counts == {"input_rows": 6, "rows": 3, "dropped_empty_url": 1, "dropped_duplicate_uid": 2, "metadata_files": 2}
    files = list_parquets(tmp_path / "pool")
    assert [f.name for f in files] == ["00000000.parquet", "00000001.parquet"]
    t = pa.concat_tables([read_metadata(f) for f in files])
    assert t.column_names == POOL_COLUMNS
    rows = t.to_pylist()
    assert [(r["url"], r["text"]) for r in rows] == [("http://h/1.jpg", "one, with comma"), ("http://h/2.jpg", "two"),
                                                     ("http://h/3.jpg", "three")]
    assert [r["uid"] for r in rows] == [compute_uid(r["url"], r["text"]) for r in rows]
    assert all(r["face_bboxes"] == [] and np.isnan(r["clip_b32_similarity_score"]) for r in rows)
    # deterministic: the same inputs give the same files
    byod_metadata(src, tmp_path / "pool2", rows_per_file=2)
    assert (tmp_path / "pool2" / "metadata" / "00000000.parquet").read_bytes() == files[0].read_bytes()
    assert byod_metadata(src, tmp_path / "pool", rows_per_file=2).reused  # same parameters: reused
    with pytest.raises(StageConflictError, match=r"pool: holds a finished 'byod' output .*rows_per_file 2 -> 500000"):
        byod_metadata(src, tmp_path / "pool")
    (tmp_path / "pool4" / "metadata").mkdir(parents=True)
    (tmp_path / "pool4" / "metadata" / "x.parquet").write_bytes(b"x")
    with pytest.raises(StageConflictError, match="already holds metadata that no byod run made"):
        byod_metadata(src, tmp_path / "pool4")
    (tmp_path / "bad.csv").write_text("link,words\nx,y\n")
    with pytest.raises(FormatError, match="no url column"):
        byod_metadata(tmp_path / "bad.csv", tmp_path / "pool3")


def _wds(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_webdataset_shards_become_a_pool_that_reshards(tmp_path: Path):
    src = tmp_path / "wds"
    src.mkdir()
    _wds(src / "a-000.tar", [
        ("s0", {"jpg": _jpeg(0), "txt": b"zero", "json": json.dumps({"url": "http://h/0.jpg", "extra": 5}).encode()}),
        ("s1", {"png": _png(), "txt": b"one"}),  # no json: url from the image hash
        ("s2", {"txt": b"no image"}),
        ("s3", {"jpg": b"not an image", "txt": b"broken"}),
    ])
    _wds(src / "a-001.tar", [
        ("t0", {"jpg": _jpeg(0), "txt": b"zero", "json": json.dumps({"url": "http://h/0.jpg"}).encode()}),  # duplicate uid
        ("t1", {"jpeg": _jpeg(5), "json": json.dumps({"caption": "five", "url": "http://h/5.jpg"}).encode()}),
    ])
    m = byod_from_shards(src, tmp_path / "pool", workers=1)
    assert m.counts["samples"] == 3 and m.counts["duplicate_uids"] == 1 and m.counts["without_image"] == 1
    assert m.counts["undecodable_images"] == 1
    pool = tmp_path / "pool"
    tars = list_shards(pool / "shards")
    assert [t.name for t in tars] == ["00000000.tar", "00000001.tar"]
    samples = [s for t in tars for s in iter_samples(t)]
    metas = [s.meta for s in samples]
    sha1 = hashlib.sha256(_png()).hexdigest()
    assert [(x["url"], x["caption"]) for x in metas] == [("http://h/0.jpg", "zero"), (f"sha256:{sha1}", "one"),
                                                         ("http://h/5.jpg", "five")]
    assert [x["uid"] for x in metas] == [compute_uid(x["url"], x["caption"]) for x in metas]
    assert metas[0]["extra"] == 5 and metas[0]["width"] == 30 and metas[0]["height"] == 20
    assert [s.key for s in samples] == ["000000000000", "000000000001", "000000010000"]
    assert read_stats(tars[0])["successes"] == 2
    # metadata parquet i holds shard i's samples in the same order
    for i, t in enumerate(tars):
        md = read_metadata(pool / "metadata" / f"{i:08d}.parquet")
        assert md.column("uid").to_pylist() == [s.meta["uid"] for s in iter_samples(t)]
    # every later stage works unchanged: reshard by uid
    uids = [x["uid"] for x in metas]
    write_subset(tmp_path / "s.npy", make_subset(uids_to_pairs([uids[2], uids[0]])))
    r = reshard(pool, tmp_path / "s.npy", tmp_path / "out", workers=1)
    assert r.counts["output_count"] == 2
    # re-running is a no-op; an escaping member name is refused
    again = byod_from_shards(src, pool, workers=1)
    assert again.created == m.created
    bad = tmp_path / "bad"
    bad.mkdir()
    _wds(bad / "x.tar", [("../up", {"jpg": _jpeg(1)})])
    with pytest.raises(FormatError, match="escape"):
        byod_from_shards(bad, tmp_path / "pool-bad", workers=1)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()
