"""Child processes that end with their parent, and locks on the directories they write.

A stage that runs a program (open_clip training, img2dataset) starts it with :func:`spawn`: in a
process group of its own, with ``PR_SET_PDEATHSIG`` so a parent killed with ``kill -9`` takes
the child along, and :func:`ended_with_us` kills the whole group when the parent is interrupted
(Ctrl-C, SIGTERM — the CLI turns SIGTERM into an interrupt) or when the child exits and leaves
workers behind. :func:`dir_lock` holds an ``flock`` on a run directory for the life of the stage:
a second stage on the same directory refuses in one line, naming the holder's pid; the kernel
drops the lock when the holder dies, so a killed run never leaves a stale lock (the file itself
is removed when the stage ends, and ignored by the stage's own "is the directory empty" test).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import StageConflictError

LOCK_NAME = ".lock"


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux (no prctl): stale groups are still reaped by the next run
        pass


def group_members(pgid: int) -> list[int]:
    """pids of the live processes in process group ``pgid`` (from /proc)."""
    members = []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


def kill_group(pgid: int) -> None:
    """SIGKILL a process group this module started (its pgid is the leader's pid)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def spawn(cmd: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """Popen ``cmd`` as the leader of a new process group that dies with this process."""
    return subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=die_with_parent, **popen_kwargs)


@contextlib.contextmanager
def ended_with_us(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Kill ``proc``'s whole group if the block is interrupted, and its leftovers when it ends."""
    try:
        yield proc
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    kill_group(proc.pid)  # workers the program left behind, if any


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``DIR/.lock`` (flock) for the block; StageConflictError naming the holder if it is busy."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise StageConflictError(f"{directory}: another datacomp {what} (pid {holder}) is using this directory; "
                                     "wait for it to finish or end it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still held: a finished output keeps no lock file
    finally:
        os.close(fd)
