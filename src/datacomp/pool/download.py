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

The stage's lifecycle is :class:`datacomp.formats.stage.StageOutput` (pending parameters in
``POOL/download/.params.json``; the manifest ``POOL/manifest.json`` replaces a ``byod``
manifest, whose metadata a download fetches the images of): a download started or finished
with other settings is refused unless ``overwrite``, which fetches every shard anew. This
module is the driver; the metadata (:mod:`.metadata_fetch`), the supervision of the
img2dataset child (:mod:`.supervise`) and the failure accounting (:mod:`.failures`) are
their own modules.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DatacompError, InputError
from ..formats.atomic import atomic_path, write_json
from ..formats.manifest import Manifest
from ..formats.stage import StageOutput
from .failures import RETRIES_DIR, STATE_DIR, failure_kind, read_attempts, summarize
from .metadata_fetch import HF_REPOS, fetch_metadata
from .supervise import (DownloadOptions, expected_first_round, remove_partial_shards, run_img2dataset, shard_ids,
                        wait_reporting_shards)

log = logging.getLogger(__name__)

STAGE = "download"
# settings that change how fast a download runs, not what it writes: not its parameters
RUN_ONLY_OPTIONS = ("processes", "threads", "subjob_size", "distributor")


def download_output(pool: Path, params: dict[str, Any], overwrite: bool = False) -> StageOutput:
    """The download's lifecycle: its state in ``POOL/download/``, its manifest ``POOL/manifest.json``
    (after a ``byod`` manifest: that pool's metadata is what gets downloaded)."""
    state = pool / STATE_DIR
    return StageOutput(STAGE, state, params, overwrite=overwrite, manifest=pool / "manifest.json", files_root=pool,
                       owned=[pool / "shards", state / "round0.done", state / "summary.json", state / "failed.parquet",
                              state / RETRIES_DIR, *sorted(state.glob("retry-*"))], follows=("byod",), where=pool)


def download(
    pool: str | os.PathLike,
    metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    scale: str | None = None,
    options: DownloadOptions | None = None,
    download_npz: bool = False,
    skip_shards: bool = False,
    overwrite_metadata: bool = False,
    retry_rounds: int = 0,
    overwrite: bool = False,
) -> Manifest:
    """Fetch metadata into ``POOL/metadata`` and images into ``POOL/shards``; resumable.

    ``retry_rounds`` > 0 runs :func:`retry_failed` that many times after the first round.
    ``overwrite`` replaces a download made with other settings (``overwrite_metadata`` the metadata).
    """
    opts = options or DownloadOptions()
    opts.validate()
    pool = Path(pool)
    t0 = time.time()
    files = fetch_metadata(pool, metadata, scale, download_npz=download_npz, overwrite=overwrite_metadata)
    params = {"metadata": [f.name for f in files], "skip_shards": bool(skip_shards), "retry_rounds": int(retry_rounds),
              "options": {k: v for k, v in asdict(opts).items() if k not in RUN_ONLY_OPTIONS}}
    state = pool / STATE_DIR
    life = download_output(pool, params, overwrite)
    done = life.begin()
    if done is not None:
        return done
    if skip_shards:
        return _finish(life, {"metadata_files": len(files)}, {"total": time.time() - t0})
    shards = pool / "shards"
    round_marker = state / "round0.done"
    timings: dict[str, float] = {}
    if not round_marker.is_file():
        remove_partial_shards(shards)
        r0 = run_img2dataset(pool / "metadata", shards, opts, mode="incremental", bbox=opts.blur,
                             log_path=state / "img2dataset.log", retries_dir=state / RETRIES_DIR)
        timings["round0"] = r0["seconds"]
        timings["round0_peak_rss_mb"] = r0["peak_rss_mb"]
        expected = expected_first_round(pool / "metadata", opts.samples_per_shard)
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
    return _finish(life, summary, timings)


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
                            log_path=state / "img2dataset.log", retries_dir=state / RETRIES_DIR)
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


def _finish(life: StageOutput, counts: dict[str, Any], timings: dict[str, float]) -> Manifest:
    return life.finish(Manifest(stage=STAGE, params=life.params, counts=counts, timings=timings,
                                extra={"summary": f"{STATE_DIR}/summary.json"}))


__all__ = ["DownloadOptions", "download", "fetch_metadata", "retry_failed", "summarize", "failure_kind",
           "run_img2dataset", "HF_REPOS"]


__all__ = ["DownloadOptions", "download", "fetch_metadata", "retry_failed", "summarize", "failure_kind",
           "run_img2dataset", "wait_reporting_shards", "HF_REPOS"]
