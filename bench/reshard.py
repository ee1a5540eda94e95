"""Reshard throughput against a raw read+write copy of the same bytes, in the same run.

    .venv/bin/python bench/reshard.py [--shards 6] [--per-shard 1000] [--workers 2] [--keep 1.0] [--repeats 5]
                                      [--kernels loaded|auto]

Generates img2dataset-layout shards of realistic 512-px JPEGs (smooth colour fields + texture +
noise, quality 90; ~40-70 kB each), then times, on the same files:

* ``copy``: every input tar read and written in 1 MiB chunks (user-space read + write, the
  floor for any tool that looks at the bytes), ``workers`` processes;
* ``copy_sendfile``: ``shutil.copyfile`` (in-kernel), for reference;
* ``reshard``: ``datacomp.reshard.reshard`` with a subset of ``--keep`` of the uids (1.0: every
  sample, so it writes as many bytes as the copy), ``workers=workers``, local executor (which
  runs its units in ``workers`` threads at this size).

``--kernels loaded`` (default) loads the resharder's compiled kernels before timing, so every
repeat runs as a reshard of ``reshard.compiled.KERNEL_MIN`` samples or more does (the per-process load
is reported apart, as ``kernel_load_s``); ``--kernels auto`` leaves the choice to the library,
which runs a pool this small in Python unless numba is loaded already.

Data lives on tmpfs (``/dev/shm``) unless ``--dir`` says otherwise; inputs are hot for every
measurement, outputs go to the same file system and are deleted right after each timing. The
repeats alternate which side runs first; each side's best (minimum) time is compared, since the
machine is shared and load only ever adds time. Prints one JSON line; ``ratio`` = reshard rate /
copy rate.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from datacomp.formats.shards import ShardWriter
from datacomp.formats.uids import make_subset, uids_to_pairs, write_subset
from datacomp.reshard import reshard
from datacomp.reshard.compiled import load_kernels


def realistic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (512, int(rng.integers(340, 512))) if i % 2 else (int(rng.integers(340, 512)), 512)
        low = rng.random((6, 6, 3)) * 255
        base = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        texture = 25 * np.sin(xx / rng.uniform(3, 15)) * np.cos(yy / rng.uniform(3, 15))
        img = base + texture[..., None] + rng.normal(0, 12, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_pool(root: Path, n_shards: int, per_shard: int, n_distinct: int = 200) -> list[str]:
    imgs = realistic_jpegs(n_distinct)
    uids = []
    k = 0
    for s in range(n_shards):
        with ShardWriter(root / "shards" / f"{s:08d}.tar") as w:
            for i in range(per_shard):
                uid = f"{(k * 0x9E3779B97F4A7C15) % (1 << 64):016x}{k:016x}"
                key = f"{s:08d}{i:04d}"
                meta = {"uid": uid, "key": key, "caption": f"a photo number {k}", "status": "success",
                        "width": 512, "height": 512, "original_width": 1024, "original_height": 1024}
                w.write(key, {"jpg": imgs[k % n_distinct], "txt": meta["caption"].encode(),
                              "json": json.dumps(meta).encode()})
                uids.append(uid)
                k += 1
    return uids


def _copy_chunks(src: str, dst: str) -> int:
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            g.write(b)
            n += len(b)
    return n


def _copy_sendfile(src: str, dst: str) -> int:
    shutil.copyfile(src, dst)
    return os.path.getsize(dst)


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed_copy(fn, tars: list[Path], out: Path, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds; the CPU is the worker processes' (reaped when the pool shuts down)."""
    out.mkdir(parents=True, exist_ok=True)
    c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(fn, [str(t) for t in tars], [str(out / t.name) for t in tars]))
    return time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--executor", default="local", help="reshard executor (local: threads for pools this size)")
    ap.add_argument("--dir", default=None, help="parent directory for the data (default: /dev/shm if writable)")
    ap.add_argument("--kernels", choices=("loaded", "auto"), default="loaded",
                    help="loaded: the compiled kernels loaded before timing; auto: the library's size rule")
    args = ap.parse_args()
    # tmpfs by default: both the copy and the reshard then measure CPU and memory traffic, not the
    # shared disk's writeback (which varied 6x between runs on the benchmark machine)
    base = args.dir or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
    root = Path(tempfile.mkdtemp(prefix="bench-reshard-", dir=base))
    try:
        uids = make_pool(root / "pool", args.shards, args.per_shard)
        tars = sorted((root / "pool" / "shards").glob("*.tar"))
        total_bytes = sum(t.stat().st_size for t in tars)
        rng = np.random.default_rng(0)
        chosen = [u for u in uids if rng.random() < args.keep]
        write_subset(root / "subset.npy", make_subset(uids_to_pairs(chosen)))
        for t in tars:  # warm the page cache for everyone
            t.read_bytes()
        t0 = time.process_time()
        kernels = args.kernels == "loaded" and load_kernels()
        kernel_load = time.process_time() - t0
        res: dict[str, list[float]] = {"copy": [], "copy_sendfile": [], "reshard": []}
        cpu: dict[str, list[float]] = {"copy": [], "reshard": []}  # CPU seconds (user + system)
        phases = []

        def run_copy(r: int) -> None:
            wall, cpu_s = timed_copy(_copy_chunks, tars, root / f"copy{r}", args.workers)
            res["copy"].append(wall)
            cpu["copy"].append(cpu_s)
            shutil.rmtree(root / f"copy{r}")  # each side's outputs are gone before the next timing
            res["copy_sendfile"].append(timed_copy(_copy_sendfile, tars, root / f"sf{r}", args.workers)[0])
            shutil.rmtree(root / f"sf{r}")

        def run_reshard(r: int) -> None:
            c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
            m = reshard(root / "pool", root / "subset.npy", root / f"out{r}", shard_size=1000,
                        workers=args.workers, executor=args.executor)
            res["reshard"].append(time.perf_counter() - t0)
            cpu["reshard"].append(_cpu(resource.RUSAGE_SELF) - c0)
            phases.append(m.timings)
            shutil.rmtree(root / f"out{r}")
            last[0] = m

        last: list = [None]
        for r in range(args.repeats):  # alternate which side goes first, so neither always runs second
            for step in ((run_copy, run_reshard) if r % 2 == 0 else (run_reshard, run_copy)):
                step(r)
        m = last[0]
        best = {k: min(v) for k, v in res.items()}
        n = len(uids)
        print(json.dumps({
            "samples": n, "selected": len(chosen), "input_mb": round(total_bytes / 2**20, 1),
            "mean_jpeg_kb": round(total_bytes / n / 1024, 1), "workers": args.workers,
            "copy_samples_per_s": round(n / best["copy"]), "copy_mb_per_s": round(total_bytes / 2**20 / best["copy"]),
            "copy_sendfile_samples_per_s": round(n / best["copy_sendfile"]),
            "reshard_samples_per_s": round(n / best["reshard"]),
            "reshard_mb_per_s": round(total_bytes / 2**20 / best["reshard"]),
            "ratio": round(best["copy"] / best["reshard"], 3),
            "ratio_vs_sendfile": round(best["copy_sendfile"] / best["reshard"], 3),
            # CPU, less sensitive to other load than wall time: best copy CPU / best reshard CPU
            "cpu_ratio": round(min(cpu["copy"]) / min(cpu["reshard"]), 3),
            "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "reshard_phases": phases[int(np.argmin(res["reshard"]))], "data_dir": str(root.parent),
            "executor": args.executor, "load_avg_1min": round(os.getloadavg()[0], 2),
            "kernels_loaded": kernels, "kernel_load_s": round(kernel_load, 3) if kernels else None,
            "output_count": m.counts["output_count"], "seconds": {k: [round(x, 3) for x in v] for k, v in res.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        }))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
