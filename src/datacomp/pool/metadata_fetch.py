"""Download metadata: CommonPool's parquets (and npz) into ``POOL/metadata``, from local files,
object stores (``s3://``, ``gs://``, any fsspec URL) or the DataComp repos on the Hugging Face
hub; an existing ``POOL/metadata`` is replaced only on request, and then built beside the old one
and swapped in.

A URL source is read through fsspec with its usual configuration (credentials and endpoint from
the environment: ``AWS_*`` / ``AWS_ENDPOINT_URL`` for s3fs, ``FSSPEC_S3_*``, gcsfs's own); the
files are copied into ``POOL/metadata``, so every later stage reads local files. ``s3://`` is
tested against a local S3-compatible server (moto); ``gs://`` (gcsfs) is not tested.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from ..errors import ConfigError, InputError
from ..formats.atomic import replaced_dir
from ..formats.guard import check_apart
from .input_files import check_distinct_names, input_files, is_data_file

log = logging.getLogger(__name__)

HF_REPOS = {
    "small": "mlfoundations/datacomp_small",
    "medium": "mlfoundations/datacomp_medium",
    "large": "mlfoundations/datacomp_large",
    "xlarge": "mlfoundations/datacomp_xlarge",
    "datacomp_1b": "mlfoundations/datacomp_1b",
}


def fetch_metadata(
    pool: str | os.PathLike,
    source: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    scale: str | None = None,
    download_npz: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Put metadata parquets (and npz) into ``POOL/metadata``.

    ``source``: a directory of parquets, one parquet, or a list of paths (local), or URLs of the
    same (``s3://bucket/metadata/``, read through fsspec and copied in). ``scale``
    (without ``source``): the DataComp HF dataset repo of that scale, through
    ``huggingface_hub.snapshot_download`` (needs network; never used by the tests, which fake it).
    An existing ``POOL/metadata`` is kept unless ``overwrite`` (like the reference).
    """
    pool = Path(pool)
    mdir = pool / "metadata"
    if mdir.is_dir() and any(mdir.glob("*.parquet")) and not overwrite:
        log.info("%s exists, keeping it (overwrite=True to replace)", mdir)
        return sorted(mdir.glob("*.parquet"))
    if source is None and scale is None:
        raise ConfigError("download needs metadata: a local path (--metadata) or a scale (--scale) for the HF hub")
    urls = _urls(source) if source is not None else None
    if urls:
        remote = _remote_metadata_files(urls)  # listed and checked before anything is replaced
        with replaced_dir(mdir) as new:
            for fs, path in remote:
                name = path.rsplit("/", 1)[-1]
                _get(fs, path, new / name)
                npz = path[: -len(".parquet")] + ".npz"
                if fs.isfile(npz):
                    _get(fs, npz, new / (name[: -len(".parquet")] + ".npz"))
        return sorted(mdir.glob("*.parquet"))
    if source is not None:
        files = _local_metadata_files(source)
        check_apart(mdir, {"metadata": files})
        with replaced_dir(mdir) as new:  # the old metadata goes only once the new is complete
            for f in files:
                _copy(f, new / f.name)
                npz = f.with_suffix(".npz")
                if npz.is_file():
                    _copy(npz, new / npz.name)
        return sorted(mdir.glob("*.parquet"))
    return _hub_metadata(mdir, scale, download_npz)


def _local_metadata_files(source) -> list[Path]:
    def named(p: Path) -> list[Path]:
        if p.is_file() and p.suffix == ".parquet":
            return [p]
        if p.is_file() and p.suffix in (".txt", ".list"):  # a list of paths, one a line
            return _local_metadata_files([q.strip() for q in p.read_text().splitlines() if q.strip()])
        raise InputError(f"{p}: not a parquet file, a directory of them, or a .txt list of paths")

    files = input_files(source, (".parquet",), ".parquet metadata", named)
    check_distinct_names((f.name for f in files), "metadata files")
    for f in files:
        try:
            cols = pq.ParquetFile(f).schema_arrow.names
        except Exception as e:  # pyarrow raises several types
            raise InputError(f"{f}: cannot read parquet: {e}") from None
        for c in ("uid", "url", "text"):
            if c not in cols:
                raise InputError(f"{f}: metadata has no '{c}' column (bring-your-own data: use datacomp.pool.byod)")
    return files


def _urls(source) -> list[str] | None:
    """The source as fsspec URLs when it is one or several (never a mix with local paths)."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    remote = [str(i) for i in items if "://" in str(i)]
    if not remote:
        return None
    if len(remote) != len(items):
        raise InputError("metadata: give local paths or URLs, not both: " + ", ".join(map(str, items)))
    return remote


def _remote_metadata_files(urls: list[str]) -> list[tuple[object, str]]:
    """(filesystem, path) of every parquet named by ``urls`` (files, or directories of them), checked."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with img2dataset
        raise ConfigError("metadata from a URL needs fsspec: pip install fsspec") from None
    out = []
    for url in urls:
        try:
            fs, root = fsspec.core.url_to_fs(url)
            if fs.isdir(root):
                found = sorted(p for p in fs.ls(root, detail=False) if is_data_file(p.rsplit("/", 1)[-1], (".parquet",)))
                if not found:
                    raise InputError(f"{url}: no .parquet metadata files")
            elif fs.isfile(root) and root.endswith(".parquet"):
                found = [root]
            else:
                raise InputError(f"{url}: not a parquet file or a directory of them")
        except (ImportError, ValueError) as e:  # no driver for the protocol (gcsfs, s3fs), a bad URL
            raise ConfigError(f"{url}: {' '.join(str(e).split())}") from None
        except OSError as e:  # unreachable, denied, no such bucket
            raise InputError(f"{url}: cannot list metadata: {' '.join(str(e).split())}") from None
        out += [(fs, p) for p in found]
    check_distinct_names((p.rsplit("/", 1)[-1] for _, p in out), "metadata files")
    for fs, p in out:
        try:
            with fs.open(p, "rb") as f:
                cols = pq.ParquetFile(f).schema_arrow.names
        except Exception as e:  # pyarrow and the filesystems raise several types
            raise InputError(f"{fs.unstrip_protocol(p)}: cannot read parquet: {' '.join(str(e).split())}") from None
        for c in ("uid", "url", "text"):
            if c not in cols:
                raise InputError(f"{fs.unstrip_protocol(p)}: metadata has no '{c}' column")
    return out


def _get(fs, path: str, dst: Path) -> None:
    try:
        with fs.open(path, "rb") as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
    except OSError as e:
        raise InputError(f"{fs.unstrip_protocol(path)}: cannot copy: {' '.join(str(e).split())}") from None


def _copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _hub_metadata(mdir: Path, scale: str, download_npz: bool) -> list[Path]:
    if scale not in HF_REPOS:
        raise ConfigError(f"no DataComp metadata repo for scale '{scale}' (choose {', '.join(HF_REPOS)})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        raise ConfigError("metadata from the hub needs huggingface_hub") from None
    repo = HF_REPOS[scale]
    hf_cache = mdir.parent / "hf"
    tmp = mdir.parent / ".metadata.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    patterns = ["*.parquet", "*/*.parquet"]
    if download_npz:
        patterns += ["*.npz", "*/*.npz"]
    try:
        snapshot_download(repo_id=repo, repo_type="dataset", allow_patterns=patterns,
                          local_dir=str(tmp), cache_dir=str(hf_cache))
    except Exception as e:  # network, auth, offline mode
        raise InputError(f"{repo}: cannot fetch metadata from the Hugging Face hub: {e}") from None
    # xlarge keeps files under part_*/: flatten into one directory
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.suffix in (".parquet", ".npz") and p.parent != tmp:
            target = tmp / p.name
            if target.exists():
                raise InputError(f"{repo}: two metadata files named {p.name}")
            p.rename(target)
    for d in sorted((q for q in tmp.iterdir() if q.is_dir()), reverse=True):
        shutil.rmtree(d, ignore_errors=True)
    if not any(tmp.glob("*.parquet")):
        raise InputError(f"{repo}: no parquet files fetched")
    if mdir.exists():
        shutil.rmtree(mdir)
    tmp.rename(mdir)
    shutil.rmtree(hf_cache, ignore_errors=True)
    return sorted(mdir.glob("*.parquet"))
