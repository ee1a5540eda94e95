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

The class texts of count and position are the exact phrases the pool's English captions use
(captions.count_object_phrase and language.yaml ``positions``, also in the generic clause
"two objects on the left"). Eval images come from their own seed stream ("eval:<task>"), 48x48.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Task:
    key: str
    kind: str       # classification | retrieval
    style: str      # render style
    size_field: str  # world config field giving the number of test images

    @property
    def dirname(self) -> str:
        return self.key.replace("/", "-")


TASKS: tuple[Task, ...] = (
    Task("synth/concepts", "classification", "normal", "eval_size"),
    Task("synth/concepts_style", "classification", "style", "eval_size"),
    Task("synth/concepts_clutter", "classification", "clutter", "eval_size"),
    Task("synth/count", "classification", "normal", "eval_size"),
    Task("synth/position", "classification", "normal", "eval_size"),
    Task("synth/size", "classification", "normal", "eval_size"),
    Task("synth/concepts_groups", "classification", "normal", "eval_size"),
    Task("synth/concepts_longtail", "classification", "normal", "eval_size"),
    Task("synth/retrieval", "retrieval", "normal", "retrieval_size"),
)
TASK_BY_KEY = {t.key: t for t in TASKS}


def task_sizes(world_cfg: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((t.key, int(world_cfg[t.size_field])) for t in TASKS)


def classnames(task: Task, world: World) -> list[str] | None:
    if task.key.startswith("synth/concepts"):
        return world.task_names
    if task.key == "synth/count":
        return [count_object_phrase(c) for c in COUNT_CLASSES]
    if task.key == "synth/position":
        return [position_phrase(world, p) for p in POSITION_CLASSES]
    if task.key == "synth/size":
        return [world.language["sizes"][s] for s in SIZE_CLASSES]
    return None


def templates(task: Task) -> list[str] | None:
    if task.key.startswith("synth/concepts"):
        return CONCEPT_TEMPLATES
    return {"synth/count": COUNT_TEMPLATES, "synth/position": POSITION_TEMPLATES,
            "synth/size": SIZE_TEMPLATES}.get(task.key)


@dataclass
class EvalItem:
    key: str
    scene: Scene
    jpeg: bytes
    label: int | None
    captions: list[str] | None
    metadata: dict[str, int] | None = None


def eval_item(seed: int, task_key: str, idx: int, world: World, noise: dict[str, Any]) -> EvalItem:
    """The ``idx``-th test item of a task: a pure function of (seed, task, idx)."""
    task = TASK_BY_KEY[task_key]
    rng = make_rng(seed, f"eval:{task_key}", idx)
    label: int | None = None
    captions = None
    metadata = None
    if task.key == "synth/concepts_longtail":
        label = longtail_label(idx, len(world.task_ids))
        scene = sample_scene(rng, world, noise, concept=world.task_ids[label])
    elif task.key == "synth/concepts_groups":
        label = idx % len(world.task_ids)
        group = (idx // len(world.task_ids)) % len(BACKGROUND_GROUPS)
        scene = sample_scene(rng, world, noise, concept=world.task_ids[label], background=BACKGROUND_GROUPS[group])
        metadata = {"background": group}
    elif task.key.startswith("synth/concepts"):
        label = idx % len(world.task_ids)
        scene = sample_scene(rng, world, noise, concept=world.task_ids[label])
    elif task.key == "synth/count":
        label = idx % len(COUNT_CLASSES)
        scene = sample_scene(rng, world, noise, count=COUNT_CLASSES[label])
    elif task.key == "synth/position":
        label = idx % len(POSITION_CLASSES)
        scene = sample_scene(rng, world, noise, position=POSITION_CLASSES[label])
    elif task.key == "synth/size":
        label = idx % len(SIZE_CLASSES)
        scene = sample_scene(rng, world, noise, size=SIZE_CLASSES[label])
    else:
        scene = sample_scene(rng, world, noise)
        captions = english_variants(scene, world, rng, 2 + rng.randrange(4))
    img = render_scene(scene, world, EVAL_SIZE, EVAL_SIZE, task.style)
    return EvalItem(f"{idx:06d}", scene, encode_jpeg(img, EVAL_QUALITY), label, captions, metadata)


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
    from ...evaluate.registry import get_task

    info = {"key": task.key, "type": task.kind, "split": "test", "n": n, "style": task.style,
            "num_classes": len(names) if names is not None else None,
            "main_metric": get_task(task.key).main_metric,
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
    what = {"synth/concepts": "concept of the object(s) (ImageNet analogue)",
            "synth/concepts_style": "concept, other rendering style (desaturated, striped fill, soft edges)",
            "synth/concepts_clutter": "concept, grainy background with distractor strokes",
            "synth/count": "number of objects", "synth/position": "where the object(s) are",
            "synth/size": "small or large objects",
            "synth/concepts_groups": "concept; worst accuracy over the 4 backgrounds (`.json` metadata)",
            "synth/concepts_longtail": "concept, long-tailed class frequencies; mean per-class recall",
            "synth/retrieval": "image-text retrieval"}
    for t in TASKS:
        names = classnames(t, world)
        shown = "-" if names is None else (", ".join(f"'{n}'" for n in names) if len(names) <= 4 else f"{len(names)} concept names")
        lines.append(f"| `{t.key}` | `{t.dirname}` | {what[t.key]} | {shown} |")
    lines += ["", "Count and position class texts are the phrases the pool's English captions use (\"two red",
              "kites on the left\", and the clause \"..., two objects on the left\" in ~30 % of them).", ""]
    return "\n".join(lines)
