"""The world's evaluation suite, written in clip_benchmark's webdataset layout.

Task keys are fixed (other stages rely on them); a task's directory is its key with '/' -> '-':

- ``synth/concepts``          classify the concept (ImageNet analogue), balanced, mixed attributes
- ``synth/concepts_style``    distribution shift: desaturated palette, striped texture fill, soft edges
- ``synth/concepts_clutter``  distribution shift: grainy background plus distractor strokes and specks
- ``synth/count``             how many objects: class texts "one object" / "two objects" / "three objects"
- ``synth/position``          where: class texts "on the left" / "on the right" / "at the top" / "at the bottom"
- ``synth/size``              small or large objects: class texts "small" / "large" ("a small object.")
- ``synth/concepts_groups``   concept, balanced over backgrounds; each sample's ``.json`` holds its
                              background, so the main metric is the worst background's accuracy
                              (the GeoDE / WILDS analogue)
- ``synth/concepts_longtail`` concept with long-tailed class frequencies; main metric mean
                              per-class recall (the Caltech-101 / Flowers analogue)
- ``synth/retrieval``         image-text retrieval: each image has 2-5 English captions (``{key}.txt``)

Eight more concept tasks give the suite DataComp's composition (its 38 are 32 recognition tasks
of objects and scenes under many distributions, 3 structured ones, 3 retrieval ones): without
them count, position and size are a third of the average, four times their weight there.

- ``synth/concepts_v2``        a second draw of the main task, objects in their typical colour less
                              often (60 %, the pool's 80 %): ImageNet-V2's re-collection
- ``synth/concepts_edge``      objects off-centre: left, right, top, bottom (ObjectNet's placements)
- ``synth/concepts_pair``      two objects (VOC's and Dollar Street's scenes of several things)
- ``synth/concepts_lowres``    drawn at 16 px and enlarged (CIFAR-10/100, STL-10, GTSRB)
- ``synth/concepts_jpeg``      heavy JPEG compression, quality 12 (re-encoded web images)
- ``synth/concepts_object``    one large centred object on a plain background (Pets, Cars, Food-101)
- ``synth/concepts_small``     one small object (VOC's and iWildCam's small objects)
- ``synth/concepts_crowd``     three objects (VOC 2007's multi-object scenes)

The class texts of count and position are the exact phrases the pool's English captions use
(captions.count_object_phrase and language.yaml ``positions``, also in the generic clause
"two objects on the left"). Eval images come from their own seed stream ("eval:<task>"), 48x48.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...evaluate.registry import Task, get_task
from ...formats.atomic import write_json, write_text
from ...formats.shards import ShardWriter
from .captions import count_object_phrase, english_variants, position_phrase
from .render import encode_jpeg, render_scene
from .scene import Scene, make_rng, sample_scene
from .world import World, load_world

EVAL_SIZE = 48
EVAL_QUALITY = 92
CONCEPT_TEMPLATES = ["a photo of a {c}.", "a {c}.", "a picture of a {c}.", "photo of the {c}.",
                     "a close-up of a {c}.", "stock photo of a {c}."]
COUNT_TEMPLATES = ["a photo of {c}.", "a picture of {c}.", "{c}.", "an image showing {c}."]
POSITION_TEMPLATES = ["a photo of an object {c}.", "an object {c}.", "a picture of something {c}.",
                      "something {c}."]
SIZE_TEMPLATES = ["a photo of a {c} object.", "a {c} object.", "a picture of something {c}.",
                  "a {c} thing."]
COUNT_CLASSES = [1, 2, 3]
POSITION_CLASSES = ["left", "right", "top", "bottom"]
SIZE_CLASSES = ["small", "large"]
BACKGROUND_GROUPS = ["plain", "stripes", "noise", "gradient"]  # synth/concepts_groups metadata
GOLDEN = 0.6180339887498949


def longtail_label(idx: int, n_classes: int) -> int:
    """Class of test item ``idx`` under frequencies ∝ 1 / (1 + c/2): a pure function of idx
    (low-discrepancy inverse CDF), so every class appears and the head classes dominate."""
    weights = [1.0 / (1.0 + c / 2.0) for c in range(n_classes)]
    total = sum(weights)
    u = (idx * GOLDEN) % 1.0
    acc = 0.0
    for c, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return c
    return n_classes - 1


@dataclass
class EvalItem:
    key: str
    scene: Scene
    jpeg: bytes
    label: int | None
    captions: list[str] | None
    metadata: dict[str, int] | None = None


# A draw: (rng, idx, world, noise) -> (scene, label, captions, metadata) of test item idx
Draw = Callable[[Any, int, World, dict[str, Any]], tuple[Scene, "int | None", "list[str] | None", "dict[str, int] | None"]]


def _concepts(rng, idx: int, world: World, noise: dict[str, Any]):
    label = idx % len(world.task_ids)
    return sample_scene(rng, world, noise, concept=world.task_ids[label]), label, None, None


def _longtail(rng, idx: int, world: World, noise: dict[str, Any]):
    label = longtail_label(idx, len(world.task_ids))
    return sample_scene(rng, world, noise, concept=world.task_ids[label]), label, None, None


def _groups(rng, idx: int, world: World, noise: dict[str, Any]):
    label = idx % len(world.task_ids)
    group = (idx // len(world.task_ids)) % len(BACKGROUND_GROUPS)
    scene = sample_scene(rng, world, noise, concept=world.task_ids[label], background=BACKGROUND_GROUPS[group])
    return scene, label, None, {"background": group}


def _pinned(**pins: Any) -> Draw:
    """A concept task whose scenes have fixed attributes (class ``idx % classes``)."""
    def draw(rng, idx: int, world: World, noise: dict[str, Any]):
        label = idx % len(world.task_ids)
        return sample_scene(rng, world, noise, concept=world.task_ids[label], **pins), label, None, None
    return draw


V2_CONCEPT_COLOUR = 0.6  # synth/concepts_v2: share of objects in their concept's typical colour


def _v2(rng, idx: int, world: World, noise: dict[str, Any]):
    return _concepts(rng, idx, world, {**noise, "concept_colour": V2_CONCEPT_COLOUR})


def _edge(rng, idx: int, world: World, noise: dict[str, Any]):
    label = idx % len(world.task_ids)
    position = POSITION_CLASSES[(idx // len(world.task_ids)) % len(POSITION_CLASSES)]
    return sample_scene(rng, world, noise, concept=world.task_ids[label], position=position), label, None, None


def _attribute(name: str, classes: list) -> Draw:
    """Classify one scene attribute (count, position, size): class ``idx % len(classes)``."""
    def draw(rng, idx: int, world: World, noise: dict[str, Any]):
        label = idx % len(classes)
        return sample_scene(rng, world, noise, **{name: classes[label]}), label, None, None
    return draw


def _retrieval(rng, idx: int, world: World, noise: dict[str, Any]):
    scene = sample_scene(rng, world, noise)
    return scene, None, english_variants(scene, world, rng, 2 + rng.randrange(4)), None


def _concept_names(world: World) -> list[str]:
    return world.task_names


@dataclass(frozen=True)
class WorldTask:
    """One task of the world's suite: the registry's task (``evaluate.registry``: key, type, main
    metric, directory name) and how the world draws it."""

    key: str
    style: str  # render style
    size_field: str  # world config field giving the number of test images
    draw: Draw
    description: str  # for EVALSETS/README.md
    classnames: Callable[[World], list[str]] | None = None  # class texts (classification)
    templates: tuple[str, ...] | None = None
    quality: int = 0  # JPEG quality of the test images; 0 = EVAL_QUALITY

    @property
    def task(self) -> Task:
        return get_task(self.key)

    @property
    def kind(self) -> str:
        """classification | retrieval (tasks.json's ``type``)."""
        return "retrieval" if self.task.type == "retrieval" else "classification"

    @property
    def dirname(self) -> str:
        return self.task.dirname


_C = tuple(CONCEPT_TEMPLATES)
TASKS: tuple[WorldTask, ...] = (
    WorldTask("synth/concepts", "normal", "eval_size", _concepts, "concept of the object(s) (ImageNet analogue)",
              _concept_names, _C),
    WorldTask("synth/concepts_style", "style", "eval_size", _concepts,
              "concept, other rendering style (desaturated, striped fill, soft edges)", _concept_names, _C),
    WorldTask("synth/concepts_clutter", "clutter", "eval_size", _concepts,
              "concept, grainy background with distractor strokes", _concept_names, _C),
    WorldTask("synth/count", "normal", "eval_size", _attribute("count", COUNT_CLASSES), "number of objects",
              lambda world: [count_object_phrase(c) for c in COUNT_CLASSES], tuple(COUNT_TEMPLATES)),
    WorldTask("synth/position", "normal", "eval_size", _attribute("position", POSITION_CLASSES),
              "where the object(s) are", lambda world: [position_phrase(world, p) for p in POSITION_CLASSES],
              tuple(POSITION_TEMPLATES)),
    WorldTask("synth/size", "normal", "eval_size", _attribute("size", SIZE_CLASSES), "small or large objects",
              lambda world: [world.language["sizes"][s] for s in SIZE_CLASSES], tuple(SIZE_TEMPLATES)),
    WorldTask("synth/concepts_groups", "normal", "eval_size", _groups,
              "concept; worst accuracy over the 4 backgrounds (`.json` metadata)", _concept_names, _C),
    WorldTask("synth/concepts_longtail", "normal", "eval_size", _longtail,
              "concept, long-tailed class frequencies; mean per-class recall", _concept_names, _C),
    WorldTask("synth/retrieval", "normal", "retrieval_size", _retrieval, "image-text retrieval"),
    WorldTask("synth/concepts_v2", "normal", "eval_size", _v2,
              "concept, a second draw with objects in their typical colour 60 % of the time", _concept_names, _C),
    WorldTask("synth/concepts_edge", "normal", "eval_size", _edge,
              "concept, objects off-centre (left, right, top, bottom)", _concept_names, _C),
    WorldTask("synth/concepts_pair", "normal", "eval_size", _pinned(count=2), "concept, two objects",
              _concept_names, _C),
    WorldTask("synth/concepts_lowres", "lowres", "eval_size", _concepts, "concept, drawn at 16 px and enlarged",
              _concept_names, _C),
    WorldTask("synth/concepts_jpeg", "normal", "eval_size", _concepts, "concept, JPEG quality 12",
              _concept_names, _C, quality=12),
    WorldTask("synth/concepts_object", "normal", "eval_size",
              _pinned(count=1, size="large", position="center", background="plain"),
              "concept, one large centred object on a plain background", _concept_names, _C),
    WorldTask("synth/concepts_small", "normal", "eval_size", _pinned(count=1, size="small"),
              "concept, one small object", _concept_names, _C),
    WorldTask("synth/concepts_crowd", "normal", "eval_size", _pinned(count=3), "concept, three objects",
              _concept_names, _C),
)
TASK_BY_KEY = {t.key: t for t in TASKS}


def task_sizes(world_cfg: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((t.key, int(world_cfg[t.size_field])) for t in TASKS)


def classnames(task: WorldTask, world: World) -> list[str] | None:
    return task.classnames(world) if task.classnames is not None else None


def templates(task: WorldTask) -> list[str] | None:
    return list(task.templates) if task.templates is not None else None


def eval_item(seed: int, task_key: str, idx: int, world: World, noise: dict[str, Any]) -> EvalItem:
    """The ``idx``-th test item of a task: a pure function of (seed, task, idx)."""
    task = TASK_BY_KEY[task_key]
    rng = make_rng(seed, f"eval:{task_key}", idx)
    scene, label, captions, metadata = task.draw(rng, idx, world, noise)
    img = render_scene(scene, world, EVAL_SIZE, EVAL_SIZE, task.style)
    return EvalItem(f"{idx:06d}", scene, encode_jpeg(img, task.quality or EVAL_QUALITY), label, captions, metadata)


def write_task(out: str, seed: int, n_concepts: int, task_key: str, n: int, noise: dict[str, Any]) -> dict[str, Any]:
    """Write one eval set directory (a unit of work); returns its sha256 list for the manifest."""
    world = load_world(n_concepts)
    task = TASK_BY_KEY[task_key]
    d = Path(out) / "evalsets" / task.dirname
    names, tmpls = classnames(task, world), templates(task)
    if names is not None:
        write_text(d / "classnames.txt", "\n".join(names) + "\n")
        write_text(d / "zeroshot_classification_templates.txt", "\n".join(tmpls) + "\n")
    shas = []
    with ShardWriter(d / "test" / "0.tar", write_parquet=False, write_stats=False) as w:
        for idx in range(n):
            item = eval_item(seed, task_key, idx, world, noise)
            files = {"jpg": item.jpeg}
            if item.label is not None:
                files["cls"] = str(item.label).encode()
            if item.captions is not None:
                files["txt"] = ("\n".join(item.captions) + "\n").encode()
            if item.metadata is not None:
                files["json"] = json.dumps(item.metadata, sort_keys=True).encode()
            w.write(item.key, files)
            shas.append(hashlib.sha256(item.jpeg).hexdigest())
    write_text(d / "test" / "nshards.txt", "1\n")
    info = {"key": task.key, "type": task.kind, "split": "test", "n": n, "style": task.style,
            "num_classes": len(names) if names is not None else None,
            "main_metric": task.task.main_metric,
            "image_size": EVAL_SIZE}
    if task.kind == "retrieval":
        info["captions"] = "{key}.txt holds 2-5 English captions of {key}.jpg, one per line"
    write_json(d / "task.json", info)
    return {"n": n, "sha256": shas}


def evalsets_readme(world: World) -> str:
    """A short description of the suite, written to EVALSETS/README.md."""
    lines = ["# Eval sets of the embedded world", "",
             "clip_benchmark wds layout: `<dir>/classnames.txt`, `<dir>/zeroshot_classification_templates.txt`,",
             "`<dir>/test/nshards.txt`, `<dir>/test/0.tar` (`{key}.jpg` + `{key}.cls`; retrieval: `{key}.jpg` +",
             "`{key}.txt` with 2-5 English captions, one per line). `tasks.json`: sizes and class counts;",
             "`eval_sha256.json`: sha256 of every test image per task (the pool's eval copies are tagged in",
             "`truth/`; the curated set shares none of these images).", "",
             "| task | dir | what | class texts |", "|---|---|---|---|"]
    for t in TASKS:
        names = classnames(t, world)
        shown = "-" if names is None else (", ".join(f"'{n}'" for n in names) if len(names) <= 4 else f"{len(names)} concept names")
        lines.append(f"| `{t.key}` | `{t.dirname}` | {t.description} | {shown} |")
    lines += ["", "Count and position class texts are the phrases the pool's English captions use (\"two red",
              "kites on the left\", and the clause \"..., two objects on the left\" in ~30 % of them).", ""]
    return "\n".join(lines)
