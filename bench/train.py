"""Overhead of ``datacomp train`` against ``python -m open_clip_train.main`` with the same arguments.

    .venv/bin/python bench/train.py [--scale synth_test] [--shards 3] [--per-shard 800] [--repeats 2] [--workers 1]

Writes toy shards (32-px JPEG shapes, :mod:`datacomp.train.toydata`), then alternates, ``--repeats``
times, on CPU:

* ``wrapper``: :func:`datacomp.train.train` (argument building, data discovery, the seeded-shuffle
  entry point, live progress parsing of the piped output, finishing: info.json, weights, manifest);
* ``direct``: ``python -m open_clip_train.main`` with exactly the arguments the wrapper ran
  (from its ``train_args.json``) except ``--logs`` / ``--name``, output to a file.

Figures per run: ``train_sps`` (steady state: global batch / mean open_clip batch time over the
log windows after the first), ``e2e_sps`` (samples seen / wall time of the whole command,
start-up and finishing included) and ``cpu_sps`` (samples seen / CPU seconds of everything the
command ran: the least sensitive to other work on a shared machine). ``overhead`` = 1 - wrapper / direct (median over repeats;
``overhead_*_best``: best run of each, the least disturbed on a shared machine).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datacomp.config import Scale, load_scale
from datacomp.train import train
from datacomp.train.toydata import write_toy_shards

_BATCH_T = re.compile(r"Train Epoch: .*?Batch \(t\): ([\d.]+),")


def steady_sps(log: Path, global_batch: int) -> float | None:
    times = [float(m.group(1)) for m in map(_BATCH_T.search, log.read_text(errors="replace").splitlines()) if m]
    times = times[1:] or times  # the first window holds model warm-up and the first batches' decoding
    return global_batch / statistics.mean(times) if times else None


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the trainer and its loader workers)."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def run_wrapper(scale, shards: Path, out: Path, workers: int) -> tuple[dict, list[str]]:
    t0, c0 = time.perf_counter(), _cpu()
    train(scale, shards, out, workers=workers, device="cpu")
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    cmd = json.loads((out / "train_args.json").read_text())["command"]
    return {"wall_s": wall, "cpu_s": cpu, "e2e_sps": scale.samples_seen / wall, "cpu_sps": scale.samples_seen / cpu,
            "train_sps": steady_sps(out / "out.log", scale.batch_size)}, cmd


def run_direct(scale, wrapper_cmd: list[str], out: Path, env: dict[str, str]) -> dict:
    args = wrapper_cmd[wrapper_cmd.index("-m") + 2:]
    args[args.index("--logs") + 1] = str(out.parent)
    args[args.index("--name") + 1] = out.name
    cmd = [sys.executable, "-m", "open_clip_train.main", *args]
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu()
    with open(out.parent / f"{out.name}.stdout", "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if rc != 0:
        raise SystemExit(f"direct open_clip run failed (exit {rc}): {shlex.join(cmd)}")
    return {"wall_s": wall, "cpu_s": cpu, "e2e_sps": scale.samples_seen / wall, "cpu_sps": scale.samples_seen / cpu,
            "train_sps": steady_sps(out / "out.log", scale.batch_size)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="synth_test")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--per-shard", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--samples", type=int, default=None, help="override samples seen (a longer run, same protocol otherwise)")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    scale = load_scale(a.scale)
    if a.samples:
        scale = Scale(**{**scale.__dict__, "samples_seen": a.samples})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's TERM still removes the temporary
    base = Path(tempfile.mkdtemp(prefix="bench-train-", dir=a.dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)))
    try:
        shards = base / "shards"
        write_toy_shards(shards, n_shards=a.shards, per_shard=a.per_shard)
        load0 = os.getloadavg()
        res: dict[str, list[dict]] = {"wrapper": [], "direct": []}
        # the wrapper's environment for the child (same thread count)
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) - a.workers)))
        cmd: list[str] = []
        for r in range(a.repeats):  # ABBA order: slow drifts in the machine's load hit both alike
            for kind in (("wrapper", "direct") if r % 2 == 0 else ("direct", "wrapper")):
                if kind == "wrapper":
                    w, cmd = run_wrapper(scale, shards, base / f"wrapper{r}", a.workers)
                    res["wrapper"].append(w)
                else:
                    if not cmd:  # the direct run copies the wrapper's exact command: build it first
                        cmd = train(scale, shards, base / "probe", workers=a.workers, device="cpu", print_args=True)
                    res["direct"].append(run_direct(scale, cmd, base / f"direct{r}", env))
    finally:  # toy shards and run directories: ~260 MB, in /dev/shm (memory) by default
        shutil.rmtree(base, ignore_errors=True)

    def med(kind: str, key: str) -> float | None:
        vals = [x[key] for x in res[kind] if x[key] is not None]
        return round(statistics.median(vals), 1) if vals else None

    out = {
        "bench": "train", "scale": a.scale, "samples_seen": scale.samples_seen, "global_batch": scale.batch_size,
        "shards": a.shards, "per_shard": a.per_shard, "workers": a.workers, "repeats": a.repeats,
        "wrapper_train_sps": med("wrapper", "train_sps"), "direct_train_sps": med("direct", "train_sps"),
        "wrapper_e2e_sps": med("wrapper", "e2e_sps"), "direct_e2e_sps": med("direct", "e2e_sps"),
        "runs": {k: [{kk: round(vv, 2) for kk, vv in x.items() if vv is not None} for x in v] for k, v in res.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_version()}",
        "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    out["wrapper_cpu_sps"], out["direct_cpu_sps"] = med("wrapper", "cpu_sps"), med("direct", "cpu_sps")
    for key in ("train", "e2e", "cpu"):
        w, d = out[f"wrapper_{key}_sps"], out[f"direct_{key}_sps"]
        out[f"overhead_{key}"] = round(1 - w / d, 4) if w and d else None
        # best of the repeats: the least disturbed run of each on a shared machine
        bw = max((x[f"{key}_sps"] for x in res["wrapper"] if x[f"{key}_sps"]), default=None)
        bd = max((x[f"{key}_sps"] for x in res["direct"] if x[f"{key}_sps"]), default=None)
        out[f"overhead_{key}_best"] = round(1 - bw / bd, 4) if bw and bd else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
