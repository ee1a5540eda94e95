"""How long `datacomp report` takes on a finished work directory.

    .venv/bin/python bench/report.py WORKDIR [--out DIR] [--repeat 3] [--record]

Builds the report of WORKDIR (read only; the page goes to --out, default a temporary directory)
``--repeat`` times in this process and prints one JSON line: wall and CPU seconds of each build
(the first also pays matplotlib's import and font cache), the page's size and file count, whether
every build gave the same bytes, and the machine (nproc, load average before and after). The
machine may be shared: load only ever adds time. ``--record`` appends a dated section to
bench/RESULTS.md. Target (issue 12): the 20k-row demo pool's report in <= 20 s on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fidelity import RESULTS_MD, machine_line, record_section


def _digest(out: Path) -> tuple[str, int, int]:
    h = hashlib.sha256()
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")  # timings differ
    for p in files:
        h.update(str(p.relative_to(out)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16], len(files), sum(p.stat().st_size for p in files)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir")
    ap.add_argument("--out", help="report directory (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help=f"append a dated section to {RESULTS_MD}")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datacomp.report.build import build_report

    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp) / "report"
        builds = []
        for _ in range(a.repeat):
            t0, c0 = time.time(), _cpu()
            rep = build_report([a.workdir], out, overwrite=True)  # a build each time, not the reuse
            builds.append({"wall_s": round(time.time() - t0, 2), "cpu_s": round(_cpu() - c0, 2),
                           "digest": _digest(out)[0]})
        digest, n_files, size = _digest(out)
        notes = rep.notes
    result = {"workdir": a.workdir, "builds": [{k: b[k] for k in ("wall_s", "cpu_s")} for b in builds],
              "identical": len({b["digest"] for b in builds}) == 1, "files": n_files, "bytes": size,
              "notes": len(notes)}
    print(json.dumps(result))
    if a.record:
        machine = machine_line(load_start, os.getloadavg())
        walls = ", ".join(f"{b['wall_s']:.1f}" for b in builds)
        cpus = ", ".join(f"{b['cpu_s']:.1f}" for b in builds)
        body = (f"`bench/report.py {a.workdir} --repeat {a.repeat}`: wall {walls} s, CPU {cpus} s per build "
                f"(the first pays matplotlib's import); {n_files} files, {size / 1e6:.1f} MB; "
                f"builds byte-identical: {'yes' if result['identical'] else 'NO'}; {len(notes)} notes.\n")
        record_section(RESULTS_MD, f"Report build time (`bench/report.py`), {started.strftime('%Y-%m-%d %H:%M UTC')}",
                       machine, body)
        print(f"recorded in {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
