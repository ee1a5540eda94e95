"""Bundled data files as typed objects: scales, model configs, recipes, tasks."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("datacomp").joinpath("resources", *parts)))


@lru_cache(maxsize=None)
def _load_yaml(name: str) -> Any:
    with open(resource_path(name)) as f:
        return yaml.safe_load(f)


@dataclass(frozen=True)
class Scale:
    name: str
    pool_size: int | None
    samples_seen: int
    model: str
    batch_size: int
    lr: float
    warmup: int
    beta2: float | None
    num_checkpoints: int
    precision: str
    embedded: bool = False
    world: dict[str, Any] = field(default_factory=dict)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size


def _scale_table() -> dict[str, Any]:
    """The scales of scales.yaml (top-level mappings with samples_seen; other keys are shared
    definitions such as ``score_scales``)."""
    return {k: v for k, v in _load_yaml("scales.yaml").items() if isinstance(v, dict) and "samples_seen" in v}


def scale_names() -> list[str]:
    return list(_scale_table())


def load_scale(name: str) -> Scale:
    table = _scale_table()
    if name not in table:
        raise ConfigError(f"unknown scale '{name}' (known: {', '.join(table)})")
    d = dict(table[name])
    try:
        return Scale(name=name, **d)
    except TypeError as e:
        raise ConfigError(f"scales.yaml: scale '{name}' has a bad field: {e}") from None


def model_config_path(model: str) -> Path | None:
    """Path of a bundled open_clip model config (resources/models/<model>.json), if there is one."""
    p = resource_path("models", f"{model}.json")
    return p if p.is_file() else None


def load_model_config(model: str) -> dict[str, Any]:
    p = model_config_path(model)
    if p is None:
        raise ConfigError(f"no bundled model config '{model}' (resources/models/{model}.json)")
    return json.loads(p.read_text())
