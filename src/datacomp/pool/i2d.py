"""Run img2dataset 1.47.0 in a child process, with bounded fetches and the reference blurrer.

``python -m datacomp.pool.i2d CONFIG.json`` calls ``img2dataset.download(**config["kwargs"])``
under ``if __name__ == "__main__":`` (img2dataset's spawn-based process pool hangs otherwise, and
its SIGINT handler calls ``sys.exit``, which must not happen inside a datacomp stage).

Two things are swapped in, both by class replacement on ``img2dataset.main`` before the call, so
every other part of img2dataset (reader, resizer, writers, incremental mode, stats) is its own:

* ``Downloader`` -> :class:`BoundedDownloader`. img2dataset's fetch is ``urlopen(...).read()``:
  its ``timeout`` bounds each socket operation, not the whole transfer, so a server that trickles
  one byte a second holds a thread forever, and the body is read whole into memory whatever its
  size. The subclass carries limits (total seconds per attempt, bytes per file) to the worker
  processes in its pickled state; unpickling installs a bounded fetch in that process.
  Its retries stay img2dataset's (``retries`` re-attempts per URL, bounded) but are counted:
  each finished shard leaves ``{"retries", "urls_retried"}`` in ``RETRIES_DIR/<shard>.json``
  (``config["retries_dir"]``; written just before img2dataset's ``_stats.json``, the mark of a
  finished shard), which the download's summary adds up.
* ``BoundingBoxBlurrer`` -> :class:`datacomp.pool.blur.ReferenceBlurrer` (DATACOMP.md §3.2
  kernel size; img2dataset 1.47.0's own blurrer uses a smaller kernel).

With ``distributor="ray"`` the child first joins or starts Ray (``pool/i2d_ray.py``); both
replacements reach the Ray workers inside the pickled downloader, as they reach the spawned
processes of the multiprocessing distributor.

The child and img2dataset's spawned workers (which import this module as ``__mp_main__``) mark
``torch`` as unavailable before importing img2dataset: webdataset would import it (~3 s and
~600 MB per process) and img2dataset never uses it.

Decompression bombs are refused by OpenCV before decoding: the parent sets
``OPENCV_IO_MAX_IMAGE_PIXELS`` in the child's environment.
"""
from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path
import urllib.request
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates online otherwise
if __name__ in ("__main__", "__mp_main__") and "torch" not in sys.modules:
    # In img2dataset's processes only: webdataset imports torch when it can, which costs ~3 s and
    # ~600 MB per process and is never used by img2dataset; without it webdataset uses stand-ins.
    sys.modules["torch"] = None  # type: ignore[assignment]

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
DEFAULT_LIMITS = {"max_bytes": 32 * 1024 * 1024, "max_seconds": 30.0}
_LIMITS: dict[str, float] = dict(DEFAULT_LIMITS)


class TooLarge(Exception):
    pass


class TooSlow(Exception):
    pass


def bounded_fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """Same contract as ``img2dataset.downloader.download_image``: (key, BytesIO | None, error)."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    max_bytes = int(_LIMITS["max_bytes"])
    max_seconds = float(_LIMITS["max_seconds"])
    ua = USER_AGENT
    if user_agent_token:
        ua += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    start = time.monotonic()
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": ua})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if disallowed_header_directives and is_disallowed(r.headers, user_agent_token, disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            length = r.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise TooLarge(f"file too large: Content-Length {int(length)} > {max_bytes} bytes")
            buf = io.BytesIO()
            while True:
                chunk = r.read1(1 << 16)  # what has arrived: a trickle cannot stall a full-size read
                if not chunk:
                    break
                buf.write(chunk)
                if buf.tell() > max_bytes:
                    raise TooLarge(f"file too large: more than {max_bytes} bytes")
                if time.monotonic() - start > max_seconds:
                    raise TooSlow(f"download too slow: not finished after {max_seconds:g} s")
        buf.seek(0)
        return key, buf, None
    except Exception as err:  # noqa: BLE001 - every failure becomes the sample's error message
        return key, None, str(err) or type(err).__name__


_RETRIED = {"retries": 0, "urls_retried": 0}  # this process's shard in progress (one at a time)
_RETRIED_LOCK = threading.Lock()


def counted_retry(row, timeout, retries, user_agent_token, disallowed_header_directives):
    """``img2dataset.downloader.download_image_with_retry`` (``retries + 1`` attempts at most),
    counting the re-attempts."""
    key, img_stream, err = None, None, None
    for attempt in range(retries + 1):
        key, img_stream, err = bounded_fetch(row, timeout, user_agent_token, disallowed_header_directives)
        if attempt:
            with _RETRIED_LOCK:
                _RETRIED["retries"] += 1
                _RETRIED["urls_retried"] += attempt == 1
        if img_stream is not None:
            break
    return key, img_stream, err


_RETRIES_DIR: list[str] = []  # this process's retries_dir (empty: not recorded)


def _stats_with_retries(write_stats):
    """img2dataset's ``write_stats`` (the shard's ``_stats.json``: the mark of a finished shard),
    preceded by the shard's retry count: a shard that counts as finished always has its count."""
    def wrapped(output_folder, shard_id, *args, **kwargs):
        if _RETRIES_DIR:
            from datacomp.formats.atomic import write_json

            oom = args[7] if len(args) > 7 else kwargs.get("oom_shard_count", 5)
            with _RETRIED_LOCK:
                counts = dict(_RETRIED)
            write_json(Path(_RETRIES_DIR[0]) / f"{shard_id:0{oom}d}.json", counts, indent=None)
        return write_stats(output_folder, shard_id, *args, **kwargs)

    wrapped.datacomp_wrapped = True  # type: ignore[attr-defined]
    return wrapped


def _install(limits: dict[str, float], retries_dir: str | None = None) -> None:
    import img2dataset.downloader as dl

    _LIMITS.update(limits)
    dl.download_image = bounded_fetch
    dl.download_image_with_retry = counted_retry
    _RETRIES_DIR[:] = [retries_dir] if retries_dir else []
    if not getattr(dl.write_stats, "datacomp_wrapped", False):
        dl.write_stats = _stats_with_retries(dl.write_stats)


try:  # the subclass only exists where img2dataset is installed
    from img2dataset.downloader import Downloader as _I2DDownloader
except ImportError:  # pragma: no cover
    _I2DDownloader = object  # type: ignore[assignment,misc]


class BoundedDownloader(_I2DDownloader):  # type: ignore[misc,valid-type]
    limits: dict[str, float] = dict(DEFAULT_LIMITS)  # set in the parent before img2dataset builds us
    retries_dir: str | None = None  # where each shard's retry count goes (None: not recorded)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._datacomp_limits = dict(type(self).limits)
        self._datacomp_retries_dir = type(self).retries_dir
        _install(self._datacomp_limits, self._datacomp_retries_dir)

    def download_shard(self, row):  # one shard at a time per process: its retries are this process's
        with _RETRIED_LOCK:
            _RETRIED.update(retries=0, urls_retried=0)
        return super().download_shard(row)

    def __setstate__(self, state: dict[str, Any]) -> None:  # runs in each img2dataset worker
        self.__dict__.update(state)
        _install(state.get("_datacomp_limits", DEFAULT_LIMITS), state.get("_datacomp_retries_dir"))


def run(config: dict[str, Any]) -> None:
    import img2dataset

    # not ``import img2dataset.main``: the package re-exports a function called ``main`` over it
    i2d_main = sys.modules["img2dataset.main"]

    if config.get("bounded", True):
        BoundedDownloader.limits = {"max_bytes": float(config["max_bytes"]), "max_seconds": float(config["max_seconds"])}
        BoundedDownloader.retries_dir = config.get("retries_dir")
        i2d_main.Downloader = BoundedDownloader
    if config.get("reference_blur", True):
        from datacomp.pool.blur import ReferenceBlurrer

        i2d_main.BoundingBoxBlurrer = ReferenceBlurrer
    if config["kwargs"].get("distributor") == "ray":
        from datacomp.pool.i2d_ray import connect

        connect(config.get("ray_processes", 1))
    img2dataset.download(**config["kwargs"])
    if config.get("rusage_out"):
        with open(config["rusage_out"], "w") as f:
            json.dump({"peak_rss_mb": round(peak_rss_kb() / 1024, 1)}, f)


def peak_rss_kb() -> int:
    """Largest resident set of this process (since its exec) and of its reaped children, in kB.

    ``RUSAGE_SELF`` is not used for this process: Linux keeps the pre-exec high-water mark, so a
    child forked from a big parent would report the parent's size.
    """
    import resource

    own = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1])
    except OSError:  # not Linux
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    # import ourselves under the package name, so pickled classes resolve in the spawned workers
    from datacomp.pool import i2d as _module

    _module.run(cfg)
