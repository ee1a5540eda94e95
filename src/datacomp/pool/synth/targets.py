"""Target images of the image-based filter: the world's analogue of ImageNet-1k's training set.

The reference ``image_based`` baseline keeps the pool clusters nearest to ImageNet-1k *train*
images embedded by OpenAI L/14. The embedded world's analogue is fresh renders of the main task's
(``synth/concepts``) concepts: every task concept (``World.task_ids``; web-only concepts are not
ImageNet's) ``per_concept`` times (row ``i`` shows ``task_ids[i % len(task_ids)]``), normal style and web-image geometry as the curated pairs, from their own
seed stream (``targets``) and never an eval test image (a render whose sha256 is in
``evalsets/eval_sha256.json`` is redrawn from ``targets-retry{k}``, as the curated set does).
Every render is a pure function of (seed, stream, index). The ``embed`` stage embeds them with
the L/14 stand-in and writes ``POOL/targets/l14_img.npy`` (see ``datacomp.embed.stage``).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, FormatError, InputError
from ...formats.manifest import read_manifest
from .generate import MAX_RERENDERS, QUALITY, _eval_shas, normal_geometry
from .render import encode_jpeg, render_scene
from .scene import Scene, make_rng, sample_scene
from .world import World, load_world

STREAM = "targets"
DEFAULT_PER_CONCEPT = 50
STYLE = "normal"
MAX_ATTEMPTS = MAX_RERENDERS  # one bound for every re-render of an eval-image collision
EVAL_SHAS = Path("evalsets") / "eval_sha256.json"


@dataclass(frozen=True)
class TargetSpec:
    """What the targets of one embedded-world pool are: (seed, concepts, per_concept, stream)."""
    seed: int
    n_concepts: int
    per_concept: int
    noise: dict[str, Any]
    eval_shas: Path
    stream: str = STREAM

    @property
    def n(self) -> int:
        return len(load_world(self.n_concepts).task_ids) * self.per_concept

    def to_json(self) -> dict[str, Any]:
        """The identity of the renders (recorded with the embeddings; a change means re-render)."""
        return {"seed": self.seed, "stream": self.stream, "concepts": self.n_concepts,
                "per_concept": self.per_concept, "style": STYLE,
                "noise": hashlib.sha256(json.dumps(self.noise, sort_keys=True).encode()).hexdigest()[:16]}


def world_spec(pool: str | Path, per_concept: int | None = None) -> TargetSpec | None:
    """The target spec of ``pool`` when it is an embedded world (its manifest is a ``synth``
    stage's), else None. ``per_concept``: the scale's ``world.targets_per_concept`` (default 50)."""
    pool = Path(pool)
    m = read_manifest(pool)
    if m is None or m.stage != "synth":
        return None
    p = m.params
    try:
        seed, n_concepts, noise = int(p["seed"]), int(p["world"]["concepts"]), p["noise"]
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{pool / 'manifest.json'}: synth manifest lacks {e} (seed, world.concepts, noise)") from None
    k = DEFAULT_PER_CONCEPT if per_concept is None else per_concept
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"world.targets_per_concept must be a positive integer, got {per_concept!r}")
    return TargetSpec(seed, n_concepts, k, noise, pool / EVAL_SHAS)


def target_render(seed: int, world: World, noise: dict[str, Any], i: int, stream: str = STREAM,
                  attempt: int = 0) -> tuple[Scene, bytes]:
    """Target ``i`` (task concept ``world.task_ids[i % len(world.task_ids)]``): its scene and JPEG bytes;
    a pure function of the arguments."""
    name = stream if attempt == 0 else f"{stream}-retry{attempt}"
    rs = make_rng(seed, f"{name}-scene", i)
    scene = sample_scene(rs, world, noise, concept=world.task_ids[i % len(world.task_ids)])
    (w, h), _ = normal_geometry(rs)
    return scene, encode_jpeg(render_scene(scene, world, w, h), QUALITY)


@dataclass
class Targets:
    images: list[Any]   # PIL RGB images, decoded from the JPEG bytes (as the pool's are)
    concepts: list[int]
    sha256: list[str]
    rerendered: int     # renders redrawn because they equalled an eval test image


def render_targets(spec: TargetSpec) -> Targets:
    """Every target of ``spec``, none of them an eval test image."""
    from PIL import Image

    if not spec.eval_shas.is_file():
        raise InputError(f"{spec.eval_shas}: eval image digests do not exist (the targets must exclude eval images)")
    try:
        banned = _eval_shas(str(spec.eval_shas))
    except (ValueError, AttributeError, TypeError) as e:
        raise FormatError(f"{spec.eval_shas}: not a mapping task -> sha256 list: {e}") from None
    world = load_world(spec.n_concepts)
    out = Targets([], [], [], 0)
    for i in range(spec.n):
        for attempt in range(MAX_ATTEMPTS):
            scene, data = target_render(spec.seed, world, spec.noise, i, spec.stream, attempt)
            sha = hashlib.sha256(data).hexdigest()
            if sha not in banned:
                break
        else:
            raise FormatError(f"{spec.eval_shas}: target {i} equals an eval image in {MAX_ATTEMPTS} renders")
        out.rerendered += attempt
        out.images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        out.concepts.append(scene.concept)
        out.sha256.append(sha)
    return out
