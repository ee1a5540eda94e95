"""``datacomp submit``: a validated submission written as the bundle the reference uploads.

The reference's ``evaluate.py --submit`` pushes ``{scale}_scale/results.jsonl``, the files of
``--samples`` under ``{scale}_scale/samples/`` and, with ``--upload_checkpoint``,
``{scale}_scale/checkpoint.pt`` to the participant's Hugging Face repo, and sends the
leaderboard record (scale, model, dataset size, batch size, learning rate, method, author,
track, write-up, every task's main metric) to its database. The bundle holds the same, in one
directory::

    BUNDLE/{scale}_scale/results.jsonl          the results, as evaluated
    BUNDLE/{scale}_scale/samples/SUBSET.npy     the subset file (the uids trained on)
    BUNDLE/{scale}_scale/samples/SUBSET.npy.sha256
    BUNDLE/{scale}_scale/samples/uid_sample.txt N uids of the subset (evenly spaced), one per line
    BUNDLE/{scale}_scale/training_info.json     scale, its protocol values, samples seen, checkpoint sha256
    BUNDLE/{scale}_scale/submission.json        the leaderboard record (the reference's fields)
    BUNDLE/{scale}_scale/writeup.md             --writeup FILE (a link is a field of submission.json)
    BUNDLE/{scale}_scale/checkpoint.pt          --include-checkpoint
    BUNDLE/contact.json                         the e-mail: never uploaded (the reference keeps it private)
    BUNDLE/manifest.json                        written last: package version, every file's sha256

Nothing leaves the machine unless ``upload`` names a repo (``upload.py``).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import InputError
from ..formats.atomic import atomic_path, file_sha256, write_json, write_text
from ..formats.guard import check_apart, file_records
from ..formats.manifest import Manifest
from ..formats.stage import StageOutput
from ..formats.uids import pairs_to_uids
from ..train.protocol import reference_scale_config
from .validate import Checked, validate

STAGE = "submit"
CONTACT = "contact.json"


def uid_sample(arr: np.ndarray, n: int) -> list[str]:
    """``n`` uids of the subset, evenly spaced over its (sorted) order: a pure function of the subset."""
    if n <= 0 or len(arr) == 0:
        return []
    idx = np.unique(np.linspace(0, len(arr) - 1, num=min(n, len(arr))).round().astype(np.int64))
    return pairs_to_uids(np.asarray(arr[idx]))


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)


def submit(run: str | os.PathLike, subset: str | os.PathLike, out: str | os.PathLike, *, method_name: str,
           author: str, email: str | None = None, track: str = "filtering", writeup: str | None = None,
           samples: int = 1000, include_checkpoint: bool = False, results: str | os.PathLike | None = None,
           allow_embedded: bool = False, overwrite: bool = False, upload: str | None = None) -> Manifest:
    """Validate (``validate.py``), write the bundle ``out``, and push it to ``upload`` when given."""
    if not method_name or not author:
        raise InputError("a submission needs --method-name and --author (both shown on the leaderboard)")
    if samples < 0:
        raise InputError(f"--samples must be 0 or more, not {samples}")
    c = validate(run, subset, track=track, results=results, allow_embedded=allow_embedded)
    out = Path(out)
    check_apart(out, {"the run": c.run, "the subset": c.subset_file, "the results": c.results_file})
    writeup_file = Path(writeup) if writeup and Path(writeup).is_file() else None
    if writeup and writeup_file is None and "://" not in writeup:
        raise InputError(f"{writeup}: write-up file does not exist (give a file or a link)")
    params = {"run": str(c.run.resolve()), "subset": str(c.subset_file.resolve()), "track": track,
              "method_name": method_name, "author": author, "email": email, "writeup": writeup, "samples": samples,
              "include_checkpoint": include_checkpoint, "results": str(c.results_file.resolve())}
    inputs = {"checkpoint": c.checkpoint_digest, "results": file_sha256(c.results_file),
              "subset": file_sha256(c.subset_file)}
    life = StageOutput(STAGE, out, params, inputs=inputs, overwrite=overwrite, exclusive=True)
    done = life.begin()
    if done is None:
        done = _write(life, c, out, params, writeup_file)
    if upload:
        from .upload import upload_bundle

        done.extra["uploaded"] = upload_bundle(out, upload, done)
    return done


def _write(life: StageOutput, c: Checked, out: Path, params: dict[str, Any], writeup_file: Path | None) -> Manifest:
    prefix = f"{c.scale.name}_scale"
    d = out / prefix
    (d / "samples").mkdir(parents=True, exist_ok=True)
    _copy(c.results_file, d / "results.jsonl")
    sub = d / "samples" / c.subset_file.name
    _copy(c.subset_file, sub)
    sha = file_sha256(sub)
    write_text(d / "samples" / f"{sub.name}.sha256", f"{sha}  {sub.name}\n")
    sample = uid_sample(c.subset, params["samples"])
    if sample:
        write_text(d / "samples" / "uid_sample.txt", "\n".join(sample) + "\n")
    ck = c.target.checkpoint_file()
    training = {"scale": c.scale.name, "scale_config": reference_scale_config(c.scale),
                "protocol": c.training["protocol"], "samples_seen": c.training["samples_seen"],
                "trained_by": c.training["source"], "checkpoint": str(ck) if ck else str(c.target.checkpoint),
                "checkpoint_sha256": c.checkpoint_digest, "subset_rows": int(len(c.subset)), "subset_sha256": sha,
                "evaluation_precision": c.precision}
    write_json(d / "training_info.json", training)
    if params["include_checkpoint"]:
        if ck is None:
            raise InputError(f"{c.run}: no checkpoint file to include ({c.target.checkpoint})")
        _copy(ck, d / "checkpoint.pt")
    if writeup_file is not None:
        _copy(writeup_file, d / "writeup.md")
    cfg = reference_scale_config(c.scale)
    record: dict[str, Any] = {
        "scale": c.scale.name, "model": cfg["model"], "dataset_size": int(len(c.subset)),
        "checkpoint": training["checkpoint"], "batch_size": cfg["batch_size"], "learning_rate": cfg["learning_rate"],
        "method_name": params["method_name"], "author": params["author"], "track": c.track,
        "writeup": params["writeup"] if writeup_file is None else "writeup.md",
        "timestamp": time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime()),
    }
    for r in c.rows:
        if r["metrics"].get("main_metric") is not None:
            record[r["dataset"]] = r["metrics"]["main_metric"]
    record["average"] = c.aggregate.get("average")
    write_json(d / "submission.json", record)
    if params["email"]:
        write_json(out / CONTACT, {"email": params["email"], "note": "not uploaded; the reference keeps it private"})
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    m = Manifest(stage=STAGE, params=life.params,
                 counts={"tasks": len(c.rows), "subset_rows": int(len(c.subset)), "uid_sample": len(sample)},
                 extra={"package": "datacomp", "package_version": __version__, "prefix": prefix,
                        "files": file_records(out, files), "sha256": {f: file_sha256(out / f) for f in files},
                        "upload": [f for f in files if f.startswith(prefix + "/")],
                        "average": c.aggregate.get("average"), "suite": c.aggregate.get("suite")})
    return life.finish(m)


def read_bundle_manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())
