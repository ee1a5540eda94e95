"""Eval-set sources: where a task's files come from, which directories under ``EVALSETS`` may
hold them, and how they are opened into an :class:`~datacomp.evaluate.dataset.EvalSet`.

``tasks.yaml`` gives every task a ``source``:

- ``wds``: clip_benchmark's webdataset layout (``wds.py``), in our directory name
  (``<key with '/' -> '-'>``) or the reference's (``wds_<...>_test``);
- ``nlphuji``: a Hugging Face dataset (Flickr, MSCOCO, WinoGAViL; ``nlphuji.py``): parquet files
  under the task directory, or the ``datasets`` arrow cache the reference writes
  (``hf_cache/nlphuji___<name>``); a task directory in the wds layout is read as wds.

Adding a source is one entry in :data:`SOURCES` (and its reader module).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .dataset import EvalSet
from .nlphuji import open_nlphuji
from .registry import Task
from .wds import open_wds


@dataclass(frozen=True)
class EvalSource:
    name: str
    dirs: Callable[[Path, Task], list[Path]]  # candidate task directories under EVALSETS, first match wins
    open: Callable[[Path, Task], EvalSet]  # index and check the directory found


def _wds_dirs(evalsets: Path, task: Task) -> list[Path]:
    return [evalsets / task.dirname, evalsets / task.reference_dirname]


def _hf_dirs(evalsets: Path, task: Task) -> list[Path]:
    cache = [evalsets / "hf_cache" / task.hf_repo.replace("/", "___")] if task.hf_repo else []
    return _wds_dirs(evalsets, task) + cache


def _open_hf(root: Path, task: Task) -> EvalSet:
    if (root / "test" / "nshards.txt").is_file():  # converted to the wds layout
        return open_wds(root, task)
    return open_nlphuji(root, task)


SOURCES: dict[str, EvalSource] = {s.name: s for s in (
    EvalSource("wds", _wds_dirs, open_wds),
    EvalSource("nlphuji", _hf_dirs, _open_hf),
)}


def source_of(task: Task) -> EvalSource:
    s = SOURCES.get(task.source)
    if s is None:
        raise ConfigError(f"task {task.key}: unknown eval-set source '{task.source}' (known: {', '.join(SOURCES)})")
    return s
