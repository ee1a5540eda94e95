"""Kill each stage at random points, re-run it, and check the result is the uninterrupted one.

    .venv/bin/python bench/kill_campaign.py [--stages synth,filter,reshard,byod,download] [--kills 5]
                                            [--seed 0] [--dir /tmp/kill-campaign] [--heavy]

Every run of a stage writes to the same ``DIR/NAME`` (outputs record their own paths), the
reference is kept aside and put back for the stages that read it. For every stage: two
uninterrupted runs (the reference, and a second one that must match it and
gives the time T with warm caches), then ``--kills`` trials
of: start ``python -m datacomp.cli VERB ...`` in a process group of its own, ``kill -9`` it after a
uniformly random 5-95 % of T (a run that ends first does not count, and T becomes its time; at
most 3 x ``--kills`` starts), count the processes of its group still alive 2 s later (orphans,
then ended), re-run the same command to completion, and compare the output tree with the
reference: every file byte for byte, JSON files after dropping what is meant to vary (timings,
creation times), plus any temporary file of :mod:`datacomp.formats.atomic`
or work directory left in the finished output (stray). ``--heavy`` adds train and evaluate on
the campaign's own reshard and train outputs (minutes each on 2 cores), and embed (the world's
two teachers trained on a fresh copy of the campaign's synth pool, then the pool embedded; every run
starts from that copy). download fetches 600 generated JPEGs from a local HTTP server (a thread of
this process, 127.0.0.1, bench/download.py's) in 6 shards, blurring face boxes; its tars are compared
member by member (name and bytes: img2dataset stamps each member with the time it was written) and
its shards as sets of samples and rows (its threads write a shard's samples as they finish).
Prints one line per stage and a JSON summary.
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
import tarfile
import time
from pathlib import Path

from datacomp.executors.children import group_members, kill_group
from datacomp.formats.atomic import _TEMP

VOLATILE_KEYS = {"created", "timings", "cwd", "samples_per_second", "rows_per_second", "pairs_per_s_per_worker",
                 "seconds", "wall_s", "cpu_s", "reused", "cache", "samples_per_s", "duration", "start_time", "end_time",
                 "pid", "read_seconds", "train_s", "run_manifest",  # embed: a unit's process and times; a teacher
                 # run manifest's digest (that manifest holds its timings; it is compared itself, normalised)
                 "files"}  # sizes/digests of the files, compared directly (meta.json's include its timings)
VOLATILE_FILES = {"stdout.log", "progress.log", "out.log", "img2dataset.log"}
UNORDERED = {"download"}  # stages whose shards hold their samples in completion order


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "datacomp.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _normal(obj):
    if isinstance(obj, dict):
        return {k: _normal(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_normal(v) for v in obj]
    return obj


def _tar_members(path: Path, ordered: bool) -> bytes:
    """A tar's members as (name, bytes), in order unless not ``ordered``, without headers' times and owners."""
    entries = []
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                f = tf.extractfile(m) if m.isfile() else None
                entries.append(m.name.encode() + b"\0" + hashlib.sha256(f.read() if f else m.type).digest())
    except tarfile.TarError as e:  # a damaged tar: its bytes, so it differs from the reference
        return path.read_bytes() + str(e).encode()
    return b"".join(entries if ordered else sorted(entries))


def _parquet_rows(path: Path) -> bytes:
    """A parquet table's rows in key order (img2dataset writes a shard's rows as its threads finish)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return json.dumps(sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str)), sort_keys=True,
                      default=str).encode()


def tree_digest(root: Path, ordered: bool = True) -> dict[str, str]:
    """relative path -> digest (JSON normalised, see the module doc) of every file of an output;
    not ``ordered``: tar members and parquet rows compared as sets (a download's shards)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name in VOLATILE_FILES:
            continue
        rel = str(p.relative_to(root))
        if p.suffix == ".tar":
            data = _tar_members(p, ordered)
        elif p.suffix == ".parquet" and not ordered:
            data = _parquet_rows(p)
        else:
            data = p.read_bytes()
        if p.suffix in (".json", ".jsonl"):
            try:
                docs = [json.loads(line) for line in data.splitlines() if line.strip()] if p.suffix == ".jsonl" \
                    else [json.loads(data)]
                data = json.dumps(_normal(docs), sort_keys=True).encode()
            except ValueError:  # not JSON after all: its bytes are compared as they are
                pass
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def strays(root: Path) -> list[str]:
    """Temporaries of killed writers left in a finished output: atomic_path/replaced_dir names, work
    directories, and any other hidden ``.NAME.tmp``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if _TEMP.match(p.name) or p.name.endswith((".work", ".tmp")))


def run(args: list[str], timeout: float = 1800) -> float:
    t0 = time.time()
    p = subprocess.run(_cli(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return time.time() - t0


def trial(args_for, ref: Path, t_ref: float, out: Path, rng: random.Random, prepare=None, ordered: bool = True) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if prepare:
        prepare(out)
    delay = rng.uniform(0.05, 0.95) * t_ref
    t0 = time.time()
    p = subprocess.Popen(_cli(args_for(out)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        p.wait(timeout=delay)
        return {"delay_s": round(delay, 2), "killed": False, "finished_s": time.time() - t0}  # done before the kill
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed = True
    time.sleep(2.0)
    orphans = len(group_members(p.pid))
    kill_group(p.pid)
    run(args_for(out))
    got, want = tree_digest(out, ordered), tree_digest(ref, ordered)
    differs = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return {"delay_s": round(delay, 2), "killed": killed, "orphans": orphans,
            "identical": not differs, "differs": differs[:20], "stray": strays(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="synth,filter,reshard,byod,download")
    ap.add_argument("--heavy", action="store_true", help="also train, evaluate and embed")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="/tmp/kill-campaign")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    d = Path(a.dir)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    pool = d / "pool"
    run(["synth", "--scale", "synth_test", "--out", str(pool), "--workers", "1"])
    stages = {  # every run of a stage writes to d/NAME, so paths recorded inside outputs agree
        "synth": lambda o: ["synth", "--scale", "synth_test", "--out", str(o), "--workers", "1"],
        "filter": lambda o: ["filter", "--pool", str(pool), "--recipe", "basic_filter", "--out", str(o / "s.npy"),
                             "--workers", "1"],
        "reshard": lambda o: ["reshard", "--pool", str(pool), "--subset", str(d / "filter" / "s.npy"),
                              "--out", str(o), "--shard-size", "200", "--workers", "1"],
        "byod": lambda o: ["byod", "--shards", str(pool / "shards"), "--out", str(o), "--workers", "1"],
        "train": lambda o: ["train", "--scale", "synth_test", "--data", str(d / "reshard"), "--out", str(o),
                            "--device", "cpu"],
        "evaluate": lambda o: ["evaluate", "--run", str(d / "train"), "--evalsets", str(pool / "evalsets"),
                               "--out", str(o / "results.jsonl")],
        "embed": lambda o: ["embed", "--pool", str(o), "--teacher", "--workers", "1"],
        "download": lambda o: ["download", "--pool", str(o), "--metadata", str(d / "urls"), "--samples-per-shard",
                               "100", "--processes", "1", "--threads", "8", "--retries", "0"],
    }
    prepare = {"embed": lambda o: shutil.copytree(pool, o, symlinks=True)}  # embed writes into the pool it reads
    names = [s for s in a.stages.split(",") if s] + (["train", "evaluate", "embed"] if a.heavy else [])
    if "download" in names:
        from download import make_images, serve, write_metadata  # bench/download.py: generated JPEGs over HTTP

        httpd, base = serve(make_images(40))
        write_metadata(d / "urls", base, 600)
    order = [s for s in stages if s in names or (s in ("filter", "reshard") and {"reshard", "train", "evaluate"} & set(names))
             or (s == "train" and "evaluate" in names)]
    summary = {}
    for name in order:
        out, ref = d / name, d / f".ref-{name}"
        prep = prepare.get(name)
        if prep:
            prep(out)
        run(stages[name](out))
        if name not in names:
            continue
        shutil.copytree(out, ref, symlinks=True)
        shutil.rmtree(out)  # a second uninterrupted run: warm caches give T, and the stage must be deterministic
        if prep:
            prep(out)
        t_ref = run(stages[name](out))
        ordered = name not in UNORDERED
        if tree_digest(out, ordered) != tree_digest(ref, ordered):
            got, want = tree_digest(out, ordered), tree_digest(ref, ordered)
            raise SystemExit(f"{name}: two uninterrupted runs differ ({sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]}); "
                             "the campaign cannot judge re-runs")
        rows, attempts = [], 0
        while len(rows) < a.kills and attempts < 3 * a.kills:  # a run that ends before its kill time does not count
            attempts += 1
            r = trial(stages[name], ref, t_ref, out, rng, prep, ordered)
            if r["killed"]:
                rows.append(r)
            else:
                t_ref = min(t_ref, r["finished_s"])
        shutil.rmtree(out)
        shutil.copytree(ref, out, symlinks=True)  # the next stages read the reference
        s = {"reference_s": round(t_ref, 1), "kills": len(rows), "attempts": attempts,
             "identical": sum(r["identical"] for r in rows), "orphans": sum(r["orphans"] for r in rows),
             "stray_files": sum(len(r["stray"]) for r in rows), "rows": rows}
        summary[name] = s
        print(f"{name:9s} run {s['reference_s']:6.1f}s  kills {s['kills']} (of {attempts} starts)  re-runs identical "
              f"{s['identical']}/{s['kills']}  orphans {s['orphans']}  stray files {s['stray_files']}", flush=True)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rows"} for k, v in summary.items()}))
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
