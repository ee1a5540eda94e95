"""The arithmetic an evaluation runs in, and the reference's choice of it per task type.

The reference (``eval_utils/*.py`` with clip_benchmark 1.4.0) runs, on a GPU:

- zero-shot classification (and the FairFace / UTKFace heads): the classifier's text tower under
  fp16 autocast (``zero_shot_classifier``'s default ``amp=True``), one batch of templates per
  class; the images in fp32 (``run_classification(..., amp=False)``);
- retrieval (``zeroshot_retrieval.evaluate``, ``amp=True``) and WinoGAViL (its own
  ``torch.cuda.amp.autocast()``): images and texts under fp16 autocast.

clip_benchmark 1.4.0 enters ``torch.cuda.amp.autocast``, which does nothing to CPU tensors, so on
a CPU the reference computes everything in fp32. ``reference`` therefore resolves to
``amp_fp16`` on CUDA and ``fp32`` elsewhere. ``amp_bf16`` / ``amp_fp16`` on a CPU are overrides
(``torch.autocast("cpu", ...)``) that run the reference's mixed code path there — what the
parity test uses to check that path without a GPU. Every result line records the precision that
made it (``"precision"``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

CHOICES = ("reference", "fp32", "amp_fp16", "amp_bf16")
_DTYPES = {"fp32": None, "amp_fp16": torch.float16, "amp_bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """``name`` (fp32 | amp_fp16 | amp_bf16) on a device type (cuda | cpu | ...)."""

    name: str
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def amp(self) -> bool:
        """Whether the reference's mixed path runs (text towers, retrieval under autocast)."""
        return self.dtype is not None

    def autocast(self) -> Any:
        """The autocast context of the mixed parts (a null context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


FP32 = Precision("fp32")


def resolve_precision(choice: str | None, device: torch.device | str) -> Precision:
    """``reference`` (the default): amp_fp16 on CUDA, fp32 elsewhere; the others as named."""
    dev = torch.device(device)
    choice = choice or "reference"
    if choice not in CHOICES:
        raise ConfigError(f"unknown precision '{choice}' (one of {', '.join(CHOICES)})")
    if choice == "reference":
        choice = "amp_fp16" if dev.type == "cuda" else "fp32"
    p = Precision(choice, dev.type)
    if p.amp:
        try:
            with p.autocast():
                pass
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"precision {choice}: torch {torch.__version__} has no {dev.type} autocast for "
                              f"{p.dtype} ({str(e).splitlines()[0][:120]})") from None
    return p
