"""Bundled data files as typed objects: scales, model configs, recipes, tasks."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import ConfigError


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("datacomp").joinpath("resources", *parts)))


@lru_cache(maxsize=None)
def _load_yaml(name: str) -> Any:
    with open(resource_path(name)) as f:
        return yaml.safe_load(f)


# What a key of a scales file must hold: its kind, whether it may be null, whether it must be
# > 0, whether it may be left out. An integer is not a boolean; a number is an integer or a finite float.
_INT, _NUMBER, _STR, _BOOL, _MAP, _LIST = "an integer", "a number", "a string", "true or false", "a mapping", "a list"


class Key(NamedTuple):
    kind: str
    nullable: bool = False
    positive: bool = False
    optional: bool = False


def _key(kind: str, nullable: bool = False, positive: bool = False, **default: Any) -> Any:
    """A Scale field and what its key must hold (optional when it has a default)."""
    return field(metadata={"key": Key(kind, nullable, positive, optional=bool(default))}, **default)


@dataclass(frozen=True)
class Scale:
    """One scale; each field but ``name`` is a key of scales.yaml, checked by :func:`load_scale`."""

    name: str
    pool_size: int | None = _key(_INT, nullable=True, positive=True)
    samples_seen: int = _key(_INT, positive=True)
    model: str = _key(_STR)
    batch_size: int = _key(_INT, positive=True)
    lr: float = _key(_NUMBER, positive=True)
    warmup: int = _key(_INT)
    beta2: float | None = _key(_NUMBER, nullable=True, positive=True)
    num_checkpoints: int = _key(_INT, positive=True)
    precision: str = _key(_STR)
    embedded: bool = _key(_BOOL, default=False)
    world: dict[str, Any] = _key(_MAP, default_factory=dict)
    teachers: dict[str, dict[str, Any]] = _key(_MAP, default_factory=dict)

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size


SCALE_KEYS: dict[str, Key] = {f.name: f.metadata["key"] for f in fields(Scale) if "key" in f.metadata}
# the embedded world's sizes (``world:``) and each teacher's training (``teachers: {b32: ...}``)
WORLD_KEYS = {k: Key(_INT, positive=True) for k in ("concepts", "shard_size", "curated_size", "eval_size", "retrieval_size")}
TEACHER_KEYS: dict[str, Key] = {
    **{k: SCALE_KEYS[k] for k in ("model", "samples_seen", "batch_size", "lr", "warmup")},
    "score_scale": Key(_LIST, nullable=True, optional=True),
}


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {_STR: str, _BOOL: bool, _MAP: dict, _LIST: list}[kind])


def _check_keys(raw: Any, schema: dict[str, Key], where: str) -> None:
    """ConfigError (``where``: file and entry) naming the first unknown, missing or mistyped key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(schema)})")
    for key, (kind, nullable, positive, optional) in schema.items():
        if key not in raw:
            if optional:
                continue
            raise ConfigError(f"{where}: missing key '{key}' ({kind})")
        value = raw[key]
        if value is None and nullable:
            continue
        if not _kind_ok(value, kind) or (positive and value <= 0):
            what = f"a positive {kind.split(' ', 1)[1]}" if positive else kind
            raise ConfigError(f"{where}: key '{key}' must be {what}{' or null' if nullable else ''}, got {value!r}")


def scales_path() -> Path:
    return resource_path("scales.yaml")


def _read_scales(path: Path) -> dict[str, Any]:
    """The scales of a scales file (top-level mappings with samples_seen; other keys are shared
    definitions such as ``score_scales``)."""
    if path == scales_path():
        raw = _load_yaml("scales.yaml")
    else:
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a scales file must be a mapping of scale names")
    return {k: v for k, v in raw.items() if isinstance(v, dict) and "samples_seen" in v}


def _scale_table() -> dict[str, Any]:
    return _read_scales(scales_path())


def scale_names() -> list[str]:
    return list(_scale_table())


def load_scale(name: str, path: str | os.PathLike | None = None) -> Scale:
    """The scale ``name`` of ``scales.yaml`` (or of the scales file ``path``), every key checked:
    an unknown, missing or mistyped key is a ConfigError naming the key and the file."""
    file = Path(path) if path is not None else scales_path()
    table = _read_scales(file) if path is not None else _scale_table()
    if name not in table:
        raise ConfigError(f"unknown scale '{name}' (known: {', '.join(table)})")
    d = dict(table[name])
    where = f"{file}: scale '{name}'"
    _check_keys(d, SCALE_KEYS, where)
    if "world" in d:
        _check_keys(d["world"], WORLD_KEYS, f"{where}: world")
    for key, teacher in (d.get("teachers") or {}).items():
        _check_keys(teacher, TEACHER_KEYS, f"{where}: teachers: {key}")
    if d.get("embedded") and "world" not in d:
        raise ConfigError(f"{where}: an embedded scale needs 'world' (its sizes: {', '.join(WORLD_KEYS)})")
    return Scale(name=name, **d)


def model_config_path(model: str) -> Path | None:
    """Path of a bundled open_clip model config (resources/models/<model>.json), if there is one."""
    p = resource_path("models", f"{model}.json")
    return p if p.is_file() else None


def load_model_config(model: str) -> dict[str, Any]:
    p = model_config_path(model)
    if p is None:
        raise ConfigError(f"no bundled model config '{model}' (resources/models/{model}.json)")
    return json.loads(p.read_text())
