"""``datacomp train``: a scale and shards -> a finished run directory, through open_clip_train.

The driver only: the protocol (:mod:`.protocol`: scale -> arguments, run parameters), the
launchers (:mod:`.launchers`: python / torchrun / Slurm), the trainer's monitoring
(:mod:`.monitor`), the run directory and its lifecycle (:mod:`.rundir`) and model loading
(:mod:`.models`) live in their own modules. Re-running with the same parameters returns the
existing manifest; an interrupted run resumes from ``epoch_latest.pt`` (open_clip ``--resume
latest``); other parameters on a used ``out`` are refused unless ``overwrite``
(:class:`datacomp.formats.stage.StageOutput`, one rule for every stage).
"""
from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from ..config import Scale
from ..errors import ConfigError, DatacompError, InputError
from ..executors.children import dir_lock
from ..formats.atomic import write_bytes, write_json
from ..formats.guard import check_apart
from ..formats.manifest import Manifest
from ..formats.stage import StageOutput
from . import corrupt, models
from .data import TrainData, check_tar_head, find_train_data
from .launchers import cpu_count, default_device, slurm_script, train_command
from .models import check_checkpoint
from .monitor import Progress, children_cpu, stream
from .protocol import (build_args, check_shards, expected_repetitions, parse_weights, resolve_scale, run_params,
                       sources_of)
from .rundir import LATEST, final_epoch, finish, name_final, run_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the scale fixes what is trained): every option of :func:`train`."""

    seed: int = 0
    workers: int = 1
    threads: int | None = None  # CPU threads of the training process (OMP_NUM_THREADS); None: the cores the loaders leave
    print_args: bool = False
    resume: str | None = None
    extra_args: Sequence[str] | None = None
    overwrite: bool = False
    world_size: int | None = None
    accum_freq: int = 1
    precision: str | None = None
    device: str | None = None
    gpus: int | None = None
    nodes: int = 1
    data_weights: str | Sequence[float] | None = None
    report_to: str | None = None
    wandb_project: str | None = None
    slurm: str | os.PathLike | None = None
    sbatch_options: Sequence[str] = ()
    max_repeats: float | None = 10.0
    # the reference train.py's flags (open_clip's meaning); None / 0 = the protocol as the scale has it
    num_checkpoints: int | None = None  # epochs = checkpoints; samples seen stay the scale's (split evenly)
    save_frequency: int = 0  # also keep epoch_N.pt every N epochs (0: only epoch_latest.pt and the final one)
    imagenet_val: str | os.PathLike | None = None  # ImageNet val folder: open_clip's zero-shot check each epoch
    grad_clip_norm: float | None = None  # clip the gradient norm (the protocol has no clipping)
    log_every_n_steps: int | None = None  # open_clip's log interval (default 100; embedded scales steps/10)
    # unreadable members tolerated (a fraction of those read, per data-loader worker; 1: no limit)
    max_corrupt_fraction: float = corrupt.DEFAULT_MAX_FRACTION


@dataclass(frozen=True)
class _World:
    device: str
    gpus: int
    nodes: int

    @property
    def size(self) -> int:
        return self.gpus * self.nodes


def _world(c: TrainConfig) -> _World:
    """Device and world size: asking for GPUs, nodes or a Slurm script means GPUs, even where this
    machine (a login node) has none."""
    dev = c.device or ("cuda" if (c.gpus is not None or c.nodes > 1 or c.slurm) else default_device())
    if c.nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {c.nodes}")
    gpus = c.gpus
    if gpus is None:
        if c.world_size is not None:
            gpus = max(1, c.world_size // c.nodes)
        elif dev == "cuda":
            import torch

            gpus = max(1, torch.cuda.device_count())
        else:
            gpus = 1
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    if c.nodes > 1 and not (c.slurm or c.print_args):
        raise ConfigError(f"{c.nodes} nodes: write a Slurm script with --slurm OUT.sbatch (or --print-args for the "
                          "per-node torchrun command)")
    return _World(dev, gpus, c.nodes)


def _check_report_to(c: TrainConfig) -> None:
    if c.report_to and not (c.print_args or c.slurm):
        import importlib.util

        for mod in ("tensorboard", "wandb"):
            if (mod in c.report_to or c.report_to == "all") and importlib.util.find_spec(mod) is None:
                raise ConfigError(f"--report-to {c.report_to}: the '{mod}' package is not installed (pip install {mod})")


def _reference_overrides(c: TrainConfig, s: Scale) -> Scale:
    """Check the reference's train flags; ``num_checkpoints`` replaces the scale's (the reference
    lets it vary: open_clip runs that many epochs of samples_seen / N samples each)."""
    if c.num_checkpoints is not None:
        if not isinstance(c.num_checkpoints, int) or c.num_checkpoints < 1:
            raise ConfigError(f"--num-checkpoints must be a positive integer, got {c.num_checkpoints!r}")
        if s.samples_seen // c.num_checkpoints < 1:
            raise ConfigError(f"--num-checkpoints {c.num_checkpoints}: more checkpoints than the {s.samples_seen} "
                              f"samples seen at scale '{s.name}'")
        s = replace(s, num_checkpoints=c.num_checkpoints)
    if not isinstance(c.save_frequency, int) or c.save_frequency < 0:
        raise ConfigError(f"--save-frequency must be an integer >= 0, got {c.save_frequency!r}")
    if c.grad_clip_norm is not None and not (float(c.grad_clip_norm) > 0 and float(c.grad_clip_norm) != float("inf")):
        raise ConfigError(f"--grad-clip-norm must be a positive finite number, got {c.grad_clip_norm!r}")
    if c.log_every_n_steps is not None and (not isinstance(c.log_every_n_steps, int) or c.log_every_n_steps < 1):
        raise ConfigError(f"--log-every-n-steps must be a positive integer, got {c.log_every_n_steps!r}")
    try:
        corrupt.check_fraction(c.max_corrupt_fraction)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--max-corrupt-fraction {e}") from None
    if c.imagenet_val is not None and not Path(c.imagenet_val).expanduser().is_dir():
        raise InputError(f"{c.imagenet_val}: --imagenet-val needs an ImageNet validation folder (one sub-directory per class)")
    return s


def _summary(s: Scale, w: _World, accum_freq: int) -> str:
    per_gpu = s.batch_size // (w.size * accum_freq)
    return (f"# scale {s.name}: world size {w.size} = {w.nodes} node(s) x {w.gpus} GPU(s) (device {w.device}); per-GPU "
            f"batch {per_gpu} x accum {accum_freq} x world {w.size} = global {s.batch_size}; {s.samples_seen} samples "
            f"seen = {s.num_checkpoints} epochs x {s.samples_seen // s.num_checkpoints}; {s.steps} steps")


def train(scale: Scale | str, data: list[Path] | Path | str, out: Path | str, config: TrainConfig | None = None,
          **options: Any) -> Manifest | list[str]:
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

    The options are :class:`TrainConfig`'s fields, given as ``config`` or as keywords (which
    override ``config``'s): ``train(scale, data, out, seed=1, gpus=2)``.
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"train() got unknown option(s) {', '.join(unknown)}")
    c = replace(config or TrainConfig(), **options)
    s = resolve_scale(scale)
    s = _reference_overrides(c, s)
    out = Path(out).expanduser().resolve()
    srcs = sources_of(data)
    check_apart(out, {"data": srcs, "checkpoint": c.resume if c.resume and c.resume != "latest" else None})
    per_source = [find_train_data(src) for src in srcs]
    tdata = find_train_data(srcs)
    weights = parse_weights(c.data_weights)
    factors = None
    if weights is not None:
        if len(weights) != len(per_source):
            raise ConfigError(f"{len(weights)} data weight(s) for {len(per_source)} data source(s) ('::'-separated, one each)")
        # a source may expand to several '::' patterns (shard groups, sub-directories): repeat its weight
        factors = [w for w, t in zip(weights, per_source) for _ in t.pattern.split("::")]
    _check_report_to(c)
    w = _world(c)
    check_shards(tdata.num_shards, c.nodes, c.workers, source=str(srcs[0]) if len(srcs) == 1 else "training data")
    reps = expected_repetitions(s.samples_seen, per_source, weights)
    if c.max_repeats is not None:
        for src, r in zip(srcs, reps):
            if r is not None and r > c.max_repeats:
                log.warning("train: %s: each sample will be seen ~%.1f times (> %g): the subset is small for the %s scale",
                            src, r, c.max_repeats, s.name)
    def args_for(run_dir: Path) -> list[str]:  # the run's final path, or the sibling an overwrite trains in
        return build_args(s, tdata.pattern, run_dir, seed=c.seed, workers=c.workers, world_size=w.size,
                          accum_freq=c.accum_freq, device=w.device, resume=c.resume or "latest", precision=c.precision,
                          extra_args=c.extra_args, upsampling_factors=factors, report_to=c.report_to,
                          wandb_project=c.wandb_project, log_every_n_steps=c.log_every_n_steps,
                          save_frequency=c.save_frequency, grad_clip_norm=c.grad_clip_norm,
                          imagenet_val=str(Path(c.imagenet_val).expanduser().resolve()) if c.imagenet_val else None,
                          max_corrupt_fraction=c.max_corrupt_fraction)

    args = args_for(out)
    summary = _summary(s, w, c.accum_freq)
    if c.print_args and not c.slurm:
        cmd = train_command(args, w.size, w.nodes)
        text = shlex.join(cmd)
        log.debug("%s", text)
        print(summary)
        print(text)
        return cmd
    cmd = train_command(args, w.size, w.nodes, launcher="srun" if c.slurm else None)
    if c.resume and c.resume != "latest":  # before anything is written: a refused run leaves no trace
        import tempfile

        with tempfile.TemporaryDirectory(prefix="datacomp-model-") as d:
            models.materialise(s.model, d)
            check_checkpoint(c.resume, d)
    if not c.slurm:  # training here: every shard must at least start like a tar (a Slurm job's may not exist yet)
        for shard in tdata.shards:
            check_tar_head(shard)
    params = run_params(s, tdata, c.seed, w.size, c.accum_freq, c.precision, c.extra_args, weights)
    # options that change the model's bytes or the checkpoints kept (num_checkpoints is in the scale)
    if c.grad_clip_norm is not None:
        params["grad_clip_norm"] = float(c.grad_clip_norm)
    if c.save_frequency:
        params["save_frequency"] = int(c.save_frequency)
    with dir_lock(out, "train"):  # a second train on this run directory refuses, naming this pid
        # everything is checked by now; an --overwrite trains beside the old run (life.dir) and swaps
        # it in when finished, so a failed or killed one leaves the old run as it was
        life = run_output(out, params, c.overwrite, replace="clear" if c.slurm else "swap")
        done = life.begin()  # other params: StageConflictError
        if done is not None:
            return done
        work = life.dir
        # bundled configs train from local-dir:out/model; built-in names get their config written too,
        # so local-dir:out/model loads every run the same way
        models.materialise(s.model, work / "model")
        write_json(work / "train_args.json", {"command": cmd, "params": params, "sources": [str(x) for x in srcs],
                                              "weights": weights})
        if c.slurm:
            return _write_slurm(c, s, w, args, out, summary, cmd)
        run_cmd = cmd if work == out else train_command(args_for(work), w.size, w.nodes)
        return _train_here(c, s, w, tdata, life, cmd, run_cmd, params, summary, reps, [str(x) for x in srcs], weights)


def _write_slurm(c: TrainConfig, s: Scale, w: _World, args: list[str], out: Path, summary: str, cmd: list[str]) -> list[str]:
    script = slurm_script(args, w.nodes, w.gpus, c.workers, job_name=f"datacomp-{s.name}-{out.name}", log_dir=out,
                          sbatch_options=c.sbatch_options, finish=out)
    slurm = Path(c.slurm)  # type: ignore[arg-type]
    write_bytes(slurm, script.encode())
    slurm.chmod(0o755)
    print(summary)
    print(f"# wrote {slurm}: submit it with `sbatch {slurm}`; the job trains, then writes {out / 'manifest.json'}")
    log.info("train: wrote Slurm script %s (%d nodes x %d GPUs)", slurm, w.nodes, w.gpus)
    return cmd


def _train_here(c: TrainConfig, s: Scale, w: _World, tdata: TrainData, life: StageOutput, cmd: list[str],
                run_cmd: list[str], params: dict[str, Any], summary: str, reps: list[float | None], sources: list[str],
                weights: list[float] | None) -> Manifest:
    """Train in ``life.dir`` with ``run_cmd`` (``cmd``, the command recorded, names the final path)."""
    out, work = life.target, life.dir
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if w.device == "cpu":
        # leave a core to each data-loader worker: OpenMP threads spinning on a shared core
        # slow training down several-fold when the machine is busy
        if c.threads is not None:  # a caller that runs several trainings at once shares the cores out itself
            env["OMP_NUM_THREADS"] = str(c.threads)
        else:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (cpu_count() - c.workers) // max(1, w.size))))
    log.info("train: %s", summary[2:])
    log.info("train: %d shards, %s unique samples, expected repetitions %s -> %s", tdata.num_shards,
             tdata.samples if tdata.samples is not None else "?",
             ", ".join("?" if r is None else f"{r:.2f}" for r in reps), out)
    t0 = time.time()
    cpu0 = children_cpu()
    ckpt = work / "checkpoints" / LATEST
    if final_epoch(ckpt) >= s.num_checkpoints:
        log.info("train: %s already holds the final checkpoint; finishing the run", ckpt)
        rc, tail = 0, []
    else:
        if life.swapping:
            log.info("train: %s: training the new run beside the old one (%s); the old one stays until it is done",
                     out, work.name)
        prog = Progress(s.num_checkpoints, s.samples_seen // s.num_checkpoints, s.batch_size, w.size, work / "progress.log")
        try:
            rc, tail = stream(run_cmd, env, work / "stdout.log", prog)
        except DatacompError as e:
            raise type(e)(f"{e}{_kept(life)}") from None
    wall = time.time() - t0
    cpu = children_cpu() - cpu0
    if rc != 0 or not ckpt.is_file():
        last = next((l for l in reversed(tail) if l.strip() and "Traceback" not in l), "")
        raise DatacompError(f"{out}: open_clip training failed (exit {rc}): {last[-300:]} (full log: "
                            f"{work / 'stdout.log'}){_kept(life)}")
    name_final(work, out)
    return finish(s, tdata, work, ckpt, cmd, params, wall, w.size, cpu, reps=reps, sources=sources, data_weights=weights,
                  life=life)


def _kept(life: StageOutput) -> str:
    return f"; the previous run in {life.target} is unchanged" if life.swapping else ""
