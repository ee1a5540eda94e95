"""Ray executor: the same unit function submitted as Ray tasks.

``ray.init()`` connects to ``RAY_ADDRESS`` when set, else starts a local instance with
``workers`` CPUs. Ray is an optional dependency (``pip install 'datacomp[ray]'``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from ..errors import ConfigError
from .base import Unit


def map_ray(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int) -> Iterator[tuple[Unit, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs the 'ray' package: pip install 'datacomp[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(fn)
        refs = {remote.remote(*u.args): u for u in units}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for r in ready:
                u = refs.pop(r)
                yield u, ray.get(r)
    finally:
        if started:
            ray.shutdown()
