"""The reshard stage's driver (see the package docstring for the algorithm): parameters, the
output directory, the two passes through the executor, the counts and the manifest.

``scan.py`` holds pass 1 (one unit per input shard), ``pack.py`` pass 2 (one unit per output
shard), ``plan.py`` what goes where and the accounting, ``compiled.py`` the kernel decision.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, StageConflictError
from ..executors import Pass, Unit, run_pipelined, run_units
from ..formats.atomic import atomic_path, file_sha256, write_json
from ..formats.guard import check_apart, file_records
from ..formats.manifest import MANIFEST_NAME, Manifest, manifest_digest
from ..formats.stage import PENDING_NAME, StageOutput
from ..formats.shards import SHARD_FORMAT, STATS_FORMAT, check_losses, list_shards, stats_path
from ..formats.uids import read_subset
from ..kernels import size_rule
from .compiled import KERNEL_MIN, KERNELS, load_kernels
from .pack import pack_unit
from .plan import PlainPacks, collect_bboxes, found_counts, pack_units, scan_losses, scan_path
from .scan import scan_unit, stats_or_none

__all__ = ["KERNEL_MIN", "load_kernels", "pack_unit", "reshard", "scan_unit"]

log = logging.getLogger(__name__)

STAGE = "reshard"
# With executor="local", units run in threads of this process (``executor="threads"``: no
# process start, and the units' pread / writev / copy_file_range release the GIL) unless there
# are at least this many input (scan) / output (pack) samples; then in worker processes.
SCAN_PARALLEL_MIN = 1_000_000
PACK_PARALLEL_MIN = 2_000_000
PIPELINE = True  # threads for both passes (and no shuffle / blur): pack while later shards are scanned
WORK = ".work"
SAMPLE_IDS = "sample_ids.npy"
META = "meta.json"


def _local_mode(executor: str, n: int, process_min: int) -> str:
    """The executor for a pass of ``n`` samples: "local" runs threads below ``process_min``."""
    return "threads" if executor == "local" and n < process_min else executor


def _input_shards(pool: Path) -> list[Path]:
    if not pool.is_dir():
        raise InputError(f"{pool}: pool directory does not exist")
    d = pool / "shards" if (pool / "shards").is_dir() else pool
    return list_shards(d)


def select_shards(shards: list[Path], first_shard: int = 0, num_shards: int | None = None) -> list[Path]:
    """The input shards numbered ``first_shard`` .. ``first_shard + num_shards - 1`` (all from
    ``first_shard`` on when ``num_shards`` is None), as the reference's ``--first-shard`` /
    ``--num-shards`` pick them by the number in the name (``{:08d}.tar``); a tar whose name is
    not a number is outside every range but the default one."""
    if first_shard == 0 and num_shards is None:
        return shards
    if first_shard < 0 or (num_shards is not None and num_shards < 1):
        raise ConfigError(f"first_shard must be >= 0 and num_shards >= 1, got {first_shard} and {num_shards}")
    end = None if num_shards is None else first_shard + num_shards
    picked = [p for p in shards if p.stem.isdigit() and int(p.stem) >= first_shard and (end is None or int(p.stem) < end)]
    if not picked:
        d = shards[0].parent if shards else "?"
        raise InputError(f"{d}: no input shard numbered {first_shard}..{'' if end is None else end - 1}")
    if end is not None and len(picked) < num_shards:
        log.warning("%d of the %d shards numbered %d..%d are missing", num_shards - len(picked), num_shards,
                    first_shard, end - 1)
    return picked


def split_unfinished(shards: list[Path]) -> tuple[list[Path], list[str]]:
    """(shards with a ``_stats.json``, names of those without one). img2dataset writes the stats
    file when a shard is complete, so the reference resharder skips a tar without one."""
    have = [p for p in shards if stats_path(p).is_file()]
    return have, [p.name for p in shards if not stats_path(p).is_file()]



def _scan_weights(shards: list[Path]) -> tuple[dict[str, int], list[str]]:
    """Each input shard's sample count from its stats file (1 without one), and the shards
    without a (readable) stats file."""
    weights, missing = {}, []
    for p in shards:
        st = stats_or_none(p)
        if st is None:
            missing.append(p.name)
        weights[p.name] = max(1, int((st or {}).get("successes") or 1))
    return weights, missing


def reference_meta(pool: Path, subset: Path, out: Path, params: dict[str, Any], workers: int, first_shard: int,
                   num_shards: int | None, apply_blur: bool, inject: bool, quality: int, overwrite: bool) -> dict[str, str]:
    """The reference resharder's arguments as its ``meta.json`` holds them (top level, every value
    ``str()``-ed), so the reference's ``train.py`` and other readers of its output find them:
    ``output_shard_format`` with ``output_shard_count`` names the shards."""
    shards_dir = pool / "shards" if (pool / "shards").is_dir() else pool
    ref = {
        "input_dir": shards_dir.resolve(), "output_dir": out.resolve(), "subset_file": subset.resolve(),
        "num_shards": num_shards, "first_shard": first_shard, "num_workers": workers,
        "shard_size": params["shard_size"], "shard_format": SHARD_FORMAT, "output_shard_format": SHARD_FORMAT,
        "shard_stats_format": STATS_FORMAT, "output_shard_stats_format": STATS_FORMAT,
        "shard_table": "sizes.json", "write_shard_table": False,
        "shuffle_bufsize": params.get("shuffle_bufsize", 0), "blur_metadata_map": None,
        "apply_blur": apply_blur, "inject_blur_metadata": inject, "reencode_webp_quality": quality,
        "dry_run": False, "overwrite": overwrite, "verbose": None, "quiet": None,
    }
    return {k: str(v) for k, v in ref.items()}


def _dry_run(pool: Path, shards: list[Path], sub: np.ndarray, skipped: list[str], shard_size: int, workers: int,
             executor: str, params: dict[str, Any]) -> Manifest:
    """The reshard's counts without writing its output: the scan runs in a temporary directory."""
    import tempfile

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="datacomp-reshard-dry-") as tmp:
        work = Path(tmp)
        ids_path = work / SAMPLE_IDS
        np.save(ids_path, np.asarray(sub), allow_pickle=False)
        weights, _ = _scan_weights(shards)
        units = [Unit(p.stem, (str(p), str(ids_path), str(scan_path(work / "scan", p))), weights[p.name]) for p in shards]
        scans = run_units(scan_unit, units, work / "scan", workers=workers,
                          executor=_local_mode(executor, sum(weights.values()), SCAN_PARALLEL_MIN),
                          desc="reshard --dry-run: scan", unit_label="samples")
        found = found_counts(shards, work / "scan", np.load(ids_path, mmap_mode="r", allow_pickle=False))
    total = int(sum(s["emitted"] for s in scans.values()))
    counts = {
        "input_shard_count": len(shards),
        "subset_count": len(sub),
        "subset_unique_uids": found["subset_unique_uids"],
        "processed_count": int(sum(s["processed"] for s in scans.values())),
        "output_count": total,
        "output_shard_count": (total + shard_size - 1) // shard_size,
        "missing_uid_count": found["missing_uids"],
        "missing_subset_rows": len(sub) - found["found_rows"],
        "skipped_unfinished_shard_count": len(skipped),
    }
    log.info("reshard --dry-run: would write %d samples in %d shards; nothing written", total, counts["output_shard_count"])
    return Manifest(stage=STAGE, params=params, counts=counts, timings={"total": round(time.time() - t0, 3)},
                    extra={"dry_run": True, "skipped_unfinished_shards": skipped})


def _drop_stale_shards(out: Path, n_out: int) -> None:
    """Shards of an earlier, larger output (``_clear`` ran unless the parameters matched)."""
    for p in out.glob("*.tar"):
        if p.stem.isdigit() and int(p.stem) >= n_out:
            p.unlink()
            p.with_name(p.stem + "_stats.json").unlink(missing_ok=True)


def _open_output(out: Path, params: dict[str, Any], overwrite: bool) -> tuple[StageOutput, Manifest | None]:
    """The output directory's lifecycle (:class:`formats.stage.StageOutput`, replace="swap"): the
    finished output made with these parameters (reused), or None once the run may write under
    ``life.dir`` — ``out`` itself (empty, or an unfinished reshard with these parameters, resumed),
    or, for an ``overwrite`` of an existing reshard, a sibling that replaces ``out`` only when the
    new output is complete. A directory holding anything else is a StageConflictError unless
    ``overwrite``, which removes what a reshard writes there (and keeps the rest)."""
    life = StageOutput(STAGE, out, params, overwrite=overwrite, replace="swap")
    life.settle_swap()
    ours = out.is_dir() and (life.read_manifest() is not None or life.read_pending() is not None)
    if out.is_dir() and not ours and any(out.iterdir()):
        if not overwrite:
            raise StageConflictError(f"{out}: output directory is not empty and holds no reshard output; "
                                     "pass --overwrite to replace it")
        _clear(out)
    existing = life.begin()
    if existing is not None:
        shutil.rmtree(out / WORK, ignore_errors=True)
    return life, existing


def _our_files(out: Path) -> list[Path]:
    names = []
    for p in out.iterdir():
        n = p.name
        if (n.endswith(".tar") and n[:-4].isdigit()) or (n.endswith("_stats.json") and n[:-11].isdigit()) \
                or n in (META, SAMPLE_IDS, MANIFEST_NAME, PENDING_NAME, WORK, ".done") or (n.startswith(".") and ".tmp" in n):
            names.append(p)
    return names


def _clear(out: Path) -> None:
    for p in _our_files(out):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def reshard(
    pool: str | os.PathLike,
    subset: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 10000,
    workers: int = 2,
    executor: str = "local",
    overwrite: bool = False,
    shuffle_bufsize: int = 0,
    seed: int = 0,
    apply_blur: bool = False,
    reencode: str = "webp",
    quality: int = 100,
    allow_empty: bool = False,
    strict: bool = False,
    first_shard: int = 0,
    num_shards: int | None = None,
    include_unfinished: bool = False,
    inject_blur_metadata: bool = False,
    dry_run: bool = False,
) -> Manifest:
    """Write the subset's samples of ``pool`` (a pool dir with shards/, or a dir of tars) to ``out``.

    ``shuffle_bufsize`` > 0: the emitted sequence is shuffled in consecutive windows of that many
    samples (seeded by ``seed``; a sample moves less than one window), instead of input order.
    An empty subset is an error unless ``allow_empty``. Samples lost to damaged input shards are
    recorded in the manifest (``losses``); ``strict`` makes any loss an error.
    ``apply_blur``: blur the faces listed in ``POOL/metadata``'s ``face_bboxes`` (DATACOMP.md
    §3.2) and re-encode those images as ``reencode`` (webp, quality 100, like the reference's
    ``--apply-blur``); images without faces are copied unchanged.
    """
    t_start = time.time()
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not isinstance(shuffle_bufsize, int) or shuffle_bufsize < 0:
        raise ConfigError(f"shuffle_bufsize must be a non-negative integer, got {shuffle_bufsize!r}")
    if reencode not in ("webp", "jpg"):
        raise ConfigError(f"unknown re-encode format '{reencode}' (choose webp or jpg)")
    pool, subset, out = Path(pool), Path(subset), Path(out)
    check_apart(out, {"pool": pool, "subset": subset})
    shards = select_shards(_input_shards(pool), first_shard, num_shards)
    skipped: list[str] = []
    if not include_unfinished:
        shards, skipped = split_unfinished(shards)
        if skipped:
            log.warning("%d input shards have no _stats.json (unfinished downloads) and are skipped: %s%s "
                        "(include_unfinished / --include-unfinished reads them)", len(skipped),
                        ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
        if not shards:
            raise InputError(f"{pool}: every input shard lacks its _stats.json (unfinished download); "
                             "pass --include-unfinished to reshard them anyway")
    sub = read_subset(subset, mmap=True)  # validates dtype and order
    if len(sub) == 0 and not allow_empty:
        raise InputError(f"{subset}: the subset is empty; nothing to reshard (pass --allow-empty to write an empty output)")
    params = {
        "pool": str(pool.resolve()),
        "input_shards": [p.name for p in shards],
        "subset": str(subset.resolve()),
        "subset_sha256": file_sha256(subset),
        "shard_size": shard_size,
        "output_shard_format": SHARD_FORMAT,
    }
    if shuffle_bufsize:
        params.update(shuffle_bufsize=shuffle_bufsize, seed=seed)
    if apply_blur:
        params.update(apply_blur=True, reencode=reencode, quality=quality)
    if inject_blur_metadata:
        params.update(inject_blur_metadata=True)
    if (apply_blur or inject_blur_metadata) and not list((pool / "metadata").glob("*.parquet")):
        flag = "--apply-blur" if apply_blur else "--inject-blur-metadata"
        raise InputError(f"{pool}: {flag} needs the pool's metadata/*.parquet (face_bboxes)")
    if include_unfinished:
        params.update(include_unfinished=True)
    if dry_run:
        return _dry_run(pool, shards, sub, skipped, shard_size, workers, executor, params)
    life, existing = _open_output(out, params, overwrite)
    if existing is not None:
        check_losses(existing.extra.get("losses") or {}, strict)
        return existing
    target, out = out, life.dir  # an --overwrite writes beside the old output; finish() swaps it in
    work = out / WORK

    ids_path = out / SAMPLE_IDS
    if not ids_path.is_file():
        with atomic_path(ids_path, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(sub), allow_pickle=False)
    n_subset = len(sub)
    del sub

    # pass 1: scan (and, pipelined, pass 2) ------------------------------------------------------
    t0 = time.time()
    scan_dir, pack_dir = work / "scan", work / "pack"
    weights, missing_stats = _scan_weights(shards)
    n_in = sum(weights.values())
    with_boxes = apply_blur or inject_blur_metadata
    # compiled kernels (see KERNEL_MIN): loaded here for threads, and worker processes are told
    compiled = bool(size_rule(n_in, KERNEL_MIN)) and KERNELS.available()
    units = [Unit(p.stem, (str(p), str(ids_path), str(scan_path(scan_dir, p))) + ((True,) if compiled else ()),
                  weights[p.name]) for p in shards]
    # The scan reads headers and jsons only (pread releases the GIL). With the local executor it
    # runs in threads of this process unless the pool is large: starting worker processes
    # (~1-2 s each) would cost more than the GIL-held part of the scan gains from them.
    scan_mode = _local_mode(executor, n_in, SCAN_PARALLEL_MIN)
    t_overlap = 0.0  # time the pack ran alongside the scan
    if (PIPELINE and workers >= 2 and not shuffle_bufsize and not with_boxes
            and scan_mode == _local_mode(executor, max(n_in, n_subset), PACK_PARALLEL_MIN) == "threads"):
        # threads for both passes: pack each output shard as soon as the scans before it are done,
        # so the scan's Python overlaps the pack's in-kernel copying; the passes below then find
        # every unit done (same units, same markers, same bytes)
        piped = run_pipelined(Pass(scan_unit, scan_dir, units), Pass(pack_unit, pack_dir),
                              PlainPacks(shards, scan_dir, out, shard_size), workers, executor="threads",
                              desc="reshard: scan (+write)", unit_label="samples")
        t_overlap = time.time() - piped.first_done_at
    scans = run_units(scan_unit, units, scan_dir, workers=workers, executor=scan_mode,
                      desc="reshard: scan", unit_label="samples")
    t_scan = time.time() - t0 - t_overlap

    mismatches, corrupt_shards, losses = scan_losses(shards, scans)
    check_losses(losses, strict)  # before anything is packed

    # pass 2: pack ------------------------------------------------------------------------------
    t0 = time.time()
    emitted = [scans[p.stem]["emitted"] for p in shards]
    total = int(sum(emitted))
    options: dict[str, Any] = {"compiled": True} if compiled else {}
    if with_boxes:
        options.update(bboxes=collect_bboxes(pool, [scan_path(scan_dir, p) for p in shards], work),
                       blur=apply_blur, inject=inject_blur_metadata, reencode=reencode, quality=quality)
    packs = pack_units(shards, emitted, scan_dir, out, shard_size, options, shuffle_bufsize, seed)
    n_out = len(packs)
    # Packing is I/O: images are copied in the kernel, the GIL is held only for headers (~10 µs a
    # sample). Threads of this process share the cores without the ~1-2 s start of a worker
    # process; the local executor uses processes only for very large outputs.
    packed = run_units(pack_unit, packs, pack_dir, workers=workers, executor=_local_mode(executor, total, PACK_PARALLEL_MIN),
                       desc="reshard: write", unit_label="samples")
    t_pack = time.time() - t0 + t_overlap
    _drop_stale_shards(out, n_out)

    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    found = found_counts(shards, scan_dir, ids)
    del ids
    n_unique, missing_uids = found["subset_unique_uids"], found["missing_uids"]
    found_rows, duplicated_in_pool = found["found_rows"], found["duplicated_in_pool"]
    missing_rows = n_subset - found_rows

    processed = int(sum(s["processed"] for s in scans.values()))
    if missing_uids:
        log.warning("%d uids of the subset (%d subset rows) were not found in the input shards", missing_uids, missing_rows)
    for name, mm in mismatches.items():
        log.warning("%s: expected %s samples but found %s", name, mm["expected"], mm["found"])
    counts = {
        "input_shard_count": len(shards),
        "subset_count": n_subset,
        "subset_unique_uids": n_unique,
        "processed_count": processed,
        "matched_count": int(sum(s["matched"] for s in scans.values())),
        "output_count": total,
        "output_shard_count": n_out,
        "missing_uid_count": missing_uids,
        "missing_subset_rows": missing_rows,
        "uids_in_several_input_samples": duplicated_in_pool,
        "json_without_uid_count": int(sum(s["json_without_uid"] for s in scans.values())),
        "corrupt_sample_count": int(sum(s["corrupt_samples"] for s in scans.values())),
        "unsafe_member_count": int(sum(s["unsafe_members"] for s in scans.values())),
        "corrupt_shard_count": len(corrupt_shards),
        "broken_image_count": int(sum(s.get("broken_images", 0) for s in scans.values())),
        "blur_count": int(sum(r.get("blurred", 0) for r in packed.values())),
        "blur_failed_count": int(sum(r.get("blur_failed", 0) for r in packed.values())),
        "skipped_unfinished_shard_count": len(skipped),
    }
    if inject_blur_metadata:
        counts["injected_bbox_count"] = int(sum(r.get("injected", 0) for r in packed.values()))
    assert sum(r["successes"] for r in packed.values()) == total
    timings = {"scan": round(t_scan, 3), "write": round(t_pack, 3), "total": round(time.time() - t_start, 3)}
    meta = {
        **reference_meta(pool, subset, target, params, workers, first_shard, num_shards, apply_blur,
                         inject_blur_metadata, quality, overwrite),
        "blur_time": round(float(sum(r.get("blur_seconds", 0.0) for r in packed.values())), 3),
        "worker_success": max(1, min(workers, len(shards))),
        **counts,
        "args": {**params, "output_dir": str(target.resolve()), "workers": workers, "executor": executor},
        "skipped_unfinished_shards": skipped,
        "shards_without_stats": missing_stats,
        "count_mismatches": mismatches,
        "corrupt_shards": corrupt_shards,
        "timings": timings,
        "samples_per_second": round(processed / timings["total"], 1) if timings["total"] > 0 else None,
        "cwd": os.getcwd(),
    }
    write_json(out / META, meta)
    inputs = {"pool": manifest_digest(pool)} if (pool / MANIFEST_NAME).is_file() else {}
    manifest = Manifest(stage=STAGE, params=params, inputs=inputs, counts=counts, timings=timings,
                        extra={"meta": META, "sample_ids": SAMPLE_IDS, "losses": losses,
                               "shards": f"{{{0:08d}..{max(n_out - 1, 0):08d}}}.tar" if n_out else None,
                               "files": file_records(out, [META, SAMPLE_IDS] + [
                                   n for o in range(n_out) for n in (SHARD_FORMAT.format(o), f"{o:08d}_stats.json")])})
    life.finish(manifest)  # the manifest last; an overwrite's new output replaces the old one here
    shutil.rmtree(target / WORK, ignore_errors=True)
    log.info("reshard: %d of %d subset rows written as %d samples in %d shards (%d uids missing)",
             found_rows, n_subset, total, n_out, missing_uids)
    return manifest
