"""Download throughput: ``datacomp.pool.download`` against plain img2dataset, same URL list.

    .venv/bin/python bench/download.py [--images 4000] [--processes 2] [--threads 32] [--repeats 2]
                                       [--distributor multiprocessing|ray]

A local HTTP server (127.0.0.1, ephemeral port, a thread of this process) serves generated JPEGs
(640-1280 px, ~100-250 kB; 100 distinct images behind distinct URLs). One metadata parquet in
CommonPool columns (2 % of rows carry a face box). Both runs use the reference settings (512 px
max side, keep_ratio_largest, resize only if bigger, jpg, uid carried, face blurring, 10,000
samples per shard is replaced by --per-shard so several shards run in parallel):

* ``plain``: ``img2dataset.download(**same kwargs)`` in a fresh ``python`` under ``__main__``;
* ``datacomp``: ``datacomp.pool.download.download`` (bounded fetches, reference blurrer, summary).

``--distributor ray``: both use img2dataset's Ray distributor, each on a local Ray instance of
``--processes`` CPUs that it starts (plain: ``ray.init`` before ``img2dataset.download``; datacomp:
its img2dataset child's), so both wall times include one Ray start.

Runs alternate; the best of ``--repeats`` is kept for each. Prints one JSON line with wall time
and images/s; ``ratio`` = datacomp rate / plain rate.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datacomp.formats.pool import POOL_SCHEMA
from datacomp.pool import download as dl
from datacomp.pool.byod import compute_uid
from datacomp.pool.supervise import _i2d_kwargs

PLAIN = (
    "import json, sys\n"
    "if __name__ == '__main__':\n"
    "    kwargs = json.load(open(sys.argv[1]))\n"
    "    if kwargs['distributor'] == 'ray':\n"
    "        import ray\n"
    "        ray.init(num_cpus=kwargs['processes_count'], include_dashboard=False, log_to_driver=False)\n"
    "    import img2dataset\n"
    "    img2dataset.download(**kwargs)\n"
)


def make_images(n: int = 100) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = int(rng.integers(640, 1280)), int(rng.integers(480, 960))
        low = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
        img = np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def serve(images: list[bytes]) -> tuple[ThreadingHTTPServer, str]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            i = int(self.path.rsplit("/", 1)[1].split(".")[0])
            body = images[i % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def write_metadata(d: Path, base: str, n: int) -> None:
    urls = [f"{base}/img/{i}.jpg" for i in range(n)]
    texts = [f"a generated photo {i}" for i in range(n)]
    boxes = [[[0.3, 0.2, 0.5, 0.5]] if i % 50 == 0 else [] for i in range(n)]
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "uid": [compute_uid(u, t) for u, t in zip(urls, texts)], "url": urls, "text": texts,
        "original_width": pa.array([None] * n, pa.int64()), "original_height": pa.array([None] * n, pa.int64()),
        "clip_b32_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "clip_l14_similarity_score": pa.array(np.full(n, np.nan, np.float32)),
        "face_bboxes": pa.array(boxes, pa.list_(pa.list_(pa.float64()))), "sha256": pa.array([None] * n, pa.string()),
    }, schema=POOL_SCHEMA), d / "00000000.parquet")


def count_successes(shards: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in shards.glob("*_stats.json"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--distributor", choices=["multiprocessing", "ray"], default="multiprocessing")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-download-"))
    httpd, base = serve(make_images())
    try:
        write_metadata(root / "meta", base, args.images)
        opts = dl.DownloadOptions(samples_per_shard=args.per_shard, processes=args.processes, threads=args.threads,
                                  retries=2, timeout=10, distributor=args.distributor)
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        times: dict[str, list[float]] = {"plain": [], "datacomp": []}
        counts: dict[str, int] = {}
        for r in range(args.repeats):
            # plain img2dataset
            out = root / f"plain{r}"
            kwargs = _i2d_kwargs(root / "meta", out / "shards", opts, "incremental", True)
            cfg = root / "plain.json"
            cfg.write_text(json.dumps(kwargs))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", PLAIN, str(cfg)], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times["plain"].append(time.perf_counter() - t0)
            counts["plain"] = count_successes(out / "shards")
            shutil.rmtree(out)
            # datacomp
            out = root / f"dc{r}"
            t0 = time.perf_counter()
            m = dl.download(out, metadata=root / "meta", options=opts)
            times["datacomp"].append(time.perf_counter() - t0)
            counts["datacomp"] = m.counts["downloaded_uids"]
            shutil.rmtree(out)
        best = {k: min(v) for k, v in times.items()}
        print(json.dumps({
            "images": args.images, "processes": args.processes, "threads": args.threads, "distributor": args.distributor,
            "plain_images_per_s": round(counts["plain"] / best["plain"], 1),
            "datacomp_images_per_s": round(counts["datacomp"] / best["datacomp"], 1),
            "ratio": round(best["plain"] / best["datacomp"] * counts["datacomp"] / max(counts["plain"], 1), 3),
            "downloaded": counts, "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        }))
    finally:
        httpd.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
