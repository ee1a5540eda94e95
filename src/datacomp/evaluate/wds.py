"""Eval sets in clip_benchmark's webdataset layout, one local directory per task.

``EVALSETS/<key with '/' -> '-'>/``::

    classnames.txt                          one class name per line (classification)
    zeroshot_classification_templates.txt   one template per line, '{c}' = class name
    test/nshards.txt                        number of tars n
    test/{0..n-1}.tar                       samples: <key>.jpg|jpeg|png|webp + <key>.cls (ASCII int)
                                            retrieval: image + <key>.txt (one caption per line)

Tasks with per-sample metadata (WILDS, Dollar Street, GeoDE, FairFace, synth worst-group tasks)
carry ``<key>.npy`` (an integer vector, columns = the registry's ``metadata`` fields) or
``<key>.json`` (an object with those fields). FairFace / UTKFace have no ``.cls``: their labels
are the metadata, and their class names / templates are prefixed ``objective:`` (race, gender,
age, toxic).

What a sample carries and which prompt files the directory holds come from the task's type
(``tasktypes.py``); indexing reads the tar headers and the small label / caption members, no
image decoding.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputError
from ..formats.tar import split_member
from .dataset import EvalSample, EvalSet
from .registry import Task
from .tasktypes import task_type

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
_TAR_RE = re.compile(r"^(\d+)\.tar$")


def open_wds(root: Path, task: Task) -> EvalSet:
    """Index and check one task directory in the wds layout."""
    tt = task_type(task)
    if tt.carries not in _SAMPLE_READERS:
        raise InputError(f"task {task.key}: {root} holds no parquet / arrow files of {task.hf_repo or task.repo}")
    prompts: dict[str, Any] = _PROMPT_READERS[tt.prompts](root, task) if tt.prompts else {}
    n_classes = len(prompts["classnames"]) if prompts.get("classnames") else None
    shards = _list_shards(root, task)
    samples: list[EvalSample] = []
    for i, p in enumerate(shards):
        samples.extend(_index_tar(p, i, task, n_classes))
    if not samples:
        raise FormatError(f"task {task.key}: {root / 'test'} holds no image samples")
    return EvalSet(task=task, root=root, shards=shards, samples=samples, **prompts)


def _require_prompt_files(root: Path, task: Task) -> None:
    for fname in (CLASSNAMES, TEMPLATES):
        if not (root / fname).is_file():
            raise InputError(f"task {task.key}: {root / fname} is missing")


def _read_classes(root: Path, task: Task) -> dict[str, Any]:
    """Class names and templates of a classification task."""
    _require_prompt_files(root, task)
    classnames = _read_lines(root / CLASSNAMES, task)
    templates = _read_lines(root / TEMPLATES, task)
    if not classnames:
        raise FormatError(f"task {task.key}: {root / CLASSNAMES} lists no classes")
    if not templates:
        raise FormatError(f"task {task.key}: {root / TEMPLATES} lists no templates")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise FormatError(f"task {task.key}: {root / TEMPLATES}: template without '{{c}}': {bad[0]!r}")
    return {"classnames": classnames, "templates": templates}


def _read_objectives(root: Path, task: Task) -> dict[str, Any]:
    _require_prompt_files(root, task)
    return {"objectives": _fairness_objectives(root, task)}


def _read_lines(path: Path, task: Task) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"task {task.key}: {path} is not UTF-8 text ({e.reason})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _list_shards(root: Path, task: Task) -> list[Path]:
    test = root / "test"
    nfile = test / "nshards.txt"
    if not nfile.is_file():
        raise InputError(f"task {task.key}: {nfile} is missing")
    raw = nfile.read_text().strip()
    try:
        n = int(raw)
    except ValueError:
        raise FormatError(f"task {task.key}: {nfile} must hold an integer, got {raw[:40]!r}") from None
    found = sorted(int(m.group(1)) for p in test.iterdir() if (m := _TAR_RE.match(p.name)))
    if n <= 0 or found != list(range(n)):
        raise FormatError(
            f"task {task.key}: {nfile} says {n} shard(s) but {test} holds "
            f"{len(found)} numbered tar(s) {found[:5]}{'...' if len(found) > 5 else ''}"
        )
    return [test / f"{i}.tar" for i in range(n)]


def _index_tar(path: Path, shard: int, task: Task, n_classes: int | None) -> list[EvalSample]:
    try:
        tf = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise FormatError(f"task {task.key}: {path} is not a readable tar ({e})") from None
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tf:
        try:
            members = tf.getmembers()
        except tarfile.TarError as e:
            raise FormatError(f"task {task.key}: {path} is a corrupt tar ({e})") from None
        for m in members:
            if not m.isfile():
                continue
            split = split_member(m.name, keep_dir=True)  # webdataset's key: the directory stays in it
            if split is None:
                continue
            groups.setdefault(split[0], {})[split[1]] = m
        read = _SAMPLE_READERS[task_type(task).carries]
        samples = []
        for key, files in groups.items():
            img = next((files[e] for e in IMAGE_EXTS if e in files), None)
            if img is None:
                continue  # not an image sample (webdataset skips it too)
            s = EvalSample(key=key, shard=shard, offset=img.offset_data, size=img.size)
            read(s, tf, files, path, task, n_classes)
            samples.append(s)
    return samples


def _read_captions(s: EvalSample, tf: tarfile.TarFile, files: dict[str, tarfile.TarInfo], path: Path, task: Task,
                   n_classes: int | None) -> None:
    key = s.key
    if "txt" not in files:
        raise FormatError(f"task {task.key}: {path}: sample {key} has an image but no .txt captions")
    text = _member_text(tf, files["txt"], path, task, key)
    s.captions = [c.strip() for c in text.splitlines() if c.strip()]
    if not s.captions:
        raise FormatError(f"task {task.key}: {path}: sample {key} has an empty .txt")


def _read_metadata(s: EvalSample, tf: tarfile.TarFile, files: dict[str, tarfile.TarInfo], path: Path, task: Task,
                   n_classes: int | None) -> None:
    s.meta = _decode_meta(tf, files, path, task, s.key)


def _read_label(s: EvalSample, tf: tarfile.TarFile, files: dict[str, tarfile.TarInfo], path: Path, task: Task,
                n_classes: int | None) -> None:
    key = s.key
    if "cls" not in files:
        raise FormatError(f"task {task.key}: {path}: sample {key} has an image but no .cls label")
    raw = _member_text(tf, files["cls"], path, task, key).strip()
    try:
        label = int(raw)
    except ValueError:
        raise FormatError(
            f"task {task.key}: {path}: sample {key} .cls is not an integer: {raw[:20]!r}"
        ) from None
    if n_classes is not None and not 0 <= label < n_classes:
        raise FormatError(
            f"task {task.key}: {path}: sample {key} has label {label} outside "
            f"0..{n_classes - 1} ({CLASSNAMES} lists {n_classes} classes)"
        )
    s.label = label
    s.meta = _decode_meta(tf, files, path, task, key)


# what a sample carries (``TaskType.carries``) -> how it is read; the prompt files (``TaskType.prompts``)
_SAMPLE_READERS = {"label": _read_label, "captions": _read_captions, "metadata": _read_metadata}
_PROMPT_READERS = {"classes": _read_classes, "objectives": _read_objectives}


def _decode_meta(tf: tarfile.TarFile, files: dict[str, tarfile.TarInfo], path: Path, task: Task, key: str):
    """Per-sample metadata -> int vector in the registry's field order (None if the task has none)."""
    import numpy as np

    fields = task.metadata
    if not fields:
        return None
    if "npy" in files:
        f = tf.extractfile(files["npy"])
        try:
            arr = np.load(io.BytesIO(f.read() if f else b""), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable .npy names the sample
            raise FormatError(f"task {task.key}: {path}: sample {key}.npy is not a NumPy array ({e})") from None
        arr = np.asarray(arr).reshape(-1)
        if arr.shape[0] != len(fields):
            raise FormatError(f"task {task.key}: {path}: sample {key}.npy has {arr.shape[0]} values, "
                              f"expected {len(fields)} ({', '.join(fields)})")
        return arr.astype(np.int64)
    if "json" in files:
        raw = _member_text(tf, files["json"], path, task, key)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise FormatError(f"task {task.key}: {path}: sample {key}.json is not JSON ({e.msg})") from None
        out = []
        for fld in fields:
            if not isinstance(obj, dict) or fld not in obj:
                raise FormatError(f"task {task.key}: {path}: sample {key}.json lacks metadata field '{fld}'")
            v = obj[fld]
            if isinstance(v, str):
                names = (task.value_names or {}).get(fld)
                if not names or v not in names:
                    raise FormatError(f"task {task.key}: {path}: sample {key}.json: {fld}={v!r} is not one of "
                                      f"the registry's value_names for '{fld}'")
                v = names.index(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise FormatError(f"task {task.key}: {path}: sample {key}.json: {fld} must be a "
                                  f"non-negative integer or a named value, got {v!r}")
            out.append(v)
        return np.asarray(out, dtype=np.int64)
    raise FormatError(f"task {task.key}: {path}: sample {key} has no .npy or .json metadata "
                      f"({', '.join(fields)})")


def _member_text(tf: tarfile.TarFile, m: tarfile.TarInfo, path: Path, task: Task, key: str) -> str:
    f = tf.extractfile(m)
    data = f.read() if f is not None else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"task {task.key}: {path}: sample {key}.{m.name.rsplit('.', 1)[-1]} is not UTF-8") from None


def _fairness_objectives(root: Path, task: Task) -> dict[str, tuple[list[str], list[str]]]:
    """FairFace / UTKFace: ``objective:name`` class names and ``objective:template`` templates."""
    from .metrics import FAIRNESS_OBJECTIVES  # (metrics imports torch)

    out: dict[str, tuple[list[str], list[str]]] = {o: ([], []) for o in FAIRNESS_OBJECTIVES}
    for fname, slot in ((CLASSNAMES, 0), (TEMPLATES, 1)):
        for line in _read_lines(root / fname, task):
            obj, sep, rest = line.partition(":")
            if not sep or obj not in out:
                raise FormatError(f"task {task.key}: {root / fname}: line {line[:40]!r} does not start with one of "
                                  f"{', '.join(o + ':' for o in FAIRNESS_OBJECTIVES)}")
            out[obj][slot].append(rest)
    for o, (names, temps) in out.items():
        if not names or not temps:
            raise FormatError(f"task {task.key}: {root}: objective '{o}' needs class names and templates")
        if any("{c}" not in t for t in temps):
            raise FormatError(f"task {task.key}: {root / TEMPLATES}: an '{o}:' template lacks '{{c}}'")
    return out
