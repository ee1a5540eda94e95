"""Offline WordNet 3.0 for the text-based filter, through NLTK's reader.

The reference calls ``nltk.corpus.wordnet.synsets(word)`` on WordNet 3.0. Here the database comes
from Debian's ``wordnet-base`` + ``wordnet-sense-index`` (``/usr/share/wordnet``), copied into an
NLTK data directory ``DIR/corpora/wordnet/`` together with the ``lexnames`` file NLTK needs (Debian
does not install it; the package ships it in ``resources/wordnet/``). Build it with
``make wordnet`` or ``python -m datacomp.filters.wordnet [--src /usr/share/wordnet] [--out DIR]``.

The default ``DIR`` is ``$DATACOMP_WORDNET_DIR`` or ``<sys.prefix>/share/nltk_data`` (a place NLTK
itself searches; inside the project's virtual environment).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import resource_path
from ..errors import ConfigError, FormatError, InputError

DEBIAN_SRC = Path("/usr/share/wordnet")
# the database files NLTK's WordNetCorpusReader opens (plus lexnames, written separately)
DB_FILES = ["adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb",
            "index.adj", "index.adv", "index.noun", "index.sense", "index.verb", "noun.exc", "verb.exc"]
REQUIRED = ["lexnames", "index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj",
            "index.adv", "data.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc"]


def default_dir() -> Path:
    env = os.environ.get("DATACOMP_WORDNET_DIR")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "nltk_data"


def corpus_dir(nltk_dir: str | os.PathLike | None) -> Path:
    return (Path(nltk_dir).expanduser() if nltk_dir else default_dir()) / "corpora" / "wordnet"


def check_dir(nltk_dir: str | os.PathLike | None) -> Path:
    """The ``corpora/wordnet`` directory, or an InputError naming what is missing."""
    root = corpus_dir(nltk_dir)
    if not root.is_dir():
        raise InputError(f"{root}: WordNet directory does not exist (build it with `make wordnet`, "
                         f"or pass wordnet_dir=DIR holding corpora/wordnet)")
    missing = [f for f in REQUIRED if not (root / f).is_file()]
    if missing:
        raise InputError(f"{root}: WordNet directory lacks {', '.join(missing)} (rebuild it with `make wordnet`)")
    return root


INDEX_SNAPSHOT = ".datacomp-index.json"


def _snapshot_key(root: Path) -> list[Any]:
    return [[f, (root / f).stat().st_size] for f in REQUIRED if (root / f).is_file()]


def _reader_class() -> type:
    from collections import defaultdict

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """NLTK's reader, English only, quicker to open. Lookups (``synsets``, morphy, offsets) are
        NLTK's own code, unchanged. Two things differ at load time: the constructor's ``map_wn``
        (a sense-key mapping for Open Multilingual WordNet data, 60% of the load) is skipped, and
        the lemma index, exception lists and satellite offsets NLTK parses from the database
        files are read from a JSON snapshot of a previous parse (``.datacomp-index.json`` beside
        the files, keyed by their sizes) when there is one."""

        def __init__(self, root: Any, omw_reader: Any, snapshot: dict[str, Any] | None = None):
            self._snapshot = snapshot
            super().__init__(root, omw_reader)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

        def _scan_satellites(self) -> None:
            if self._snapshot is None:
                return super()._scan_satellites()
            self.satellite_offsets = set(self._snapshot["satellites"])

        def _load_lemma_pos_offset_map(self) -> None:
            if self._snapshot is None:
                return super()._load_lemma_pos_offset_map()
            self._lemma_pos_offset_map = defaultdict(dict, self._snapshot["lemmas"])

        def _load_exception_map(self) -> None:
            if self._snapshot is None:
                return super()._load_exception_map()
            self._exception_map = self._snapshot["exceptions"]

        def snapshot(self) -> dict[str, Any]:
            return {"satellites": sorted(self.satellite_offsets),
                    "lemmas": dict(self._lemma_pos_offset_map),
                    "exceptions": self._exception_map}

    return EnglishWordNetReader


def _read_snapshot(root: Path) -> dict[str, Any] | None:
    import json

    path = root / INDEX_SNAPSHOT
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return snap if isinstance(snap, dict) and snap.get("key") == json.loads(json.dumps(_snapshot_key(root))) else None


def _write_snapshot(root: Path, wn: Any) -> None:
    import json

    from ..formats.atomic import atomic_path

    try:
        with atomic_path(root / INDEX_SNAPSHOT, suffix=".json") as tmp:
            Path(tmp).write_text(json.dumps({"key": _snapshot_key(root), **wn.snapshot()}))
    except OSError:  # a read-only WordNet directory: every load parses the files
        pass


@lru_cache(maxsize=2)
def load_wordnet(root: str) -> Any:
    """NLTK's WordNet reader on ``root`` (a ``corpora/wordnet`` directory); ~1 s, once per process."""
    import nltk.data
    from nltk.data import FileSystemPathPointer

    WordNetCorpusReader = _reader_class()
    data_dir = str(Path(root).parent.parent)  # NLTK only opens files under its data path
    if data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)

    import warnings

    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": not used
            warnings.simplefilter("ignore")
            snapshot = _read_snapshot(Path(root))
            wn = WordNetCorpusReader(FileSystemPathPointer(root), None, snapshot)
            if snapshot is None:
                _write_snapshot(Path(root), wn)
    except Exception as e:  # nltk raises several kinds on damaged files
        raise FormatError(f"{root}: cannot load WordNet: {' '.join(str(e).split())}") from None
    if wn.get_version() != "3.0":
        raise FormatError(f"{root}: WordNet version {wn.get_version()}, the reference uses 3.0")
    return wn


def read_wnids(path: str | os.PathLike) -> frozenset[int]:
    """WordNet ids ``nXXXXXXXX`` (one per line) -> the set of integer offsets, as the reference."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: WordNet id list does not exist")
    out = set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if len(line) != 9 or line[0] != "n" or not line[1:].isdigit():
            raise FormatError(f"{path}: line {i}: {line[:40]!r} is not a WordNet noun id like n01440764")
        out.add(int(line[1:]))
    if not out:
        raise FormatError(f"{path}: WordNet id list is empty")
    return frozenset(out)


def bundled_ids() -> Path:
    return resource_path("wordnet", "imagenet21k_wordnet_ids.txt")


def build(src: str | os.PathLike = DEBIAN_SRC, out: str | os.PathLike | None = None) -> Path:
    """Copy the WordNet 3.0 database from ``src`` into ``out/corpora/wordnet`` (+ lexnames)."""
    src = Path(src)
    if not (src / "data.noun").is_file():
        raise InputError(f"{src}: no WordNet database here (apt-get install wordnet-base wordnet-sense-index)")
    dest = corpus_dir(out)
    dest.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        if (src / name).is_file():
            tmp = dest / f".{name}.tmp"
            shutil.copyfile(src / name, tmp)  # copies, not links: NLTK refuses links leaving its root
            os.replace(tmp, dest / name)
    lex = resource_path("wordnet", "lexnames")
    if not lex.is_file():
        raise ConfigError(f"{lex}: packaged lexnames file is missing")
    shutil.copyfile(lex, dest / "lexnames")
    (dest / INDEX_SNAPSHOT).unlink(missing_ok=True)
    check_dir(dest.parent.parent)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datacomp.filters.wordnet",
                                 description="build the offline NLTK WordNet 3.0 directory the text-based filter reads")
    ap.add_argument("--src", default=str(DEBIAN_SRC), help="WordNet 3.0 database (Debian wordnet-base)")
    ap.add_argument("--out", default=None, help=f"NLTK data directory (default {default_dir()})")
    a = ap.parse_args(argv)
    try:
        dest = build(a.src, a.out)
    except (InputError, ConfigError, FormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        wn = load_wordnet(str(dest))
    except (InputError, FormatError) as e:
        (dest / "lexnames").unlink(missing_ok=True)  # so that `make wordnet` tries again
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"WordNet {wn.get_version()} ready in {dest} (synsets('Dogs')[0] = {wn.synsets('Dogs')[0].name()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
