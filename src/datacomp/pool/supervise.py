"""Supervision of the img2dataset child: its settings, the process group it runs in, the shards
it reports as they land, a stale group left by a killed run, and partial shards to fetch again.

img2dataset runs in ``python -m datacomp.pool.i2d`` (see ``pool/i2d.py``) in its own process
group that dies with us; its first round runs in ``incremental`` mode (finished shards, those
with ``_stats.json``, are skipped), retries in ``extend`` mode (new shards after the last one).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, DatacompError
from ..executors.children import ended_with_us, group_members, kill_group, spawn
from ..formats.atomic import write_json

log = logging.getLogger("datacomp.pool.download")  # one logger for the download's lines


DISTRIBUTORS = ("multiprocessing", "ray")


@dataclass
class DownloadOptions:
    """img2dataset settings; defaults are the reference's ``download_upstream.py`` ones."""

    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    samples_per_shard: int = 10000
    blur: bool = True  # blur face_bboxes (the reference's default; --skip-bbox-blurring turns it off)
    retries: int = 2
    processes: int = 2
    threads: int = 64
    timeout: float = 10.0  # per socket operation (img2dataset's)
    max_seconds: float = 30.0  # per attempt, whole transfer (ours)
    max_bytes: int = 32 * 1024 * 1024  # per file (ours)
    max_pixels: int = 89_478_485  # decoded image area; bigger is refused before decoding (PIL's bomb limit)
    oom_shard_count: int = 8
    subjob_size: int = 1000
    bounded: bool = True  # False runs plain img2dataset (for benchmarks)
    reference_blur: bool = True
    distributor: str = "multiprocessing"  # or "ray": img2dataset's Ray distributor (pool/i2d_ray.py)

    def validate(self) -> None:
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise ConfigError(f"unknown resize mode '{self.resize_mode}'")
        if self.distributor not in DISTRIBUTORS:
            raise ConfigError(f"unknown distributor '{self.distributor}' ({' or '.join(DISTRIBUTORS)})")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise ConfigError(f"unknown encode format '{self.encode_format}' (jpg, png or webp)")
        for name in ("image_size", "samples_per_shard", "processes", "threads", "max_bytes", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.distributor == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ConfigError("the ray distributor needs the 'ray' package: pip install 'datacomp[ray]'")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")


def _i2d_kwargs(url_list: Path, shards: Path, opts: DownloadOptions, mode: str, bbox: bool) -> dict[str, Any]:
    return {
        "url_list": str(url_list),
        "output_folder": str(shards),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "text",
        "bbox_col": "face_bboxes" if bbox else None,
        "save_additional_columns": ["uid"],
        "output_format": "webdataset",
        "number_sample_per_shard": int(opts.samples_per_shard),
        "oom_shard_count": int(opts.oom_shard_count),
        "image_size": int(opts.image_size),
        "resize_mode": opts.resize_mode,
        "resize_only_if_bigger": bool(opts.resize_only_if_bigger),
        "encode_format": opts.encode_format,
        "processes_count": int(opts.processes),
        "thread_count": int(opts.threads),
        "retries": int(opts.retries),
        "timeout": opts.timeout,
        "subjob_size": int(opts.subjob_size),
        "incremental_mode": mode,
        "enable_wandb": False,
        "distributor": opts.distributor,
    }


def run_img2dataset(url_list: Path, shards: Path, opts: DownloadOptions, mode: str = "incremental",
                    bbox: bool = True, log_path: Path | None = None, retries_dir: Path | None = None) -> dict[str, float]:
    """Run img2dataset in a child process; returns {"seconds", "peak_rss_mb"} (the largest process
    of the run). Raises DatacompError on failure. ``retries_dir``: where each shard's count of URL
    re-attempts goes (``pool/i2d.py``; bounded fetches only)."""
    shards.mkdir(parents=True, exist_ok=True)
    cfg = {
        "retries_dir": str(retries_dir) if retries_dir is not None else None,
        "kwargs": _i2d_kwargs(url_list, shards, opts, mode, bbox),
        "bounded": opts.bounded,
        "reference_blur": opts.reference_blur,
        "max_bytes": opts.max_bytes,
        "max_seconds": opts.max_seconds,
        "rusage_out": str(shards.parent / f".{shards.name}.rusage.json"),
        "ray_processes": int(opts.processes),
    }
    env = dict(os.environ)
    env.update({"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
                "WANDB_MODE": "disabled", "OPENCV_IO_MAX_IMAGE_PIXELS": str(int(opts.max_pixels))})
    if opts.distributor == "ray":
        from .i2d_ray import parent_address

        address = parent_address()  # a Ray this process already joined: the child joins it too
        if address:
            env["RAY_ADDRESS"] = address
    cfg_path = str(shards.parent / f".{shards.name}.i2d-config.json")  # one name: a killed run's is overwritten
    write_json(cfg_path, cfg)
    t0 = time.time()
    runner_file = shards.parent / f".{shards.name}.runner.json"
    reap_stale_runner(runner_file)
    shutil.rmtree(shards / "_tmp", ignore_errors=True)  # img2dataset's input shards from a killed run
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        # own process group (so the whole img2dataset tree can be ended together), and the runner
        # dies with us (PR_SET_PDEATHSIG); a group orphaned by a kill -9 is ended by the next run
        proc = spawn([sys.executable, "-m", "datacomp.pool.i2d", cfg_path], env=env,
                     stdout=out, stderr=subprocess.STDOUT)
        write_json(runner_file, {"pgid": proc.pid, "parent": os.getpid()}, indent=None)
        with ended_with_us(proc):  # interrupted: take img2dataset's workers down with us
            rc = wait_reporting_shards(proc, shards, _url_list_shards(url_list, opts.samples_per_shard))
        runner_file.unlink(missing_ok=True)
    finally:
        if log_path:
            out.close()
        os.unlink(cfg_path)
    if rc != 0:
        raise DatacompError(f"img2dataset exited with status {rc}" + (f" (log: {log_path})" if log_path else ""))
    usage = read_json(Path(cfg["rusage_out"])) or {}
    Path(cfg["rusage_out"]).unlink(missing_ok=True)
    return {"seconds": round(time.time() - t0, 3), "peak_rss_mb": usage.get("peak_rss_mb")}


def _url_list_shards(url_list: Path, samples_per_shard: int) -> int | None:
    try:
        rows = pq.read_metadata(url_list).num_rows
    except (OSError, pa.ArrowInvalid):
        return None
    return max(1, math.ceil(rows / max(1, samples_per_shard)))


def wait_reporting_shards(proc: subprocess.Popen, shards: Path, total: int | None, poll: float = 2.0) -> int:
    """Wait for img2dataset, reporting each shard it finishes (a new ``_stats.json``) as it lands:
    one log line (successes / attempted) and a step of the progress display; -> the exit status."""
    from ..progress import progress

    seen = {p.name for p in shards.glob("*_stats.json")}
    with progress(total=total, desc="download", unit="shards") as bar:
        while True:
            try:
                rc: int | None = proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                rc = None
            for p in sorted(shards.glob("*_stats.json")):
                if p.name in seen:
                    continue
                seen.add(p.name)
                st = read_json(p) or {}
                log.info("download: shard %s done: %s of %s images fetched", p.name[: -len("_stats.json")],
                         st.get("successes", "?"), st.get("count", "?"))
                bar.update(1)
            if rc is not None:
                return rc



def reap_stale_runner(runner_file: Path) -> None:
    """End an img2dataset process group left running by a killed earlier call on the same pool."""
    info = read_json(runner_file)
    if not info or not isinstance(info.get("pgid"), int):
        return
    pgid = info["pgid"]
    ours = False
    for pid in group_members(pgid) if Path("/proc").is_dir() else []:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"datacomp.pool.i2d" in cmd or b"multiprocessing" in cmd or b"/ray/" in cmd:  # ray: a local instance
            ours = True
    if ours:
        log.warning("ending img2dataset processes (group %d) left by an interrupted download", pgid)
        kill_group(pgid)
        deadline = time.time() + 10
        while group_members(pgid) and time.time() < deadline:
            time.sleep(0.05)
    runner_file.unlink(missing_ok=True)


def shard_ids(shards: Path) -> tuple[list[int], list[int]]:
    """(finished shard ids, unfinished ones: a tar or parquet without _stats.json)."""
    done, partial = set(), set()
    if not shards.is_dir():
        return [], []
    for p in shards.iterdir():
        stem = p.name.split(".", 1)[0].split("_", 1)[0]
        if not stem.isdigit():
            continue
        if p.name.endswith("_stats.json"):
            done.add(int(stem))
        elif p.suffix in (".tar", ".parquet"):
            partial.add(int(stem))
    return sorted(done), sorted(partial - done)


def remove_partial_shards(shards: Path) -> list[int]:
    """Remove tars/parquets that a killed run left without ``_stats.json``; they are fetched again."""
    _, partial = shard_ids(shards)
    if not partial:
        return []
    bad = set(partial)
    for p in list(shards.iterdir()):
        stem = p.name.split(".", 1)[0]
        if stem.isdigit() and int(stem) in bad and p.suffix in (".tar", ".parquet"):
            p.unlink(missing_ok=True)
    log.warning("%s: removed %d unfinished shards left by an interrupted run", shards, len(partial))
    return partial


def expected_first_round(metadata: Path, per_shard: int) -> int:
    return sum(math.ceil(pq.ParquetFile(f).metadata.num_rows / per_shard) for f in sorted(metadata.glob("*.parquet")))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
