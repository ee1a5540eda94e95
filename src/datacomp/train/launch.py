"""Scale -> open_clip_train arguments, and a resumable local launch of ``open_clip_train.main``.

Run directory layout (``out``; open_clip's ``--logs out.parent --name out.name``)::

    out/checkpoints/epoch_latest.pt, epoch_<N>.pt   open_clip_train checkpoints
    out/out.log, out/params.txt                    open_clip_train's own log and arguments
    out/stdout.log                                 everything the subprocess printed (appended)
    out/model/open_clip_config.json                local-dir: model config ...
    out/model/open_clip_pytorch_model.bin          ... and the final weights (state dict)
    out/train_args.json                            the exact command and parameters (written first)
    out/info.json, out/info.pkl                    what evaluation needs (info.pkl as the reference)
    out/manifest.json                              written last: the run is complete

Re-running with the same parameters returns the existing manifest; an interrupted run resumes
from ``epoch_latest.pt`` (open_clip ``--resume latest``, which also lets open_clip reuse the
experiment directory); other parameters on a used ``out`` need ``overwrite=True``.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..config import Scale, load_scale
from ..errors import ConfigError, DatacompError, InputError, StageConflictError
from ..formats.atomic import atomic_path, write_bytes, write_json
from ..formats.manifest import Manifest, check_reusable, manifest_digest, write_manifest
from . import models
from .data import TrainData, find_train_data

log = logging.getLogger(__name__)

LATEST = "epoch_latest.pt"
AMP_PRECISIONS = ("amp", "amp_bf16", "amp_bfloat16", "fp16", "pure_fp16")


def resolve_scale(scale: Scale | str) -> Scale:
    return scale if isinstance(scale, Scale) else load_scale(scale)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_args(
    scale: Scale | str,
    train_data: str,
    out: str | os.PathLike,
    seed: int = 0,
    workers: int = 1,
    world_size: int = 1,
    accum_freq: int = 1,
    device: str = "cuda",
    resume: str | None = "latest",
    precision: str | None = None,
    model_arg: str | None = None,
    log_every_n_steps: int | None = None,
    extra_args: Sequence[str] | None = None,
) -> list[str]:
    """The ``open_clip_train.main`` arguments for ``scale`` (reference values, DATACOMP.md §1.5/§2).

    ``model_arg`` overrides ``--model`` (a bundled config is trained as ``local-dir:out/model``).
    On ``device='cpu'`` amp/fp16 precisions become fp32 (CPU autocast in fp16 is not supported)
    and the multi-GPU flags are left out.
    """
    s = resolve_scale(scale)
    out = Path(out)
    per_gpu = s.batch_size // (world_size * accum_freq)
    if per_gpu < 1 or per_gpu * world_size * accum_freq != s.batch_size:
        raise ConfigError(f"scale '{s.name}': global batch {s.batch_size} is not divisible by world size {world_size} x accum {accum_freq}")
    if s.samples_seen // s.num_checkpoints < 1:
        raise ConfigError(f"scale '{s.name}': samples_seen {s.samples_seen} < num_checkpoints {s.num_checkpoints}")
    prec = precision or s.precision
    if device == "cpu" and prec in AMP_PRECISIONS:
        prec = "fp32"
    if model_arg is None:
        model_arg = f"{models.LOCAL_DIR}{out / 'model'}" if models.is_bundled(s.model) else s.model
    args = [
        "--save-frequency", "0",
        "--train-data", train_data,
        "--train-num-samples", str(s.samples_seen // s.num_checkpoints),
        "--epochs", str(s.num_checkpoints),
        "--warmup", str(s.warmup),
        "--dataset-type", "webdataset",
        "--dataset-resampled",
        "--precision", prec,
        "--workers", str(workers),
        "--model", model_arg,
        "--batch-size", str(per_gpu),
        "--lr", str(s.lr),
        "--wd", "0.2",
        "--beta1", "0.9",
        "--beta2", str(s.beta2 if s.beta2 is not None else 0.98),
        "--eps", "1e-6",
        "--logs", str(out.parent),
        "--name", out.name,
        "--seed", str(seed),
        "--accum-freq", str(accum_freq),
        "--log-every-n-steps", str(log_every_n_steps or (100 if not s.embedded else max(1, s.steps // 10))),
        "--save-most-recent",
    ]
    if device == "cpu":
        args += ["--device", "cpu"]
    if device != "cpu" or world_size > 1:
        # memory/DDP flags of the reference; grad checkpointing is a no-op for ResNet towers
        args[0:0] = ["--ddp-static-graph", "--local-loss", "--gather-with-grad", "--grad-checkpointing"]
    if resume:
        args += ["--resume", str(resume)]
    if extra_args:
        args += list(extra_args)
    return args


ENTRY = "datacomp.train.openclip_entry"  # open_clip_train.main with a seeded sample shuffle


def train_command(args: list[str], world_size: int = 1) -> list[str]:
    """``python -m datacomp.train.openclip_entry ARGS`` (torchrun for several GPUs); the
    arguments are open_clip_train.main's, unchanged."""
    if world_size > 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}", "-m", ENTRY, *args]
    return [sys.executable, "-m", ENTRY, *args]


def reference_scale_config(s: Scale) -> dict[str, Any]:
    """The reference's ``scale_config`` dict (keys as in its scale_configs.py), for info.pkl."""
    return {"batch_size": s.batch_size, "learning_rate": s.lr, "train_num_samples": s.samples_seen,
            "warmup": s.warmup, "model": s.model, "beta2": s.beta2}


def _params(s: Scale, data: TrainData, seed: int, world_size: int, accum_freq: int, precision: str | None,
            extra_args: Sequence[str] | None) -> dict[str, Any]:
    return {"scale": asdict(s), "data": data.pattern, "data_id": data.identity(), "seed": seed, "world_size": world_size, "accum_freq": accum_freq,
            "precision": precision, "extra_args": list(extra_args or [])}


def _stream(cmd: list[str], env: dict[str, str], log_file: Path) -> tuple[int, list[str]]:
    """Run ``cmd``, append its output to ``log_file``, and log progress lines (loss, samples/s)."""
    tail: deque[str] = deque(maxlen=40)
    with open(log_file, "a", encoding="utf-8") as lf:
        lf.write(f"\n$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lf.write(line)
                line = line.rstrip()
                tail.append(line)
                msg = line.split("| INFO | ", 1)[-1]
                if "Train Epoch" in line:
                    log.info("train: %s", _short(msg))
                elif "Start epoch" in line or "resuming checkpoint" in line or "Found latest resume" in line:
                    log.info("train: %s", msg)
                elif "Error" in line or "Traceback" in line:
                    log.warning("train: %s", msg)
                else:
                    log.debug("train: %s", msg)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, list(tail)


_TRAIN_LINE = re.compile(
    r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?([\d.]+)/s,.*?LR: ([\d.e-]+).*? Loss: ([\d.]+) \(([\d.]+)\)")


def _short(msg: str) -> str:
    m = _TRAIN_LINE.search(msg)
    if not m:
        return msg
    ep, done, tot, pct, rate, lr, loss, avg = m.groups()
    return f"epoch {ep} {done}/{tot} ({pct}%) loss {loss} (avg {avg}) {float(rate):.0f} samples/s lr {lr}"


def parse_train_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Progress rows (epoch, samples, loss, avg_loss, samples_per_s, lr) from an open_clip ``out.log``."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text(errors="replace").splitlines():
        m = _TRAIN_LINE.search(line)
        if m:
            ep, done, tot, pct, rate, lr, loss, avg = m.groups()
            rows.append({"epoch": int(ep), "samples": int(done), "loss": float(loss), "avg_loss": float(avg),
                         "samples_per_s": float(rate), "lr": float(lr)})
    return rows


def train(
    scale: Scale | str,
    data: list[Path] | Path | str,
    out: Path | str,
    seed: int = 0,
    workers: int = 1,
    print_args: bool = False,
    resume: str | None = None,
    extra_args: Sequence[str] | None = None,
    overwrite: bool = False,
    world_size: int | None = None,
    accum_freq: int = 1,
    precision: str | None = None,
    device: str | None = None,
) -> Manifest | list[str]:
    """Train a CLIP model on webdataset shards at ``scale`` with open_clip_train; see the module doc.

    ``resume``: None / "latest" resume from ``out/checkpoints/epoch_latest.pt`` if present, or a
    checkpoint path. ``world_size`` defaults to the visible GPUs (torchrun when > 1), 1 on CPU.
    ``print_args=True`` logs and returns the command without training.
    """
    s = resolve_scale(scale)
    out = Path(out).expanduser().resolve()
    tdata = find_train_data(data)
    dev = device or default_device()
    if world_size is None:
        world_size = 1
        if dev == "cuda":
            import torch

            world_size = max(1, torch.cuda.device_count())
    args = build_args(s, tdata.pattern, out, seed=seed, workers=workers, world_size=world_size, accum_freq=accum_freq,
                      device=dev, resume=resume or "latest", precision=precision, extra_args=extra_args)
    cmd = train_command(args, world_size)
    if print_args:
        text = shlex.join(cmd)
        log.info("%s", text)
        print(text)
        return cmd

    params = _params(s, tdata, seed, world_size, accum_freq, precision, extra_args)
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            log.info("train: overwrite: clearing %s", out)
            _wipe(out)
        else:
            done = check_reusable(out, "train", params, overwrite=False)  # other params -> StageConflictError
            if done is not None:
                log.info("train: %s already holds this run; reusing it", out)
                return done
            started = out / "train_args.json"
            old = None
            if started.is_file():
                try:
                    old = json.loads(started.read_text()).get("params")
                except json.JSONDecodeError:
                    pass
            if _canon(old) != _canon(params):
                raise StageConflictError(f"{out}: holds another (unfinished) run or other files; pass --overwrite to replace it")
            log.info("train: resuming the unfinished run in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    # bundled configs train from local-dir:out/model; built-in names get their config written too,
    # so local-dir:out/model loads every run the same way
    models.materialise(s.model, out / "model")
    write_json(out / "train_args.json", {"command": cmd, "params": params})

    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if dev == "cpu":
        # leave a core to each data-loader worker: OpenMP threads spinning on a shared core
        # slow training down several-fold when the machine is busy
        env.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() - workers)))
    log.info("train: %s scale, %d shards (%s unique samples), %d samples seen, batch %d -> %s",
             s.name, tdata.num_shards, tdata.samples if tdata.samples is not None else "?", s.samples_seen, s.batch_size, out)
    t0 = time.time()
    cpu0 = _children_cpu()
    ckpt = out / "checkpoints" / LATEST
    if _final_epoch(ckpt) >= s.num_checkpoints:
        log.info("train: %s already holds the final checkpoint; finishing the run", ckpt)
        rc, tail = 0, []
    else:
        rc, tail = _stream(cmd, env, out / "stdout.log")
    wall = time.time() - t0
    cpu = _children_cpu() - cpu0
    if rc != 0 or not ckpt.is_file():
        last = next((l for l in reversed(tail) if l.strip()), "")
        raise DatacompError(f"{out}: open_clip training failed (exit {rc}): {last[-300:]} (full log: {out / 'stdout.log'})")
    return _finish(s, tdata, out, ckpt, cmd, params, wall, world_size, cpu)


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _final_epoch(ckpt: Path) -> int:
    if not ckpt.is_file():
        return -1
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("epoch", -1))
    except Exception:  # a checkpoint we cannot read is resumed (or rewritten) by open_clip
        return -1


def _wipe(out: Path) -> None:
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _finish(s: Scale, tdata: TrainData, out: Path, ckpt: Path, cmd: list[str], params: dict[str, Any], wall: float,
            world_size: int, cpu: float = 0.0) -> Manifest:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    epoch = int(state.get("epoch", 0))
    weights = out / "model" / models.WEIGHTS_NAME
    if s.embedded:
        # small runs, many of them: keep one copy of the final weights. epoch_latest.pt loses the
        # optimizer state (a finished run is never resumed), epoch_<N>.pt (identical) goes, and
        # model/ gets a hard link to it (open_clip's local-dir loader reads the 'state_dict' key)
        if "optimizer" in state:
            slim = {k: v for k, v in state.items() if k not in ("optimizer", "scaler")}
            with atomic_path(ckpt, suffix=".pt") as tmp:
                torch.save(slim, tmp)
        final = ckpt.with_name(f"epoch_{epoch}.pt")
        if final.is_file():
            final.unlink()
        tmp_link = weights.with_name(f".{weights.name}.tmp")
        if tmp_link.exists():
            tmp_link.unlink()
        try:
            os.link(ckpt, tmp_link)
            os.replace(tmp_link, weights)
        except OSError:
            models.save_weights(state["state_dict"], weights)
    else:
        models.save_weights(state["state_dict"], weights)
    del state
    rows = parse_train_log(out / "out.log")
    rates = [r["samples_per_s"] for r in rows[1:]] or [r["samples_per_s"] for r in rows]
    unique = tdata.samples
    info = {
        "scale": s.name,
        "checkpoint": str(ckpt),
        "scale_config": reference_scale_config(s),
        "data": tdata.pattern,
        "model": s.model,
        "model_dir": str(out / "model"),
        "unique_samples": unique,
        "expected_repetitions": (s.samples_seen / unique) if unique else None,
        "samples_seen": s.samples_seen,
        "epochs": epoch,
        "command": cmd,
    }
    write_json(out / "info.json", info)
    write_bytes(out / "info.pkl", pickle.dumps({"scale": s.name, "checkpoint": str(ckpt), "scale_config": reference_scale_config(s),
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
                "steps": s.samples_seen // s.batch_size, "world_size": world_size},
        timings={"train_s": round(wall, 2), "cpu_s": round(cpu, 2)},  # cpu_s: trainer + data workers
        extra={"checkpoint": str(ckpt), "model_dir": str(out / "model"),
               "final_loss": final.get("avg_loss"), "samples_per_s": round(sum(rates) / len(rates), 1) if rates else None},
    )
    write_manifest(out, manifest)
    log.info("train: done in %.1fs, checkpoint %s", wall, ckpt)
    return manifest


def load_model(run_dir: str | os.PathLike, device: str = "cpu", checkpoint: str | os.PathLike | None = None):
    """``(model.eval(), preprocess_val, tokenizer)`` of a finished training run (or any local-dir folder).

    Uses ``run_dir/model/open_clip_config.json`` with ``checkpoint`` (default: the one named in
    ``info.json``, else ``run_dir/checkpoints/epoch_latest.pt``, else the weights in ``model/``).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: training run directory does not exist")
    model_dir = run / "model" if (run / "model" / models.CONFIG_NAME).is_file() else run
    if not (model_dir / models.CONFIG_NAME).is_file():
        raise InputError(f"{run}: not a training run (no model/{models.CONFIG_NAME})")
    if checkpoint is None:
        info = run / "info.json"
        cands = []
        if info.is_file():
            try:
                cands.append(Path(json.loads(info.read_text())["checkpoint"]))
            except (json.JSONDecodeError, KeyError):
                pass
        cands.append(run / "checkpoints" / LATEST)
        checkpoint = next((c for c in cands if c.is_file()), None)
        if checkpoint is None and not (model_dir / models.WEIGHTS_NAME).is_file():
            raise InputError(f"{run}: no checkpoint (checkpoints/{LATEST} or model/{models.WEIGHTS_NAME})")
    return models.load_open_clip(f"{models.LOCAL_DIR}{model_dir}", checkpoint, device)
