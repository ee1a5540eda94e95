"""Monitoring the trainer: its output streamed to ``stdout.log``, progress lines (step, loss,
samples/s, ETA) logged and appended to ``progress.log``, a run that yields no sample ended, and
open_clip's ``out.log`` parsed for the manifest and the report's loss curves.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..executors.children import ended_with_us, spawn
from ..progress import hms
from .corrupt import MARKER, MAX_IN_A_ROW

log = logging.getLogger(__name__)


class Progress:
    """Live progress from open_clip's ``Train Epoch`` lines: overall step, loss, samples/s (and per
    GPU), ETA; each line is logged and appended to ``out/progress.log``."""

    def __init__(self, epochs: int, samples_per_epoch: int, global_batch: int, world_size: int,
                 log_file: Path | None = None) -> None:
        self.epochs, self.per_epoch, self.batch, self.world = epochs, samples_per_epoch, global_batch, world_size
        self.total = epochs * samples_per_epoch
        self.log_file = log_file
        self.t0: float | None = None
        self.done0 = 0
        self.last: dict[str, Any] = {}

    def update(self, line: str, now: float | None = None) -> str | None:
        m = _TRAIN_LINE.search(line)
        if not m:
            return None
        now = time.time() if now is None else now
        ep, done, tot, pct, rate, lr, loss, avg = m.groups()
        g = _GPU_RATE.search(line)
        per_gpu = float(g.group(1)) if g else float(rate) / max(1, self.world)
        seen = int(ep) * self.per_epoch + int(done)
        if self.t0 is None or seen < self.done0:
            self.t0, self.done0 = now, seen  # first line (or a resume) starts the clock
        avg_rate = (seen - self.done0) / (now - self.t0) if now > self.t0 and seen > self.done0 else float(rate)
        eta = (self.total - seen) / avg_rate if avg_rate > 0 else float("inf")
        step, steps = seen // self.batch, self.total // self.batch
        text = (f"epoch {int(ep) + 1}/{self.epochs} step {step}/{steps} ({100 * seen / max(1, self.total):.1f}%) "
                f"loss {float(loss):.4f} (avg {float(avg):.4f}) {float(rate):.1f} samples/s ({per_gpu:.1f}/s/gpu) "
                f"lr {float(lr):.3g} ETA {hms(eta)}")
        self.last = {"step": step, "steps": steps, "samples": seen, "loss": float(loss), "samples_per_s": float(rate),
                     "samples_per_s_per_gpu": per_gpu, "eta_s": eta}
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        return text


# webdataset logs "... Ignoring" for each member or shard it cannot read, and with resampled shards
# never runs out of them: this many in a row, without a training step between, ends the run (the
# trainer's own guard, :mod:`.corrupt`, counts them too, and past its limits prints one line)
MAX_SKIPPED_LINES = MAX_IN_A_ROW


def stream(cmd: list[str], env: dict[str, str], log_file: Path, progress: Progress | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, append its output to ``log_file``, and log progress lines (loss, samples/s, ETA)."""
    tail: deque[str] = deque(maxlen=40)
    skipped = 0
    with open(log_file, "a", encoding="utf-8") as lf:
        lf.write(f"\n$ {shlex.join(cmd)}\n")
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        assert proc.stdout is not None
        with ended_with_us(proc):  # an interrupted train takes the trainer (and torchrun's workers) along
            for line in proc.stdout:
                lf.write(line)
                line = line.rstrip()
                tail.append(line)
                msg = line.split("| INFO | ", 1)[-1]
                if line.startswith(MARKER):  # the data loader's guard: too many unreadable members
                    raise FormatError(f"{line[len(MARKER):]} (full log: {log_file})")
                skipped = skipped + 1 if "Ignoring" in line else (0 if "Train Epoch" in line else skipped)
                if skipped > MAX_SKIPPED_LINES:  # data that yields no sample: fail, do not fill the disk
                    raise FormatError(f"{log_file}: the training data yields no valid sample ({skipped} bad "
                                      f"members or shards skipped in a row, e.g. {_short(msg)[:200]})")
                if "Train Epoch" in line:
                    text = progress.update(msg) if progress is not None else None
                    log.info("train: %s", text or _short(msg))
                elif "Start epoch" in line or "resuming checkpoint" in line or "Found latest resume" in line:
                    log.info("train: %s", msg)
                elif "Error" in line or "Traceback" in line:
                    log.warning("train: %s", msg)
                else:
                    log.debug("train: %s", msg)
            rc = proc.wait()
    return rc, list(tail)


_TRAIN_LINE = re.compile(
    r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].*?([\d.e+]+)/s,.*?LR: ([\d.e+-]+).*? Loss: ([\d.]+) \(([\d.]+)\)")
_GPU_RATE = re.compile(r"([\d.e+]+)/s/gpu")


def _short(msg: str) -> str:
    m = _TRAIN_LINE.search(msg)
    if not m:
        return msg
    ep, done, tot, pct, rate, lr, loss, avg = m.groups()
    return f"epoch {ep} {done}/{tot} ({pct}%) loss {loss} (avg {avg}) {float(rate):.0f} samples/s lr {lr}"


def parse_train_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Progress rows (epoch, samples, loss, avg_loss, samples_per_s, lr) from an open_clip ``out.log``."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text(errors="replace").splitlines():
        m = _TRAIN_LINE.search(line)
        if m:
            ep, done, tot, pct, rate, lr, loss, avg = m.groups()
            g = _GPU_RATE.search(line)
            rows.append({"epoch": int(ep), "samples": int(done), "loss": float(loss), "avg_loss": float(avg),
                         "samples_per_s": float(rate), "samples_per_s_per_gpu": float(g.group(1)) if g else float(rate),
                         "lr": float(lr)})
    return rows


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
