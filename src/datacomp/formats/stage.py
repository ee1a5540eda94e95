"""One lifecycle for every stage: output, parameter identity, pending parameters, markers, reuse,
the conflict rule and the final manifest.

A stage builds one :class:`StageOutput` from its name, its output directory, its parameters
(a JSON-able dict: what the user chose that decides the output's bytes) and optionally its
inputs' identities (``inputs``: name -> digest of an input file or manifest), and follows three
steps::

    life = StageOutput("embed", POOL / "stages/embed", params, overwrite=overwrite)
    done = life.begin()        # a finished, intact output made with these params -> reuse it
    if done is not None:
        return done
    run_units(fn, units, life.dir, ...)             # unit markers: life.dir/.done/<unit>.json
    return life.finish(Manifest(stage="embed", params=params, counts=..., extra=...))

``begin()`` applies the one conflict rule:

- a finished output (its manifest exists) made with these parameters is reused while its
  recorded inputs are this run's and the files its manifest records (``extra["files"]``,
  :func:`.guard.file_records`) are intact; a stale or damaged one is run again, with a warning
  saying why;
- an unfinished output (the pending-parameters file ``DIR/.params.json`` exists, no manifest)
  made with these parameters is resumed, finished units keeping their markers; when its inputs
  changed since (a bad input fixed), it is started again; one that holds no finished work
  (:meth:`StageOutput.has_work`: no unit marker, no owned output; a run that failed on bad
  input before its first unit) is no output at all and is started afresh whatever its params;
- a finished or unfinished output made with other parameters (or by another stage), and with
  ``exclusive=True`` a directory holding files of neither kind, is refused with one
  :class:`StageConflictError` line naming the directory and the parameters that differ;
- with ``overwrite`` whatever ``DIR`` holds is replaced, finished or not, same parameters or
  not. ``replace="clear"`` (the default) removes the manifest, the markers, the pending file and
  the stage's ``owned`` paths before the run; ``replace="aside"`` is for stages that write every output beside the old one and swap it in
  (an atomic subset file, a ``replaced_dir``): the old manifest stays until ``finish`` replaces
  it, so a crash in between leaves the old output complete and reusable. ``replace="swap"`` is
  for stages that write a whole directory: over an existing output the run builds a fresh one in
  the sibling ``.NAME.swap-new`` (``life.dir`` points there once ``begin()`` returns: the stage
  writes under ``life.dir``, never under the path it was given), and ``finish`` moves into it
  what of the old directory is not this stage's (other stages' outputs, as "clear" would leave
  them) and its ``keep`` files (hard links: a lock stays held), then swaps the two (one atomic
  exchange where the kernel has it, else two renames) and removes the old one. A failed or killed overwrite
  leaves the old output as it was; the next run drops the half-built sibling (and completes or
  undoes a swap cut between its two renames).

``begin()`` then writes the pending-parameters file (atomically) before any unit runs, so a
killed run is recognised as "unfinished, these parameters" by the next one. ``finish(manifest)``
checks the manifest carries this stage and these parameters, removes the temporaries killed
writers left under ``DIR`` (and beside the manifest), writes the manifest last and atomically,
and removes the pending file: the manifest's presence means the stage is complete.

``StageOutput.digest`` is the parameter identity (sha256 of the canonical JSON, 16 hex digits).
``manifest`` may name another file than ``DIR/manifest.json`` (filter's sidecar beside the
subset, evaluate's beside its results); ``pending`` another name for the pending file (stages
sharing a directory); ``where`` the path messages name (default ``DIR``); ``follows`` the stages
whose manifest in the same place this one replaces (download after byod); ``files_root`` the
directory the manifest's file records are relative to (default: the manifest's directory);
``keep`` names in ``DIR`` that are not output (a lock file).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from ..errors import StageConflictError
from .atomic import sweep_temps, write_json
from .guard import damaged_file
from .manifest import MANIFEST_NAME, MARKER_DIR, Manifest, canonical, clear_markers, read_manifest_file

SWAP_JOURNAL = ".swap-moved.json"  # names a swap moved from the old directory into the new one

log = logging.getLogger(__name__)

PENDING_NAME = ".params.json"
_SHOWN_DIFFS = 3


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical(params), sort_keys=True).encode()).hexdigest()[:16]


def params_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["seed 0 -> 1", "world.concepts 36 -> 24"]``: the parameters that differ, by dotted key."""
    old, new = canonical(old), canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key} new")
            elif k not in new:
                out.append(f"{key} gone")
            else:
                out += params_diff(old[k], new[k], key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in params_diff(a, b, f"{prefix}[{i}]")]
    if old == new:
        return []
    return [f"{prefix or 'parameters'} {_short(old)} -> {_short(new)}"]


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 40 else s[:37] + "..."


def describe_diff(old: Any, new: Any) -> str:
    diffs = params_diff(old, new)
    if not diffs:
        return "no difference"
    more = len(diffs) - _SHOWN_DIFFS
    return "; ".join(diffs[:_SHOWN_DIFFS]) + (f"; and {more} more" if more > 0 else "")


class StageOutput:
    """The lifecycle of one stage's output (see the module docstring)."""

    def __init__(self, stage: str, out_dir: str | os.PathLike, params: dict[str, Any], *,
                 inputs: dict[str, Any] | None = None, overwrite: bool = False,
                 manifest: str | os.PathLike | None = None, files_root: str | os.PathLike | None = None,
                 owned: Iterable[str | os.PathLike] = (), replace: str = "clear", exclusive: bool = False,
                 keep: Iterable[str] = (), pending: str = PENDING_NAME, where: str | os.PathLike | None = None,
                 follows: Iterable[str] = ()) -> None:
        if replace not in ("clear", "aside", "swap"):
            raise ValueError(f"replace must be 'clear', 'aside' or 'swap', not {replace!r}")
        if replace == "swap" and manifest is not None:
            raise ValueError("replace='swap' keeps the manifest in the output directory")
        self.stage = stage
        self.dir = Path(out_dir)
        self.target = self.dir  # where the output ends up; self.dir is where it is written (they differ in a swap)
        self.params = canonical(params)
        self.inputs = canonical(inputs or {})
        self.overwrite = overwrite
        self.manifest_file = Path(manifest) if manifest is not None else self.dir / MANIFEST_NAME
        self.files_root = Path(files_root) if files_root is not None else self.manifest_file.parent
        self.owned = [p if Path(p).is_absolute() else self.dir / p for p in map(Path, owned)]
        self.replace = replace
        self.exclusive = exclusive
        self.keep = set(keep)  # names in DIR that are not output (a lock file) for the exclusive check
        self.pending_name = pending
        self.follows = set(follows)  # stages whose manifest in the same place is an input, not an output
        self.where = Path(where) if where is not None else self.dir  # what messages name
        self.digest = params_digest(self.params)
        self.previous: Manifest | None = None  # the manifest found by begin(), whatever became of it

    # ---- paths -----------------------------------------------------------------------------------

    @property
    def swapping(self) -> bool:
        return self.dir != self.target

    def _sibling(self, kind: str) -> Path:
        return self.target.parent / f".{self.target.name}.swap-{kind}"

    def _retarget(self, d: Path) -> None:
        """Point the lifecycle's paths (manifest, owned outputs, file records) at directory ``d``."""
        default_root = self.files_root == self.manifest_file.parent
        self.owned = [d / p.relative_to(self.dir) if p.is_relative_to(self.dir) else p for p in self.owned]
        self.dir = d
        self.manifest_file = d / MANIFEST_NAME
        if default_root:
            self.files_root = d

    def settle_swap(self) -> None:
        """After a killed overwrite: drop its half-built directory; finish or undo a cut swap."""
        old, new = self._sibling("old"), self._sibling("new")
        if old.exists():
            if self.target.exists():  # the swap was done; only the old one's removal was cut
                shutil.rmtree(old)
            else:  # cut between the two renames: the old output goes back, intact
                old.rename(self.target)
                log.warning("%s: an overwrite was cut while swapping; the previous output is back", self.where)
        if new.exists():
            self._restore_moved(new)
            log.info("%s: dropping what a killed overwrite left beside it (%s)", self.where, new.name)
            shutil.rmtree(new)
        if self.target.is_dir():
            (self.target / SWAP_JOURNAL).unlink(missing_ok=True)

    def _restore_moved(self, new: Path) -> None:
        """Other stages' outputs a swap cut before its exchange had moved into ``new`` (named in its
        journal) go back into the old directory before ``new`` is dropped."""
        journal = new / SWAP_JOURNAL
        if not journal.is_file() or not self.target.is_dir():
            return
        try:
            names = json.loads(journal.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            names = []
        for name in names if isinstance(names, list) else []:
            src = new / str(name)
            if src.parent == new and (src.exists() or src.is_symlink()) and not (self.target / src.name).exists():
                src.rename(self.target / src.name)

    @property
    def pending_file(self) -> Path:
        return self.dir / self.pending_name

    @property
    def marker_dir(self) -> Path:
        return self.dir / MARKER_DIR

    # ---- reading ---------------------------------------------------------------------------------

    def read_manifest(self) -> Manifest | None:
        return read_manifest_file(self.manifest_file)

    def read_pending(self) -> dict[str, Any] | None:
        """``{"stage", "params", "inputs"}`` of the unfinished run in ``DIR`` (None: none started; a torn or
        odd file cannot come from an atomic write and reads as another run's)."""
        if not self.pending_file.is_file():
            return None
        try:
            d = json.loads(self.pending_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            d = None
        return d if isinstance(d, dict) and "params" in d else {"params": {"unreadable": str(self.pending_file)}}

    def _foreign(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        ignore = {self.pending_name, MARKER_DIR, self.manifest_file.name, *self.keep}
        return sorted(p.name for p in self.dir.iterdir() if p.name not in ignore)

    # ---- the rule --------------------------------------------------------------------------------

    def _refuse(self, what: str, old_stage: str, old_params: Any) -> None:
        why = (f"made by stage '{old_stage}'" if old_stage != self.stage
               else f"made with other parameters ({describe_diff(old_params, self.params)})")
        raise StageConflictError(f"{self.where}: holds {what} '{old_stage}' output {why}; pass --overwrite to replace it")

    def begin(self) -> Manifest | None:
        """The finished manifest to reuse, or None after preparing ``DIR`` for a (resumed) run."""
        if self.replace == "swap":
            self.settle_swap()
        existing = self.read_manifest()
        self.previous = existing
        if existing is not None and existing.stage in self.follows:
            existing = None
        pending = self.read_pending()
        foreign = self._foreign() if self.exclusive and existing is None and pending is None else []
        aside = self.replace == "aside" and existing is not None
        if self.overwrite:
            if self.replace == "swap" and (existing is not None or pending is not None or self.has_work()):
                self._retarget(self._sibling("new"))  # the old output stays untouched until finish()
                return self._start()
            self.clear(keep_manifest=aside)
            return self._start()
        if existing is not None:
            if existing.stage != self.stage or canonical(existing.params) != self.params:
                self._refuse("a finished", existing.stage, existing.params)
            stale = self._stale(existing.inputs)
            why = stale or damaged_file(self.files_root, existing.extra.get("files") or {})
            if why is None:
                log.info("%s: a finished '%s' output with these parameters; reusing it", self.where, self.stage)
                existing.reused = True
                return existing
            # a changed input is the normal course of things (info); a damaged output is not (warning)
            (log.info if stale else log.warning)("%s: not reusing the finished '%s' output: %s; running the stage "
                                                 "again", self.where, self.stage, why)
            if stale:
                self.clear(keep_manifest=aside)
            else:  # damaged: what is intact of it stays, the stage redoes its units
                self.manifest_file.unlink()
                clear_markers(self.dir)
            return self._start()
        other = pending is not None and (pending.get("stage", self.stage) != self.stage
                                         or canonical(pending.get("params")) != self.params)
        if other and not self.has_work():
            log.info("%s: an unfinished '%s' output without a finished unit (other parameters); starting afresh",
                     self.where, self.stage)
            self.clear()
            pending = None
        if pending is not None:
            if other:
                self._refuse("an unfinished", str(pending.get("stage", self.stage)), pending.get("params"))
            stale = self._stale(pending.get("inputs") or {})
            if stale:
                log.warning("%s: not resuming the unfinished '%s' output: %s; starting it again", self.where,
                            self.stage, stale)
                self.clear()
            else:
                log.info("%s: resuming the unfinished '%s' output", self.where, self.stage)
        if foreign:
            raise StageConflictError(f"{self.where}: holds files that are not a '{self.stage}' output "
                                     f"(e.g. {foreign[0]}); pass --overwrite to replace them")
        return self._start()

    def has_work(self) -> bool:
        """Whether ``DIR`` holds finished work: a unit marker anywhere below it, an ``owned`` output,
        or (``exclusive``) any file of the stage's."""
        if not self.dir.is_dir():
            return False
        if any(self.dir.rglob(f"{MARKER_DIR}/*.json")):
            return True
        if any(p.exists() for p in self.owned if p != self.dir and not self.dir.is_relative_to(p)):
            return True
        return self.exclusive and bool(self._foreign())

    def _stale(self, recorded: dict[str, Any]) -> str | None:
        """Why the inputs recorded with an output are not this run's (None when they are; a manifest
        may record more inputs than the lifecycle watches)."""
        recorded = canonical(recorded)
        changed = sorted(k for k in self.inputs if recorded.get(k) != self.inputs[k])
        if not changed:
            return None
        return f"its input{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed since it was made"

    def _start(self) -> None:  # the pending file goes first: a killed run is 'unfinished, these params'
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.pending_file, {"stage": self.stage, "params": self.params, "inputs": self.inputs})
        return None

    def clear(self, keep_manifest: bool = False) -> None:
        """Remove what this stage wrote: markers, pending file, ``owned`` paths (and the manifest
        unless ``keep_manifest``); with ``exclusive``, everything in ``DIR`` but ``keep``."""
        if not keep_manifest:
            self.manifest_file.unlink(missing_ok=True)
        if self.marker_dir.is_dir():
            clear_markers(self.dir)
        self.pending_file.unlink(missing_ok=True)
        victims = list(self.owned)
        if self.exclusive and self.dir.is_dir():
            victims += [self.dir / n for n in self._foreign()]
        for p in victims:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def finish(self, manifest: Manifest) -> Manifest:
        """Write ``manifest`` last (see the module docstring); -> it."""
        if manifest.stage != self.stage or canonical(manifest.params) != self.params:
            raise ValueError(f"{self.dir}: the manifest of stage '{manifest.stage}' does not carry the parameters "
                             f"'{self.stage}' began with")
        manifest.inputs = {**manifest.inputs, **self.inputs}
        if self.dir.is_dir():
            for d, _, _ in os.walk(self.dir):
                sweep_temps(d)
        sweep_temps(self.manifest_file.parent, [self.manifest_file.name])
        write_json(self.manifest_file, manifest.to_json())
        self.pending_file.unlink(missing_ok=True)
        if self.swapping:
            self._swap_in()
        return manifest

    def _swap_in(self) -> None:
        """The finished new directory replaces the old one (see the module docstring). The ``keep``
        files (a lock) are hard-linked into the new directory first, so a lock held on one stays
        held; where the kernel can (Linux ``renameat2``) the two directories are exchanged in one
        step, so the path never goes missing for a process that looks at it meanwhile."""
        old_dir, new_dir = self.target, self.dir
        if old_dir.is_dir():
            mine = {p.name for p in self.owned if p.parent == new_dir}
            lifecycle = {self.pending_name, MARKER_DIR, MANIFEST_NAME, SWAP_JOURNAL, *self.keep}
            entries = sorted(old_dir.iterdir())
            moved = [p.name for p in entries if not self.exclusive and p.name not in mine | lifecycle
                     and not (new_dir / p.name).exists()]  # other stages' outputs: they stay in the directory
            if moved:  # journal first: a run killed before the exchange puts them back (settle_swap)
                write_json(new_dir / SWAP_JOURNAL, moved)
            for p in entries:
                if p.name in self.keep and p.is_file() and not (new_dir / p.name).exists():
                    os.link(p, new_dir / p.name)
                elif p.name in moved:
                    p.rename(new_dir / p.name)
            if _exchange(old_dir, new_dir):  # old_dir holds the new output, new_dir the old one
                new_dir.rename(self._sibling("old"))
            else:
                old_dir.rename(self._sibling("old"))
                new_dir.rename(old_dir)
        else:
            new_dir.rename(old_dir)
        self._retarget(old_dir)
        (old_dir / SWAP_JOURNAL).unlink(missing_ok=True)
        shutil.rmtree(self._sibling("old"), ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Exchange directories ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the kernel, the C library or the file system cannot (the caller renames twice instead)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
