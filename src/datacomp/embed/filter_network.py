"""A data filtering network (Fang et al. 2023, "Data Filtering Networks"): a CLIP trained on
high-quality pairs only, whose image-text score ranks a pool (recipe ``dfn_top_30``).

``filter_network(pool, ...)`` is a stage of its own (``POOL/stages/filter_network/``):

1. the network — trained here (``model=None``) with the one CLIP trainer the teachers use
   (:func:`datacomp.embed.stage.train_network`: the fixed open_clip code) at the protocol of the
   scale's ``teachers: {dfn: ...}`` entry, on ``data`` (a directory of webdataset shards of
   high-quality pairs; default ``POOL/curated``, the embedded world's curated set), exported to
   ``POOL/teachers/dfn/`` as a local-dir folder; or one trained elsewhere: ``model`` an open_clip
   name, ``local-dir:DIR`` or a DIR holding ``open_clip_config.json`` + weights, with
   ``checkpoint`` a local ``.pt`` / ``.bin`` / ``.safetensors`` where the weights are apart;
2. every pool shard embedded by it (:func:`datacomp.embed.core.embed_shard`, the embed stage's
   unit): npz keys ``dfn_img`` / ``dfn_txt`` beside the teachers' and the parquet column
   ``clip_dfn_similarity_score`` (raw cosine: the score only ranks, so no score scale), each
   written atomically; finished shards are skipped on a re-run, the manifest is last.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..config import Scale, load_scale
from ..errors import ConfigError, InputError
from ..executors import Unit, run_units
from ..formats.manifest import Manifest
from ..formats.pool import list_parquets, parquet_num_rows, require_pool_dir
from ..formats.stage import StageOutput
from ..train import models
from ..train.launchers import cpu_count
from .core import embed_shard, score_column
from .stage import _ckpt_identity, _pool_identity, _pool_scale, teacher_dir, teacher_scale, train_network

log = logging.getLogger(__name__)

KEY = "dfn"
STAGE_DIR = Path("stages") / "filter_network"


def _data_identity(data: Path) -> str:
    files = sorted(p for p in data.iterdir() if p.suffix == ".tar")
    if not files:
        raise InputError(f"{data}: no .tar shards of high-quality pairs to train the filtering network on")
    return ";".join(f"{p.name}:{p.stat().st_size}" for p in files)


def filter_network(pool: str | os.PathLike, data: str | os.PathLike | None = None, model: str | None = None,
                   checkpoint: str | os.PathLike | None = None, scale: Scale | str | None = None, seed: int = 0,
                   workers: int = 2, overwrite: bool = False, batch_size: int = 256,
                   executor: str = "local") -> Manifest:
    """Train (or take) the filtering network and score every shard of ``pool``; see the module doc."""
    pool = require_pool_dir(pool)
    parquets = list_parquets(pool)
    tars = [pool / "shards" / f"{p.stem}.tar" for p in parquets]
    for p, t in zip(parquets, tars):
        if not t.is_file():
            raise InputError(f"{t}: shard for {p} does not exist")
    dest = teacher_dir(pool, KEY)
    if model is None:
        s = _pool_scale(pool) if scale is None else (scale if isinstance(scale, Scale) else load_scale(scale))
        ts = teacher_scale(s, KEY)
        hq = Path(data) if data is not None else pool / "curated"
        if not hq.is_dir():
            raise InputError(f"{hq}: directory of high-quality shards does not exist")
        params: dict[str, Any] = {"mode": "train", "scale": s.name, "seed": seed, "pool": _pool_identity(pool),
                                  "data": str(hq.resolve()), "data_files": _data_identity(hq),
                                  "protocol": {"model": ts.model, "samples_seen": ts.samples_seen,
                                               "batch_size": ts.batch_size, "lr": ts.lr, "warmup": ts.warmup}}
    else:
        ckpt = str(Path(checkpoint).resolve()) if checkpoint is not None else None
        params = {"mode": "given", "pool": _pool_identity(pool), "model": model, "checkpoint": _ckpt_identity(ckpt)}
    life = StageOutput("filter_network", pool / STAGE_DIR, params, overwrite=overwrite)
    done = life.begin()
    if done is not None:
        return done
    t0 = time.time()
    timings: dict[str, float] = {}
    if model is None:
        _, info = train_network(hq, ts, dest, seed=seed, overwrite=overwrite, workers=1,
                                device="cpu" if s.embedded else None)
        timings["train_s"] = round(time.time() - t0, 2)
        spec = {"keys": [KEY], "model": f"{models.LOCAL_DIR}{dest.resolve()}", "checkpoint": None}
        record = {"model": str(dest), "trained_on": str(hq), **info}
    else:
        spec = {"keys": [KEY], "model": model, "checkpoint": ckpt}
        models.cached_open_clip(model, ckpt)  # a bad model or checkpoint fails here, before any shard
        record = {"model": model, "checkpoint": ckpt}
    nw = max(1, min(workers, len(parquets)))
    threads = max(1, cpu_count() // nw)
    units = [Unit(f"{p.stem}.{KEY}", (str(p), str(t), [spec], batch_size, threads), parquet_num_rows(p))
             for p, t in zip(parquets, tars)]
    t1 = time.time()
    results = run_units(embed_shard, units, life.dir, workers=nw,
                        executor=executor, desc="filter network: score", unit_label="pairs")
    timings["score_s"] = round(time.time() - t1, 2)
    timings["total_s"] = round(time.time() - t0, 2)
    rows = sum(r["rows"] for r in results.values())
    record.update({"npz_keys": [f"{KEY}_img", f"{KEY}_txt"], "score_column": score_column(KEY),
                   "dim": next((r["dims"].get(KEY) for r in results.values() if r.get("dims")), None)})
    manifest = Manifest(stage="filter_network", params=params, inputs={"pool": params["pool"]},
                        counts={"shards": len(parquets), "rows": rows,
                                "images": sum(r["images"] for r in results.values())},
                        timings=timings, extra={"network": record})
    life.finish(manifest)
    log.info("filter network: %d rows scored into %s in %.1fs", rows, score_column(KEY), timings["total_s"])
    return manifest


def recipes_need_network(recipes: list[str]) -> bool:
    """Whether any of these recipes reads the filtering network's score (a ``clip_score`` step with arch dfn)."""
    from ..filters.recipe import load_recipe
    from ..filters.reference_subsets import is_pseudo_recipe

    for r in recipes:
        if is_pseudo_recipe(r):
            continue
        try:
            plan = load_recipe(r)
        except ConfigError:
            continue
        if any(st.op.name == "clip_score" and st.op.args.get("arch") == KEY for st in plan.steps):
            return True
    return False
