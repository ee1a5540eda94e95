"""The ``embed`` stage: (train teachers on POOL/curated) -> embed every pool shard -> manifest.

Layout::

    POOL/teachers/{b32,l14}/open_clip_config.json + open_clip_pytorch_model.bin   local-dir: loadable
    POOL/teachers/{b32,l14}/run/          the open_clip_train run that produced them (datacomp.train)
    POOL/stages/embed/.done/<shard>.<keys>.json   per-shard completion markers
    POOL/stages/embed/.params.json        parameters of the run in progress (formats.stage: other ones are refused)
    POOL/stages/embed/manifest.json       written last: which model + checkpoint produced each key
    POOL/targets/l14_img.npy + .json      embedded worlds only: the image-based filter's targets
                                          (see ``datacomp.pool.synth.targets``), embedded by the model
                                          that fills ``l14``; marker ``.done/targets.l14.json``
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..config import Scale, load_scale
from ..errors import ConfigError, InputError
from ..executors import Unit, run_units
from ..formats.atomic import atomic_path, file_sha256, link_file, sweep_temps, write_json
from ..formats.manifest import Manifest, manifest_digest, mark_done, marker_path, read_manifest, read_marker
from ..formats.stage import StageOutput
from ..formats.pool import list_parquets, parquet_num_rows, require_pool_dir
from ..train import launch, models
from ..train.launchers import cpu_count
from .core import apply_score_scale, embed_images, embed_shard, fit_score_scale, score_column

if TYPE_CHECKING:
    from ..pool.synth.targets import TargetSpec

log = logging.getLogger(__name__)

STAGE_DIR = Path("stages") / "embed"
TARGETS_KEY = "l14"  # the image-based filter clusters l14_img and reads POOL/targets/l14_img.npy
TARGETS_UNIT = f"targets.{TARGETS_KEY}"


def stage_dir(pool: str | os.PathLike) -> Path:
    return Path(pool) / STAGE_DIR


def teacher_dir(pool: str | os.PathLike, key: str) -> Path:
    return Path(pool) / "teachers" / key


def _pool_identity(pool: Path) -> str:
    """Digest of the pool's own manifest, else of its shard tars (names, sizes, mtimes); embed never edits either."""
    dig = manifest_digest(pool)
    if dig:
        return dig
    h = hashlib.sha256()
    sd = pool / "shards"
    if sd.is_dir():
        for p in sorted(sd.glob("*.tar")):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _pool_scale(pool: Path) -> Scale:
    m = read_manifest(pool)
    name = None
    if m is not None:
        for src in (m.params, m.extra):
            v = src.get("scale")
            if isinstance(v, str):
                name = v
            elif isinstance(v, dict) and isinstance(v.get("name"), str):
                name = v["name"]
            if name:
                break
    if name is None:
        raise ConfigError(f"{pool / 'manifest.json'}: no scale recorded; pass the scale whose 'teachers' to train")
    return load_scale(name)


def teacher_scale(s: Scale, key: str) -> Scale:
    if key not in s.teachers:
        raise ConfigError(f"scale '{s.name}' has no teacher '{key}' (has: {', '.join(s.teachers) or 'none'})")
    t = dict(s.teachers[key])
    try:
        return Scale(
            name=f"{s.name}-teacher-{key}", pool_size=None, samples_seen=int(t["samples_seen"]), model=str(t["model"]),
            batch_size=int(t["batch_size"]), lr=float(t["lr"]), warmup=int(t["warmup"]), beta2=t.get("beta2"),
            num_checkpoints=int(t.get("num_checkpoints", 1)), precision=str(t.get("precision", s.precision)), embedded=True,
        )
    except KeyError as e:
        raise ConfigError(f"scale '{s.name}': teacher '{key}' lacks {e}") from None


def train_network(data: Path, ts: Scale, dest: Path, seed: int = 0, overwrite: bool = False, workers: int = 1,
                  device: str | None = "cpu") -> tuple[Any, dict[str, Any]]:
    """Train a CLIP with the fixed open_clip code (``datacomp.train``) at protocol ``ts`` on the
    shards in ``data`` (run directory ``dest/run``) and export it to ``dest`` as a local-dir folder
    (open_clip_config.json + weights): the one trainer of the teachers and of filtering networks.
    -> (the run's manifest, the record of the network: model, protocol, timings, run digest)."""
    man = launch.train(ts, data, dest / "run", seed=seed, workers=workers, overwrite=overwrite, device=device)
    run_model = dest / "run" / "model"
    shutil.copyfile(run_model / models.CONFIG_NAME, dest / models.CONFIG_NAME)
    link_file(run_model / models.WEIGHTS_NAME, dest / models.WEIGHTS_NAME)
    info = {"model": ts.model, "samples_seen": ts.samples_seen, "batch_size": ts.batch_size, "lr": ts.lr,
            "warmup": ts.warmup, "seed": seed, "train_s": man.timings.get("train_s"), "cpu_s": man.timings.get("cpu_s"),
            "final_loss": man.extra.get("final_loss"), "samples_per_s": man.extra.get("samples_per_s"),
            "checkpoint": man.extra.get("checkpoint"), "run_manifest": manifest_digest(dest / "run")}
    return man, info


def _teacher_network(pool: Path, s: Scale, key: str, seed: int, overwrite: bool, workers: int) -> dict[str, Any]:
    """Train teacher ``key``'s network on POOL/curated (a subprocess; nothing runs in this process)
    and export it: the record of :func:`train_network`."""
    curated = pool / "curated"
    if not curated.is_dir():
        raise InputError(f"{curated}: curated shards for teacher training do not exist")
    _, trained = train_network(curated, teacher_scale(s, key), teacher_dir(pool, key), seed=seed, overwrite=overwrite,
                               workers=workers, device="cpu" if s.embedded else None)
    return trained


def train_teacher(pool: Path, s: Scale, key: str, seed: int = 0, overwrite: bool = False, workers: int = 1,
                  trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train teacher ``key`` of scale ``s`` on POOL/curated, export it as a local-dir folder and fit
    its score scale. ``trained``: the network's record when it was trained already (:func:`embed`
    trains the teachers at once, then fits their scales here one after the other)."""
    t0 = time.time()
    if trained is None:
        trained = _teacher_network(pool, s, key, seed, overwrite, workers)
    dest = teacher_dir(pool, key)
    info = {"key": key, **trained}
    anchors = s.teachers[key].get("score_scale")
    if anchors:
        info["score_scale"] = _previous_score_scale(dest, info["run_manifest"], anchors) or \
            calibrate_score_scale(pool, key, f"{models.LOCAL_DIR}{dest.resolve()}", anchors)
    write_json(dest / "teacher.json", info)
    log.info("embed: teacher %s (%s) ready in %.1fs", key, teacher_scale(s, key).model, time.time() - t0)
    return info


def targets_path(pool: str | os.PathLike) -> Path:
    return Path(pool) / "targets" / f"{TARGETS_KEY}_img.npy"



def _targets_spec(pool: Path, s: Scale | None) -> TargetSpec | None:
    """The pool's target spec when it is an embedded world; the scale gives ``world.targets_per_concept``."""
    from ..pool.synth.targets import world_spec

    if s is None:
        try:
            s = _pool_scale(pool)
        except ConfigError:
            s = None
    return world_spec(pool, (s.world or {}).get("targets_per_concept") if s is not None else None)


def _targets_current(pool: Path, rec: dict[str, Any] | None, spec: TargetSpec, ident: dict[str, Any]) -> bool:
    """Whether the recorded targets are these renders embedded by this model, and still on disk unchanged."""
    if not isinstance(rec, dict) or rec.get("spec") != spec.to_json() or rec.get("model") != ident:
        return False
    path = targets_path(pool)
    return path.is_file() and path.with_suffix(".json").is_file() and file_sha256(path) == rec.get("sha256")


def write_targets(pool: Path, spec: TargetSpec, model: str, checkpoint: str | None, ident: dict[str, Any],
                  batch_size: int = 256, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Render the world's targets, embed them with ``model`` and write POOL/targets/l14_img.npy
    (float32, L2-normalised rows) and its .json sidecar, each atomically; returns the record."""
    from ..pool.synth.targets import render_targets
    from ..pool.synth.world import load_world

    t0 = time.time()
    tg = render_targets(spec)
    emb = embed_images(model, checkpoint, tg.images, batch_size, threads, device).astype(np.float32)
    emb = apply_score_scale(emb, ident.get("score_scale") if isinstance(ident, dict) else None, "img")
    if emb.shape[0] != spec.n or not np.isfinite(emb).all():
        raise InputError(f"{model}: target embeddings have shape {emb.shape} or non-finite values (expected {spec.n} rows)")
    path = targets_path(pool)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, emb, allow_pickle=False)
    world = load_world(spec.n_concepts)
    rec = {"path": str(path.relative_to(pool)), "key": TARGETS_KEY, "n": int(emb.shape[0]), "dim": int(emb.shape[1]),
           "dtype": "float32", "l2_normalised": True, "sha256": file_sha256(path), "spec": spec.to_json(),
           "model": ident, "seed": spec.seed, "stream": spec.stream, "per_concept": spec.per_concept,
           "concepts": world.task_names, "row_concept": "row i shows concepts[i % len(concepts)] (the task concepts)",
           "what": "fresh normal-style renders of the synth/concepts concepts (the ImageNet-1k train analogue), "
                   "none equal to an eval test image",
           "eval_collisions_rerendered": tg.rerendered, "seconds": round(time.time() - t0, 2)}
    write_json(path.with_suffix(".json"), rec)
    log.info("embed: %d target images (%d concepts x %d) -> %s in %.1fs", rec["n"], len(world.task_ids), spec.per_concept,
             path, rec["seconds"])
    return rec


def _ensure_targets(pool: Path, sdir: Path, spec: TargetSpec, model: str, checkpoint: str | None,
                    ident: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The targets record, in this process: the unit's marker when current, else written anew."""
    rec = read_marker(sdir, TARGETS_UNIT)
    if _targets_current(pool, rec, spec, ident):
        return rec
    rec = write_targets(pool, spec, model, checkpoint, ident, batch_size=batch_size, threads=cpu_count())
    mark_done(sdir, TARGETS_UNIT, rec)
    return rec


def _embed_unit(kind: str, *args: Any) -> dict[str, Any]:
    """One unit of the stage (module-level, so process pools and Ray can pickle it): a pool shard or the targets."""
    if kind == "targets":
        pool, spec, model, checkpoint, ident, batch_size, threads, device = args
        return write_targets(Path(pool), spec, model, checkpoint, ident, batch_size=batch_size, threads=threads,
                             device=device)
    return embed_shard(*args)


def _teacher_ident(info: dict[str, Any]) -> dict[str, Any]:
    return {"teacher": info.get("key", TARGETS_KEY), "arch": info.get("model"), "run_manifest": info.get("run_manifest"),
            "score_scale": info.get("score_scale")}


def _previous_score_scale(dest: Path, run_manifest: str | None, anchors: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The score scale already fitted for this very teacher run and these anchors (teacher.json),
    so a re-run that reuses the teacher does not embed the calibration shard again."""
    try:
        prev = json.loads((dest / "teacher.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    fit = prev.get("score_scale") if isinstance(prev, dict) else None
    if not isinstance(fit, dict) or prev.get("run_manifest") != run_manifest or run_manifest is None:
        return None
    fitted_for = [{k: v for k, v in a.items() if k != "raw"} for a in fit.get("anchors", [])]
    return fit if fitted_for == [dict(a) for a in anchors] else None


def calibrate_score_scale(pool: Path, key: str, model: str, anchors: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the teacher's score scale (:func:`datacomp.embed.core.fit_score_scale`) on the pool's
    first shard: its raw cosines, and CLD3's language of each caption for English anchors."""
    from ..filters.ops.language import cld3_detector

    parquets = list_parquets(pool)
    if not parquets:
        raise InputError(f"{pool / 'metadata'}: no parquet to calibrate teacher '{key}' on")
    p = parquets[0]
    out = embed_shard(str(p), str(pool / "shards" / (p.stem + ".tar")), [{"keys": [key], "model": model, "checkpoint": None}],
                      threads=cpu_count(), write=False)
    det = cld3_detector(0, 1000)
    english = np.array([det.FindLanguage(t).language == "en" for t in out["texts"]])
    try:
        fit = fit_score_scale(out["scores"][key], english, anchors)
    except ValueError as e:
        raise ConfigError(f"{p}: teacher '{key}': {e}") from None
    log.info("embed: teacher %s score scale a=%.3f b=%.3f (fitted on %s)", key, fit["a"], fit["b"], p.name)
    return {**fit, "fitted_on": p.name}


def _ckpt_identity(checkpoint: str | None) -> str | None:
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    models.read_state_dict(p)  # before --overwrite touches the finished stage: a bad file is refused first
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def embed(
    pool: str | os.PathLike,
    teacher: bool = True,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    scale: Scale | str | None = None,
    seed: int = 0,
    workers: int = 2,
    overwrite: bool = False,
    keys: Sequence[str] = ("b32", "l14"),
    batch_size: int = 256,
    executor: str = "local",
    jobs: int = 1,
) -> Manifest:
    """Embed every sample of ``pool`` and write npz keys + score columns; see the module doc.

    ``model=None`` (teacher mode): train the scale's teachers (``scale`` or the pool manifest's
    scale) on POOL/curated, one per key, and embed with them. ``model=ARCH`` (open_clip name,
    bundled config name, ``local-dir:DIR`` or a DIR) with a local ``checkpoint``: one model for
    every key in ``keys``. Units are shards; a killed run resumes; ``manifest.json`` is last.
    ``executor="ray"``: one Ray task per shard, with one GPU each on a cluster that has GPUs
    (the models run on it), on the CPU otherwise (then bit-identical to ``"local"``).
    ``jobs`` > 1: the teachers' networks train at the same time (each in its own process, with the
    thread count a lone training has); their score scales are then fitted one after the other.
    """
    pool = require_pool_dir(pool)
    keys = tuple(keys)
    if not keys:
        raise ConfigError("embed: no keys given")
    for k in keys:
        if not k.isidentifier():
            raise ConfigError(f"embed: invalid key '{k}' (use names like b32, l14)")
    parquets = list_parquets(pool)
    tars = []
    for pq_path in parquets:
        tar = pool / "shards" / (pq_path.stem + ".tar")
        if not tar.is_file():
            raise InputError(f"{tar}: shard for {pq_path} does not exist")
        tars.append(tar)
    sdir = stage_dir(pool)
    pool_id = _pool_identity(pool)
    use_teacher = model is None and teacher
    if model is None and not teacher:
        raise ConfigError("embed: give a model (and checkpoint), or use the teachers")

    if use_teacher:
        s = _pool_scale(pool) if scale is None else (scale if isinstance(scale, Scale) else load_scale(scale))
        tscales = {k: teacher_scale(s, k) for k in keys}
        params: dict[str, Any] = {"mode": "teacher", "scale": s.name, "seed": seed, "pool": pool_id,
                                  "keys": {k: {"model": ts.model, "samples_seen": ts.samples_seen, "batch_size": ts.batch_size,
                                               "lr": ts.lr, "warmup": ts.warmup, "score_scale": s.teachers[k].get("score_scale")}
                                           for k, ts in tscales.items()}}
    else:
        ckpt = str(checkpoint) if checkpoint is not None else None
        params = {"mode": "model", "pool": pool_id,
                  "keys": {k: {"model": model, "checkpoint": _ckpt_identity(ckpt)} for k in keys}}
    tspec = _targets_spec(pool, s if use_teacher else None) if TARGETS_KEY in keys else None
    life = StageOutput("embed", sdir, params, overwrite=overwrite)
    done = life.begin()  # other params on a finished or unfinished embed: StageConflictError
    previous = life.previous
    if done is not None:
        if tspec is not None:
            rec = done.extra.get("targets")
            if use_teacher:
                known = _teacher_ident(done.extra.get("models", {}).get(TARGETS_KEY, {}).get("teacher", {}))
            else:
                known = params["keys"][TARGETS_KEY]
            if not _targets_current(pool, rec, tspec, known):  # missing, changed on disk, or made before targets
                if use_teacher:
                    info = train_teacher(pool, s, TARGETS_KEY, seed=seed)  # reuses the finished run
                    tmodel, tckpt, ident = f"{models.LOCAL_DIR}{teacher_dir(pool, TARGETS_KEY).resolve()}", None, _teacher_ident(info)
                else:
                    tmodel, tckpt, ident = model, str(Path(checkpoint).resolve()) if checkpoint is not None else None, known
                done.extra["targets"] = _ensure_targets(pool, sdir, tspec, tmodel, tckpt, ident, batch_size)
                life.finish(done)
        return done

    t0 = time.time()
    timings: dict[str, float] = {}
    records: dict[str, dict[str, Any]] = {}
    specs: list[dict[str, Any]] = []
    if use_teacher:
        trained: dict[str, Any] = {}
        if jobs > 1 and len(keys) > 1:  # the networks at once (subprocesses), the score scales one by one below
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs) as ex:
                futures = {k: ex.submit(_teacher_network, pool, s, k, seed, overwrite, 1) for k in keys}
                trained = {k: f.result() for k, f in futures.items()}
        for k in keys:
            t1 = time.time()
            info = train_teacher(pool, s, k, seed=seed, overwrite=overwrite, trained=trained.get(k))
            timings[f"teacher_{k}_s"] = round(time.time() - t1, 2)
            tdir = teacher_dir(pool, k)
            specs.append({"keys": [k], "model": f"{models.LOCAL_DIR}{tdir.resolve()}", "checkpoint": None,
                          "score_scale": info.get("score_scale")})
            records[k] = {"model": str(tdir), "checkpoint": str(tdir / models.WEIGHTS_NAME), "arch": info["model"],
                          "teacher": info}
    else:
        ckpt = str(Path(checkpoint).resolve()) if checkpoint is not None else None
        specs.append({"keys": list(keys), "model": model, "checkpoint": ckpt})
        for k in keys:
            records[k] = {"model": model, "checkpoint": ckpt}
        # fail fast in this process on a bad model/checkpoint, before spawning workers
        models.cached_open_clip(model, ckpt)

    ncpu = cpu_count()
    nw = max(1, min(workers, len(parquets)))
    threads = max(1, ncpu // nw)
    gpus = 0.0  # Ray with GPUs: one GPU per unit's task, the models on it; otherwise the CPU
    if executor == "ray":
        from ..executors.ray_executor import cluster_gpus

        gpus = 1.0 if cluster_gpus(nw) > 0 else 0.0
    device = "cuda" if gpus else "cpu"
    suffix = "+".join(keys)
    units = [Unit(name=f"{p.stem}.{suffix}", args=("shard", str(p), str(t), specs, batch_size, threads, True, device),
                  weight=parquet_num_rows(p))
             for p, t in zip(parquets, tars)]
    targets_rec = None
    if tspec is not None:  # an embedded world: the image-based filter's targets, by the model that fills l14
        if use_teacher:
            tmodel, tckpt = specs[keys.index(TARGETS_KEY)]["model"], None
            ident = _teacher_ident(records[TARGETS_KEY]["teacher"])
        else:
            tmodel, tckpt, ident = model, ckpt, params["keys"][TARGETS_KEY]
        if not _targets_current(pool, read_marker(sdir, TARGETS_UNIT), tspec, ident):
            marker_path(sdir, TARGETS_UNIT).unlink(missing_ok=True)  # file gone or changed, other model: redo
        # one more unit, last: a worker that embedded a shard has the l14 model loaded already
        units.append(Unit(name=TARGETS_UNIT, args=("targets", str(pool), tspec, tmodel, tckpt, ident, batch_size, threads, device),
                          weight=tspec.n))
    elif previous is not None and overwrite and TARGETS_KEY not in keys and previous.extra.get("targets"):
        targets_rec = previous.extra["targets"]  # l14 untouched: its targets stay valid
    t1 = time.time()
    results = run_units(_embed_unit, units, sdir, workers=nw, executor=executor, desc="embed", unit_label="pairs",
                        gpus_per_unit=gpus)
    if tspec is not None:
        targets_rec = results.pop(TARGETS_UNIT)
    embed_s = time.time() - t1
    rows = sum(r["rows"] for r in results.values())
    unit_s = sum(r.get("seconds", 0.0) for r in results.values())
    dims: dict[str, int] = {}
    for r in results.values():
        dims.update(r.get("dims", {}))
    for k in keys:
        records[k]["dim"] = dims.get(k)
        records[k]["npz_keys"] = [f"{k}_img", f"{k}_txt"]
        records[k]["score_column"] = score_column(k)
    if previous is not None and overwrite:
        for k, rec in previous.extra.get("models", {}).items():
            records.setdefault(k, rec)
    timings.update({"embed_s": round(embed_s, 2), "total_s": round(time.time() - t0, 2)})
    manifest = Manifest(
        stage="embed",
        params=params,
        inputs={"pool": pool_id},
        counts={"shards": len(parquets), "rows": rows, "images": sum(r["images"] for r in results.values()),
                "missing_images": sum(r["missing_images"] for r in results.values()),
                "extra_samples": sum(r["extra_samples"] for r in results.values())},
        timings=timings,
        extra={"models": records, "executor": executor, "device": device,
               "pairs_per_s_per_worker": round(rows / unit_s, 1) if unit_s > 0 else None,
               "missing_images_policy": "zero image vector, NaN score"},
    )
    if targets_rec is not None:
        manifest.extra["targets"] = targets_rec
    sweep_temps(pool / "metadata")  # npz/parquet temporaries of killed earlier runs
    life.finish(manifest)
    log.info("embed: %d rows in %d shards, %.1fs (%s)", rows, len(parquets), embed_s, ", ".join(keys))
    return manifest
