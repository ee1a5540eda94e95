"""Load the model of a training run: ``run/model/open_clip_config.json`` + ``run/checkpoints/epoch_latest.pt``.

open_clip 3.3.0 notes: ``create_model_and_transforms('local-dir:DIR')`` needs
``DIR/open_clip_config.json`` with a ``model_cfg`` key (``preprocess_cfg`` optional) and ignores
``pretrained=`` for a ``local-dir:`` name (it only picks up ``*.safetensors|*.bin|*.pth`` inside
DIR). So the model is built from the config without weights and the training checkpoint
(``{"state_dict": ...}``, keys possibly prefixed ``module.``) is loaded with
``open_clip.load_checkpoint`` afterwards.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import FormatError, InputError
from ..train.models import CONFIG_NAME, read_open_clip_config

log = logging.getLogger(__name__)

ModelLoader = Callable[[Path], tuple[Any, Callable, Callable]]


def run_checkpoint(run: Path) -> Path:
    ckpt = Path(run) / "checkpoints" / "epoch_latest.pt"
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: training checkpoint is missing (is {run} a finished training run?)")
    return ckpt


def load_run_model(run: str | os.PathLike, device: str = "cpu") -> tuple[Any, Callable, Callable]:
    """-> (model in eval mode, validation preprocess, tokenizer)."""
    import open_clip

    run = Path(run)
    model_dir = run / "model"
    cfg_path = model_dir / CONFIG_NAME
    read_open_clip_config(cfg_path)  # checked here: open_clip's own errors name no file
    ckpt = run_checkpoint(run)
    name = "local-dir:" + str(model_dir)
    with _quiet_random_init():  # the weights come from the checkpoint just below
        model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False, device=device)
    try:
        open_clip.load_checkpoint(model, str(ckpt), strict=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - shape / key mismatch: name the files
        raise FormatError(f"{ckpt}: does not match {cfg_path}: {str(e).splitlines()[0][:300]}") from None
    log.info("loaded %s (config %s)", ckpt, cfg_path)
    model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


class _DropRandomInitWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("no CLIP weights found" in msg or "initialized randomly" in msg)


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    f = _DropRandomInitWarnings()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def default_loader() -> ModelLoader:
    """The training stage's loader, ``datacomp.train.load_model``: evaluation loads a run the way
    training wrote it. ``load_run_model`` stays as an independent loader (plain open_clip calls),
    which the parity tests use to check it."""
    from ..train import load_model

    return load_model
