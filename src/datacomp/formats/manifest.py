"""Stage manifests and per-unit completion markers.

A stage writes one directory. Each finished unit of work (a shard) leaves a marker
``.done/<unit>.json`` holding what the unit produced; ``manifest.json`` (parameters, input
digests, package version, counts, timings) is written last and atomically, so its presence means
the whole stage is complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import FormatError
from .atomic import sweep_temps, write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MARKER_DIR = ".done"


@dataclass
class Manifest:
    stage: str
    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # name -> digest of the input's manifest
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    created: float = field(default_factory=time.time)
    reused: bool = field(default=False, compare=False)  # set by StageOutput.begin(); not written

    # read like the JSON file it is written as: m["counts"], m.get("recipe"), "losses" in m
    def __getitem__(self, key: str) -> Any:
        d = self.to_json()
        if key == "reused" and self.reused:
            return True
        return d[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self.to_json() or (key == "reused" and self.reused)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "version": self.version,
            "params": self.params,
            "inputs": self.inputs,
            "counts": self.counts,
            "timings": self.timings,
            "created": self.created,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        known = {"stage", "version", "params", "inputs", "counts", "timings", "created"}
        return cls(
            stage=d["stage"],
            params=d.get("params", {}),
            inputs=d.get("inputs", {}),
            counts=d.get("counts", {}),
            timings=d.get("timings", {}),
            extra={k: v for k, v in d.items() if k not in known},
            version=d.get("version", ""),
            created=d.get("created", 0.0),
        )


def manifest_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest last, after removing what killed earlier runs left anywhere below
    ``out_dir`` (temporary files of :mod:`.atomic`): a finished output holds none."""
    for d, _, _ in os.walk(out_dir):
        sweep_temps(d)
    path = manifest_path(out_dir)
    write_json(path, manifest.to_json())
    return path


def read_manifest(out_dir: str | os.PathLike) -> Manifest | None:
    return read_manifest_file(manifest_path(out_dir))


def read_manifest_file(path: str | os.PathLike) -> Manifest | None:
    """The manifest in ``path`` (None when there is none); a corrupt one is a one-line FormatError."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise FormatError(f"{path}: corrupt stage manifest: a JSON {type(d).__name__}, not an object")
        return Manifest.from_json(d)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
        raise FormatError(f"{path}: corrupt stage manifest: {e}") from None


def manifest_digest(out_dir: str | os.PathLike) -> str:
    """sha256 of a stage's manifest file: the identity of that stage's output."""
    path = manifest_path(out_dir)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def canonical(obj: Any) -> Any:
    """``obj`` as JSON gives it back (sorted keys, tuples as lists, paths as strings): parameters compare so."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ---- completion markers -------------------------------------------------------------------------

def marker_path(out_dir: str | os.PathLike, unit: str) -> Path:
    return Path(out_dir) / MARKER_DIR / f"{unit}.json"


def mark_done(out_dir: str | os.PathLike, unit: str, info: dict[str, Any] | None = None) -> None:
    write_json(marker_path(out_dir, unit), info or {}, indent=None)


def read_marker(out_dir: str | os.PathLike, unit: str) -> dict[str, Any] | None:
    path = marker_path(out_dir, unit)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn marker cannot exist (atomic write); treat anything odd as not done


def clear_markers(out_dir: str | os.PathLike) -> None:
    d = Path(out_dir) / MARKER_DIR
    if d.is_dir():
        for p in d.iterdir():
            p.unlink()
