"""The one tar layer (formats.tar): member safety, key split, member order, the damage policy."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from datacomp.errors import FormatError, InputError
from datacomp.formats.shards import ShardWriter, iter_samples
from datacomp.formats.tar import LINK, TarSamples, member_order, safe_member_name, split_member


@pytest.mark.parametrize("name, safe", [
    ("a.jpg", True), ("dir/a.jpg", True), ("..", False), ("../a.jpg", False), ("/abs.jpg", False),
    ("\\abs.jpg", False), ("a\\..\\b.jpg", False), ("d/../a.jpg", False), ("a..b.jpg", True), ("...", True),
])
def test_member_safety(name: str, safe: bool):
    assert safe_member_name(name) is safe


def test_split_and_order():
    assert split_member("x/000001.JPG") == ("000001", "jpg")
    assert split_member("x/000001.seg.png", keep_dir=True) == ("x/000001", "seg.png")
    assert split_member("x/README") is None
    assert sorted(["json", "zz", "txt", "cls", "jpg"], key=member_order) == ["jpg", "txt", "json", "cls", "zz"]


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw)
    return raw


def test_samples_links_and_unsafe_names(tmp_path: Path):
    p = tmp_path / "t.tar"
    _tar(p, [("a.jpg", b"1"), ("a.txt", b"x"), ("b.jpg", b"2"), ("b.json", None), ("c.txt", b"3")])
    assert list(TarSamples(p)) == [("a", {"jpg": b"1", "txt": b"x"}), ("b", {"jpg": b"2"}), ("c", {"txt": b"3"})]
    assert list(TarSamples(p, links=True))[1] == ("b", {"jpg": b"2", LINK: b""})
    _tar(p, [("a.jpg", b"1"), ("../b.jpg", b"2")])
    with pytest.raises(FormatError, match=r"t\.tar: tar member '\.\./b\.jpg' tries to escape"):
        list(TarSamples(p, on_damage="keep"))  # an unsafe name is refused under either policy


def test_damage_policy_is_the_callers(tmp_path: Path):
    p = tmp_path / "t.tar"
    raw = _tar(p, [("a.jpg", b"1" * 600), ("a.txt", b"x"), ("b.jpg", b"2" * 600), ("b.txt", b"y"), ("c.jpg", b"3" * 600)])
    p.write_bytes(raw[: 5120 + 512 + 100])  # cut inside c.jpg's data (a: 2,560 bytes, b: 2,560, c.jpg header)
    keep = TarSamples(p, on_damage="keep")
    assert [k for k, _ in keep] == ["a", "b"] and "Error" in keep.error  # c, in progress, is dropped
    with pytest.raises(FormatError, match=r"t\.tar: corrupt tar"):
        list(TarSamples(p))
    with pytest.raises(FormatError, match="corrupt tar"):
        list(iter_samples(p))
    p.write_bytes(b"not a tar at all" * 64)
    bad = TarSamples(p, on_damage="keep")
    assert list(bad) == [] and bad.error
    with pytest.raises(InputError, match="does not exist"):
        list(TarSamples(tmp_path / "missing.tar"))
    with pytest.raises(ValueError):
        TarSamples(p, on_damage="ignore")


def test_shard_writer_order_round_trips(tmp_path: Path):
    with ShardWriter(tmp_path / "00000000.tar", write_parquet=False, write_stats=False) as w:
        w.write("k1", {"json": b"{}", "txt": b"t", "jpg": b"j", "cls": b"0"})
    with tarfile.open(tmp_path / "00000000.tar") as tf:
        assert tf.getnames() == ["k1.jpg", "k1.txt", "k1.json", "k1.cls"]
    assert [s.key for s in iter_samples(tmp_path / "00000000.tar")] == ["k1"]
