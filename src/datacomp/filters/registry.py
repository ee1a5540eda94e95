"""Filter operations and their registry.

A recipe is a list of *steps*; each step names an op registered here. Two kinds:

- :class:`ShardOp` adds score columns to one shard's table (``compute`` gets the input columns as
  pyarrow arrays and returns the new ones). Its outputs can be cached per shard and reused by
  every recipe that runs the same op with the same parameters.
- :class:`GlobalOp` makes a pool-wide decision (a quantile threshold, k-means centroids) in two
  halves: ``map`` runs on every shard and returns a small per-shard array; ``reduce`` sees all of
  them and returns named values (JSON-able) that later keep rules refer to as ``@name``.

Adding an op: write a class in a module under ``filters/ops/``, decorate it with
:func:`register`, and import the module in ``filters/ops/__init__.py``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa


class Columns(Protocol):
    """What a global op's ``map`` reads a shard through (the engine's ``columns.ShardColumns``, or
    any object with these members: a test's hand-made columns)."""

    parquet: Path  # the shard (an op may read files beside it, such as its npz)
    num_rows: int

    def get(self, name: str) -> pa.Array: ...

    def numpy(self, name: str) -> np.ndarray: ...


class OpParamError(ValueError):
    """A step's parameters are invalid; the recipe loader adds the recipe file and step."""


@dataclass
class ShardContext:
    """What a shard op may know besides its input columns."""

    parquet: Path
    num_rows: int  # rows of the shard
    globals: dict[str, Any] = field(default_factory=dict)
    # a step with ``where`` rules gets only the rows that pass them: their indices in the shard
    # (the input columns hold just those rows; the op returns one value per row of ``rows``)
    rows: Any = None


@dataclass
class OpEnv:
    """Where a run happens, handed to every op before it works (``Op.bind``).

    ``globals``: values earlier global steps made; ``pool``: the pool root (default locations such
    as ``POOL/targets/``); ``artifacts``: a directory for the small files global steps save
    (centroids, target cluster ids), shared between recipes; ``pool_digest``: a digest of the pool
    files the recipe reads, for naming such files; ``kernels``: whether the select pass's uid
    work loads numba for its compiled kernels (``engine.KERNEL_MIN_ROWS``).
    """

    globals: dict[str, Any] = field(default_factory=dict)
    pool: Path | None = None
    artifacts: Path | None = None
    pool_digest: str = ""
    kernels: bool | None = None  # the uid work's compiled kernels: True = load numba; None = if loaded
    shards: list[str] = field(default_factory=list)
    work: Path | None = None
    executor: str = "local"
    workers: int = 1


class Op:
    """Base of every op. Subclasses set ``name``, ``description`` and ``params`` (defaults)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "shard"
    params: ClassVar[dict[str, Any]] = {}  # accepted parameters and their defaults
    required: ClassVar[tuple[str, ...]] = ()  # parameters without a default

    def __init__(self, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(self.params) - set(self.required))
        if unknown:
            known = sorted(set(self.params) | set(self.required))
            raise OpParamError(f"unknown parameter(s) {', '.join(unknown)} (accepted: {', '.join(known) or 'none'})")
        missing = [k for k in self.required if k not in kwargs]
        if missing:
            raise OpParamError(f"missing required parameter(s) {', '.join(missing)}")
        self.args: dict[str, Any] = {**self.params, **kwargs}
        self.env = OpEnv()
        self.setup()

    def bind(self, env: OpEnv) -> None:
        """Called by the engine before ``compute`` / ``map`` / ``reduce``."""
        self.env = env

    def global_inputs(self) -> list[str]:
        """Names of global values (made by earlier global steps) the op reads from ``self.env``."""
        return []

    def setup(self) -> None:
        """Validate ``self.args`` (raise OpParamError) and derive attributes."""

    def spec(self) -> dict[str, Any]:
        return {"op": self.name, **self.args}


class ShardOp(Op):
    kind: ClassVar[str] = "shard"
    cache: ClassVar[bool] = True  # cheap ops set False: recomputing beats reading a cache file
    version: ClassVar[str] = "1"  # bump when the computation changes; old caches become stale

    def inputs(self) -> list[str]:
        """Columns it reads: parquet columns, or columns made by earlier steps."""
        return []

    def outputs(self) -> list[str]:
        raise NotImplementedError

    def compute(self, columns: dict[str, pa.Array], ctx: ShardContext) -> dict[str, pa.Array]:
        raise NotImplementedError

    def cache_identity(self) -> dict[str, Any]:
        """Anything besides the parameters that changes the output (e.g. a model file's size)."""
        return {}

    def reads_npz(self) -> bool:
        """True when ``compute`` reads the shard's npz (its size and time join the cache fingerprint)."""
        return False

    def cache_key(self) -> str:
        used = {g: self.env.globals.get(g) for g in self.global_inputs()}
        where = [r.text for r in getattr(self, "where", [])]
        blob = json.dumps({"op": self.name, "version": self.version, "args": self.args,
                           "identity": self.cache_identity(), "globals": used, "where": where},
                          sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class GlobalOp(Op):
    kind: ClassVar[str] = "global"

    def inputs(self) -> list[str]:
        """Columns ``map`` reads (made by earlier shard steps)."""
        return []

    def outputs(self) -> list[str]:
        """Names of the global values ``reduce`` returns (rules use them as ``@name``)."""
        raise NotImplementedError

    def needs_pool_pass(self) -> bool:
        """False when the values are known without reading the pool (e.g. a given threshold)."""
        return True

    def identity(self) -> dict[str, Any]:
        """Anything besides the parameters that changes the result (e.g. a given file's size)."""
        return {}

    def saved(self) -> dict[str, Any] | None:
        """Values saved by an earlier run with the same inputs (skips the pool pass), else None."""
        return None

    def map(self, store: Columns, mask: np.ndarray | None) -> np.ndarray:
        """Per-shard partial result. ``mask`` (bool per row) comes from the step's ``where`` rules."""
        raise NotImplementedError

    def reduce(self, partials: list[np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    if not cls.name or not cls.description:
        raise TypeError(f"{cls.__name__}: an op needs a name and a one-line description")
    if cls.name in OPS and OPS[cls.name] is not cls:
        raise TypeError(f"op name '{cls.name}' registered twice")
    OPS[cls.name] = cls
    return cls


def all_ops() -> dict[str, type[Op]]:
    from . import ops  # noqa: F401  (importing registers every family)

    return dict(sorted(OPS.items()))
