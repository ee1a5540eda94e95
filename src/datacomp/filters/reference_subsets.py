"""Reference subsets that bracket every filter: ``oracle`` (the ceiling) and ``random_basic`` (the floor).

Neither is a recipe of rules over the metadata, so they are not YAML recipes; ``datacomp run``
accepts their names in ``--recipes`` beside the real ones, and each is written as an ordinary
subset file (sorted ``u8,u8`` ``.npy`` + a ``.json`` sidecar shaped like the filter's), so
reshard, train and evaluate treat them like any other subset.

- ``oracle``: exactly the pool's clean pairs, ``POOL/truth/*.parquet`` column ``clean`` (an
  English caption of the image on a normal image; docs/WORLD.md). No filter can select more
  clean data, so its score is the ceiling a filter on this world can reach. Only the embedded
  world has a ``truth/`` directory; a real pool has no oracle.
- ``random_basic``: a uniformly random subset, without replacement, of exactly the size of the
  same pool's ``basic_filter`` subset, drawn with ``seed``. It matches basic filtering's size
  (and so its repeats per sample at the fixed samples-seen budget) but none of its selection,
  so a filter must beat it to show that its choice of samples, not its size, helps.

Each goes through the filter stage's lifecycle (:func:`.stage.subset_output`): reused when the
pool (and, for ``random_basic``, the seed and the basic subset) is unchanged, refused when made
with other parameters unless ``overwrite``, like :func:`datacomp.filters.run_filter`'s.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from ..errors import ConfigError, FormatError, InputError
from ..formats.manifest import Manifest
from ..formats.pool import list_parquets, read_metadata
from ..formats.stage import StageOutput
from ..formats.uids import make_subset, read_subset, uids_to_pairs, write_subset
from .stage import STAGE, files_digest, finish_subset, run_filter, subset_output

log = logging.getLogger(__name__)

PSEUDO_RECIPES: dict[str, str] = {
    "oracle": "the world's clean pairs (POOL/truth/*.parquet column 'clean'): the ceiling any filter can reach",
    "random_basic": "a uniformly random subset, seeded, of the size of basic_filter's subset: the floor a filter must beat",
}
SIDECAR_VERSION = 1
# the random draw's own stream: np.random.SeedSequence([seed, RANDOM_STREAM])
RANDOM_STREAM = 0x7261_6E64  # "rand"


def is_pseudo_recipe(name: str | os.PathLike) -> bool:
    return isinstance(name, str) and name in PSEUDO_RECIPES


def _fingerprint(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        st = p.stat()
        out.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _pool_uids(parquets: list[Path]) -> list[np.ndarray]:
    """The uid column of each metadata parquet, in pool order."""
    return [np.asarray(read_metadata(p, ["uid"]).column("uid").to_pylist(), dtype=object) for p in parquets]


def _write(life: StageOutput, out: Path, uids: np.ndarray, name: str, pool: Path, pool_rows: int, shards: int,
           t_start: float, extra: dict[str, Any]) -> Manifest:
    try:
        pairs = uids_to_pairs(uids)
    except ValueError as e:
        raise FormatError(f"{pool}: {name}: {e}") from None
    subset = make_subset(pairs)
    write_subset(out, subset)
    kept = len(subset)
    manifest = Manifest(
        stage=STAGE, params=life.params,
        counts={"pool_rows": pool_rows, "kept": kept, "removed": pool_rows - kept, "shards": shards,
                "kept_fraction": (kept / pool_rows) if pool_rows else 0.0},
        timings={"total": round(time.time() - t_start, 3)},
        extra={"sidecar_version": SIDECAR_VERSION, "digest": life.digest, "recipe": name, "pseudo_recipe": True,
               "description": PSEUDO_RECIPES[name], "pool": str(pool), "subset": str(out), **extra})
    finish_subset(life, out, manifest)
    log.info("%s: kept %d of %d rows (%.2f%%) -> %s", name, kept, pool_rows, 100 * kept / max(pool_rows, 1), out)
    return manifest


def oracle_subset(pool: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Manifest:
    """Write the pool's clean pairs (``truth/*.parquet`` column ``clean``) as a subset; -> its manifest."""
    t_start = time.time()
    pool, out = Path(pool), Path(out)
    parquets = list_parquets(pool)
    truth_dir = pool / "truth"
    if not truth_dir.is_dir():
        raise InputError(f"{truth_dir}: the oracle needs the embedded world's ground truth "
                         "(a real pool has none; make the pool with `datacomp synth`)")
    truths = [truth_dir / p.name for p in parquets]
    for t in truths:
        if not t.is_file():
            raise InputError(f"{t}: ground truth missing for metadata file {t.name}")
    life = subset_output(out, {"version": __version__, "sidecar_version": SIDECAR_VERSION, "recipe": "oracle",
                               "pool": str(pool.resolve())},
                         {"metadata": files_digest(_fingerprint(parquets)), "truth": files_digest(_fingerprint(truths))},
                         overwrite)
    old = life.begin()
    if old is not None:
        return old
    kept: list[np.ndarray] = []
    rows = 0
    for p, t, uids in zip(parquets, truths, _pool_uids(parquets)):
        try:
            table = pq.read_table(t, columns=["uid", "clean"])
        except Exception as e:  # pyarrow raises several types (missing column, corrupt file)
            raise FormatError(f"{t}: cannot read the 'uid' and 'clean' columns: {e}") from None
        t_uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
        if len(t_uids) != len(uids) or not np.array_equal(t_uids, uids):
            raise FormatError(f"{t}: its uids are not those of {p} (row for row); the truth is from another pool")
        clean = table.column("clean").to_numpy(zero_copy_only=False)
        if clean.dtype != bool:
            raise FormatError(f"{t}: column 'clean' must be boolean, got {table.schema.field('clean').type}")
        kept.append(uids[clean])
        rows += len(uids)
    return _write(life, out, np.concatenate(kept), "oracle", pool, rows, len(parquets), t_start,
                  {"truth": str(truth_dir)})


def random_subset(pool: str | os.PathLike, out: str | os.PathLike, size: int, seed: int,
                  name: str = "random_basic", extra: dict[str, Any] | None = None, overwrite: bool = False) -> Manifest:
    """Write ``size`` pool rows drawn uniformly without replacement with ``seed``; -> its manifest.

    The draw is ``np.random.Generator(PCG64(SeedSequence([seed, RANDOM_STREAM]))).choice(N, size,
    replace=False)`` over the pool's rows in metadata order: the same pool and seed give the same subset.
    """
    t_start = time.time()
    pool, out = Path(pool), Path(out)
    parquets = list_parquets(pool)
    extra = dict(extra or {})
    life = subset_output(out, {"version": __version__, "sidecar_version": SIDECAR_VERSION, "recipe": name,
                               "pool": str(pool.resolve()), "size": int(size), "seed": int(seed), "extra": extra},
                         {"metadata": files_digest(_fingerprint(parquets))}, overwrite)
    old = life.begin()
    if old is not None:
        return old
    uids = np.concatenate(_pool_uids(parquets))
    n = len(uids)
    if not 0 <= size <= n:
        raise ConfigError(f"{pool}: {name}: cannot draw {size} of {n} rows")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), RANDOM_STREAM]))
    idx = rng.choice(n, size=int(size), replace=False)
    return _write(life, out, uids[idx], name, pool, n, len(parquets), t_start,
                  {"seed": int(seed), **extra})


def random_basic_subset(pool: str | os.PathLike, out: str | os.PathLike, seed: int,
                        basic: str | os.PathLike | None = None, workers: int = 2, overwrite: bool = False) -> Manifest:
    """A random subset of the size of ``basic`` (the pool's ``basic_filter`` subset; default
    ``out``'s directory / ``basic_filter.npy``, computed there with the shipped recipe when
    missing); -> its manifest."""
    out = Path(out)
    basic = Path(basic) if basic is not None else out.parent / "basic_filter.npy"
    if basic.resolve() == out.resolve():
        raise ConfigError(f"{out}: random_basic cannot overwrite the basic_filter subset it is sized by")
    run_filter(pool, "basic_filter", basic, workers=workers)  # reused when up to date
    size = len(read_subset(basic))
    basic_sha = hashlib.sha256(basic.read_bytes()).hexdigest()[:16]
    return random_subset(pool, out, size, seed, name="random_basic",
                         extra={"basic_subset": str(basic), "basic_subset_sha256": basic_sha}, overwrite=overwrite)


def build_reference_subset(name: str, pool: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                           workers: int = 2, overwrite: bool = False) -> Manifest:
    """Write the pseudo-recipe ``name``'s subset (see :data:`PSEUDO_RECIPES`); -> its manifest."""
    if name == "oracle":
        return oracle_subset(pool, out, overwrite=overwrite)
    if name == "random_basic":
        return random_basic_subset(pool, out, seed, workers=workers, overwrite=overwrite)
    raise ConfigError(f"unknown pseudo-recipe '{name}' (known: {', '.join(PSEUDO_RECIPES)})")
