"""Row masks that a global step decided for the whole pool (``semdedup``, ``decontaminate``).

Such a step's ``reduce`` writes one boolean ``.npy`` per shard (``<parquet stem>.npy``, one value
per row: True = keep) into a directory of its own under the score cache and returns that
directory as a global value; ``row_mask`` turns it into a column that keep rules read
(``semdedup_keep == true``). Beside the masks such a step writes the candidates of its threshold
sweep (``matches.parquet``, ``nearest.parquet``: every row at or above the step's ``sweep_floor``), so
the rows it would remove at any stricter threshold are known without running it again.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import FormatError
from ...formats.atomic import atomic_path, write_json
from ..registry import OpParamError, ShardContext, ShardOp, register

DONE = "done.json"  # written last into a mask directory: its values (the step's globals)


def mask_dir(artifacts: Path | None, op: str, identity: Any) -> Path:
    """The mask directory of a global step, named by everything its masks depend on."""
    if artifacts is None:
        raise OpParamError(f"{op} needs a directory for its mask files (the score cache)")
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return artifacts / f"{op}-{hashlib.sha256(blob).hexdigest()[:16]}"


def check_cosine(v: Any, name: str = "sweep_floor") -> float:
    """A threshold or sweep floor (the lowest similarity a step's sweep table keeps): a cosine in [-1, 1]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not -1.0 <= float(v) <= 1.0:
        raise OpParamError(f"'{name}' must be a cosine in [-1, 1], got {v!r}")
    return float(v)


def write_mask(directory: Path, parquet: str | Path, keep: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / f"{Path(parquet).stem}.npy", suffix=".npy") as tmp:
        np.save(tmp, np.asarray(keep, dtype=bool), allow_pickle=False)


def finish_masks(directory: Path, values: dict[str, Any]) -> None:
    write_json(directory / DONE, values)


def saved_masks(directory: Path) -> dict[str, Any] | None:
    """The values of a finished mask directory, or None."""
    try:
        return json.loads((directory / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class MaskStep:
    """What a mask-writing global step shares: its finished masks found again (``saved``; the step
    names its mask directory in ``_dir()``), and the image embeddings of a shard read and checked
    against the dimension its reference data has."""

    def saved(self) -> dict[str, Any] | None:
        try:
            return saved_masks(self._dir())
        except OpParamError:
            return None

    @staticmethod
    def embeddings(store, key: str, dim: int, against: str, want_dim: int | None = None) -> np.ndarray:
        """The shard's npz ``key`` (finite rows, ``dim`` columns, the dimension of ``against``)."""
        from ...formats.pool import npz_path, read_npz

        path = npz_path(store.parquet)
        emb = read_npz(path, [key], expected_rows=store.num_rows, dim=want_dim)[key]
        if emb.shape[1] != dim:
            raise FormatError(f"{path}: npz key '{key}' has dimension {emb.shape[1]}, the {against} {dim}")
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            raise FormatError(f"{path}: npz key '{key}' has {int(bad.sum())} rows with NaN or infinite values "
                              f"(first: row {int(np.flatnonzero(bad)[0])})")
        return emb


@register
class RowMask(ShardOp):
    name = "row_mask"
    description = "a boolean column from the per-shard masks a global step wrote (semdedup, decontaminate): mask = its global value"
    required = ("mask",)
    params = {"output": None}
    cache = False  # reading a small .npy beats a cache file

    def setup(self) -> None:
        if not isinstance(self.args["mask"], str) or not self.args["mask"]:
            raise OpParamError("'mask' must name the global value of a step that writes masks (e.g. semdedup)")
        self.out = self.args["output"] or f"{self.args['mask']}_keep"

    def global_inputs(self) -> list[str]:
        return [self.args["mask"]]

    def outputs(self) -> list[str]:
        return [self.out]

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        d = self.env.globals.get(self.args["mask"])
        if not d:
            raise OpParamError(f"global value '{self.args['mask']}' (a mask directory) is not set: "
                               "a step that writes masks must come first")
        path = Path(d) / f"{ctx.parquet.stem}.npy"
        try:
            keep = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}: cannot read the row mask: {e}") from None
        if keep.dtype != bool or keep.shape != (ctx.num_rows,):
            raise FormatError(f"{path}: row mask has shape {keep.shape} ({keep.dtype}); its parquet has {ctx.num_rows} rows")
        if ctx.rows is not None:
            keep = keep[ctx.rows]
        return {self.out: pa.array(keep)}
