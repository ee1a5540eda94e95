"""The embedded world's data: concepts, colours, words and noise rates (resources/world/*.yaml).

Everything that defines what the world looks like and how its captions read is data; this module
only loads and validates it. ``World`` is immutable and cached per process (workers load it once).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from ...config import resource_path
from ...errors import ConfigError

WORLD_DIR = ("world",)
DATA_FILES = ("concepts.yaml", "language.yaml", "noise.yaml")


@dataclass(frozen=True)
class Concept:
    id: int
    name: str
    plural: str
    shape: str
    mark: str
    colour: str     # typical colour (drawn with probability noise['concept_colour'])
    tr: dict[str, tuple[str, str]]  # language -> (indefinite singular, plural)
    task: bool = True  # a class of the ImageNet-analogue tasks (else a web-only concept)
    palette: tuple[str, ...] = ()  # the colours it is drawn in: web_colours if web-only, else the others


@dataclass(frozen=True)
class World:
    concepts: tuple[Concept, ...]
    colours: dict[str, tuple[int, int, int]]
    backgrounds: dict[str, tuple[int, int, int]]
    language: dict[str, Any]

    @property
    def n(self) -> int:
        return len(self.concepts)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def task_ids(self) -> tuple[int, ...]:
        """Concept ids of the ImageNet-analogue tasks' classes (class k is concept task_ids[k])."""
        return tuple(c.id for c in self.concepts if c.task)

    @property
    def web_ids(self) -> tuple[int, ...]:
        """Concept ids of the web-only concepts (in the pool, not among the ImageNet-analogue classes)."""
        return tuple(c.id for c in self.concepts if not c.task)

    @property
    def task_names(self) -> list[str]:
        return [self.concepts[i].name for i in self.task_ids]


def _load(name: str) -> Any:
    path = resource_path(*WORLD_DIR, name)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read world data file: {e}") from None


@lru_cache(maxsize=None)
def all_concepts() -> tuple[Concept, ...]:
    d = _load("concepts.yaml")
    shapes, marks = set(d["shapes"]), set(d["marks"])
    colours = list(_load("language.yaml")["colours"])
    web = tuple(d.get("web_colours") or ())
    if len(web) < 2 or not set(web) <= set(colours) or len(set(web)) != len(web):
        raise ConfigError(f"concepts.yaml: 'web_colours' must list at least 2 distinct colours of language.yaml, got {list(web)}")
    palettes = {False: web, True: tuple(c for c in colours if c not in web)}
    out, seen, looks = [], set(), set()
    for i, c in enumerate(d["concepts"]):
        if c["shape"] not in shapes or c["mark"] not in marks:
            raise ConfigError(f"concepts.yaml: concept {c['name']!r} has an unknown shape or mark")
        task = bool(c.get("task", True))
        if c.get("colour") not in palettes[task]:
            kind = "task concept" if task else "web-only concept"
            raise ConfigError(f"concepts.yaml: {kind} {c['name']!r} has no colour or one outside its palette ({c.get('colour')!r})")
        if c["name"] in seen or (c["shape"], c["mark"]) in looks:
            raise ConfigError(f"concepts.yaml: concept {c['name']!r} repeats a name or a (shape, mark) pair")
        seen.add(c["name"])
        looks.add((c["shape"], c["mark"]))
        out.append(Concept(i, c["name"], c["plural"], c["shape"], c["mark"], c["colour"], {k: tuple(v) for k, v in c["tr"].items()},
                           task, palettes[task]))
    return tuple(out)


@lru_cache(maxsize=None)
def load_world(n_concepts: int) -> World:
    concepts = all_concepts()
    if not 2 <= n_concepts <= len(concepts):
        raise ConfigError(f"world.concepts must be between 2 and {len(concepts)}, got {n_concepts}")
    if sum(c.task for c in concepts[:n_concepts]) < 2:
        raise ConfigError(f"world.concepts {n_concepts}: fewer than 2 of them are task concepts")
    lang = _load("language.yaml")
    return World(
        concepts=concepts[:n_concepts],
        colours={k: tuple(v) for k, v in lang["colours"].items()},
        backgrounds={k: tuple(v) for k, v in lang["backgrounds"].items()},
        language=lang,
    )


@lru_cache(maxsize=None)
def load_noise() -> dict[str, Any]:
    """The default noise mix (resources/world/noise.yaml) as a plain dict."""
    cfg = _load("noise.yaml")
    validate_noise(cfg)
    return cfg


def validate_noise(cfg: dict[str, Any]) -> None:
    for group in ("caption_kinds", "image_kinds", "foreign_languages", "junk_kinds", "duplicate_kinds",
                  "count_probs", "size_probs", "position_probs", "background_probs"):
        rates = cfg.get(group)
        if not isinstance(rates, dict) or not rates:
            raise ConfigError(f"noise.yaml: '{group}' must be a mapping of rates")
        total = sum(float(v) for v in rates.values())
        if abs(total - 1.0) > 1e-6 or any(float(v) < 0 for v in rates.values()):
            raise ConfigError(f"noise.yaml: rates of '{group}' must be >= 0 and sum to 1 (sum {total:.4f})")
    for key in ("duplicates", "eval_copies", "duplicate_same_caption", "mismatch_keep_colour", "concept_colour",
                "curated_uninformative", "foreign_english_name"):
        v = float(cfg.get(key, -1))
        if not 0 <= v <= 0.5 and key in ("duplicates", "eval_copies"):
            raise ConfigError(f"noise.yaml: '{key}' must be in [0, 0.5], got {v}")
        if not 0 <= v <= 1:
            raise ConfigError(f"noise.yaml: '{key}' must be in [0, 1], got {v}")
    v = cfg.get("boilerplate_web_only", 0.0)  # optional: 0 = boilerplate on any concept's image
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ConfigError(f"noise.yaml: 'boilerplate_web_only' must be a number in [0, 1], got {v!r}")
    v = cfg.get("tiny_stored_power", 1.0)  # optional: 1 = linear in the original's size
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 2:
        raise ConfigError(f"noise.yaml: 'tiny_stored_power' must be a number in (0, 2], got {v!r}")


def data_digest() -> str:
    """sha256 (16 hex) over the world's data files: part of the stage parameters."""
    h = hashlib.sha256()
    for name in DATA_FILES:
        h.update(resource_path(*WORLD_DIR, name).read_bytes())
    return h.hexdigest()[:16]
