"""How long `datacomp aggregate` and `datacomp leaderboard` take on 1,000 results files.

    .venv/bin/python bench/aggregate.py [--files 1000] [--repeat 3] [--record]

Writes ``--files`` run directories into a temporary directory, a quarter at each reference scale
(small, medium, large, xlarge), each with a train manifest and an ``eval_results.jsonl`` of the
40 reference tasks as the evaluator writes them (classification lines with acc1 / acc5 / mean
per-class recall, FairFace and UTKFace lines with every group metric). Then times, ``--repeat``
times each: the two commands as a user runs them (``python -m datacomp.cli aggregate FILE...
--json`` and ``... leaderboard DIR``, output to /dev/null: interpreter start and imports
included), and the same work in this process (``aggregate_file`` per file, ``build_leaderboard``
+ its text). Prints one JSON line with the best and every wall time and the machine (nproc,
load average before and after). Target (issue 13): each command <= 5 s on 1,000 files.
``--record`` appends a dated section to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fidelity import RESULTS_MD, machine_line, record_section

SCALES = ("small", "medium", "large", "xlarge")


def _fairness_metrics(races: int) -> dict:
    import numpy as np

    from datacomp.evaluate.metrics import fairness_metrics

    rng = np.random.default_rng(races)
    n = 2000
    md = np.stack([rng.integers(0, 9, n), rng.integers(0, 2, n), rng.integers(0, races, n), rng.integers(0, 2, n)], 1)
    preds = np.stack([rng.integers(0, races, n), rng.integers(0, 2, n), rng.integers(0, 9, n), rng.integers(0, 20, n)], 1)
    return {**fairness_metrics(preds, md), "main_metric": None}


def write_runs(root: Path, n: int) -> list[Path]:
    from datacomp.evaluate.registry import load_tasks

    tasks = load_tasks("datacomp")
    fair = {"fairness/fairface": _fairness_metrics(7), "fairness/utkface": _fairness_metrics(5)}
    files = []
    for i in range(n):
        scale = SCALES[i % len(SCALES)]
        run = root / scale / f"run{i:04d}"
        run.mkdir(parents=True)
        lines = []
        for j, t in enumerate(tasks):
            if t.key in fair:
                metrics = fair[t.key]
            else:
                v = round((0.05 + 0.0003 * i + 0.011 * j) % 1.0, 6)
                metrics = {"acc1": v, "acc5": min(1.0, v + 0.2), "mean_per_class_recall": v, "main_metric": v}
            lines.append(json.dumps({"key": t.key, "dataset": t.name, "metrics": metrics, "registry_version": 3}))
        (run / "eval_results.jsonl").write_text("\n".join(lines) + "\n")
        (run / "manifest.json").write_text(json.dumps({"stage": "train", "params": {"scale": {"name": scale}},
                                                       "counts": {"unique_samples": 1000 + i}}))
        files.append(run / "eval_results.jsonl")
    return files


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _cli(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one command in a child process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    t0, c0 = time.time(), _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "datacomp.cli", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return round(time.time() - t0, 3), round(_cpu(resource.RUSAGE_CHILDREN) - c0, 3)


def _here(fn) -> tuple[float, float]:
    t0, c0 = time.time(), _cpu(resource.RUSAGE_SELF)
    fn()
    return round(time.time() - t0, 3), round(_cpu(resource.RUSAGE_SELF) - c0, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help=f"append a dated section to {RESULTS_MD}")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datacomp.evaluate.aggregate import aggregate_file, format_aggregate
    from datacomp.report.leaderboard import build_leaderboard, format_leaderboard

    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    res: dict = {"files": a.files}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_runs(root, a.files)
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        out: dict = {}

        def aggregate_all() -> None:
            out["text"] = "".join(format_aggregate(aggregate_file(f)) for f in files)

        def leaderboard() -> None:
            out["board"] = build_leaderboard([root])
            format_leaderboard(out["board"])

        for _ in range(a.repeat):
            for name, (w, c) in (("aggregate_cli", _cli(["aggregate", "--json", *map(str, files)])),
                                 ("leaderboard_cli", _cli(["leaderboard", str(root)])),
                                 ("aggregate_inproc", _here(aggregate_all)),
                                 ("leaderboard_inproc", _here(leaderboard))):
                walls.setdefault(name, []).append(w)
                cpus.setdefault(name, []).append(c)
        res.update({f"{k}_best_s": min(v) for k, v in walls.items()})
        res.update({f"{k}_cpu_best_s": min(v) for k, v in cpus.items()})
        res["walls"], res["cpus"] = walls, cpus
        board, text = out["board"], out["text"]
        res["runs_ranked"] = sum(1 for s in board.sections for r in s.rows if r["kind"] == "run")
        res["sections"] = [f"{s.scale}/{s.track}" for s in board.sections]
        res["complete_files"] = text.count("38 of 38 scored tasks")
    load_end = os.getloadavg()
    machine = machine_line(load_start, load_end)
    res["machine"] = machine
    print(json.dumps(res))
    if a.record:
        body = (f"{a.files} results files (40 reference tasks each, a quarter per reference scale), best of "
                f"{a.repeat} (wall / CPU seconds; whole commands include interpreter start and imports):\n\n"
                "| | `datacomp aggregate --json` (all files) | `datacomp leaderboard` (their root) |\n|---|---|---|\n"
                f"| command | {res['aggregate_cli_best_s']} / {res['aggregate_cli_cpu_best_s']} | "
                f"{res['leaderboard_cli_best_s']} / {res['leaderboard_cli_cpu_best_s']} |\n"
                f"| in process | {res['aggregate_inproc_best_s']} / {res['aggregate_inproc_cpu_best_s']} | "
                f"{res['leaderboard_inproc_best_s']} / {res['leaderboard_inproc_cpu_best_s']} |\n\n"
                f"Target: <= 5 s each. Every run: walls `{json.dumps(walls)}`, CPU `{json.dumps(cpus)}`.\n")
        record_section(RESULTS_MD, f"Aggregate and leaderboard on {a.files} results files (`bench/aggregate.py`), "
                                   f"{started.strftime('%Y-%m-%d %H:%M UTC')}", machine, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
