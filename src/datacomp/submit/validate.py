"""What a submission must be before it is bundled: every check one line that says what is wrong.

In order (the first failure is the reason given):

1. the scale: a reference scale (an embedded one only with ``allow_embedded``), the track
   ``filtering`` or ``byod``;
2. the protocol values the run was trained with (our train manifest's scale, or the reference
   ``info.pkl``'s ``scale_config``) equal the published scale's (``resources/scales.yaml``);
3. the samples seen equal the scale's, and training finished (epochs = checkpoints);
4. the subset: a sorted 1-D ``u8,u8`` array, no uid twice, not larger than the scale's pool;
5. the results: every scored task of the suite (38 for the DataComp suite) with a main metric —
   refused with the missing list;
6. their precision: one precision for every line, and for a reference scale the reference's
   (``amp_fp16``: the classifier text tower under fp16 autocast, on a GPU);
7. they were made by this run's checkpoint: the results manifest records the sha256 of the
   weights that made them (``evaluate``'s input), which must be the run checkpoint's, and the
   results file is the one that manifest recorded.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Scale, load_scale, scale_names
from ..evaluate.registry import load_tasks
from ..errors import DatacompError, FormatError, InputError
from ..evaluate.aggregate import aggregate
from ..evaluate.runner import results_manifest_path
from ..evaluate.target import EvalTarget, run_target
from ..formats.guard import damaged_file
from ..formats.info_pkl import read_info_pkl
from ..formats.manifest import read_manifest_file
from ..formats.results import latest_by_key, read_results
from ..formats.uids import SUBSET_DTYPE, is_sorted, read_subset
from ..train.protocol import reference_scale_config

TRACKS = ("filtering", "byod")
PROTOCOL = ("samples_seen", "model", "batch_size", "lr", "warmup", "beta2", "num_checkpoints")
REFERENCE_PRECISION = "amp_fp16"


class SubmissionRefused(DatacompError):
    """A submission that fails a check (one line: what and why)."""


@dataclass
class Checked:
    """A validated submission: what the bundle is written from."""

    run: Path
    scale: Scale
    track: str
    results_file: Path
    rows: list[dict[str, Any]]
    aggregate: dict[str, Any]
    precision: str
    subset: np.ndarray
    subset_file: Path
    target: EvalTarget
    checkpoint_digest: str
    training: dict[str, Any] = field(default_factory=dict)


def _refuse(where: Path | str, why: str) -> None:
    raise SubmissionRefused(f"{where}: submission refused: {why}")


def training_record(run: Path) -> dict[str, Any]:
    """``{"scale", "protocol": {PROTOCOL key: value}, "epochs", "source"}`` of a run: ours (train
    manifest) or the reference's (info.pkl, its scale_config keys mapped onto ours)."""
    man = read_manifest_file(run / "manifest.json")
    if man is not None and man.stage == "train" and isinstance(man.params.get("scale"), dict):
        sc = man.params["scale"]
        info = {}
        if (run / "info.json").is_file():
            try:
                info = json.loads((run / "info.json").read_text())
            except json.JSONDecodeError:
                raise FormatError(f"{run / 'info.json'}: not valid JSON") from None
        return {"scale": sc.get("name"), "protocol": {k: sc.get(k) for k in PROTOCOL},
                "samples_seen": man.counts.get("samples_seen"), "epochs": man.counts.get("epochs", info.get("epochs")),
                "source": "datacomp train", "scale_config": info.get("scale_config")}
    if (run / "info.pkl").is_file():
        info = read_info_pkl(run / "info.pkl")
        cfg = info["scale_config"]
        proto = {"samples_seen": cfg.get("train_num_samples"), "model": cfg.get("model"),
                 "batch_size": cfg.get("batch_size"), "lr": cfg.get("learning_rate"), "warmup": cfg.get("warmup"),
                 "beta2": cfg.get("beta2")}
        return {"scale": info.get("scale"), "protocol": proto, "samples_seen": cfg.get("train_num_samples"),
                "epochs": None, "source": "reference train.py (info.pkl)", "scale_config": cfg}
    if (run / "train_args.json").is_file():
        _refuse(run, "training has not finished (no train manifest)")
    raise InputError(f"{run}: not a training run (no manifest.json of datacomp train, no info.pkl)")


def _fmt(v: Any) -> str:
    return json.dumps(v)


def validate(run: str | os.PathLike, subset: str | os.PathLike, track: str = "filtering",
             results: str | os.PathLike | None = None, allow_embedded: bool = False) -> Checked:
    """Every check of the module docstring, in order; -> the :class:`Checked` submission."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run}: training run directory does not exist")
    if track not in TRACKS:
        _refuse(run, f"unknown track '{track}' (filtering or byod)")
    # 1. the scale
    rec = training_record(run)
    name = rec["scale"]
    if name not in scale_names():
        _refuse(run, f"trained at scale '{name}', which is not a DataComp scale ({', '.join(scale_names())})")
    scale = load_scale(name)
    if scale.embedded and not allow_embedded:
        _refuse(run, f"'{name}' is an embedded-world scale; a submission needs a reference scale "
                     "(--allow-embedded bundles it anyway, for practice)")
    # 2. the protocol values
    published = asdict(scale)
    diffs = [f"{k} {_fmt(published[k])} -> {_fmt(v)}" for k, v in rec["protocol"].items()
             if k in published and v != published[k] and not (isinstance(v, (int, float)) and isinstance(published[k], (int, float))
                                                            and not isinstance(v, bool) and float(v) == float(published[k]))]
    if diffs:
        _refuse(run, f"trained with other protocol values than the published {name} scale ({'; '.join(diffs)})")
    if rec.get("scale_config") is not None and rec["scale_config"] != reference_scale_config(scale):
        _refuse(run, f"info's scale_config is not the published {name} scale's")
    # 3. samples seen, training finished
    if rec["samples_seen"] != scale.samples_seen:
        _refuse(run, f"{rec['samples_seen']} samples seen, the {name} scale trains on {scale.samples_seen}")
    if rec["epochs"] is not None and rec["epochs"] != scale.num_checkpoints:
        _refuse(run, f"training stopped at epoch {rec['epochs']} of {scale.num_checkpoints}")
    # 4. the subset
    subset_file = Path(subset)
    arr = _subset(subset_file)
    if scale.pool_size is not None and len(arr) > scale.pool_size:
        _refuse(subset_file, f"{len(arr):,} uids, more than the {name} pool's {scale.pool_size:,}")
    # 5. every scored task
    results_file = Path(results) if results is not None else run / "eval_results.jsonl"
    rows = list(latest_by_key(read_results(results_file)).values())
    if not rows:
        _refuse(results_file, "no results (run `datacomp evaluate` first)")
    suite = "synth" if scale.embedded else "datacomp"
    agg = aggregate(rows, suite=suite)
    if agg["missing"]:
        miss = agg["missing"]
        _refuse(results_file, f"{len(miss)} of the {agg['n_expected']} scored {suite} tasks have no result: "
                              f"{', '.join(miss)}")
    suite_keys = _all_keys(suite)
    rows = [r for r in rows if r["key"] in suite_keys]  # the suite's lines (unscored ones too), no others
    # 6. precision
    precisions = sorted({r.get("precision", "fp32") for r in rows})
    if len(precisions) > 1:
        _refuse(results_file, f"results made at several precisions ({', '.join(precisions)}); evaluate again into "
                              "one results file")
    if not scale.embedded and precisions[0] != REFERENCE_PRECISION:
        _refuse(results_file, f"results made at {precisions[0]}; the reference evaluates at {REFERENCE_PRECISION} "
                              "(classifier text under fp16 autocast): evaluate on a GPU with --precision reference")
    # 7. made by this checkpoint
    target = run_target(run)
    digest = target.checkpoint_digest()
    man = read_manifest_file(results_manifest_path(results_file))
    if man is None or man.stage != "evaluate":
        _refuse(results_file, f"no evaluate manifest ({results_manifest_path(results_file).name}) says which checkpoint "
                              "made these results")
    made_by = man.inputs.get("checkpoint")
    if made_by is None:
        _refuse(results_file, "its manifest records no checkpoint digest (made before digests were recorded): "
                              "evaluate again")
    if made_by != digest:
        _refuse(results_file, f"made by another checkpoint ({made_by[:19]}...) than the run's "
                              f"{target.checkpoint_file() or target.checkpoint} ({digest[:19]}...)")
    why = damaged_file(results_file.parent, man.extra.get("files") or {})
    if why is not None:
        _refuse(results_file, f"the results are not those evaluate recorded ({why})")
    return Checked(run=run, scale=scale, track=track, results_file=results_file, rows=rows, aggregate=agg,
                   precision=precisions[0], subset=arr, subset_file=subset_file, target=target,
                   checkpoint_digest=digest, training=rec)


def _all_keys(suite: str) -> set[str]:
    return {t.key for t in load_tasks(suite)}


def _subset(path: Path) -> np.ndarray:
    """The subset, checked: read_subset's checks, with the reason as a submission refusal."""
    if path.is_file() and path.suffix == ".npy":
        try:
            raw = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            _refuse(path, f"not a readable .npy file ({str(e)[:120]})")
        if raw.dtype != SUBSET_DTYPE or raw.ndim != 1:
            _refuse(path, f"the subset must be a 1-D array of dtype 'u8,u8' (uid halves), not {raw.dtype} "
                          f"of shape {raw.shape}")
        if not is_sorted(raw):
            _refuse(path, "the uids are not sorted (the reference's resharder needs them sorted by hi, then lo; "
                          "datacomp filter writes them so)")
    try:
        arr = read_subset(path)
    except (InputError, FormatError) as e:
        raise SubmissionRefused(f"submission refused: {e}") from None
    if len(arr) > 1 and np.any((arr["f0"][1:] == arr["f0"][:-1]) & (arr["f1"][1:] == arr["f1"][:-1])):
        _refuse(path, "a uid appears more than once")
    return arr
