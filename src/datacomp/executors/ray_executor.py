"""Ray executor: the same unit function submitted as Ray tasks (one CPU each, and ``num_gpus``
GPUs each when the caller asks for them: :func:`cluster_gpus` says whether the cluster has any).

Connection: an already initialised Ray (``ray.init(...)`` by the caller, e.g. a test fixture or a
notebook) is used as it is; otherwise ``ray.init(address=RAY_ADDRESS)`` when that variable is set
(an existing cluster: ``ray://host:10001`` or ``auto``), else a local instance with ``workers``
CPUs. A local instance started here stays up for the rest of the process (a stage runs several
passes; each would otherwise pay Ray's start-up) and is shut down at exit. Usage statistics are
off (``RAY_USAGE_STATS_ENABLED=0``). Results come back as tasks finish; a failed task's
exception is raised in the caller with the unit's name.
"""
from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Callable, Iterator

from ..errors import ConfigError
from .unit import Unit

log = logging.getLogger(__name__)


def _ensure_ray(workers: int) -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs the 'ray' package: pip install 'datacomp[ray]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "DATACOMP_WORDNET_DIR", "RAY_USAGE_STATS_ENABLED")
                            if k in os.environ}}
        try:
            if address:
                ray.init(address=address, log_to_driver=False, runtime_env=env)
            else:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False, runtime_env=env)
        except Exception as e:  # connection errors come in many types
            where = f"at {address}" if address else "locally"
            raise ConfigError(f"cannot start or reach Ray {where}: {' '.join(str(e).split())}") from None
        atexit.register(ray.shutdown)
        log.info("ray: %s", ray.cluster_resources())
    return ray


def cluster_gpus(workers: int) -> float:
    """GPUs in the Ray cluster (joined or started as :func:`map_ray` would); 0 on a CPU-only one."""
    ray = _ensure_ray(workers)
    return float(ray.cluster_resources().get("GPU", 0))


def map_ray(fn: Callable[..., dict[str, Any]], units: list[Unit], workers: int,
            num_gpus: float = 0) -> Iterator[tuple[Unit, dict[str, Any]]]:
    """Yield (unit, result) as Ray tasks finish. At most ``workers`` run at once per call when Ray
    was started here; on a cluster, Ray schedules them over its CPUs (and GPUs: ``num_gpus`` per
    task, Ray sets each task's ``CUDA_VISIBLE_DEVICES``)."""
    ray = _ensure_ray(workers)
    remote = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=0)(fn)
    refs = {remote.remote(*u.args): u for u in units}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for r in ready:
                u = refs.pop(r)
                try:
                    res = ray.get(r)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None  # the unit's own error (e.g. a FormatError naming a file)
                    raise
                yield u, res
    finally:
        for r in refs:
            ray.cancel(r)
