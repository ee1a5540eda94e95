"""``download_evalsets(dest, tasks)``: fetch the reference's eval sets from Hugging Face (online only).

Where each task comes from (DATACOMP.md §1.6, §5.1):

- classification / fairness tasks: dataset repo ``djghosh/wds_<task>_test`` (``Task.repo``):
  ``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, then
  ``test/{0..n-1}.tar``, into ``DEST/<task-dir>/`` (our layout; clip_benchmark reads it as is);
- Flickr, MSCOCO, WinoGAViL: dataset repos ``nlphuji/<name>``; their parquet export
  (``refs/convert/parquet``) goes to ``DEST/<task-dir>/`` and is read by ``nlphuji.py``.

``layout="reference"`` names the wds task directories as the reference's ``download_evalsets.py``
does (``DEST/wds_<task, fairness/ dropped, '/' -> '-'>_test/``), the layout its ``evaluate.py
--data_dir DEST`` reads. The reference loads the three ``nlphuji`` sets through ``datasets``
into ``DEST/hf_cache/`` itself; we do not write a ``datasets`` cache (no ``datasets``
dependency): they are stored as parquet in ``DEST/<task-dir>/`` in both layouts, and the
reference's ``evaluate.py`` fetches them into ``hf_cache/`` on first use. Both layouts (and the
reference's ``hf_cache/``) are read by ``open_evalset``.

``huggingface_hub`` does the transfer: partial files are kept under ``.incomplete`` names, files
already present with the same ETag (LFS sha256) are not fetched again, so an interrupted download
resumes. Nothing here runs when ``HF_HUB_OFFLINE`` is set: it refuses with one line instead.
Each task is checked with ``open_evalset`` once downloaded.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import DatacompError, InputError
from .evalsets import CLASSNAMES, TEMPLATES, open_evalset
from .registry import Task, get_task, load_tasks
from .sources import source_of
from .tasktypes import task_type

log = logging.getLogger(__name__)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _hub():
    """The huggingface_hub functions used (one seam, replaced in tests)."""
    import huggingface_hub

    return huggingface_hub


LAYOUTS = ("ours", "reference")


def download_evalsets(
    dest: str | os.PathLike, tasks: Iterable[str] | None = None, token: str | None = None, layout: str = "ours"
) -> dict[str, Any]:
    """Download the eval sets of ``tasks`` (default: the 40 reference tasks) into ``dest``;
    ``layout``: ``ours`` (``<task-dir>/``) or ``reference`` (``wds_<...>_test/``, see the module doc).

    Returns ``{"dest", "downloaded": [keys], "report": check_evalsets-like entries}``. Raises
    InputError (one line) when offline, or when a task cannot be fetched.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown eval-set layout '{layout}' (choose {' or '.join(LAYOUTS)})")
    dest = Path(dest)
    selected = [get_task(k) for k in tasks] if tasks is not None else load_tasks("datacomp")
    synth = [t.key for t in selected if t.suite == "synth"]
    if synth:
        raise InputError(f"task(s) {', '.join(synth)} belong to the embedded world: `datacomp synth` writes them")
    if _offline():
        raise InputError(
            f"download-evalsets needs network access to huggingface.co but HF_HUB_OFFLINE is set; "
            f"unset it on an online machine, or copy the eval sets into {dest}"
        )
    hub = _hub()
    dest.mkdir(parents=True, exist_ok=True)
    done, report = [], []
    for t in selected:
        try:
            _DOWNLOADERS[source_of(t).name](hub, t, dest, token, layout)
        except DatacompError:
            raise
        except Exception as e:  # noqa: BLE001 - network / hub errors: one line naming the task
            raise InputError(f"task {t.key}: download from {t.repo} failed: {str(e).splitlines()[0][:300]}") from None
        es = open_evalset(dest, t)
        done.append(t.key)
        report.append({"key": t.key, "dir": str(es.root), "size": es.size, "expected_size": t.size})
        log.info("%s: %d samples in %s", t.key, es.size, es.root)
    return {"dest": str(dest), "layout": layout, "downloaded": done, "report": report}


def _download_wds(hub, t: Task, dest: Path, token: str | None, layout: str = "ours") -> None:
    local = dest / (t.reference_dirname if layout == "reference" else t.dirname)

    def get(name: str, required: bool = True) -> Path | None:
        try:
            return Path(hub.hf_hub_download(repo_id=t.repo, repo_type="dataset", filename=name,
                                            local_dir=str(local), token=token))
        except Exception as e:  # noqa: BLE001
            if not required and type(e).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                return None
            raise

    if task_type(t).prompts is not None:  # class names / fairness objectives + templates
        get(CLASSNAMES)
        get(TEMPLATES)
    nfile = get("test/nshards.txt")
    raw = nfile.read_text().strip() if nfile else ""
    if not raw.isdigit():
        raise InputError(f"task {t.key}: {nfile} from {t.repo} does not hold a shard count ({raw[:40]!r})")
    for i in range(int(raw)):
        get(f"test/{i}.tar")


def _download_nlphuji(hub, t: Task, dest: Path, token: str | None, layout: str = "ours") -> None:
    hub.snapshot_download(repo_id=t.repo, repo_type="dataset", revision="refs/convert/parquet",
                          local_dir=str(dest / t.dirname), allow_patterns=["*.parquet", "**/*.parquet"], token=token)


# how each eval-set source (``sources.SOURCES``) is fetched from the Hugging Face Hub
_DOWNLOADERS = {"wds": _download_wds, "nlphuji": _download_nlphuji}
