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

    out/progress.log                               datacomp's progress lines (step, loss, samples/s, ETA)

Re-running with the same parameters returns the existing manifest; an interrupted run resumes
from ``epoch_latest.pt`` (open_clip ``--resume latest``, which also lets open_clip reuse the
experiment directory); other parameters on a used ``out`` need ``overwrite=True``.

Launchers (all run open_clip_train.main through :mod:`.openclip_entry`, arguments unchanged):
one process (CPU or one GPU), ``torchrun --standalone`` for several GPUs on one node (or CPU
processes with gloo), and a generated Slurm script (``srun``, one task per GPU, then
``python -m datacomp.train.finish``) for several nodes. Every protocol value of DATACOMP.md §2
is passed explicitly, so a change of open_clip's defaults cannot change the protocol.
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
from ..errors import ConfigError, DatacompError, FormatError, InputError, StageConflictError
from ..formats.atomic import write_bytes, write_json
from ..executors.children import LOCK_NAME, dir_lock, ended_with_us, spawn
from ..formats.guard import check_apart, file_records
from ..formats.manifest import Manifest, check_reusable, manifest_digest, write_manifest
from ..progress import hms
from . import models
from .data import TrainData, check_tar_head, find_train_data

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
    upsampling_factors: Sequence[float] | None = None,
    report_to: str | None = None,
    wandb_project: str | None = None,
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
    if upsampling_factors is not None and len(upsampling_factors) != train_data.count("::") + 1:
        raise ConfigError(f"{len(upsampling_factors)} upsampling factors for {train_data.count('::') + 1} '::'-separated data sources")
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
        # optimizer, schedule and augmentation of the 2023 (v2.16-v2.20) open_clip the reference
        # used, all explicit: a later open_clip default cannot change the protocol silently
        "--opt", "adamw",
        "--wd", "0.2",
        "--beta1", "0.9",
        "--beta2", str(s.beta2 if s.beta2 is not None else 0.98),
        "--eps", "1e-6",
        "--lr-scheduler", "cosine",
        "--aug-cfg", "scale=(0.9,1.0)",
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
    if upsampling_factors is not None:
        args += ["--train-data-upsampling-factors", "::".join(_fmt_num(w) for w in upsampling_factors)]
    if report_to:
        args += ["--report-to", report_to]
        if "wandb" in report_to or report_to == "all":
            args += ["--wandb-project-name", wandb_project or "datanet"]
    if resume:
        args += ["--resume", str(resume)]
    if extra_args:
        args += list(extra_args)
    return args


ENTRY = "datacomp.train.openclip_entry"  # open_clip_train.main with a seeded sample shuffle
LAUNCHERS = ("python", "torchrun", "srun")
LOGS_ALIAS = "--datacomp-logs"  # open_clip's --logs under torchrun (see train_command)


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def train_command(args: list[str], world_size: int = 1, nodes: int = 1, launcher: str | None = None,
                  python: str | None = None) -> list[str]:
    """The command that runs ``open_clip_train.main ARGS`` (through :data:`ENTRY`), arguments unchanged.

    ``python`` for one process; ``torchrun`` (the default for ``world_size > 1``) with
    ``world_size // nodes`` processes per node (``--standalone`` on one node, a c10d rendezvous at
    ``$MASTER_ADDR:$MASTER_PORT`` as set when the command is built on several: run it on every node); ``srun`` for Slurm, where
    open_clip reads rank and world size from ``SLURM_*`` (see :func:`slurm_script`).
    """
    py = python or sys.executable
    if nodes < 1 or world_size < nodes or world_size % nodes:
        raise ConfigError(f"world size {world_size} is not a multiple of {nodes} node(s)")
    launcher = launcher or ("torchrun" if world_size > 1 else "python")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{launcher}' (known: {', '.join(LAUNCHERS)})")
    if launcher == "python":
        if world_size > 1:
            raise ConfigError(f"world size {world_size} needs torchrun or srun, not a single python process")
        return [py, "-m", ENTRY, *args]
    if launcher == "srun":
        return ["srun", "--cpu-bind=v", "--accel-bind=gn", py, "-u", "-m", ENTRY, *args]
    per_node = world_size // nodes
    # torchrun's own parser sees every argument and (abbreviations on) rejects open_clip's --logs
    # as ambiguous with its --logs-specs; the entry point renames it back
    args = [LOGS_ALIAS if a == "--logs" else a for a in args]
    run = [py, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}"]
    if nodes == 1:
        run.append("--standalone")
    else:
        endpoint = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '29500')}"
        run += [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}"]
    return [*run, "-m", ENTRY, *args]


def slurm_script(args: list[str], nodes: int, gpus_per_node: int, workers: int, job_name: str, log_dir: str | os.PathLike,
                 sbatch_options: Sequence[str] = (), python: str | None = None, env: dict[str, str] | None = None,
                 finish: str | os.PathLike | None = None) -> str:
    """A Slurm batch script: one task per GPU on ``nodes`` nodes, ``srun`` open_clip_train with ``args``.

    Like the reference's ``slurm_train.sh``: open_clip takes rank / local rank / world size from
    ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS`` and rendezvous at the first node.
    ``sbatch_options`` are extra ``#SBATCH`` lines (``partition=gpu``, ``time=48:00:00``, ...).
    """
    cmd = train_command(args, nodes * gpus_per_node, nodes, launcher="srun", python=python)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus_per_node}",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={max(1, workers) + 2}",
        f"#SBATCH --output={Path(log_dir) / 'slurm-%j.out'}",
        "#SBATCH --exclusive",
    ]
    for opt in sbatch_options:
        opt = opt.strip()
        lines.append(f"#SBATCH {opt if opt.startswith('-') else '--' + opt}")
    lines += [
        "# generated by `datacomp train --slurm`: the exact DataComp protocol; edit #SBATCH lines only",
        "set -euo pipefail",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export MASTER_PORT="${MASTER_PORT:-12802}"',
        "export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
        f'export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-{max(1, workers)}}}"',
    ]
    for k, v in sorted((env or {}).items()):
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(shlex.join(cmd))
    if finish is not None:
        # once, after every rank is done: info.json / info.pkl / manifest.json for evaluation
        lines.append(shlex.join([python or sys.executable, "-m", "datacomp.train.finish", str(finish)]))
    return "\n".join(lines) + "\n"


def reference_scale_config(s: Scale) -> dict[str, Any]:
    """The reference's ``scale_config`` dict (keys as in its scale_configs.py), for info.pkl."""
    return {"batch_size": s.batch_size, "learning_rate": s.lr, "train_num_samples": s.samples_seen,
            "warmup": s.warmup, "model": s.model, "beta2": s.beta2}


def _params(s: Scale, data: TrainData, seed: int, world_size: int, accum_freq: int, precision: str | None,
            extra_args: Sequence[str] | None, data_weights: Sequence[float] | None = None) -> dict[str, Any]:
    p = {"scale": asdict(s), "data": data.pattern, "data_id": data.identity(), "seed": seed, "world_size": world_size,
         "accum_freq": accum_freq, "precision": precision, "extra_args": list(extra_args or [])}
    if data_weights is not None:
        p["data_weights"] = [float(w) for w in data_weights]
    return p


class Progress:
    """Live progress from open_clip's ``Train Epoch`` lines: overall step, loss, samples/s (and per
    GPU), ETA; each line is logged and appended to ``out/progress.log``."""

    def __init__(self, epochs: int, samples_per_epoch: int, global_batch: int, world_size: int,
                 log_file: Path | None = None) -> None:
        self.epochs, self.per_epoch, self.batch, self.world = epochs, samples_per_epoch, global_batch, world_size
        self.total = epochs * samples_per_epoch
        self.log_file = log_file
        self.t0: float | None = None
        self.done0 = 0
        self.last: dict[str, Any] = {}

    def update(self, line: str, now: float | None = None) -> str | None:
        m = _TRAIN_LINE.search(line)
        if not m:
            return None
        now = time.time() if now is None else now
        ep, done, tot, pct, rate, lr, loss, avg = m.groups()
        g = _GPU_RATE.search(line)
        per_gpu = float(g.group(1)) if g else float(rate) / max(1, self.world)
        seen = int(ep) * self.per_epoch + int(done)
        if self.t0 is None or seen < self.done0:
            self.t0, self.done0 = now, seen  # first line (or a resume) starts the clock
        avg_rate = (seen - self.done0) / (now - self.t0) if now > self.t0 and seen > self.done0 else float(rate)
        eta = (self.total - seen) / avg_rate if avg_rate > 0 else float("inf")
        step, steps = seen // self.batch, self.total // self.batch
        text = (f"epoch {int(ep) + 1}/{self.epochs} step {step}/{steps} ({100 * seen / max(1, self.total):.1f}%) "
                f"loss {float(loss):.4f} (avg {float(avg):.4f}) {float(rate):.1f} samples/s ({per_gpu:.1f}/s/gpu) "
                f"lr {float(lr):.3g} ETA {hms(eta)}")
        self.last = {"step": step, "steps": steps, "samples": seen, "loss": float(loss), "samples_per_s": float(rate),
                     "samples_per_s_per_gpu": per_gpu, "eta_s": eta}
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        return text


# webdataset logs "... Ignoring" for each member or shard it cannot read, and with resampled shards
# never runs out of them: this many in a row, without a training step between, ends the run
MAX_SKIPPED_LINES = 1000


def _stream(cmd: list[str], env: dict[str, str], log_file: Path, progress: Progress | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, append its output to ``log_file``, and log progress lines (loss, samples/s, ETA)."""
    tail: deque[str] = deque(maxlen=40)
    skipped = 0
    with open(log_file, "a", encoding="utf-8") as lf:
        lf.write(f"\n$ {shlex.join(cmd)}\n")
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        assert proc.stdout is not None
        with ended_with_us(proc):  # an interrupted train takes the trainer (and torchrun's workers) along
            for line in proc.stdout:
                lf.write(line)
                line = line.rstrip()
                tail.append(line)
                msg = line.split("| INFO | ", 1)[-1]
                skipped = skipped + 1 if "Ignoring" in line else (0 if "Train Epoch" in line else skipped)
                if skipped > MAX_SKIPPED_LINES:  # data that yields no sample: fail, do not fill the disk
                    raise FormatError(f"{log_file}: the training data yields no valid sample ({skipped} bad "
                                      f"members or shards skipped in a row, e.g. {_short(msg)[:200]})")
                if "Train Epoch" in line:
                    text = progress.update(msg) if progress is not None else None
                    log.info("train: %s", text or _short(msg))
                elif "Start epoch" in line or "resuming checkpoint" in line or "Found latest resume" in line:
                    log.info("train: %s", msg)
                elif "Error" in line or "Traceback" in line:
                    log.warning("train: %s", msg)
                else:
                    log.debug("train: %s", msg)
            rc = proc.wait()
    return rc, list(tail)


_TRAIN_LINE = re.compile(
    r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?([\d.e+]+)/s,.*?LR: ([\d.e+-]+).*? Loss: ([\d.]+) \(([\d.]+)\)")
_GPU_RATE = re.compile(r"([\d.e+]+)/s/gpu")


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
            g = _GPU_RATE.search(line)
            rows.append({"epoch": int(ep), "samples": int(done), "loss": float(loss), "avg_loss": float(avg),
                         "samples_per_s": float(rate), "samples_per_s_per_gpu": float(g.group(1)) if g else float(rate),
                         "lr": float(lr)})
    return rows


def parse_weights(text: str | Sequence[float] | None) -> list[float] | None:
    """``'1::2.5'`` (the reference's ``--data_weights``) -> ``[1.0, 2.5]``; every weight > 0."""
    if text is None:
        return None
    parts = text.split("::") if isinstance(text, str) else list(text)
    try:
        ws = [float(w) for w in parts]
    except ValueError:
        raise ConfigError(f"data weights '{text}': expected '::'-separated numbers such as 1::2") from None
    if not ws or any(not (w > 0) or w == float("inf") for w in ws):
        raise ConfigError(f"data weights '{text}': every weight must be a positive finite number")
    return ws


def _sources(data: list[Path] | Path | str) -> list[Path | str]:
    if isinstance(data, (str, os.PathLike)):
        return [Path(p) for p in str(data).split("::")] if "::" in str(data) else [data]
    return list(data)


def check_shards(num_shards: int, nodes: int, workers: int, source: str = "") -> None:
    """Refuse fewer shards than ``nodes x workers`` (webdataset hands each node's loader workers
    shards; with fewer of them some workers never get one and the run hangs, as reference users found)."""
    need = max(1, nodes) * max(1, workers)
    if num_shards < need:
        raise InputError(f"{source or 'training data'}: {num_shards} shard(s) < {nodes} node(s) x {workers} worker(s) = {need}; "
                         "reshard with a smaller --shard-size or lower --workers")


def expected_repetitions(samples_seen: int, sources: list[TrainData], weights: Sequence[float] | None) -> list[float | None]:
    """Expected times each unique sample of each source is seen: with open_clip's upsampling each
    shard of source i is drawn with weight w_i, so source i gets a share w_i n_i / sum_j w_j n_j of
    the samples seen (n = unique samples; shard sizes assumed even)."""
    ns = [t.samples for t in sources]
    if any(n is None or n == 0 for n in ns):
        return [None] * len(sources)
    ws = list(weights) if weights is not None else [1.0] * len(sources)
    denom = sum(w * n for w, n in zip(ws, ns))  # type: ignore[misc]
    return [samples_seen * w / denom for w in ws]


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
    gpus: int | None = None,
    nodes: int = 1,
    data_weights: str | Sequence[float] | None = None,
    report_to: str | None = None,
    wandb_project: str | None = None,
    slurm: str | os.PathLike | None = None,
    sbatch_options: Sequence[str] = (),
    max_repeats: float | None = 10.0,
) -> Manifest | list[str]:
    """Train a CLIP model on webdataset shards at ``scale`` with open_clip_train; see the module doc.

    ``data``: shard files/directories (a list, or one string with ``::``), mixed with
    ``data_weights`` (``'1::2'``: open_clip ``--train-data-upsampling-factors``, one per source).
    ``resume``: None / "latest" resume from ``out/checkpoints/epoch_latest.pt`` if present, or a
    checkpoint path (its architecture must match the scale's model).
    World size = ``nodes x gpus`` (``gpus`` per node; default: the visible GPUs, 1 on CPU;
    ``world_size`` is the older spelling of ``gpus`` on one node); per-GPU batch = global /
    (world x ``accum_freq``). One process runs ``python``, several on one node ``torchrun``; several
    nodes need ``slurm=OUT.sbatch`` (a generated script, not run here) or ``print_args``.
    ``print_args=True`` prints the command (and the world size it assumed) without training.
    Warns when a sample is expected to be seen more than ``max_repeats`` times.
    """
    s = resolve_scale(scale)
    out = Path(out).expanduser().resolve()
    srcs = _sources(data)
    check_apart(out, {"data": srcs, "checkpoint": resume if resume and resume != "latest" else None})
    per_source = [find_train_data(src) for src in srcs]
    tdata = find_train_data(srcs)
    weights = parse_weights(data_weights)
    factors = None
    if weights is not None:
        if len(weights) != len(per_source):
            raise ConfigError(f"{len(weights)} data weight(s) for {len(per_source)} data source(s) ('::'-separated, one each)")
        # a source may expand to several '::' patterns (shard groups, sub-directories): repeat its weight
        factors = [w for w, t in zip(weights, per_source) for _ in t.pattern.split("::")]
    if report_to and not (print_args or slurm):
        import importlib.util

        for mod in ("tensorboard", "wandb"):
            if (mod in report_to or report_to == "all") and importlib.util.find_spec(mod) is None:
                raise ConfigError(f"--report-to {report_to}: the '{mod}' package is not installed (pip install {mod})")
    # asking for GPUs, nodes or a Slurm script means GPUs, even where this machine (a login node) has none
    dev = device or ("cuda" if (gpus is not None or nodes > 1 or slurm) else default_device())
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    if gpus is None:
        if world_size is not None:
            gpus = max(1, world_size // nodes)
        elif dev == "cuda":
            import torch

            gpus = max(1, torch.cuda.device_count())
        else:
            gpus = 1
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    world = gpus * nodes
    if nodes > 1 and not (slurm or print_args):
        raise ConfigError(f"{nodes} nodes: write a Slurm script with --slurm OUT.sbatch (or --print-args for the per-node torchrun command)")
    check_shards(tdata.num_shards, nodes, workers, source=str(srcs[0]) if len(srcs) == 1 else "training data")
    reps = expected_repetitions(s.samples_seen, per_source, weights)
    if max_repeats is not None:
        for src, r in zip(srcs, reps):
            if r is not None and r > max_repeats:
                log.warning("train: %s: each sample will be seen ~%.1f times (> %g): the subset is small for the %s scale",
                            src, r, max_repeats, s.name)
    args = build_args(s, tdata.pattern, out, seed=seed, workers=workers, world_size=world, accum_freq=accum_freq,
                      device=dev, resume=resume or "latest", precision=precision, extra_args=extra_args,
                      upsampling_factors=factors, report_to=report_to, wandb_project=wandb_project)
    per_gpu = s.batch_size // (world * accum_freq)
    summary = (f"# scale {s.name}: world size {world} = {nodes} node(s) x {gpus} GPU(s) (device {dev}); per-GPU batch "
               f"{per_gpu} x accum {accum_freq} x world {world} = global {s.batch_size}; {s.samples_seen} samples seen = "
               f"{s.num_checkpoints} epochs x {s.samples_seen // s.num_checkpoints}; {s.steps} steps")
    if print_args and not slurm:
        cmd = train_command(args, world, nodes)
        text = shlex.join(cmd)
        log.debug("%s", text)
        print(summary)
        print(text)
        return cmd
    cmd = train_command(args, world, nodes, launcher="srun" if slurm else None)
    if resume and resume != "latest":  # before anything is written: a refused run leaves no trace
        import tempfile

        with tempfile.TemporaryDirectory(prefix="datacomp-model-") as d:
            models.materialise(s.model, d)
            check_checkpoint(resume, d)
    if not slurm:  # training here: every shard must at least start like a tar (a Slurm job's may not exist yet)
        for shard in tdata.shards:
            check_tar_head(shard)
    params = _params(s, tdata, seed, world, accum_freq, precision, extra_args, weights)
    with dir_lock(out, "train"):  # a second train on this run directory refuses, naming this pid
        done = _prepare_out(out, params, overwrite)
        if done is not None:
            return done
        out.mkdir(parents=True, exist_ok=True)
        # bundled configs train from local-dir:out/model; built-in names get their config written too,
        # so local-dir:out/model loads every run the same way
        models.materialise(s.model, out / "model")
        write_json(out / "train_args.json", {"command": cmd, "params": params, "sources": [str(x) for x in srcs],
                                             "weights": weights})
        if slurm:
            script = slurm_script(args, nodes, gpus, workers, job_name=f"datacomp-{s.name}-{out.name}", log_dir=out,
                                  sbatch_options=sbatch_options, finish=out)
            write_bytes(Path(slurm), script.encode())
            Path(slurm).chmod(0o755)
            print(summary)
            print(f"# wrote {slurm}: submit it with `sbatch {slurm}`; the job trains, then writes {out / 'manifest.json'}")
            log.info("train: wrote Slurm script %s (%d nodes x %d GPUs)", slurm, nodes, gpus)
            return cmd

        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if dev == "cpu":
            # leave a core to each data-loader worker: OpenMP threads spinning on a shared core
            # slow training down several-fold when the machine is busy
            env.setdefault("OMP_NUM_THREADS", str(max(1, (_cpu_count() - workers) // max(1, world))))
        log.info("train: %s", summary[2:])
        log.info("train: %d shards, %s unique samples, expected repetitions %s -> %s", tdata.num_shards,
                 tdata.samples if tdata.samples is not None else "?",
                 ", ".join("?" if r is None else f"{r:.2f}" for r in reps), out)
        t0 = time.time()
        cpu0 = _children_cpu()
        ckpt = out / "checkpoints" / LATEST
        if _final_epoch(ckpt) >= s.num_checkpoints:
            log.info("train: %s already holds the final checkpoint; finishing the run", ckpt)
            rc, tail = 0, []
        else:
            prog = Progress(s.num_checkpoints, s.samples_seen // s.num_checkpoints, s.batch_size, world, out / "progress.log")
            rc, tail = _stream(cmd, env, out / "stdout.log", prog)
        wall = time.time() - t0
        cpu = _children_cpu() - cpu0
        if rc != 0 or not ckpt.is_file():
            last = next((l for l in reversed(tail) if l.strip() and "Traceback" not in l), "")
            raise DatacompError(f"{out}: open_clip training failed (exit {rc}): {last[-300:]} (full log: {out / 'stdout.log'})")
        return _finish(s, tdata, out, ckpt, cmd, params, wall, world, cpu, reps=reps, sources=[str(x) for x in srcs], data_weights=weights)


def read_state_dict(ck: Path) -> dict[str, Any]:
    """The model state dict of a torch checkpoint (``module.`` prefixes removed, tensors memory-mapped
    where the format allows); a one-line InputError/FormatError for a missing or unreadable file."""
    import torch

    if not ck.is_file():
        raise InputError(f"{ck}: checkpoint file does not exist")
    try:
        state = torch.load(ck, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(ck, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FormatError(f"{ck}: not a readable torch checkpoint ({type(e).__name__})") from None
    sd = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise FormatError(f"{ck}: no model state dict in the checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def check_checkpoint(checkpoint: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """One-line :class:`InputError` unless ``checkpoint`` holds weights for the model in ``model_dir``
    (same parameter names and shapes; the model is built on the meta device, no memory or time)."""
    import torch

    ck = Path(checkpoint)
    sd = read_state_dict(ck)
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(f"{models.LOCAL_DIR}{model_dir}", load_weights=False, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    name = json.loads((Path(model_dir) / models.CONFIG_NAME).read_text()).get("datacomp", {}).get("source", str(model_dir))
    missing = sorted(set(want) - set(got))
    bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or bad:
        what = (f"parameter {bad[0]} has shape {list(got[bad[0]])}, the model needs {list(want[bad[0]])}" if bad
                else f"{len(missing)} parameter(s) missing, e.g. {missing[0]}")
        raise InputError(f"{ck}: checkpoint is from another architecture than {name} ({what})")


def _prepare_out(out: Path, params: dict[str, Any], overwrite: bool) -> Manifest | None:
    """The finished manifest when ``out`` holds this run; None to (re)start or resume it; a conflict otherwise."""
    if not (out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())):
        return None
    if overwrite:
        log.info("train: overwrite: clearing %s", out)
        _wipe(out)
        return None
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
    return None


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
    if _final_epoch(ckpt) < s.num_checkpoints:
        raise DatacompError(f"{ckpt}: training has not finished (epoch {_final_epoch(ckpt)} of {s.num_checkpoints}); "
                            "resubmit the job to resume it")
    reps = expected_repetitions(s.samples_seen, per_source, weights)
    return _finish(s, tdata, out, ckpt, spec["command"], params, 0.0, int(params["world_size"]), 0.0,
                   reps=reps, sources=[str(x) for x in srcs], data_weights=weights)


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
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _finish(s: Scale, tdata: TrainData, out: Path, ckpt: Path, cmd: list[str], params: dict[str, Any], wall: float,
            world_size: int, cpu: float = 0.0, reps: Sequence[float | None] | None = None,
            sources: Sequence[str] | None = None, data_weights: Sequence[float] | None = None) -> Manifest:
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
            models.save_torch(slim, ckpt)
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
        "sources": _source_rows(sources, data_weights, reps),
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
                "expected_repetitions": round(s.samples_seen / unique, 4) if unique else None,
                "steps": s.samples_seen // s.batch_size, "epochs": epoch, "world_size": world_size},
        timings={"train_s": round(wall, 2), "cpu_s": round(cpu, 2)},  # cpu_s: trainer + data workers
        extra={"checkpoint": str(ckpt), "model_dir": str(out / "model"),
               "final_loss": final.get("avg_loss"), "samples_per_s": round(sum(rates) / len(rates), 1) if rates else None,
               "sources": _source_rows(sources, data_weights, reps),
               "files": file_records(out, [str(ckpt.relative_to(out)), str(weights.relative_to(out))])},
    )
    write_manifest(out, manifest)
    log.info("train: done in %.1fs, checkpoint %s", wall, ckpt)
    return manifest


def _source_rows(sources: Sequence[str] | None, weights: Sequence[float] | None,
                 reps: Sequence[float | None] | None) -> list[dict[str, Any]]:
    if not sources:
        return []
    ws = list(weights) if weights is not None else [1.0] * len(sources)
    rs = list(reps) if reps is not None else [None] * len(sources)
    return [{"data": d, "weight": w, "expected_repetitions": None if r is None else round(r, 4)}
            for d, w, r in zip(sources, ws, rs)]


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

