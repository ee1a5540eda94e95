"""The fixed training protocol: a scale -> ``open_clip_train.main`` arguments (DATACOMP.md §1.5/§2).

Every protocol value is passed explicitly, so a change of open_clip's defaults cannot change the
protocol; the run's parameters (what its manifest records and the lifecycle compares) come from
here too, as do the checks on shards, data weights and expected repetitions.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..config import Scale, load_scale
from ..errors import ConfigError, InputError
from . import corrupt, models
from .data import TrainData

AMP_PRECISIONS = ("amp", "amp_bf16", "amp_bfloat16", "fp16", "pure_fp16")


def resolve_scale(scale: Scale | str) -> Scale:
    return scale if isinstance(scale, Scale) else load_scale(scale)


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
    save_frequency: int = 0,
    grad_clip_norm: float | None = None,
    imagenet_val: str | None = None,
    max_corrupt_fraction: float | None = None,
) -> list[str]:
    """The ``open_clip_train.main`` arguments for ``scale`` (reference values, DATACOMP.md §1.5/§2).

    ``model_arg`` overrides ``--model`` (a bundled config is trained as ``local-dir:out/model``).
    On ``device='cpu'`` amp/fp16 precisions become fp32 (CPU autocast in fp16 is not supported)
    and the multi-GPU flags are left out. ``save_frequency``, ``grad_clip_norm``, ``imagenet_val``
    and ``log_every_n_steps`` go to open_clip as the reference's train.py passes them;
    ``max_corrupt_fraction`` (other than the default) to the entry point's guard (:mod:`.corrupt`).
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
        "--save-frequency", str(int(save_frequency)),
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
    if imagenet_val:
        args += ["--imagenet-val", str(imagenet_val)]
    if grad_clip_norm is not None:
        args += ["--grad-clip-norm", _fmt_num(grad_clip_norm)]
    if resume:
        args += ["--resume", str(resume)]
    if max_corrupt_fraction is not None and float(max_corrupt_fraction) != corrupt.DEFAULT_MAX_FRACTION:
        args += [corrupt.FLAG, _fmt_num(corrupt.check_fraction(max_corrupt_fraction))]
    if extra_args:
        args += list(extra_args)
    return args


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def reference_scale_config(s: Scale) -> dict[str, Any]:
    """The reference's ``scale_config`` dict (keys as in its scale_configs.py), for info.pkl."""
    return {"batch_size": s.batch_size, "learning_rate": s.lr, "train_num_samples": s.samples_seen,
            "warmup": s.warmup, "model": s.model, "beta2": s.beta2}


def run_params(s: Scale, data: TrainData, seed: int, world_size: int, accum_freq: int, precision: str | None,
            extra_args: Sequence[str] | None, data_weights: Sequence[float] | None = None) -> dict[str, Any]:
    p = {"scale": asdict(s), "data": data.pattern, "data_id": data.identity(), "seed": seed, "world_size": world_size,
         "accum_freq": accum_freq, "precision": precision, "extra_args": list(extra_args or [])}
    if data_weights is not None:
        p["data_weights"] = [float(w) for w in data_weights]
    return p


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


def sources_of(data: list[Path] | Path | str) -> list[Path | str]:
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
