"""Embed and download on a local 2-CPU Ray (one instance for the module): the same outputs as the
local path — bit-identical embeddings and scores, and the same downloaded samples — and a killed
Ray download resumes. The download cases use the hostile 127.0.0.1 server of test_download.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from datacomp.embed import embed  # noqa: E402
from datacomp.formats.pool import read_metadata, read_npz  # noqa: E402
from test_embed import _pool, random_model  # noqa: E402,F401

pytest.importorskip("img2dataset")

from datacomp.pool import download as dl  # noqa: E402
from test_download import _metadata, _opts, server  # noqa: E402,F401


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_embed_on_ray_is_bit_identical_to_local(local_ray, tmp_path: Path, random_model: Path) -> None:
    kw = dict(model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", keys=("b32", "l14"), workers=1)
    a = _pool(tmp_path / "local", n_shards=2, per_shard=12, drop=(2,))
    b = tmp_path / "ray"
    shutil.copytree(a, b)
    embed(a, executor="local", **kw)
    m = embed(b, executor="ray", **kw)
    assert m.extra["executor"] == "ray" and m.extra["device"] == "cpu"  # no GPU in this Ray: CPU tasks
    assert m.counts["rows"] == 24 and m.counts["missing_images"] == 2
    pids = {json.loads(p.read_text())["pid"] for p in (b / "stages" / "embed" / ".done").glob("*.json")}
    assert os.getpid() not in pids  # the shards ran in Ray's workers
    keys = ["b32_img", "b32_txt", "l14_img", "l14_txt"]
    for i in range(2):
        za, zb = (read_npz(p / "metadata" / f"{i:08d}.npz", keys) for p in (a, b))
        for k in keys:
            assert za[k].dtype == zb[k].dtype == np.float16
            assert za[k].tobytes() == zb[k].tobytes(), k
        ta, tb = (read_metadata(p / "metadata" / f"{i:08d}.parquet") for p in (a, b))
        assert ta.column_names == tb.column_names
        for col in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
            sa, sb = ta.column(col).to_numpy(), tb.column(col).to_numpy()
            assert sa.tobytes() == sb.tobytes(), col  # NaN where the image is missing, in both
        assert ta.drop(["clip_b32_similarity_score", "clip_l14_similarity_score"]).equals(
            tb.drop(["clip_b32_similarity_score", "clip_l14_similarity_score"]))


def _jobs() -> int:
    """Drivers that have connected to this module's Ray (each download child on Ray is one)."""
    return len(ray._private.state.jobs())


def _wait_no_download_tasks(limit: float = 20.0) -> None:
    """Until no process of this machine runs img2dataset's Ray task (``ray::ray_download``)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if not any(line.startswith("ray::ray_download") for line in out.splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError("the killed download's Ray tasks are still running")


def _stateless_metadata(d: Path, base: str) -> dict[str, str]:
    """test_download's URL list without its flaky images (they answer by hit count, so a second
    download of the same list would differ): 20 images, one with a face box, and 8 hostile URLs."""
    uid_path = _metadata(d, base)
    t = pq.read_table(d / "part-0.parquet")
    keep = pa.array(["/flaky/" not in u for u in t.column("url").to_pylist()])
    pq.write_table(t.filter(keep), d / "part-0.parquet")
    return {u: p for u, p in uid_path.items() if not p.startswith("/flaky/")}


def _shard_contents(shards: Path) -> dict[str, object]:
    """Every tar member by name (json parsed) and every shard parquet's rows, order-free: img2dataset
    writes a shard's samples in the order its fetch threads finish."""
    out: dict[str, object] = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                data = tf.extractfile(m).read()
                out[f"{tar.name}/{m.name}"] = json.loads(data) if m.name.endswith(".json") else data
    for p in sorted(shards.glob("*.parquet")):
        rows = pq.read_table(p).to_pylist()
        out[p.name] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def test_download_on_ray_is_the_multiprocessing_download_and_resumes(local_ray, server, tmp_path: Path) -> None:
    """A Ray download killed after its first shard, then run again, ends with the very shards of
    an uninterrupted multiprocessing download of the same URL list (one Ray start for both claims)."""
    uid_path = _stateless_metadata(tmp_path / "meta", server.base)
    n_shards = -(-len(uid_path) // 4)
    kw = dict(retries=0, processes=2, threads=2, samples_per_shard=4)  # 7 shards, 2 at a time
    mp = dl.download(tmp_path / "mp", metadata=tmp_path / "meta", options=_opts(**{**kw, "processes": 1}))
    jobs = _jobs()
    pool = tmp_path / "ray"
    opts = _opts(distributor="ray", **kw)
    code = (
        "import sys, json; from datacomp.pool import download as dl\n"
        "o = dl.DownloadOptions(**json.loads(sys.argv[3]))\n"
        "dl.download(sys.argv[1], metadata=sys.argv[2], options=o)\n"
    )
    env = {**os.environ, "RAY_ADDRESS": local_ray}  # the killed run is a job on this module's Ray
    proc = subprocess.Popen([sys.executable, "-c", code, str(pool), str(tmp_path / "meta"), json.dumps(asdict(opts))],
                            start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list((pool / "shards").glob("*_stats.json")):
            time.sleep(0.05)
        assert list((pool / "shards").glob("*_stats.json")), "the first shard never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started; the img2dataset child dies with it
        proc.wait()
    _wait_no_download_tasks()  # Ray ends the dead job's workers within a second or so
    done_before = {p.name for p in (pool / "shards").glob("*_stats.json")}
    assert not (pool / "manifest.json").exists()
    assert len(done_before) < n_shards, done_before
    on_ray = dl.download(pool, metadata=tmp_path / "meta", options=opts)  # joins this process's Ray
    assert _jobs() == jobs + 2, ray._private.state.jobs()  # both runs were img2dataset jobs on the Ray this process had joined
    assert done_before <= {p.name for p in (pool / "shards").glob("*_stats.json")}  # finished shards kept
    assert on_ray.params == mp.params  # the distributor is how a download runs, not what it writes
    a, b = _shard_contents(tmp_path / "mp" / "shards"), _shard_contents(pool / "shards")
    assert len([k for k in a if k.endswith(".jpg")]) == 20
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k  # same samples, same bytes: the face box of image 3 blurred alike
    sa, sb = (json.loads((d / "download" / "summary.json").read_text()) for d in (tmp_path / "mp", pool))
    assert sa == sb and sb["downloaded_uids"] == 20 and sb["shards"] == n_shards
    failed = pq.read_table(pool / "download" / "failed.parquet").to_pylist()
    kinds = {uid_path[r["uid"]]: r["kind"] for r in failed}
    # our bounded fetch and decoded-size limit in Ray's workers: /slow trickles for 20 s, the bomb is 144 MB
    assert kinds["/slow"] == "too_slow" and kinds["/bomb.png"] == "decompression_bomb"
    assert kinds["/bignolen"] == "too_large"
