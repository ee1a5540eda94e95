"""An indexed eval set: its samples (where each image lies, its label, captions or metadata),
class names and templates, and, for images held inside parquet / arrow files, a loader.

What every source (``sources.py``: the clip_benchmark wds layout, the nlphuji Hugging Face
datasets) produces and every task type (``tasktypes.py``) evaluates; no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .registry import Task


@dataclass
class EvalSample:
    key: str
    shard: int  # index into EvalSet.shards; -1: image bytes held in EvalSet.blobs[offset]
    offset: int  # byte offset of the image data in the file (0 and size -1: the whole file)
    size: int  # image byte count
    label: int | None = None
    captions: list[str] | None = None
    meta: Any = None  # per-sample metadata (np.ndarray of ints, registry field order)


@dataclass
class WinoExample:
    cue: str
    images: list[int]  # indices into EvalSet.samples, in candidate order
    gold: Any  # np.ndarray[bool], candidate is a gold association


@dataclass
class EvalSet:
    task: Task
    root: Path
    shards: list[Path]
    samples: list[EvalSample]
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    objectives: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # fairface
    examples: list[WinoExample] = field(default_factory=list)  # winogavil
    blob_loader: Callable[[], list[bytes]] | None = None  # images stored inside parquet / arrow
    layout: str = "wds"

    @property
    def size(self) -> int:
        """Test-set size as the registry counts it (examples for WinoGAViL, images otherwise)."""
        return len(self.examples) if self.examples else len(self.samples)

    def metadata_array(self):
        """(n, fields) int array of per-sample metadata, or None."""
        import numpy as np

        if not self.samples or self.samples[0].meta is None:
            return None
        return np.stack([s.meta for s in self.samples]).astype(np.int64)

    @property
    def n_captions(self) -> int:
        return sum(len(s.captions or ()) for s in self.samples)
