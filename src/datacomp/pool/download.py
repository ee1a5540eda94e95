"""CommonPool / bring-your-own-data download: metadata, then images through img2dataset.

Layout written under POOL (DATACOMP.md §1.1)::

    POOL/metadata/*.parquet (+ .npz)        the metadata, copied or fetched from the HF hub
    POOL/shards/{i:08d}.tar/.parquet/_stats.json   img2dataset output (json carries "uid")
    POOL/download/summary.json             success rate, failure reasons by kind, per round
    POOL/download/failed.parquet           per-sample retry list: uid, url, text, kind, error
    POOL/download/retry-{n}/input.parquet  the rows a retry round re-fetched
    POOL/manifest.json                     stage "download", written last

Images go through ``img2dataset.download`` with the reference's settings (max side 512,
``keep_ratio_largest``, resize only if bigger, jpg, 10,000 samples per shard, ``uid`` carried,
face boxes blurred unless ``blur=False``, retries) in a child process (see ``pool/i2d.py``).

Resume: the first round runs in img2dataset's ``incremental`` mode, which skips shards whose
``_stats.json`` exists; a tar left without stats by a kill is removed and fetched again.
Retry (:func:`retry_failed`): the uids that failed in every earlier round and never succeeded
are fetched again into new shards after the last one (img2dataset's ``extend`` mode), so a
sample is written at most once however often it is retried.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError, DatacompError, InputError
from ..executors.children import ended_with_us, group_members, kill_group, spawn
from ..formats.atomic import atomic_path, replaced_dir, write_json
from ..formats.guard import check_apart
from ..formats.manifest import Manifest, read_manifest, write_manifest

log = logging.getLogger(__name__)

STAGE = "download"
HF_REPOS = {
    "small": "mlfoundations/datacomp_small",
    "medium": "mlfoundations/datacomp_medium",
    "large": "mlfoundations/datacomp_large",
    "xlarge": "mlfoundations/datacomp_xlarge",
    "datacomp_1b": "mlfoundations/datacomp_1b",
}
SHARD_RE = re.compile(r"^(\d+)\.tar$")
STATE_DIR = "download"


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

    def validate(self) -> None:
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise ConfigError(f"unknown resize mode '{self.resize_mode}'")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise ConfigError(f"unknown encode format '{self.encode_format}' (jpg, png or webp)")
        for name in ("image_size", "samples_per_shard", "processes", "threads", "max_bytes", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")


# ---- metadata -------------------------------------------------------------------------------------

def fetch_metadata(
    pool: str | os.PathLike,
    source: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    scale: str | None = None,
    download_npz: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Put metadata parquets (and npz) into ``POOL/metadata``.

    ``source``: a directory of parquets, one parquet, or a list of paths (local). ``scale``
    (without ``source``): the DataComp HF dataset repo of that scale, through
    ``huggingface_hub.snapshot_download`` (needs network; never used by the tests, which fake it).
    An existing ``POOL/metadata`` is kept unless ``overwrite`` (like the reference).
    """
    pool = Path(pool)
    mdir = pool / "metadata"
    if mdir.is_dir() and any(mdir.glob("*.parquet")) and not overwrite:
        log.info("%s exists, keeping it (overwrite=True to replace)", mdir)
        return sorted(mdir.glob("*.parquet"))
    if source is None and scale is None:
        raise ConfigError("download needs metadata: a local path (--metadata) or a scale (--scale) for the HF hub")
    if source is not None:
        files = _local_metadata_files(source)
        check_apart(mdir, {"metadata": files})
        with replaced_dir(mdir) as new:  # the old metadata goes only once the new is complete
            for f in files:
                _copy(f, new / f.name)
                npz = f.with_suffix(".npz")
                if npz.is_file():
                    _copy(npz, new / npz.name)
        return sorted(mdir.glob("*.parquet"))
    return _hub_metadata(mdir, scale, download_npz)


def _local_metadata_files(source) -> list[Path]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix == ".parquet" and not q.name.startswith("."))
            if not found:
                raise InputError(f"{p}: no .parquet metadata files")
            files += found
        elif p.is_file() and p.suffix == ".parquet":
            files.append(p)
        elif p.is_file() and p.suffix in (".txt", ".list"):  # a list of paths, one a line
            files += _local_metadata_files([q.strip() for q in p.read_text().splitlines() if q.strip()])
        else:
            raise InputError(f"{p}: not a parquet file, a directory of them, or a .txt list of paths")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InputError("metadata files must have distinct names: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    for f in files:
        try:
            cols = pq.ParquetFile(f).schema_arrow.names
        except Exception as e:  # pyarrow raises several types
            raise InputError(f"{f}: cannot read parquet: {e}") from None
        for c in ("uid", "url", "text"):
            if c not in cols:
                raise InputError(f"{f}: metadata has no '{c}' column (bring-your-own data: use datacomp.pool.byod)")
    return files


def _copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _hub_metadata(mdir: Path, scale: str, download_npz: bool) -> list[Path]:
    if scale not in HF_REPOS:
        raise ConfigError(f"no DataComp metadata repo for scale '{scale}' (choose {', '.join(HF_REPOS)})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        raise ConfigError("metadata from the hub needs huggingface_hub") from None
    repo = HF_REPOS[scale]
    hf_cache = mdir.parent / "hf"
    tmp = mdir.parent / ".metadata.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    patterns = ["*.parquet", "*/*.parquet"]
    if download_npz:
        patterns += ["*.npz", "*/*.npz"]
    try:
        snapshot_download(repo_id=repo, repo_type="dataset", allow_patterns=patterns,
                          local_dir=str(tmp), cache_dir=str(hf_cache))
    except Exception as e:  # network, auth, offline mode
        raise InputError(f"{repo}: cannot fetch metadata from the Hugging Face hub: {e}") from None
    # xlarge keeps files under part_*/: flatten into one directory
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.suffix in (".parquet", ".npz") and p.parent != tmp:
            target = tmp / p.name
            if target.exists():
                raise InputError(f"{repo}: two metadata files named {p.name}")
            p.rename(target)
    for d in sorted((q for q in tmp.iterdir() if q.is_dir()), reverse=True):
        shutil.rmtree(d, ignore_errors=True)
    if not any(tmp.glob("*.parquet")):
        raise InputError(f"{repo}: no parquet files fetched")
    if mdir.exists():
        shutil.rmtree(mdir)
    tmp.rename(mdir)
    shutil.rmtree(hf_cache, ignore_errors=True)
    return sorted(mdir.glob("*.parquet"))


# ---- running img2dataset --------------------------------------------------------------------------

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
        "distributor": "multiprocessing",
    }


def run_img2dataset(url_list: Path, shards: Path, opts: DownloadOptions, mode: str = "incremental",
                    bbox: bool = True, log_path: Path | None = None) -> dict[str, float]:
    """Run img2dataset in a child process; returns {"seconds", "peak_rss_mb"} (the largest process
    of the run). Raises DatacompError on failure."""
    shards.mkdir(parents=True, exist_ok=True)
    cfg = {
        "kwargs": _i2d_kwargs(url_list, shards, opts, mode, bbox),
        "bounded": opts.bounded,
        "reference_blur": opts.reference_blur,
        "max_bytes": opts.max_bytes,
        "max_seconds": opts.max_seconds,
        "rusage_out": str(shards.parent / f".{shards.name}.rusage.json"),
    }
    env = dict(os.environ)
    env.update({"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
                "WANDB_MODE": "disabled", "OPENCV_IO_MAX_IMAGE_PIXELS": str(int(opts.max_pixels))})
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
    usage = _read_json(Path(cfg["rusage_out"])) or {}
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
                st = _read_json(p) or {}
                log.info("download: shard %s done: %s of %s images fetched", p.name[: -len("_stats.json")],
                         st.get("successes", "?"), st.get("count", "?"))
                bar.update(1)
            if rc is not None:
                return rc



def reap_stale_runner(runner_file: Path) -> None:
    """End an img2dataset process group left running by a killed earlier call on the same pool."""
    info = _read_json(runner_file)
    if not info or not isinstance(info.get("pgid"), int):
        return
    pgid = info["pgid"]
    ours = False
    for pid in group_members(pgid) if Path("/proc").is_dir() else []:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"datacomp.pool.i2d" in cmd or b"multiprocessing" in cmd:
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


def _expected_first_round(metadata: Path, per_shard: int) -> int:
    return sum(math.ceil(pq.ParquetFile(f).metadata.num_rows / per_shard) for f in sorted(metadata.glob("*.parquet")))


# ---- summary and retry list -----------------------------------------------------------------------

_KINDS = [
    ("http_404", re.compile(r"HTTP Error 404")),
    ("http_4xx", re.compile(r"HTTP Error 4\d\d")),
    ("http_5xx", re.compile(r"HTTP Error 5\d\d")),
    ("redirect_loop", re.compile(r"redirect|HTTP Error 3\d\d", re.I)),
    ("too_large", re.compile(r"file too large")),
    ("too_slow", re.compile(r"download too slow")),
    ("timeout", re.compile(r"timed out|timeout", re.I)),
    ("decompression_bomb", re.compile(r"CV_IO_MAX_IMAGE_PIXELS|image area too large|DecompressionBomb")),
    ("not_an_image", re.compile(r"decoding error|cannot identify image", re.I)),
    ("connection", re.compile(r"Connection|urlopen error|Remote end closed|IncompleteRead|reset by peer", re.I)),
    ("disallowed", re.compile(r"X-Robots-Tag")),
    ("hash_mismatch", re.compile(r"hash mismatch")),
]


def failure_kind(message: str | None) -> str:
    if not message:
        return "unknown"
    for kind, rx in _KINDS:
        if rx.search(message):
            return kind
    return "other"


def read_attempts(shards: Path) -> pa.Table:
    """All rows img2dataset recorded in finished shards: uid, url, text, status, error, shard."""
    done, _ = shard_ids(shards)
    tables = []
    for i in done:
        p = shards / f"{i:08d}.parquet"
        if not p.is_file():
            continue
        t = pq.read_table(p)
        cols = {
            "uid": t.column("uid") if "uid" in t.column_names else pa.nulls(len(t), pa.string()),
            "url": t.column("url"),
            "text": t.column("caption") if "caption" in t.column_names else pa.nulls(len(t), pa.string()),
            "status": t.column("status"),
            "error_message": t.column("error_message").cast(pa.string()),
            "shard": pa.array([i] * len(t), pa.int64()),
        }
        tables.append(pa.table(cols))
    if not tables:
        return pa.table({"uid": pa.array([], pa.string()), "url": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                         "status": pa.array([], pa.string()), "error_message": pa.array([], pa.string()),
                         "shard": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


def summarize(pool: str | os.PathLike) -> dict[str, Any]:
    """Success rate and failure reasons by kind over all rounds; writes the retry list.

    A uid counts as downloaded if any round fetched it; as failed (with the reason of its last
    attempt) otherwise.
    """
    pool = Path(pool)
    shards = pool / "shards"
    t = read_attempts(shards)
    uids = t.column("uid").to_pylist()
    status = t.column("status").to_pylist()
    errors = t.column("error_message").to_pylist()
    urls = t.column("url").to_pylist()
    texts = t.column("text").to_pylist()
    ok = {u for u, s in zip(uids, status) if s == "success"}
    last_fail: dict[str, tuple[str, str, str]] = {}
    for u, s, e, url, text in zip(uids, status, errors, urls, texts):
        if s != "success" and u not in ok:
            last_fail[u] = (e or s or "", url, text)
    attempted = set(uids)
    kinds = Counter(failure_kind(e) for e, _, _ in last_fail.values())
    examples: dict[str, str] = {}
    for e, _, _ in last_fail.values():
        examples.setdefault(failure_kind(e), (e or "")[:200])
    success_rows = sum(1 for s in status if s == "success")
    summary = {
        "attempted_uids": len(attempted),
        "downloaded_uids": len(ok),
        "failed_uids": len(last_fail),
        "success_rate": round(len(ok) / len(attempted), 6) if attempted else None,
        "failure_kinds": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failure_examples": examples,
        "shards": len(shard_ids(shards)[0]),
        "samples_in_shards": success_rows,
    }
    failed = sorted(last_fail)
    table = pa.table({
        "uid": pa.array(failed, pa.string()),
        "url": pa.array([last_fail[u][1] for u in failed], pa.string()),
        "text": pa.array([last_fail[u][2] for u in failed], pa.string()),
        "kind": pa.array([failure_kind(last_fail[u][0]) for u in failed], pa.string()),
        "error": pa.array([last_fail[u][0] for u in failed], pa.string()),
    })
    state = pool / STATE_DIR
    with atomic_path(state / "failed.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return summary


# ---- the stage ------------------------------------------------------------------------------------

def download(
    pool: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    scale: str | None = None,
    options: DownloadOptions | None = None,
    download_npz: bool = False,
    skip_shards: bool = False,
    overwrite_metadata: bool = False,
    retry_rounds: int = 0,
) -> Manifest:
    """Fetch metadata into ``POOL/metadata`` and images into ``POOL/shards``; resumable.

    ``retry_rounds`` > 0 runs :func:`retry_failed` that many times after the first round.
    """
    opts = options or DownloadOptions()
    opts.validate()
    pool = Path(pool)
    t0 = time.time()
    files = fetch_metadata(pool, metadata, scale, download_npz=download_npz, overwrite=overwrite_metadata)
    params = {"metadata": [f.name for f in files], "options": asdict(opts)}
    state = pool / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    if skip_shards:
        return _finish(pool, params, {"metadata_files": len(files)}, {"total": time.time() - t0})
    shards = pool / "shards"
    prev = _read_json(state / "params.json")
    if prev is not None and prev.get("options") != json.loads(json.dumps(asdict(opts))) and shards.is_dir() and any(shards.iterdir()):
        log.warning("%s: resuming a download started with other options; finished shards are kept", pool)
    write_json(state / "params.json", params)
    round_marker = state / "round0.done"
    timings: dict[str, float] = {}
    if not round_marker.is_file():
        remove_partial_shards(shards)
        r0 = run_img2dataset(pool / "metadata", shards, opts, mode="incremental", bbox=opts.blur,
                             log_path=state / "img2dataset.log")
        timings["round0"] = r0["seconds"]
        timings["round0_peak_rss_mb"] = r0["peak_rss_mb"]
        expected = _expected_first_round(pool / "metadata", opts.samples_per_shard)
        done, _ = shard_ids(shards)
        missing = [i for i in range(expected) if i not in set(done)]
        if missing:
            raise DatacompError(f"{shards}: {len(missing)} of {expected} shards did not finish "
                                f"(first: {missing[0]:08d}); run the download again to resume them")
        write_json(round_marker, {"shards": expected})
    for _ in range(retry_rounds):
        info = retry_failed(pool, opts)
        timings[f"retry{info['round']}"] = info["seconds"]
        timings[f"retry{info['round']}_peak_rss_mb"] = info.get("peak_rss_mb")
        if info["retried"] == 0:
            break
    summary = summarize(pool)
    timings["total"] = round(time.time() - t0, 3)
    write_json(state / "summary.json", summary)
    log.info("download: %d of %d uids downloaded (%.1f%%); failures: %s", summary["downloaded_uids"],
             summary["attempted_uids"], 100 * (summary["success_rate"] or 0), summary["failure_kinds"])
    return _finish(pool, params, summary, timings)


def retry_failed(pool: str | os.PathLike, options: DownloadOptions | None = None) -> dict[str, Any]:
    """Fetch again only the uids that failed in every earlier round, into new shards.

    Needs a finished first round. Rewrites ``download/summary.json`` and ``failed.parquet``.
    Returns {"round", "retried", "downloaded", "seconds", "peak_rss_mb"}.
    """
    opts = options or DownloadOptions()
    opts.validate()
    pool = Path(pool)
    state = pool / STATE_DIR
    shards = pool / "shards"
    if not (state / "round0.done").is_file():
        raise InputError(f"{pool}: the first download round has not finished; run the download (it resumes) first")
    remove_partial_shards(shards)
    t = read_attempts(shards)
    ok = pc.equal(t.column("status"), "success")
    ok_uids = set(t.filter(ok).column("uid").to_pylist())
    failed = t.filter(pc.invert(ok))
    seen: set[str] = set()
    keep = []
    for i, u in enumerate(failed.column("uid").to_pylist()):
        if u is not None and u not in ok_uids and u not in seen:
            seen.add(u)
            keep.append(i)
    n_round = 1 + sum(1 for _ in state.glob("retry-*"))
    t0 = time.time()
    if not keep:
        return {"round": n_round, "retried": 0, "downloaded": 0, "seconds": 0.0}
    # the retry input: the original metadata rows (face boxes included) of the failed uids
    wanted = pa.array(sorted(seen), pa.string())
    rows = []
    for f in sorted((pool / "metadata").glob("*.parquet")):
        cols = [c for c in ("uid", "url", "text", "face_bboxes") if c in pq.ParquetFile(f).schema_arrow.names]
        m = pq.read_table(f, columns=cols)
        rows.append(m.filter(pc.is_in(m.column("uid"), value_set=wanted)))
    table = pa.concat_tables(rows, promote_options="permissive") if rows else pa.table({})
    _, idx = _unique_first(table.column("uid").to_pylist())
    table = table.take(pa.array(idx, pa.int64()))
    rdir = state / f"retry-{n_round}"
    if rdir.exists():
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    with atomic_path(rdir / "input.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    before = len(ok_uids)
    usage = run_img2dataset(rdir, shards, opts, mode="extend", bbox=opts.blur and "face_bboxes" in table.column_names,
                            log_path=state / "img2dataset.log")
    after = read_attempts(shards)
    now_ok = set(after.filter(pc.equal(after.column("status"), "success")).column("uid").to_pylist())
    write_json(state / "summary.json", summarize(pool))  # and failed.parquet, the next retry list
    return {"round": n_round, "retried": len(table), "downloaded": len(now_ok) - before,
            "seconds": round(time.time() - t0, 3), "peak_rss_mb": usage["peak_rss_mb"]}


def _unique_first(values: Iterable[Any]) -> tuple[list[Any], list[int]]:
    seen: set[Any] = set()
    out, idx = [], []
    for i, v in enumerate(values):
        if v not in seen:
            seen.add(v)
            out.append(v)
            idx.append(i)
    return out, idx


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finish(pool: Path, params: dict[str, Any], counts: dict[str, Any], timings: dict[str, float]) -> Manifest:
    existing = read_manifest(pool)
    if existing is not None and existing.stage not in (STAGE, "byod"):
        raise ConfigError(f"{pool}: holds a '{existing.stage}' pool, not a downloaded one")
    m = Manifest(stage=STAGE, params=params, counts=counts, timings=timings,
                 extra={"summary": f"{STATE_DIR}/summary.json"})
    write_manifest(pool, m)
    return m


__all__ = ["DownloadOptions", "download", "fetch_metadata", "retry_failed", "summarize", "failure_kind",
           "run_img2dataset", "HF_REPOS"]
