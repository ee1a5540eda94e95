"""Kill ``datacomp train --overwrite`` at random points: the old run must stay byte for byte.

    .venv/bin/python bench/overwrite_kills.py [--kills 5] [--seed 0] [--dir /tmp/overwrite-kills]

Trains a run (``synth_test`` scale on toy shards, seed 0), times one uninterrupted ``--overwrite``
with seed 1 beside it (T; the old run is restored from a copy afterwards), then ``--kills`` times: starts
``train --overwrite --seed 1`` in a process group of its own, ``kill -9`` after a uniformly random
5-95 % of T, counts the group's processes alive 2 s later (orphans), and checks every file of the
old run is byte-identical (and lists files added: the killed run's ``.lock``, which the kernel has
released, stays until the next run on the directory ends). Last, a plain ``train --seed 0`` must reuse the
old run and drop the killed overwrite's sibling. Prints one line and a JSON summary.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from datacomp.executors.children import group_members, kill_group
from datacomp.train.toydata import write_toy_shards


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(data: Path, out: Path, seed: int, overwrite: bool) -> list[str]:
    return [sys.executable, "-m", "datacomp.cli", "train", "--scale", "synth_test", "--data", str(data), "--out", str(out),
            "--device", "cpu", "--workers", "1", "--seed", str(seed)] + (["--overwrite"] if overwrite else [])


def run(cmd: list[str]) -> float:
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="/tmp/overwrite-kills")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    d = Path(a.dir)
    shutil.rmtree(d, ignore_errors=True)
    write_toy_shards(d / "shards", n_shards=2, per_shard=64)
    run_dir, keep = d / "run", d / "old-copy"
    t_old = run(cli(d / "shards", run_dir, 0, False))
    shutil.copytree(run_dir, keep)
    before = snapshot(run_dir)
    t_ref = run(cli(d / "shards", run_dir, 1, True))  # a whole overwrite: its time T
    shutil.rmtree(run_dir)
    shutil.copytree(keep, run_dir)
    rows = []
    for _ in range(a.kills):
        delay = rng.uniform(0.05, 0.95) * t_ref
        p = subprocess.Popen(cli(d / "shards", run_dir, 1, True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            p.wait(timeout=delay)
            rows.append({"delay_s": round(delay, 1), "killed": False})  # finished first: the old run is gone
            shutil.rmtree(run_dir)
            shutil.copytree(keep, run_dir)
            continue
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        time.sleep(2.0)
        orphans = len(group_members(p.pid))
        kill_group(p.pid)
        after = snapshot(run_dir)
        rows.append({"delay_s": round(delay, 1), "killed": True, "orphans": orphans,
                     "old_identical": all(after.get(k) == v for k, v in before.items()),
                     "changed": sorted(k for k in before if after.get(k) != before[k])[:5],
                     "added": sorted(set(after) - set(before)), "sibling_left": (d / ".run.swap-new").is_dir()})
    p = subprocess.run(cli(d / "shards", run_dir, 0, False), capture_output=True, text=True, timeout=600)
    reused = p.returncode == 0 and snapshot(run_dir) == before and not list(d.glob(".run.swap-*"))
    killed = [r for r in rows if r["killed"]]
    s = {"train_s": round(t_old, 1), "overwrite_s": round(t_ref, 1), "kills": len(killed), "starts": len(rows),
         "old_identical": sum(r["old_identical"] for r in killed), "orphans": sum(r["orphans"] for r in killed),
         "added": sorted({f for r in killed for f in r["added"]}),
         "rerun_reuses_old": reused, "rows": rows}
    print(f"train --overwrite killed {s['kills']} times (of {s['starts']} starts): old run identical "
          f"{s['old_identical']}/{s['kills']} (files added: {', '.join(s['added']) or 'none'}), orphans {s['orphans']}, "
          f"next plain run reuses it: {reused}")
    print(json.dumps({k: v for k, v in s.items() if k != "rows"}))


if __name__ == "__main__":
    main()
