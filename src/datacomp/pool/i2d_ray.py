"""img2dataset's Ray distributor, as the download's child process uses it.

img2dataset 1.47.0's ``distributor="ray"`` submits one Ray task per input shard (one CPU each,
``thread_count`` fetch threads inside) to whatever Ray the process is connected to; it starts
none itself. :func:`connect` is that connection, made in the img2dataset child
(``datacomp.pool.i2d``): ``RAY_ADDRESS`` when set (an existing cluster, ``auto``, or the Ray the
calling process had initialised: ``supervise.run_img2dataset`` passes its address on), else a
local instance with ``processes`` CPUs that lives and dies with the child.

The child is its own Ray job, so its runtime environment reaches only its own workers: the
environment the child was given (the decoded-size limit ``OPENCV_IO_MAX_IMAGE_PIXELS``, offline
switches) and :func:`worker_setup`, which keeps ``torch`` out of those workers as the child keeps
it out of itself (webdataset would import it, ~3 s and ~600 MB per worker, and img2dataset never
uses it). The bounded fetch and the reference blurrer travel inside the pickled downloader
(``i2d.BoundedDownloader``, ``blur.ReferenceBlurrer``), as with the multiprocessing distributor.

This module imports nothing heavy: Ray workers import it to run :func:`worker_setup`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

WORKER_ENV = ("OPENCV_IO_MAX_IMAGE_PIXELS", "NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE", "HF_HUB_OFFLINE",
              "RAY_USAGE_STATS_ENABLED")


def worker_setup() -> None:
    """Ray's ``worker_process_setup_hook`` for the download's workers."""
    if "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]


def connect(processes: int) -> Any:
    """``ray.init`` for img2dataset's Ray distributor; returns the ``ray`` module."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    runtime_env = {"env_vars": {k: os.environ[k] for k in WORKER_ENV if k in os.environ},
                   "worker_process_setup_hook": f"{__name__}.worker_setup"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=max(1, int(processes)), include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    return ray


def parent_address() -> str | None:
    """The address of the Ray this process is connected to (a test fixture, a notebook), if any."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a client-mode or shutting-down Ray has none to share
        return None
