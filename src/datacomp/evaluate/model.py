"""How evaluation gets its model: the one loader of a training run, ``datacomp.train.models.load_model``.

Evaluation loads a run the way training wrote it (``run/model/open_clip_config.json`` and the
final checkpoint); :data:`ModelLoader` is the type of a replacement (tests, other frameworks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..train.models import load_model

ModelLoader = Callable[[Path], tuple[Any, Callable, Callable]]

__all__ = ["ModelLoader", "default_loader", "load_model"]


def default_loader() -> ModelLoader:
    """``datacomp.train.models.load_model``: a training run's model, preprocess and tokenizer."""
    return load_model
