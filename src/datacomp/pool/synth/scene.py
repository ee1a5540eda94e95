"""Scenes (what an image shows) and the deterministic random streams they are drawn from.

Every sample of the world is a pure function of ``(seed, stream, index)``: its random generator is
seeded from a hash of the three, so shards render in any order, in parallel, and a re-run (or a
duplicate that re-renders its source) gets the very same bytes.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from .world import World

POSITIONS = ("center", "left", "right", "top", "bottom")
BACKGROUNDS = ("plain", "stripes", "noise", "gradient")


def stream_seed(seed: int, stream: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{stream}\x1f{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def make_rng(seed: int, stream: str, index: int) -> random.Random:
    return random.Random(stream_seed(seed, stream, index))


def pick(rng: random.Random, probs: dict[Any, float]) -> Any:
    """Draw a key of ``probs`` (a mapping key -> probability) in the mapping's order."""
    u = rng.random()
    acc = 0.0
    last = None
    for k, p in probs.items():
        acc += float(p)
        last = k
        if u < acc:
            return k
    return last


@dataclass(frozen=True)
class Scene:
    concept: int          # index into world.concepts
    colour: str           # object colour name
    count: int            # 1-3 objects
    size: str             # small | large
    position: str         # center | left | right | top | bottom
    background: str       # plain | stripes | noise | gradient
    bg_colour: str        # name of the (first) background colour
    bg_colour2: str       # second colour for stripes / gradient
    jitter: int           # seed of small layout jitter and background texture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def pick_backgrounds(rng: random.Random, world: World, colour: str) -> tuple[str, str]:
    """Two background colours that both stand out from the object colour."""
    obj = world.colours[colour]
    ok = [n for n, c in world.backgrounds.items() if _contrast(c, obj) > 130]
    first = rng.choice(ok)
    second = rng.choice([n for n in ok if n != first] or ok)
    return first, second


def concept_colour(rng: random.Random, world: World, concept: int, noise: dict[str, Any]) -> str:
    """The concept's typical colour with probability ``noise['concept_colour']``, else another colour
    of its palette (web-only concepts and task concepts are drawn in disjoint sets of colours)."""
    c = world.concepts[concept]
    if rng.random() < float(noise["concept_colour"]):
        return c.colour
    return rng.choice([p for p in c.palette if p != c.colour])


def sample_scene(rng: random.Random, world: World, noise: dict[str, Any], **fixed: Any) -> Scene:
    """Draw a scene; keyword arguments pin attributes (concept=, count=, position=, ...)."""
    concept = fixed.get("concept", rng.randrange(world.n))
    colour = fixed.get("colour") or concept_colour(rng, world, concept, noise)
    count = fixed.get("count", int(pick(rng, noise["count_probs"])))
    size = fixed.get("size", pick(rng, noise["size_probs"]))
    position = fixed.get("position", pick(rng, noise["position_probs"]))
    background = fixed.get("background", pick(rng, noise["background_probs"]))
    bg1, bg2 = pick_backgrounds(rng, world, colour)
    return Scene(int(concept), colour, int(count), str(size), str(position), str(background), bg1, bg2,
                 rng.getrandbits(32))


def perturb_concept(rng: random.Random, world: World, scene: Scene, keep_colour: bool) -> Scene:
    """Another scene about a different concept (for mismatched captions): in the image's colour
    (``keep_colour``, a hard mismatch only the shape gives away) or in the other concept's typical one."""
    other = rng.randrange(world.n - 1)
    other += other >= scene.concept
    colour = scene.colour if keep_colour else world.concepts[other].colour
    return replace(scene, concept=other, colour=colour, count=rng.choice((1, 1, 2, 3)),
                   position=rng.choice(POSITIONS))
