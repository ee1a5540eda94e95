"""Download: img2dataset against a local HTTP server with hostile endpoints; retry; kill + resume.

The server runs on 127.0.0.1 (an ephemeral port) in a thread of this test process and serves
generated JPEGs plus: 404, 500, a slow trickle, a redirect loop, a non-image body, a
decompression bomb (a small PNG claiming 12000x12000 pixels), an oversized file (with and
without Content-Length), and "flaky" images that fail with 503 on their first two requests.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("img2dataset")

from datacomp.errors import InputError  # noqa: E402
from datacomp.formats.pool import POOL_SCHEMA  # noqa: E402
from datacomp.pool import download as dl  # noqa: E402
from datacomp.pool.byod import compute_uid  # noqa: E402

N_GOOD = 20
N_FLAKY = 2
PER_SHARD = 8
HOSTILE = {  # path -> expected failure kind
    "/404": "http_404",
    "/500": "http_5xx",
    "/slow": "too_slow",
    "/loop": "redirect_loop",
    "/html": "not_an_image",
    "/bomb.png": "decompression_bomb",
    "/big": "too_large",
    "/bignolen": "too_large",
}


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    w, h = (900, 600) if i % 3 == 0 else (300 + 7 * i, 200 + 5 * i)
    arr = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((w, h))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png_bomb(side: int = 12000) -> bytes:
    """A grayscale PNG of side x side zeros: ~140 kB on the wire, 144 MB once decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


class _Server:
    def __init__(self):
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.images = {i: _jpeg(i) for i in range(N_GOOD + N_FLAKY)}
        self.bomb = _png_bomb()
        self.stop = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: bool = True):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                p = self.path
                with srv.lock:
                    srv.hits[p] += 1
                    n = srv.hits[p]
                try:
                    if p.startswith("/img/"):
                        self._send(200, srv.images[int(p[5:-4])])
                    elif p.startswith("/flaky/"):
                        if n <= 2:
                            self._send(503, b"busy", "text/plain")
                        else:
                            self._send(200, srv.images[int(p[7:-4])])
                    elif p == "/404":
                        self._send(404, b"nope", "text/plain")
                    elif p == "/500":
                        self._send(500, b"oops", "text/plain")
                    elif p == "/loop":
                        self.send_response(302)
                        self.send_header("Location", "/loop")
                        self.end_headers()
                    elif p == "/html":
                        self._send(200, b"<html><body>not an image</body></html>", "image/jpeg")
                    elif p == "/bomb.png":
                        self._send(200, srv.bomb, "image/png")
                    elif p == "/slow":  # headers at once, then a byte every 0.2 s (at most 20 s)
                        self.send_response(200)
                        self.send_header("Content-Type", "image/jpeg")
                        self.send_header("Content-Length", "100000")
                        self.end_headers()
                        t0 = time.time()
                        while time.time() - t0 < 20 and not srv.stop.is_set():
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                            time.sleep(0.2)
                    elif p in ("/big", "/bignolen"):  # 64 MiB of junk, cut when the client gives up
                        self.send_response(200)
                        self.send_header("Content-Type", "image/jpeg")
                        if p == "/big":
                            self.send_header("Content-Length", str(64 << 20))
                        self.end_headers()
                        block = b"\xff" * (1 << 16)
                        for _ in range(1024):
                            if srv.stop.is_set():
                                break
                            self.wfile.write(block)
                    else:
                        self._send(404, b"?", "text/plain")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.hits)

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


def _metadata(dirpath: Path, base: str) -> dict[str, str]:
    """One CommonPool-style parquet; returns uid -> path."""
    rows = []
    for i in range(N_GOOD):
        rows.append((f"{base}/img/{i}.jpg", f"caption {i}", [[0.1, 0.1, 0.4, 0.5]] if i == 3 else []))
    for i in range(N_FLAKY):
        rows.append((f"{base}/flaky/{N_GOOD + i}.jpg", f"flaky {i}", []))
    for p in HOSTILE:
        rows.append((f"{base}{p}", f"hostile {p}", []))
    order = np.random.default_rng(0).permutation(len(rows))  # hostile rows spread over shards
    rows = [rows[i] for i in order]
    n = len(rows)
    uids = [compute_uid(u, t) for u, t, _ in rows]
    table = pa.table({
        "uid": uids, "url": [r[0] for r in rows], "text": [r[1] for r in rows],
        "original_width": pa.array([None] * n, pa.int64()), "original_height": pa.array([None] * n, pa.int64()),
        "clip_b32_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "clip_l14_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "face_bboxes": pa.array([r[2] for r in rows], pa.list_(pa.list_(pa.float64()))),
        "sha256": pa.array([None] * n, pa.string()),
    }, schema=POOL_SCHEMA)
    dirpath.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dirpath / "part-0.parquet")
    return {u: r[0][len(base):] for u, r in zip(uids, rows)}


def _opts(**kw) -> dl.DownloadOptions:
    base = dict(samples_per_shard=PER_SHARD, processes=1, threads=8, retries=1, timeout=2.0, max_seconds=2.0,
                max_bytes=2 << 20, max_pixels=50_000_000, image_size=512)
    base.update(kw)
    return dl.DownloadOptions(**base)


def _pool_samples(shards: Path) -> list[tuple[str, dict]]:
    out = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    img = tf.extractfile(m.name[:-5] + ".jpg").read()
                    out.append((meta["uid"], {"meta": meta, "jpg": img}))
    return out


def _expected_ok(uid_path: dict[str, str], with_flaky: bool) -> set[str]:
    return {u for u, p in uid_path.items() if p.startswith("/img/") or (with_flaky and p.startswith("/flaky/"))}


def test_hostile_server_summary_retry_and_content(tmp_path: Path, server: _Server):
    uid_path = _metadata(tmp_path / "meta", server.base)
    pool = tmp_path / "pool"
    t0 = time.time()
    m = dl.download(pool, metadata=tmp_path / "meta", options=_opts())
    assert time.time() - t0 < 45
    s = json.loads((pool / "download" / "summary.json").read_text())
    assert s["attempted_uids"] == len(uid_path)
    assert s["downloaded_uids"] == N_GOOD
    # bounded memory: the largest process stays near img2dataset's import footprint (~0.3 GB); the
    # bomb (144 MB decoded) is refused before decoding and the 64 MiB bodies are cut at max_bytes
    assert m.timings["round0_peak_rss_mb"] < 600
    failed = pq.read_table(pool / "download" / "failed.parquet").to_pylist()
    kinds = {uid_path[r["uid"]]: r["kind"] for r in failed}
    expected = dict(HOSTILE)
    expected.update({p: "http_5xx" for p in uid_path.values() if p.startswith("/flaky/")})
    assert kinds == expected, [(uid_path[r["uid"]], r["error"]) for r in failed]
    assert all(r["error"] for r in failed)
    assert s["failure_kinds"]["too_large"] == 2 and s["failure_kinds"]["http_5xx"] == 3
    assert 0 < s["success_rate"] < 1
    # img2dataset's retries (--retries 1) are counted: one re-attempt per URL whose fetch failed
    # (the 6 hostile ones that fail before a body arrives, the 2 flaky ones; not /html nor the bomb)
    assert s["url_retries"] == s["urls_retried"] == 8 and m.counts["url_retries"] == 8

    # retry: only the failed uids are requested again (each attempt counted), into new shards
    before = server.snapshot()
    n_shards = len(list((pool / "shards").glob("*.tar")))
    info = dl.retry_failed(pool, _opts(retries=0))
    after = server.snapshot()
    requested = {p for p in after if after[p] != before.get(p, 0)}
    assert requested == set(expected), requested
    assert info["retried"] == len(expected) and info["downloaded"] == N_FLAKY
    assert len(list((pool / "shards").glob("*.tar"))) == n_shards + -(-len(expected) // PER_SHARD)
    s2 = dl.summarize(pool)
    assert s2["downloaded_uids"] == N_GOOD + N_FLAKY and s2["failed_uids"] == len(HOSTILE)
    assert s2["url_retries"] == 8  # the retry round ran with --retries 0

    # the final pool: every successful sample exactly once, resized, with its uid and caption
    samples = _pool_samples(pool / "shards")
    uids = [u for u, _ in samples]
    assert sorted(uids) == sorted(_expected_ok(uid_path, True))
    for uid, d in samples:
        img = Image.open(io.BytesIO(d["jpg"]))
        assert max(img.size) <= 512
        i = int(uid_path[uid].rsplit("/", 1)[1][:-4])
        ow, oh = Image.open(io.BytesIO(server.images[i])).size
        assert (d["meta"]["original_width"], d["meta"]["original_height"]) == (ow, oh)
        if i == 3:  # the face box got blurred
            assert d["meta"]["face_bboxes"] == [[0.1, 0.1, 0.4, 0.5]]


def test_retry_needs_a_finished_round_and_hub_path_offline(tmp_path: Path, monkeypatch):
    with pytest.raises(InputError, match="first download round"):
        dl.retry_failed(tmp_path / "pool")

    # the HF hub code path, with snapshot_download faked (no network): xlarge-style part_* folders
    import huggingface_hub

    calls = {}

    def fake_snapshot_download(repo_id, repo_type, allow_patterns, local_dir, cache_dir):
        calls.update(repo_id=repo_id, repo_type=repo_type, allow_patterns=allow_patterns)
        for part in ("part_0", "part_1"):
            d = Path(local_dir) / part
            d.mkdir(parents=True)
            pq.write_table(pa.table({"uid": ["0" * 32], "url": ["u"], "text": ["t"]}), d / f"{part}-a.parquet")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    files = dl.fetch_metadata(tmp_path / "hub", scale="xlarge")
    assert calls["repo_id"] == "mlfoundations/datacomp_xlarge" and calls["repo_type"] == "dataset"
    assert [f.name for f in files] == ["part_0-a.parquet", "part_1-a.parquet"]
    assert not any(p.is_dir() for p in (tmp_path / "hub" / "metadata").iterdir())
    assert not (tmp_path / "hub" / "hf").exists()
    m = dl.download(tmp_path / "hub", scale="xlarge", skip_shards=True)
    assert m.counts["metadata_files"] == 2


def test_failure_kinds():
    assert dl.failure_kind("HTTP Error 404: Not Found") == "http_404"
    assert dl.failure_kind("<urlopen error [Errno 111] Connection refused>") == "connection"
    assert dl.failure_kind("The read operation timed out") == "timeout"
    assert dl.failure_kind("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
                           "The last 30x error message was:\nFound") == "redirect_loop"
    assert dl.failure_kind(None) == "unknown"


def test_img2dataset_and_reference_flag_names_are_aliases():
    from datacomp.cli import _download_options, build_parser
    from datacomp.errors import ConfigError

    p = build_parser()
    ours = p.parse_args(["download", "--pool", "P", "--processes", "16", "--threads", "128", "--samples-per-shard", "5",
                         "--resize-mode", "border", "--encode-format", "webp", "--image-size", "256",
                         "--no-resize-only-if-bigger", "--skip-bbox-blurring", "--distributor", "ray"])
    theirs = p.parse_args(["download", "--data_dir", "P", "--processes_count", "16", "--thread_count", "128",
                           "--number_sample_per_shard", "5", "--resize_mode", "border", "--encode_format", "webp",
                           "--image_size", "256", "--resize_only_if_bigger", "false", "--skip_bbox_blurring",
                           "--distributor", "ray"])
    o = _download_options(ours)
    assert o == _download_options(theirs)
    assert (o.processes, o.threads, o.samples_per_shard, o.resize_mode, o.encode_format, o.image_size,
            o.resize_only_if_bigger, o.blur, o.distributor) == (16, 128, 5, "border", "webp", 256, False, False, "ray")
    assert ours.pool == theirs.pool == "P"
    d = _download_options(p.parse_args(["download-retry", "--pool", "P"]))
    assert d == dl.DownloadOptions()  # the CLI's defaults are the stage's (the reference's but processes x threads)
    bad = p.parse_args(["download", "--pool", "P", "--no-resize-only-if-bigger", "--resize_only_if_bigger", "true"])
    with pytest.raises(ConfigError, match="contradicts"):
        _download_options(bad)
    with pytest.raises(ConfigError, match="distributor"):
        dl.DownloadOptions(distributor="pyspark").validate()
