"""Download metadata from an object store: s3:// through fsspec (s3fs) against a local
S3-compatible server (moto in server mode on 127.0.0.1, an ephemeral port)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from datacomp.errors import ConfigError, InputError  # noqa: E402
from datacomp.pool import download as dl  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server and an s3fs filesystem on it; credentials and endpoint from the environment."""
    mp = pytest.MonkeyPatch()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        mp.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("pool-bucket")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    mp.undo()
    srv.stop()


def _put_metadata(fs, tmp: Path, prefix: str) -> dict[str, bytes]:
    """Two CommonPool-style parquets (one with its npz) under s3://pool-bucket/PREFIX/; name -> bytes."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(2):
        t = pa.table({"uid": [f"{i:02d}{j:030x}" for j in range(3)], "url": [f"http://x/{i}/{j}.jpg" for j in range(3)],
                      "text": [f"caption {i} {j}" for j in range(3)]})
        pq.write_table(t, tmp / f"{i:08d}.parquet")
        files[f"{i:08d}.parquet"] = (tmp / f"{i:08d}.parquet").read_bytes()
    np.savez(tmp / "00000000.npz", l14_img=np.eye(3, dtype=np.float16))
    files["00000000.npz"] = (tmp / "00000000.npz").read_bytes()
    for name, data in files.items():
        fs.pipe(f"pool-bucket/{prefix}/{name}", data)
    fs.pipe(f"pool-bucket/{prefix}/README.txt", b"not metadata")
    return files


def test_metadata_from_s3(s3, tmp_path: Path) -> None:
    files = _put_metadata(s3, tmp_path / "src", "meta")
    m = dl.download(tmp_path / "pool", metadata="s3://pool-bucket/meta/", skip_shards=True)
    assert m.counts["metadata_files"] == 2
    got = {p.name: p.read_bytes() for p in (tmp_path / "pool" / "metadata").iterdir()}
    assert got == files  # every parquet and its npz, byte for byte; nothing else
    one = dl.fetch_metadata(tmp_path / "one", "s3://pool-bucket/meta/00000001.parquet")
    assert [p.name for p in one] == ["00000001.parquet"]

    with pytest.raises(InputError, match=r"s3://pool-bucket/nothing/.*not a parquet"):
        dl.fetch_metadata(tmp_path / "p2", "s3://pool-bucket/nothing/")
    s3.pipe("pool-bucket/bad/00000000.parquet", b"not a parquet")
    with pytest.raises(InputError, match=r"s3://pool-bucket/bad/00000000\.parquet: cannot read parquet"):
        dl.fetch_metadata(tmp_path / "p3", "s3://pool-bucket/bad")
    assert not (tmp_path / "p3").exists() or not any((tmp_path / "p3").rglob("*.parquet"))
    with pytest.raises(InputError, match="not both"):
        dl.fetch_metadata(tmp_path / "p4", ["s3://pool-bucket/meta/", str(tmp_path / "src")])
    with pytest.raises(ConfigError, match="nosuchproto://"):
        dl.fetch_metadata(tmp_path / "p5", "nosuchproto://bucket/meta/")
