"""``datacomp submit --upload REPO``: the bundle's public part pushed to a Hugging Face dataset repo.

One commit, as the reference's ``push_files_to_hub`` makes it (``HfApi.create_commit`` with a
``CommitOperationAdd`` per file, message ``Upload artifacts ({scale} scale)``), of the files the
bundle manifest lists for upload: everything under ``{scale}_scale/`` (never ``contact.json``).
Each file is checked against the sha256 the manifest recorded before anything is sent. The
token is huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatacompError, InputError
from ..formats.atomic import file_sha256
from ..formats.manifest import Manifest


def upload_bundle(bundle: Path, repo: str, manifest: Manifest) -> dict[str, Any]:
    """Push ``bundle``'s upload list to dataset repo ``repo`` (``user/name``); -> ``{"repo", "files", "commit"}``."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(f"--upload {repo}: a Hugging Face repo is 'user/name'")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise ConfigError("--upload: HF_HUB_OFFLINE is set; unset it to let the bundle leave the machine")
    files = list(manifest.extra.get("upload") or [])
    recorded = manifest.extra.get("sha256") or {}
    for f in files:
        if file_sha256(bundle / f) != recorded.get(f):
            raise InputError(f"{bundle / f}: changed since the bundle was written; run submit again with --overwrite")
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError:
        raise ConfigError("--upload needs huggingface_hub (pip install huggingface_hub)") from None
    api = HfApi()
    prefix = manifest.extra.get("prefix", "")
    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(bundle / f)) for f in files]
    try:
        api.create_repo(repo_id=repo, repo_type="dataset", exist_ok=True)
        info = api.create_commit(repo_id=repo, repo_type="dataset", operations=ops,
                                 commit_message=f"Upload artifacts ({prefix.removesuffix('_scale')} scale)")
    except Exception as e:  # noqa: BLE001 - the hub's errors (HTTP, auth) as one line
        raise DatacompError(f"--upload {repo}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return {"repo": repo, "files": files, "commit": getattr(info, "oid", None) or getattr(info, "commit_url", None)}
