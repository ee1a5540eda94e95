"""What an evaluation evaluates: a training run of ours, a run of the reference's ``train.py``, or
any model given as an architecture and a checkpoint (the reference's ``--use_model``).

- ours: ``RUN/model/open_clip_config.json`` and the run's final checkpoint
  (``train.models.run_checkpoint``), loaded by ``train.models.load_model``;
- the reference's: ``RUN/info.pkl`` (read by ``formats.info_pkl``, nothing unpickled but plain
  data) names the architecture (``scale_config.model``) and the checkpoint; a checkpoint that is
  not where it says falls back to ``RUN/checkpoints/epoch_latest.pt``, as the reference does;
- ``--model ARCH --checkpoint CKPT``: an open_clip architecture name, a bundled config
  (``resources/models/``) or ``local-dir:DIR``; CKPT a local file (open_clip_train checkpoint or
  state dict) or an open_clip pretrained tag in the local cache.

A target's :meth:`EvalTarget.params` is the identity the results file's lifecycle records
(unchanged for our runs: the run manifest's digest), and :meth:`EvalTarget.checkpoint_digest`
the sha256 of the weights, recorded as the results' input so that results are never reused for,
or submitted with, other weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..formats.atomic import file_sha256
from ..formats.info_pkl import read_info_pkl
from ..formats.manifest import manifest_digest
from ..train.models import CONFIG_NAME, LATEST, LOCAL_DIR, load_model, load_open_clip, run_checkpoint

OURS, REFERENCE, MODEL = "run", "reference_run", "model"


@dataclass(frozen=True)
class EvalTarget:
    kind: str  # run | reference_run | model
    model: str  # what open_clip builds: local-dir:RUN/model, an architecture name, a bundled name
    checkpoint: Path | str | None  # a file, or an open_clip pretrained tag (str); None: the local dir's weights
    run: Path | None = None

    @property
    def describe(self) -> str:
        return str(self.run) if self.run is not None else f"{self.model} ({self.checkpoint})"

    def params(self) -> dict[str, Any]:
        if self.kind == OURS:
            return {"run_manifest": manifest_digest(self.run)}
        return {"model": self.model}

    def checkpoint_file(self) -> Path | None:
        if isinstance(self.checkpoint, Path):
            return self.checkpoint
        if self.checkpoint is None and self.model.startswith(LOCAL_DIR):
            d = Path(self.model[len(LOCAL_DIR):])
            return next((f for f in (d / "open_clip_model.safetensors", d / "open_clip_pytorch_model.bin")
                         if f.is_file()), None)
        return None

    def checkpoint_digest(self) -> str:
        """``sha256:<hex>`` of the weights file, ``tag:<name>`` for an open_clip pretrained tag."""
        f = self.checkpoint_file()
        if f is not None:
            return f"sha256:{file_sha256(f)}"
        return f"tag:{self.checkpoint}"

    def load(self, device: str, loader: Callable[[Path], Any] | None = None) -> tuple[Any, Callable, Callable]:
        """(model.eval(), preprocess, tokenizer); ``loader(run)`` replaces how one of our runs loads."""
        if self.kind == OURS:
            if loader is not None and loader is not load_model:
                return loader(self.run)
            return load_model(self.run, device=device)
        return load_open_clip(self.model, self.checkpoint, device)


def run_target(run: str | os.PathLike) -> EvalTarget:
    """The target of a training run directory: ours (``model/open_clip_config.json``) or the
    reference's (``info.pkl``)."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run}: training run directory does not exist")
    if (run / "model" / CONFIG_NAME).is_file() or (run / CONFIG_NAME).is_file():
        model_dir = run / "model" if (run / "model" / CONFIG_NAME).is_file() else run
        return EvalTarget(OURS, f"{LOCAL_DIR}{model_dir}", run_checkpoint(run), run)
    if (run / "info.pkl").is_file():
        info = read_info_pkl(run / "info.pkl")
        ck = Path(info["checkpoint"])
        if not ck.is_file():
            fallback = run / "checkpoints" / LATEST
            if not fallback.is_file():
                raise InputError(f"{run}: the checkpoint info.pkl names ({ck}) does not exist, nor checkpoints/{LATEST}")
            ck = fallback
        return EvalTarget(REFERENCE, info["scale_config"]["model"], ck, run)
    raise InputError(f"{run}: not a training run (no model/{CONFIG_NAME}, no info.pkl)")


def model_target(model: str, checkpoint: str | os.PathLike | None) -> EvalTarget:
    """``--model ARCH --checkpoint CKPT``: a file, a pretrained tag, or (local-dir) the dir's own weights."""
    if checkpoint is None:
        t = EvalTarget(MODEL, model, None)
        if t.checkpoint_file() is None:
            raise InputError(f"--model {model}: give --checkpoint (a checkpoint file or an open_clip pretrained tag)")
        return t
    ck = Path(checkpoint)
    if ck.is_file():
        return EvalTarget(MODEL, model, ck.resolve())
    if ck.suffix or os.sep in str(checkpoint):
        raise InputError(f"{checkpoint}: checkpoint file does not exist")
    return EvalTarget(MODEL, model, str(checkpoint))  # a pretrained tag: load_open_clip checks it
