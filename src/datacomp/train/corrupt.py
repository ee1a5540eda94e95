"""Bounded tolerance of unreadable training data, inside the open_clip trainer's data loader.

open_clip's webdataset pipeline skips a member it cannot read (a tar header, an image that does
not decode, a sample without image or caption) with one log line each and, with resampled
shards, never runs out of members: data that is mostly garbage trains on what is left, or loops
forever. :class:`CorruptGuard` counts, per data-loader process, the members read and the
unreadable ones (per shard), and ends training with one line (:data:`MARKER` + the message,
which :mod:`.monitor` turns into the run's error) when

- more than ``max_fraction`` of the members read are unreadable, once ``MIN_MEMBERS`` have been
  read, or
- ``MAX_IN_A_ROW`` members in a row are unreadable (data that yields no valid sample at all).

Logs stay bounded: the first ``LOGGED`` unreadable members are logged one line each, then one
line every ``LOG_EVERY``. :func:`install` puts the guard into ``open_clip_train.data`` (called by
:mod:`.openclip_entry` before open_clip builds its pipeline).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

MARKER = "datacomp-corrupt-data: "  # the line the trainer prints before it stops; monitor reads it
DEFAULT_MAX_FRACTION = 0.1
MIN_MEMBERS = 500  # members read before the fraction rule applies (a few bad ones early are noise)
MAX_IN_A_ROW = 1000
LOGGED = 20
LOG_EVERY = 10_000
FLAG = "--datacomp-max-corrupt-fraction"  # the entry point's own argument (stripped before open_clip's)

log = logging.getLogger(__name__)


class CorruptDataError(RuntimeError):
    """Raised in the data loader when the guard's limits are passed (its message is the one line)."""


def check_fraction(value: Any) -> float:
    """``value`` as a fraction in (0, 1] (1: the fraction rule is off), else ValueError."""
    f = float(value)
    if not 0 < f <= 1:
        raise ValueError(f"must be a fraction in (0, 1], got {value!r}")
    return f


class CorruptGuard:
    def __init__(self, max_fraction: float = DEFAULT_MAX_FRACTION, min_members: int = MIN_MEMBERS,
                 max_in_a_row: int = MAX_IN_A_ROW, emit: Callable[[str], None] | None = None) -> None:
        self.max_fraction = check_fraction(max_fraction)
        self.min_members, self.max_in_a_row = min_members, max_in_a_row
        self.read = 0
        self.bad = 0
        self.in_a_row = 0
        self.by_shard: Counter[str] = Counter()
        self.current = "?"  # the shard of the member read last (a decode error is about it)
        self.current_bad = True  # whether that member turned out unreadable (none read yet: no good one)
        self.emit = emit or (lambda line: print(line, flush=True))

    def member(self, url: str | None) -> None:
        """A member read from shard ``url`` (good unless :meth:`error` follows before the next one)."""
        if not self.current_bad:  # the one before it decoded: the run of unreadable members is broken
            self.in_a_row = 0
        self.read += 1
        self.current = str(url) if url else "?"
        self.current_bad = False

    def error(self, exn: BaseException, new_member: bool = False) -> bool:
        """One unreadable member (``new_member``: one the reader never handed on, a tar-level error);
        True (skip it and go on) or CorruptDataError past the limits."""
        url = _url_of(exn) or self.current
        if new_member:
            self.read += 1
        else:
            self.current_bad = True
        self.bad += 1
        self.in_a_row += 1
        self.by_shard[url] += 1
        if self.bad <= LOGGED or self.bad % LOG_EVERY == 0:
            more = "" if self.bad <= LOGGED else f" ({self.bad} unreadable of {self.read} read so far)"
            log.warning("Handling webdataset error (%r) in %s%s. Ignoring.", exn, url, more)
            if self.bad == LOGGED:
                log.warning("further unreadable members are logged one in %d", LOG_EVERY)
        why = None
        if self.in_a_row >= self.max_in_a_row:
            why = (f"the training data yields no valid sample ({self.in_a_row} unreadable members in a row, "
                   f"{self.bad} of {self.read} read)")
        elif self.read >= self.min_members and self.bad > self.max_fraction * self.read:
            why = (f"{self.bad} of {self.read} training members read are unreadable "
                   f"({100 * self.bad / self.read:.1f}% > {FLAG[len('--datacomp-'):]} {self.max_fraction:g})")
        if why is not None:
            msg = f"{self._shards()}: {why}"
            self.emit(MARKER + msg)
            raise CorruptDataError(msg)
        return True

    def _shards(self) -> str:
        top = self.by_shard.most_common(3)
        text = ", ".join(f"{u} ({n} unreadable)" for u, n in top)
        more = len(self.by_shard) - len(top)
        return text + (f" and {more} more shard(s)" if more > 0 else "")


def _url_of(exn: BaseException) -> str | None:
    """The shard webdataset's tar readers name in an exception's args (they append the url)."""
    for a in reversed(getattr(exn, "args", ()) or ()):
        if isinstance(a, str) and (a.endswith(".tar") or "://" in a):
            return a
    return None


def install(max_fraction: float = DEFAULT_MAX_FRACTION) -> CorruptGuard:
    """Put a guard into ``open_clip_train.data``: its member filter counts the members read, its
    error handler (tar reading and image decoding) counts the unreadable ones."""
    import open_clip_train.data as ocd

    guard = CorruptGuard(max_fraction)
    keep = ocd.filter_no_caption_or_no_image
    tar_to_samples = ocd.tarfile_to_samples_nothrow

    def counted_filter(sample: dict) -> bool:
        guard.member(sample.get("__url__"))
        if keep(sample):
            return True
        guard.error(ValueError(f"sample {sample.get('__key__')!r} has no image or no caption"))
        return False

    def handler(exn: BaseException) -> bool:
        return guard.error(exn)

    def tar_handler(exn: BaseException) -> bool:
        return guard.error(exn, new_member=True)

    ocd.filter_no_caption_or_no_image = counted_filter
    ocd.log_and_continue = handler
    ocd.tarfile_to_samples_nothrow = lambda src, handler=tar_handler: tar_to_samples(src, handler=handler)
    return guard
