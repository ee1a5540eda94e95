"""Eval sets in clip_benchmark's webdataset layout, one local directory per task.

``EVALSETS/<key with '/' -> '-'>/``::

    classnames.txt                          one class name per line (classification)
    zeroshot_classification_templates.txt   one template per line, '{c}' = class name
    test/nshards.txt                        number of tars n
    test/{0..n-1}.tar                       samples: <key>.jpg|jpeg|png|webp + <key>.cls (ASCII int)
                                            retrieval: image + <key>.txt (one caption per line)

The reference's folder names are accepted too: ``wds_<key, fairness/ dropped, '/' -> '-'>_test``
(what its download_evalsets.py writes). Tasks with per-sample metadata (WILDS, Dollar Street,
GeoDE, FairFace, synth worst-group tasks) carry ``<key>.npy`` (an integer vector, columns = the
registry's ``metadata`` fields) or ``<key>.json`` (an object with those fields). FairFace / UTKFace
have no ``.cls``: their labels are the metadata, and their class names / templates are prefixed
``objective:`` (race, gender, age, toxic).

Flickr, MSCOCO and WinoGAViL come from Hugging Face datasets (``nlphuji/*``); besides the wds
layout they are read from parquet files under the task directory, or from the ``datasets``
arrow cache the reference writes (``EVALSETS/hf_cache/nlphuji___<name>/``): see ``nlphuji.py``.

``open_evalset`` indexes a task directory (tar headers plus the small label / caption members, no
image decoding) and checks it; ``check_evalsets`` does that for a whole suite before a model is
loaded. Images are decoded later, by ``ImageDataset`` in DataLoader workers, reading each image
straight from its offset in the tar. An image that fails to decode is skipped and counted.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, FormatError, InputError
from .registry import Task, get_task, load_registry, load_tasks

log = logging.getLogger(__name__)

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
_TAR_RE = re.compile(r"^(\d+)\.tar$")


@dataclass
class EvalSample:
    key: str
    shard: int  # index into EvalSet.shards; -1: image bytes held in EvalSet.blobs[offset]
    offset: int  # byte offset of the image data in the file (0 and size -1: the whole file)
    size: int  # image byte count
    label: int | None = None
    captions: list[str] | None = None
    meta: Any = None  # per-sample metadata (np.ndarray of ints, registry field order)


@dataclass
class WinoExample:
    cue: str
    images: list[int]  # indices into EvalSet.samples, in candidate order
    gold: Any  # np.ndarray[bool], candidate is a gold association


@dataclass
class EvalSet:
    task: Task
    root: Path
    shards: list[Path]
    samples: list[EvalSample]
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    objectives: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # fairface
    examples: list[WinoExample] = field(default_factory=list)  # winogavil
    blob_loader: Callable[[], list[bytes]] | None = None  # images stored inside parquet / arrow
    layout: str = "wds"

    @property
    def size(self) -> int:
        """Test-set size as the registry counts it (examples for WinoGAViL, images otherwise)."""
        return len(self.examples) if self.examples else len(self.samples)

    def metadata_array(self):
        """(n, fields) int array of per-sample metadata, or None."""
        import numpy as np

        if not self.samples or self.samples[0].meta is None:
            return None
        return np.stack([s.meta for s in self.samples]).astype(np.int64)

    @property
    def n_captions(self) -> int:
        return sum(len(s.captions or ()) for s in self.samples)


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


def _split_name(name: str) -> tuple[str, str] | None:
    """webdataset's key/extension split: key = path up to the first dot of the last component."""
    head, _, base = name.rpartition("/")
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{head}/{stem}" if head else stem), ext.lower()


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
            split = _split_name(m.name)
            if split is None:
                continue
            groups.setdefault(split[0], {})[split[1]] = m
        samples = []
        retrieval = task.type == "retrieval"
        for key, files in groups.items():
            img = next((files[e] for e in IMAGE_EXTS if e in files), None)
            if img is None:
                continue  # not an image sample (webdataset skips it too)
            s = EvalSample(key=key, shard=shard, offset=img.offset_data, size=img.size)
            if retrieval:
                if "txt" not in files:
                    raise FormatError(f"task {task.key}: {path}: sample {key} has an image but no .txt captions")
                text = _member_text(tf, files["txt"], path, task, key)
                s.captions = [c.strip() for c in text.splitlines() if c.strip()]
                if not s.captions:
                    raise FormatError(f"task {task.key}: {path}: sample {key} has an empty .txt")
            elif task.type == "fairness":
                s.meta = _decode_meta(tf, files, path, task, key)
            else:
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
            samples.append(s)
    return samples


def _member_text(tf: tarfile.TarFile, m: tarfile.TarInfo, path: Path, task: Task, key: str) -> str:
    f = tf.extractfile(m)
    data = f.read() if f is not None else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"task {task.key}: {path}: sample {key}.{m.name.rsplit('.', 1)[-1]} is not UTF-8") from None


def task_root(evalsets: str | os.PathLike, task: Task) -> Path | None:
    """The task's directory under ``evalsets``: ours (``<key with '/' -> '-'>``), the reference's
    (``wds_<...>_test``), or for nlphuji tasks the reference's ``hf_cache/nlphuji___<name>``."""
    d = Path(evalsets)
    cands = [d / task.dirname, d / task.reference_dirname]
    if task.source == "nlphuji" and task.hf_repo:
        cands.append(d / "hf_cache" / task.hf_repo.replace("/", "___"))
    for c in cands:
        if c.is_dir():
            return c
    return None


def open_evalset(evalsets: str | os.PathLike, task: Task | str) -> EvalSet:
    """Index and check one task's directory; raises InputError / FormatError naming task and file."""
    task = get_task(task) if isinstance(task, str) else task
    root = task_root(evalsets, task)
    if root is None:
        raise InputError(f"task {task.key}: eval set directory {Path(evalsets) / task.dirname} does not exist")
    if task.type not in ("zeroshot_classification", "retrieval", "winogavil", "fairness"):
        raise ConfigError(f"task {task.key}: evaluating type '{task.type}' is not implemented")
    if task.source == "nlphuji" and not (root / "test" / "nshards.txt").is_file():
        from .nlphuji import open_nlphuji

        return open_nlphuji(root, task)
    if task.type == "winogavil":
        raise InputError(f"task {task.key}: {root} holds no parquet / arrow files of nlphuji/winogavil")
    classnames: list[str] = []
    templates: list[str] = []
    objectives: dict[str, tuple[list[str], list[str]]] = {}
    n_classes = None
    if task.type == "fairness":
        for fname in (CLASSNAMES, TEMPLATES):
            if not (root / fname).is_file():
                raise InputError(f"task {task.key}: {root / fname} is missing")
        objectives = _fairness_objectives(root, task)
    if task.type == "zeroshot_classification":
        for fname in (CLASSNAMES, TEMPLATES):
            if not (root / fname).is_file():
                raise InputError(f"task {task.key}: {root / fname} is missing")
        classnames = _read_lines(root / CLASSNAMES, task)
        templates = _read_lines(root / TEMPLATES, task)
        if not classnames:
            raise FormatError(f"task {task.key}: {root / CLASSNAMES} lists no classes")
        if not templates:
            raise FormatError(f"task {task.key}: {root / TEMPLATES} lists no templates")
        bad = [t for t in templates if "{c}" not in t]
        if bad:
            raise FormatError(f"task {task.key}: {root / TEMPLATES}: template without '{{c}}': {bad[0]!r}")
        n_classes = len(classnames)
    shards = _list_shards(root, task)
    samples: list[EvalSample] = []
    for i, p in enumerate(shards):
        samples.extend(_index_tar(p, i, task, n_classes))
    if not samples:
        raise FormatError(f"task {task.key}: {root / 'test'} holds no image samples")
    return EvalSet(task=task, root=root, shards=shards, samples=samples, classnames=classnames,
                   templates=templates, objectives=objectives)


def _fairness_objectives(root: Path, task: Task) -> dict[str, tuple[list[str], list[str]]]:
    """FairFace / UTKFace: ``objective:name`` class names and ``objective:template`` templates."""
    from .metrics import FAIRNESS_OBJECTIVES

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


def present_tasks(evalsets: str | os.PathLike) -> list[Task]:
    """Registry tasks whose directory exists under ``evalsets``, in registry order."""
    d = Path(evalsets)
    if not d.is_dir():
        raise InputError(f"{d}: eval sets directory does not exist")
    return [t for t in load_tasks() if task_root(d, t) is not None]


def _local_expectations(d: Path) -> dict[str, dict[str, Any]]:
    """``EVALSETS/tasks.json`` (written by the synth stage: key -> {"n", "num_classes", ...}), if any."""
    p = d / "tasks.json"
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s: unreadable, ignored (%s)", p, e)
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}


def check_evalsets(evalsets: str | os.PathLike, tasks: Iterable[str | Task] | None = None) -> dict[str, Any]:
    """Check eval sets against the registry before a model is loaded.

    ``tasks`` = keys to check (default: every task of each suite that has a directory present).
    Structural problems raise InputError / FormatError; size or class-count disagreements with
    the registry (or, where the registry leaves them open as for synth tasks, with
    ``EVALSETS/tasks.json`` written by the synth stage) are listed under each task's ``problems`` (and logged), not raised.
    Returns ``{"evalsets", "registry_version", "present": [...], "missing": [...], "unknown_dirs": [...]}``.
    """
    d = Path(evalsets)
    present = present_tasks(d)
    if tasks is None:
        suites = {t.suite for t in present}
        wanted = [t for t in load_tasks() if t.suite in suites]
    else:
        wanted = [get_task(t) if isinstance(t, str) else t for t in tasks]
    present_keys = {t.key for t in present}
    known_dirs = {t.dirname for t in load_registry().tasks} | {t.reference_dirname for t in load_registry().tasks}
    known_dirs.add("hf_cache")
    report: dict[str, Any] = {
        "evalsets": str(d),
        "registry_version": load_registry().version,
        "present": [],
        "missing": [t.key for t in wanted if t.key not in present_keys],
        "unknown_dirs": sorted(p.name for p in d.iterdir() if p.is_dir() and p.name not in known_dirs),
    }
    local = _local_expectations(d)
    for t in wanted:
        if t.key not in present_keys:
            continue
        es = open_evalset(d, t)
        problems = []
        size, classes, src = t.size, t.classes, "registry"
        if size is None and classes is None and t.key in local:
            size, classes, src = local[t.key].get("n"), local[t.key].get("num_classes"), "tasks.json"
        if size is not None and es.size != size:
            problems.append(f"{es.size} samples, {src} expects {size}")
        if classes is not None and es.classnames and len(es.classnames) != classes:
            problems.append(f"{len(es.classnames)} classes, {src} expects {classes}")
        for p in problems:
            log.warning("task %s (%s): %s", t.key, es.root, p)
        entry = {
            "key": t.key,
            "dir": str(es.root),
            "size": es.size,
            "expected_size": size,
            "classes": len(es.classnames) if es.classnames else None,
            "expected_classes": classes,
            "expected_from": src,
            "shards": len(es.shards),
            "problems": problems,
        }
        entry["layout"] = es.layout
        if t.type == "retrieval":
            entry["captions"] = es.n_captions
        report["present"].append(entry)
    return report


def format_check(report: dict[str, Any]) -> list[str]:
    """``check_evalsets`` report -> printable lines (for ``datacomp evaluate --check``)."""
    lines = [f"eval sets {report['evalsets']} (task registry v{report['registry_version']})"]
    for e in report["present"]:
        exp = f"/{e['expected_size']}" if e.get("expected_size") is not None else ""
        extra = f", {e['captions']} captions" if "captions" in e else ""
        cls = f", {e['classes']} classes" if e.get("classes") else ""
        status = "ok" if not e["problems"] else "; ".join(e["problems"])
        lines.append(f"  present  {e['key']:<52} {e['size']}{exp} samples{cls}{extra}  [{status}]")
    for k in report["missing"]:
        lines.append(f"  missing  {k}")
    for d in report["unknown_dirs"]:
        lines.append(f"  unknown  {d}/ (not a registry task)")
    lines.append(f"{len(report['present'])} present, {len(report['missing'])} missing")
    return lines


class ImageDataset(Dataset):
    """Decode + preprocess the images of one eval set (map-style, safe for worker processes).

    Items are ``(index, tensor)`` or ``(index, None)`` when the image fails to decode.
    """

    def __init__(self, evalset: EvalSet, preprocess: Callable[[Any], torch.Tensor]):
        self.paths = [str(p) for p in evalset.shards]
        self.locs = [(s.shard, s.offset, s.size) for s in evalset.samples]
        self.blobs = evalset.blob_loader() if evalset.blob_loader is not None else None
        self.preprocess = preprocess
        self._files: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.locs)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if shard < 0:
            return self.blobs[offset]
        if self._pid != os.getpid():  # fresh handles in each worker process
            self._files = {}
            self._pid = os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")
        f.seek(offset)
        return f.read(size) if size >= 0 else f.read()

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        from PIL import Image

        try:
            data = self._read(*self.locs[i])
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return i, self.preprocess(im)
        except Exception:  # noqa: BLE001 - any undecodable image is skipped and counted
            return i, None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}
        state["_pid"] = None
        return state


def collate_images(batch: list[tuple[int, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """-> (indices of decoded images, stacked images or None, number that failed to decode)."""
    ok = [(i, x) for i, x in batch if x is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([x for _, x in ok]) if ok else None
    return idx, images, len(batch) - len(ok)


