"""The run directory: what a finished training run holds and how it is completed.

Layout (``out``; open_clip's ``--logs out.parent --name out.name``)::

    out/checkpoints/epoch_latest.pt, epoch_<N>.pt   open_clip_train checkpoints
    out/out.log, out/params.txt                    open_clip_train's own log and arguments
    out/stdout.log                                 everything the subprocess printed (appended)
    out/progress.log                               datacomp's progress lines (step, loss, samples/s, ETA)
    out/model/open_clip_config.json                local-dir: model config ...
    out/model/open_clip_pytorch_model.bin          ... and the final weights (state dict)
    out/train_args.json                            the exact command and parameters (written first)
    out/.params.json                               the run in progress (formats.stage: the lifecycle)
    out/info.json, out/info.pkl                    what evaluation needs (info.pkl as the reference)
    out/manifest.json                              written last: the run is complete

:func:`run_output` is the run directory's lifecycle (:class:`datacomp.formats.stage.StageOutput`,
exclusive: a directory holding anything else is refused unless ``--overwrite``);
:func:`finish` writes info / weights / manifest from the final checkpoint, :func:`finish_run`
does so for a run trained outside ``datacomp train`` (the Slurm script's last line).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

from ..config import Scale
from ..errors import DatacompError, InputError
from ..executors.children import LOCK_NAME
from ..formats.atomic import atomic_path, link_file, write_bytes, write_json
from ..formats.guard import file_records
from ..formats.manifest import Manifest, canonical, manifest_digest
from ..formats.stage import StageOutput
from . import models
from .data import TrainData, find_train_data
from .monitor import parse_train_log
from .protocol import expected_repetitions, reference_scale_config

log = logging.getLogger(__name__)

LATEST = models.LATEST


def run_output(out: Path, params: dict[str, Any], overwrite: bool = False, replace: str = "swap") -> StageOutput:
    """The lifecycle of run directory ``out`` (its lock file is not output). A run directory without
    its manifest and pending file whose ``train_args.json`` records these parameters (a finished run
    that lost its manifest, or one trained by the Slurm script) is an unfinished run of them.

    ``replace="swap"``: an ``--overwrite`` of a used run directory trains in the sibling
    ``.NAME.swap-new`` (``life.dir``) and replaces the old run only once the new one is finished;
    the files that record the run's path name ``out`` (:func:`name_final`). A Slurm script is
    written with ``replace="clear"`` (its job trains in ``out`` itself, later)."""
    life = StageOutput("train", out, params, overwrite=overwrite, exclusive=True, keep=(LOCK_NAME,), replace=replace)
    ta = out / "train_args.json"
    if not overwrite and ta.is_file() and not life.manifest_file.exists() and not life.pending_file.exists():
        try:
            recorded = json.loads(ta.read_text()).get("params")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded is not None and canonical(recorded) == life.params:
            write_json(life.pending_file, {"stage": "train", "params": life.params, "inputs": life.inputs})
    return life


def finish_run(out: str | os.PathLike) -> Manifest:
    """Write info.json / info.pkl / model weights / manifest.json of a run trained outside :func:`train`
    (the Slurm script calls this after ``srun``), from its ``train_args.json`` and final checkpoint."""
    out = Path(out).expanduser().resolve()
    ta = out / "train_args.json"
    if not ta.is_file():
        raise InputError(f"{ta}: not a datacomp training run (no train_args.json)")
    spec = json.loads(ta.read_text())
    params = spec["params"]
    s = Scale(**params["scale"])
    srcs = spec.get("sources") or params["data"].split("::")
    weights = spec.get("weights")
    per_source = [find_train_data(x) for x in srcs]
    tdata = find_train_data(srcs)
    ckpt = out / "checkpoints" / LATEST
    if final_epoch(ckpt) < s.num_checkpoints:
        raise DatacompError(f"{ckpt}: training has not finished (epoch {final_epoch(ckpt)} of {s.num_checkpoints}); "
                            "resubmit the job to resume it")
    reps = expected_repetitions(s.samples_seen, per_source, weights)
    return finish(s, tdata, out, ckpt, spec["command"], params, 0.0, int(params["world_size"]), 0.0,
                   reps=reps, sources=[str(x) for x in srcs], data_weights=weights)


# open_clip's own records of its arguments (logs, name, checkpoint and model paths) and what it printed
NAMED_LOGS = ("params.txt", "out.log", "stdout.log")


def name_final(work: Path, final: Path) -> None:
    """After training in ``work`` (an overwrite's sibling of ``final``): open_clip's records of the
    run (:data:`NAMED_LOGS`, which hold ``--logs``/``--name`` and the paths built from them) name
    ``final``, where the run is about to be swapped in, not the build directory."""
    if work == final:
        return
    old, new = work.name.encode(), final.name.encode()
    for name in NAMED_LOGS:
        src = work / name
        if not src.is_file():
            continue
        with atomic_path(src) as tmp, open(src, "rb") as fi, open(tmp, "wb") as fo:
            for line in fi:  # line by line: a long run's stdout.log is never read whole
                fo.write(line.replace(old, new))


def final_epoch(ckpt: Path) -> int:
    if not ckpt.is_file():
        return -1
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("epoch", -1))
    except Exception:  # a checkpoint we cannot read is resumed (or rewritten) by open_clip
        return -1


def finish(s: Scale, tdata: TrainData, out: Path, ckpt: Path, cmd: list[str], params: dict[str, Any], wall: float,
            world_size: int, cpu: float = 0.0, reps: Sequence[float | None] | None = None,
            sources: Sequence[str] | None = None, data_weights: Sequence[float] | None = None,
            life: StageOutput | None = None) -> Manifest:
    """Complete the run trained in ``out`` (``life.dir``); what it records names where the run ends
    up (``life.target``: the final path, also when ``out`` is an overwrite's sibling)."""
    import torch

    life = life if life is not None else run_output(out, params)
    run_dir = life.target
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    epoch = int(state.get("epoch", 0))
    weights = out / "model" / models.WEIGHTS_NAME
    if s.embedded:
        # small runs, many of them: keep one copy of the final weights. epoch_latest.pt loses the
        # optimizer state (a finished run is never resumed), epoch_<N>.pt (identical) goes, and
        # model/ gets a hard link to it (open_clip's local-dir loader reads the 'state_dict' key);
        # its 'name' (open_clip's --name) is the run's, also when it was trained in a sibling
        if "optimizer" in state or ("name" in state and state["name"] != run_dir.name):
            slim = {k: v for k, v in state.items() if k not in ("optimizer", "scaler")}
            if "name" in slim:
                slim["name"] = run_dir.name
            models.save_torch(slim, ckpt)
        final = ckpt.with_name(f"epoch_{epoch}.pt")
        if final.is_file():
            final.unlink()
        try:
            link_file(ckpt, weights, copy=False)
        except OSError:
            models.save_weights(state["state_dict"], weights)
    else:
        models.save_weights(state["state_dict"], weights)
    del state
    rows = parse_train_log(out / "out.log")
    rates = [r["samples_per_s"] for r in rows[1:]] or [r["samples_per_s"] for r in rows]
    unique = tdata.samples
    final_ckpt, final_model = run_dir / ckpt.relative_to(out), run_dir / "model"
    info = {
        "scale": s.name,
        "checkpoint": str(final_ckpt),
        "scale_config": reference_scale_config(s),
        "data": tdata.pattern,
        "model": s.model,
        "model_dir": str(final_model),
        "unique_samples": unique,
        "expected_repetitions": (s.samples_seen / unique) if unique else None,
        "sources": _source_rows(sources, data_weights, reps),
        "samples_seen": s.samples_seen,
        "epochs": epoch,
        "command": cmd,
    }
    write_json(out / "info.json", info)
    write_bytes(out / "info.pkl", pickle.dumps({"scale": s.name, "checkpoint": str(final_ckpt), "scale_config": reference_scale_config(s),
                                                "data": tdata.pattern}))
    inputs = {}
    for sh in tdata.shards:
        d = sh.parent
        dig = manifest_digest(d)
        if dig:
            inputs[str(d)] = dig
    final = rows[-1] if rows else {}
    manifest = Manifest(
        stage="train",
        params=params,
        inputs=inputs,
        counts={"shards": tdata.num_shards, "unique_samples": unique, "samples_seen": s.samples_seen,
                "expected_repetitions": round(s.samples_seen / unique, 4) if unique else None,
                "steps": s.samples_seen // s.batch_size, "epochs": epoch, "world_size": world_size},
        timings={"train_s": round(wall, 2), "cpu_s": round(cpu, 2)},  # cpu_s: trainer + data workers
        extra={"checkpoint": str(final_ckpt), "model_dir": str(final_model),
               "final_loss": final.get("avg_loss"), "samples_per_s": round(sum(rates) / len(rates), 1) if rates else None,
               "sources": _source_rows(sources, data_weights, reps),
               "files": file_records(out, [str(ckpt.relative_to(out)), str(weights.relative_to(out))])},
    )
    life.finish(manifest)  # an overwrite's sibling is swapped in here
    log.info("train: done in %.1fs, checkpoint %s", wall, final_ckpt)
    return manifest


def _source_rows(sources: Sequence[str] | None, weights: Sequence[float] | None,
                 reps: Sequence[float | None] | None) -> list[dict[str, Any]]:
    if not sources:
        return []
    ws = list(weights) if weights is not None else [1.0] * len(sources)
    rs = list(reps) if reps is not None else [None] * len(sources)
    return [{"data": d, "weight": w, "expected_repetitions": None if r is None else round(r, 4)}
            for d, w, r in zip(sources, ws, rs)]
