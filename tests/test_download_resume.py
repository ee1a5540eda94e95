"""Download: kill the stage mid-way, run it again: no sample lost or duplicated.

Uses the hostile local server of test_download.py (127.0.0.1, ephemeral port).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("img2dataset")

from datacomp.pool import download as dl  # noqa: E402
from test_download import _expected_ok, _metadata, _opts, _pool_samples, server  # noqa: E402,F401


def test_kill_and_resume(tmp_path: Path, server: _Server):
    uid_path = _metadata(tmp_path / "meta", server.base)
    pool = tmp_path / "pool"
    opts = _opts(retries=0)
    code = (
        "import sys, json; from datacomp.pool import download as dl\n"
        "o = dl.DownloadOptions(**json.loads(sys.argv[3]))\n"
        "dl.download(sys.argv[1], metadata=sys.argv[2], options=o)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(pool), str(tmp_path / "meta"), json.dumps(asdict(opts))],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 40
        while time.time() < deadline and not list((pool / "shards").glob("*_stats.json")):
            time.sleep(0.05)
        assert list((pool / "shards").glob("*_stats.json")), "the first shard never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group this test started
        proc.wait()
    done_before = {p.name for p in (pool / "shards").glob("*_stats.json")}
    assert not (pool / "manifest.json").exists()
    dl.download(pool, metadata=tmp_path / "meta", options=opts)
    assert done_before <= {p.name for p in (pool / "shards").glob("*_stats.json")}
    uids = [u for u, _ in _pool_samples(pool / "shards")]
    assert len(uids) == len(set(uids))
    assert set(uids) == _expected_ok(uid_path, False)
