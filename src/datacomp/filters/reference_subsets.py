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

Outputs are reused when the pool (and, for ``random_basic``, the seed and the basic subset) is
unchanged, like :func:`datacomp.filters.run_filter`'s.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from ..errors import ConfigError, FormatError, InputError
from ..formats.atomic import write_json
from ..formats.pool import list_parquets, read_metadata
from ..formats.uids import make_subset, read_subset, uids_to_pairs, write_subset

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


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(out: Path, digest: str) -> dict[str, Any] | None:
    sidecar = out.with_suffix(".json")
    if out.is_file() and sidecar.is_file():
        try:
            old = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            return None
        if old.get("digest") == digest:
            log.info("%s: up to date (%s), reusing it", out, old.get("recipe"))
            return {**old, "reused": True}
    return None


def _check_out(out: Path) -> None:
    if out.suffix == ".json":
        raise ConfigError(f"{out}: the subset path must not end in .json (the sidecar goes there)")


def _pool_uids(parquets: list[Path]) -> list[np.ndarray]:
    """The uid column of each metadata parquet, in pool order."""
    return [np.asarray(read_metadata(p, ["uid"]).column("uid").to_pylist(), dtype=object) for p in parquets]


def _write(out: Path, uids: np.ndarray, name: str, pool: Path, digest: str, pool_rows: int, shards: int,
           t_start: float, extra: dict[str, Any]) -> dict[str, Any]:
    try:
        pairs = uids_to_pairs(uids)
    except ValueError as e:
        raise FormatError(f"{pool}: {name}: {e}") from None
    subset = make_subset(pairs)
    write_subset(out, subset)
    kept = len(subset)
    sidecar: dict[str, Any] = {
        "stage": "filter",
        "version": __version__,
        "sidecar_version": SIDECAR_VERSION,
        "digest": digest,
        "recipe": name,
        "pseudo_recipe": True,
        "description": PSEUDO_RECIPES[name],
        "pool": str(pool),
        "subset": str(out),
        **extra,
        "counts": {"pool_rows": pool_rows, "kept": kept, "removed": pool_rows - kept, "shards": shards,
                   "kept_fraction": (kept / pool_rows) if pool_rows else 0.0},
        "timings": {"total": round(time.time() - t_start, 3)},
        "created": time.time(),
    }
    write_json(out.with_suffix(".json"), sidecar)
    log.info("%s: kept %d of %d rows (%.2f%%) -> %s", name, kept, pool_rows, 100 * kept / max(pool_rows, 1), out)
    return sidecar


def oracle_subset(pool: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the pool's clean pairs (``truth/*.parquet`` column ``clean``) as a subset; -> sidecar."""
    t_start = time.time()
    pool, out = Path(pool), Path(out)
    _check_out(out)
    parquets = list_parquets(pool)
    truth_dir = pool / "truth"
    if not truth_dir.is_dir():
        raise InputError(f"{truth_dir}: the oracle needs the embedded world's ground truth "
                         "(a real pool has none; make the pool with `datacomp synth`)")
    truths = [truth_dir / p.name for p in parquets]
    for t in truths:
        if not t.is_file():
            raise InputError(f"{t}: ground truth missing for metadata file {t.name}")
    digest = _digest({"version": __version__, "sidecar_version": SIDECAR_VERSION, "recipe": "oracle",
                      "pool": str(pool.resolve()), "metadata": _fingerprint(parquets), "truth": _fingerprint(truths)})
    old = _reusable(out, digest)
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
    return _write(out, np.concatenate(kept), "oracle", pool, digest, rows, len(parquets), t_start,
                  {"truth": str(truth_dir)})


def random_subset(pool: str | os.PathLike, out: str | os.PathLike, size: int, seed: int,
                  name: str = "random_basic", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``size`` pool rows drawn uniformly without replacement with ``seed``; -> sidecar.

    The draw is ``np.random.Generator(PCG64(SeedSequence([seed, RANDOM_STREAM]))).choice(N, size,
    replace=False)`` over the pool's rows in metadata order: the same pool and seed give the same subset.
    """
    t_start = time.time()
    pool, out = Path(pool), Path(out)
    _check_out(out)
    parquets = list_parquets(pool)
    extra = dict(extra or {})
    digest = _digest({"version": __version__, "sidecar_version": SIDECAR_VERSION, "recipe": name,
                      "pool": str(pool.resolve()), "metadata": _fingerprint(parquets), "size": int(size),
                      "seed": int(seed), "extra": extra})
    old = _reusable(out, digest)
    if old is not None:
        return old
    uids = np.concatenate(_pool_uids(parquets))
    n = len(uids)
    if not 0 <= size <= n:
        raise ConfigError(f"{pool}: {name}: cannot draw {size} of {n} rows")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), RANDOM_STREAM]))
    idx = rng.choice(n, size=int(size), replace=False)
    return _write(out, uids[idx], name, pool, digest, n, len(parquets), t_start,
                  {"seed": int(seed), **extra})


def random_basic_subset(pool: str | os.PathLike, out: str | os.PathLike, seed: int,
                        basic: str | os.PathLike | None = None, workers: int = 2) -> dict[str, Any]:
    """A random subset of the size of ``basic`` (the pool's ``basic_filter`` subset; default
    ``out``'s directory / ``basic_filter.npy``, computed there with the shipped recipe when
    missing or out of date); -> sidecar."""
    from .engine import run_filter

    out = Path(out)
    basic = Path(basic) if basic is not None else out.parent / "basic_filter.npy"
    if basic.resolve() == out.resolve():
        raise ConfigError(f"{out}: random_basic cannot overwrite the basic_filter subset it is sized by")
    run_filter(pool, "basic_filter", basic, workers=workers)  # reused when up to date
    size = len(read_subset(basic))
    basic_sha = hashlib.sha256(basic.read_bytes()).hexdigest()[:16]
    return random_subset(pool, out, size, seed, name="random_basic",
                         extra={"basic_subset": str(basic), "basic_subset_sha256": basic_sha})


def build_reference_subset(name: str, pool: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                           workers: int = 2) -> dict[str, Any]:
    """Write the pseudo-recipe ``name``'s subset (see :data:`PSEUDO_RECIPES`); -> sidecar."""
    if name == "oracle":
        return oracle_subset(pool, out)
    if name == "random_basic":
        return random_basic_subset(pool, out, seed, workers=workers)
    raise ConfigError(f"unknown pseudo-recipe '{name}' (known: {', '.join(PSEUDO_RECIPES)})")
