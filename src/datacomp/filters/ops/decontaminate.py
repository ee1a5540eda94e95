"""Eval-set decontamination: pool rows whose image is a near-duplicate of an evaluation test image.

Two global steps (recipe ``decontaminate``; ``datacomp decontaminate`` runs it and prints the table):

- ``eval_embeddings`` (no pool pass): every test image of every task directory under
  ``evalsets`` (clip_benchmark's wds layout: ``<task-dir>/test/*.tar``; default
  ``POOL/evalsets``, the embedded world's suite) embedded by the model that made the pool's
  ``key`` embeddings — read from the embed stage's manifest (the world's teacher, with its score
  scale, exactly as the pool was embedded), or ``model`` (+ ``checkpoint``) for a pool embedded
  elsewhere (CommonPool's ``l14_img`` is OpenAI ViT-L/14: ``model: ViT-L-14`` with a local
  checkpoint). Saved once under the score cache (float32 rows, ids ``task:key``) and reused; above
  ``ivf_min`` images a faiss IVF index (inner product, ``nlist`` ~ 4 sqrt(n), ``nprobe`` 8) is
  saved beside them, else the search is exact.
- ``decontaminate``: per shard, each row's nearest eval image (inner product of unit vectors:
  the cosine) and its similarity; rows at or above ``threshold`` are contaminated. The reduce
  writes a keep mask per shard (``row_mask``: column ``decontaminate_keep``) and
  ``contamination.parquet`` (uid, task, eval_id, similarity; one row per contaminated pool row)
  in a directory under the score cache named by the pool, the eval embeddings and the threshold,
  and beside it ``nearest.parquet`` (the same columns) for every row whose nearest eval image is at
  or above ``sweep_floor`` (default 0.99): the rows flagged at any threshold ``t >= sweep_floor``
  are that table's rows with similarity ``>= t`` (:func:`is_contaminated`), which the report's
  precision-recall curve against the embedded world's truth reads (``report/curation.py``).

An eval-set directory with no test image, embeddings of another dimension than the eval
embeddings, and NaN rows are one-line errors naming the directory or file. All-zero rows (no
image) are never contaminated.
"""
from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError, InputError
from ...formats.atomic import atomic_path, write_json
from ..registry import GlobalOp, OpParamError, register
from .masks import MaskStep, check_cosine, finish_masks, mask_dir, write_mask

IVF_NPROBE = 8
MASKS_VERSION = 2  # 2: nearest.parquet beside the masks (the mask directory's identity names it)


def is_contaminated(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """The decontaminate rule on nearest-eval similarities: at or above ``threshold`` (the op and the
    report's sweep both use it)."""
    return np.asarray(similarity, np.float64) >= threshold


def _task_keys() -> dict[str, str]:
    try:
        from ...evaluate.registry import load_tasks, task_dirname

        return {task_dirname(t.key): t.key for t in load_tasks()}
    except Exception:  # a registry problem must not stop decontamination: directory names stand in
        return {}


def eval_tars(evalsets: Path) -> list[tuple[str, Path]]:
    """(task, tar) for every ``<task-dir>/test/*.tar`` under ``evalsets``, in order."""
    if not evalsets.is_dir():
        raise InputError(f"{evalsets}: eval-set directory does not exist")
    keys = _task_keys()
    out = []
    for d in sorted(p for p in evalsets.iterdir() if p.is_dir()):
        test = d / "test"
        if not test.is_dir():
            continue
        tars = sorted((p for p in test.iterdir() if p.suffix == ".tar"),
                      key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))
        out += [(keys.get(d.name, d.name), t) for t in tars]
    return out


def files_identity(tars: list[tuple[str, Path]]) -> list[str]:
    return [f"{t}:{p.parent.parent.name}/{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for t, p in tars]


def read_eval_images(evalsets: Path) -> tuple[list[str], list[Any]]:
    """(ids ``task:key``, PIL images) of every test image under ``evalsets``."""
    import io

    from PIL import Image

    from ...formats.shards import iter_samples

    ids, images = [], []
    for task, tar in eval_tars(evalsets):
        for s in iter_samples(tar):
            data = s.image_bytes()
            if data is None:
                continue
            try:
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except Exception as e:  # PIL raises many types for bad bytes
                raise FormatError(f"{tar}: sample '{s.key}' has an unreadable image ({e})") from None
            ids.append(f"{task}:{s.key}")
    if not images:
        raise InputError(f"{evalsets}: no eval-set test images (expected <task-dir>/test/*.tar with .jpg/.png/.webp members)")
    return ids, images


def pool_model(pool: Path | None, key: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """(model, checkpoint, score scale) that made the pool's ``key`` embeddings, from the embed manifest."""
    arch = key.rsplit("_", 1)[0]
    man = (pool / "stages" / "embed" / "manifest.json") if pool is not None else None
    try:
        data = json.loads(man.read_text())  # type: ignore[union-attr]
        rec = (data.get("models") or data["extra"]["models"])[arch]
    except (OSError, AttributeError, KeyError, TypeError, json.JSONDecodeError):
        raise OpParamError(f"no embed manifest records the model of '{key}' (set model=ARCH or a local-dir, "
                           "and checkpoint=, to the model that embedded the pool)") from None
    teacher = rec.get("teacher")
    model = str(rec["model"])
    if teacher is not None or Path(model).is_dir():
        return f"local-dir:{Path(model).resolve()}", None, (teacher or {}).get("score_scale")
    return model, rec.get("checkpoint"), None


@lru_cache(maxsize=2)
def _load_eval(path: str) -> tuple[np.ndarray, Any]:
    x = np.load(path, allow_pickle=False)
    index_file = Path(path).with_suffix(".ivf")
    if index_file.is_file():
        import faiss

        index = faiss.read_index(str(index_file))
        index.nprobe = IVF_NPROBE
        return x, index
    return x, None


def nearest_eval(x: np.ndarray, evals: np.ndarray, index: Any = None, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, index) of each row's nearest eval embedding (inner product; exact unless ``index``)."""
    sims = np.empty(len(x), np.float32)
    idx = np.empty(len(x), np.int64)
    if index is not None:
        for i in range(0, len(x), batch):
            d, j = index.search(np.ascontiguousarray(x[i:i + batch], np.float32), 1)
            sims[i:i + batch], idx[i:i + batch] = d[:, 0], j[:, 0]
        return sims, idx
    et = np.ascontiguousarray(evals.T, np.float32)
    for i in range(0, len(x), batch):
        g = np.asarray(x[i:i + batch], np.float32) @ et
        j = np.argmax(g, axis=1)
        idx[i:i + batch] = j
        sims[i:i + batch] = g[np.arange(len(j)), j]
    return sims, idx


def build_ivf(x: np.ndarray, path: Path, seed: int = 0) -> None:
    import faiss

    d = x.shape[1]
    nlist = max(1, int(4 * math.sqrt(len(x))))
    quant = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = x
    if len(x) > 32 * nlist:  # 32 points per list train the lists well enough; the rest only costs time
        sample = x[np.random.default_rng(seed).choice(len(x), 32 * nlist, replace=False)]
    index.train(np.ascontiguousarray(sample, np.float32))
    index.add(np.ascontiguousarray(x, np.float32))
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


@register
class EvalEmbeddings(GlobalOp):
    name = "eval_embeddings"
    description = "embed every eval-set test image (clip_benchmark layout; default POOL/evalsets) with the model of the pool's npz key"
    params = {"evalsets": None, "key": "l14_img", "model": None, "checkpoint": None, "ivf_min": 20000,
              "output": "eval_embeddings"}

    def setup(self) -> None:
        for k in ("evalsets", "model", "checkpoint"):
            if self.args[k] is not None and not isinstance(self.args[k], str):
                raise OpParamError(f"'{k}' must be a path or name, got {self.args[k]!r}")
        v = self.args["ivf_min"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OpParamError(f"'ivf_min' must be a positive integer, got {v!r}")

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def needs_pool_pass(self) -> bool:
        return False

    def evalsets(self) -> Path:
        if self.args["evalsets"] is not None:
            return Path(self.args["evalsets"]).expanduser()
        if self.env.pool is None:
            raise OpParamError("'evalsets' is not set and there is no pool directory to look in")
        return self.env.pool / "evalsets"

    def _model(self) -> tuple[str, str | None, dict[str, Any] | None]:
        if self.args["model"] is not None:
            return self.args["model"], self.args["checkpoint"], None
        return pool_model(self.env.pool, self.args["key"])

    def identity(self) -> dict[str, Any]:
        try:
            tars = eval_tars(self.evalsets())
            model = self._model()
        except (InputError, OpParamError):
            return {}
        mfile = Path(model[0].removeprefix("local-dir:"))
        weights = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(mfile.glob("*"))] if mfile.is_dir() else []
        return {"evalsets": files_identity(tars), "model": list(model), "weights": weights}

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        import os

        from ...embed.core import apply_score_scale, embed_images

        evalsets = self.evalsets()
        ident = self.identity()
        if not ident:
            eval_tars(evalsets)  # the directory's own error
            self._model()
        if not eval_tars(evalsets):
            raise InputError(f"{evalsets}: no eval-set test images (expected <task-dir>/test/*.tar)")
        if self.env.artifacts is None:
            raise OpParamError("eval_embeddings needs a directory for its files (the score cache)")
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        path = self.env.artifacts / f"eval-embeddings-{digest}.npy"
        meta_path = path.with_suffix(".json")
        out = self.args["output"]
        try:
            meta = json.loads(meta_path.read_text())
            if path.is_file():
                return {out: str(path), f"{out}_images": meta["images"], f"{out}_tasks": meta["tasks"]}
        except (OSError, KeyError, json.JSONDecodeError):
            pass
        ids, images = read_eval_images(evalsets)
        model, ckpt, scale = self._model()
        x = apply_score_scale(embed_images(model, ckpt, images, 256, os.cpu_count() or 1), scale, "img").astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(x) >= int(self.args["ivf_min"]):
            build_ivf(x, path.with_suffix(".ivf"))
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, x, allow_pickle=False)
        tasks: dict[str, int] = {}
        for i in ids:
            t = i.rsplit(":", 1)[0]
            tasks[t] = tasks.get(t, 0) + 1
        write_json(meta_path, {"ids": ids, "images": len(ids), "tasks": tasks, "model": model, "evalsets": str(evalsets)})
        return {out: str(path), f"{out}_images": len(ids), f"{out}_tasks": tasks}


@register
class Decontaminate(MaskStep, GlobalOp):
    name = "decontaminate"
    description = ("rows whose image embedding has cosine >= threshold with an eval-set test image (nearest neighbour); "
                   "writes contamination.parquet (uid, task, eval_id, similarity), nearest.parquet (the same, down to "
                   "sweep_floor: the threshold sweep's rows) and a keep mask")
    params = {"embeddings": "eval_embeddings", "key": "l14_img", "threshold": 0.99995, "sweep_floor": 0.99,
              "output": "decontaminate"}

    def setup(self) -> None:
        check_cosine(self.args["threshold"], "threshold")
        check_cosine(self.args["sweep_floor"])

    def global_inputs(self) -> list[str]:
        return [self.args["embeddings"]]

    def outputs(self) -> list[str]:
        return [self.args["output"]]

    def _evals(self) -> str:
        p = self.env.globals.get(self.args["embeddings"])
        if not p:
            raise OpParamError(f"global value '{self.args['embeddings']}' is not set: an eval_embeddings step must come first")
        return str(p)

    def _dir(self) -> Path:
        p = Path(self._evals())
        ident = {"version": MASKS_VERSION, "pool": self.env.pool_digest,
                 "evals": f"{p.name}:{p.stat().st_size}" if p.is_file() else str(p), "args": self.args}
        return mask_dir(self.env.artifacts, self.name, ident)

    def map(self, store, mask: np.ndarray | None) -> np.ndarray:
        evals, index = _load_eval(self._evals())
        emb = self.embeddings(store, self.args["key"], evals.shape[1], "eval embeddings")
        x = emb.astype(np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        use = norms[:, 0] > 0
        if mask is not None:
            use &= mask
        x = x / np.where(norms > 0, norms, 1.0)
        out = np.full((store.num_rows, 2), [-np.inf, -1.0])
        rows = np.flatnonzero(use)
        if len(rows):
            sims, idx = nearest_eval(x[rows], evals, index)
            out[rows, 0], out[rows, 1] = sims, idx
        return out

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        evals_path = Path(self._evals())
        ids = json.loads(evals_path.with_suffix(".json").read_text())["ids"]
        out_dir = self._dir()
        th, floor = float(self.args["threshold"]), float(self.args["sweep_floor"])
        shards = list(self.env.shards)
        if len(shards) != len(partials):
            raise OpParamError("decontaminate's reduce needs the run's shard list")
        cols: dict[str, list] = {"uid": [], "task": [], "eval_id": [], "similarity": []}
        near: dict[str, list] = {k: [] for k in cols}
        for s, part in zip(shards, partials):
            hit = is_contaminated(part[:, 0], th)
            close = is_contaminated(part[:, 0], floor)
            write_mask(out_dir, s, ~hit)
            if (hit | close).any():
                uids = pq.read_table(s, columns=["uid"]).column("uid").to_pylist()
                for r in np.flatnonzero(hit | close):
                    eid = ids[int(part[r, 1])]
                    row = (uids[r], eid.rsplit(":", 1)[0], eid, float(part[r, 0]))
                    for table, on in ((cols, hit[r]), (near, close[r])):
                        if on:
                            for k, v in zip(table, row):
                                table[k].append(v)
        for name, c in (("contamination.parquet", cols), ("nearest.parquet", near)):
            table = pa.table({"uid": pa.array(c["uid"], pa.string()), "task": pa.array(c["task"], pa.string()),
                              "eval_id": pa.array(c["eval_id"], pa.string()),
                              "similarity": pa.array(c["similarity"], pa.float32())})
            with atomic_path(out_dir / name, suffix=".parquet") as tmp:
                pq.write_table(table, tmp)
        per_task: dict[str, int] = {}
        for t in cols["task"]:
            per_task[t] = per_task.get(t, 0) + 1
        out = self.args["output"]
        values = {out: str(out_dir), f"{out}_flagged": len(cols["uid"]), f"{out}_tasks": dict(sorted(per_task.items())),
                  f"{out}_table": str(out_dir / "contamination.parquet"), f"{out}_threshold": th,
                  f"{out}_nearest": str(out_dir / "nearest.parquet"), f"{out}_sweep_floor": floor,
                  f"{out}_nearest_rows": len(near["uid"])}
        finish_masks(out_dir, values)
        return values
