"""datacomp: the DataComp-CLIP benchmark loop as software.

The stages as a Python API (docs/API.md), each imported on first use so ``import datacomp``
stays cheap::

    import datacomp
    datacomp.download(pool, metadata=[...])          # img2dataset, resumable
    datacomp.embed(pool, model="ViT-B-32", checkpoint=...)
    summary = datacomp.filter(pool, "basic_filter", "subset.npy")
    datacomp.reshard(pool, "subset.npy", "shards/")
    datacomp.train("small", ["shards/"], "run/")
    datacomp.evaluate("run/", "evalsets/")
    datacomp.report(["work/"], "work/report")

The embedded world: ``datacomp.synth(out, datacomp.load_scale("synth_test"))`` and
``datacomp.run(scale, workdir, recipes, seeds)``.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

# name -> (module under datacomp, attribute; None: the module itself, callable as its stage)
_API: dict[str, tuple[str, str | None]] = {
    "synth": ("pool.synth", "synthesize"),
    "download": ("pool.download", "download"),
    "download_retry": ("pool.download", "retry_failed"),
    "byod_metadata": ("pool.byod", "byod_metadata"),
    "byod_from_shards": ("pool.byod", "byod_from_shards"),
    "embed": ("embed", None),
    "filter": ("filters", "run_filter"),
    "reshard": ("reshard", None),
    "train": ("train", None),
    "TrainConfig": ("train", "TrainConfig"),
    "evaluate": ("evaluate", None),
    "download_evalsets": ("evaluate", "download_evalsets"),
    "report": ("report", None),
    "run": ("run", None),
    "load_scale": ("config", "load_scale"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    spec = _API.get(name)
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod = import_module(f".{spec[0]}", __name__)
    return mod if spec[1] is None else getattr(mod, spec[1])


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
