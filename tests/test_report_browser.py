"""The report in a real browser: headless Chromium (Debian's `chromium`, `make chromium`).

Loads the page from a file:// URL, takes a screenshot and checks it is not blank; loads every
image the page references in the same browser and checks each one decodes; checks the browser
logs no console message. Skipped where no chromium is installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import report_world as rw
from datacomp.report.build import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (install it with `make chromium`)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--enable-logging=stderr", "--v=0"]

# A page beside the report that loads each image and writes whether it decoded.
HARNESS = """<!DOCTYPE html><html><body><pre id="out"></pre><script>
var srcs = %s, res = new Array(srcs.length), left = srcs.length;
function fin(i, ok, im) { res[i] = (ok && im.naturalWidth > 0 ? "ok " : "fail ") + srcs[i];
  if (--left === 0) { document.getElementById("out").textContent = res.join("\\n"); } }
srcs.forEach(function (s, i) { var im = new Image(); im.onload = function () { fin(i, true, im); };
  im.onerror = function () { fin(i, false, im); }; im.src = s; });
</script></body></html>"""


def _chromium(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    wd = root / "w"
    for s in (0, 1):
        rw.make_world(wd / f"seed-{s}", seed=s)
    build_report([wd], root / "out")
    return root / "out" / "index.html"


def test_screenshot_is_not_blank_and_no_console_message(report: Path):
    shot = report.parent.parent / "shot.png"
    p = _chromium(["--window-size=1280,2000", f"--screenshot={shot}", report.as_uri()], report.parent.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2000, 1280)
    assert img.std() > 10  # not one colour
    assert (img < 128).mean() > 0.005  # some dark ink: text and plots drawn


def test_every_referenced_image_loads(report: Path):
    srcs = sorted(set(re.findall(r'<img src="([^"]+)"', report.read_text())))
    assert len(srcs) > 10 and any(s.endswith(".svg") for s in srcs) and any(s.endswith(".png") for s in srcs)
    harness = report.parent / "_harness.html"
    harness.write_text(HARNESS % json.dumps(srcs))
    try:
        p = _chromium(["--virtual-time-budget=10000", "--allow-file-access-from-files", "--dump-dom",
                       harness.as_uri()], report.parent.parent)
    finally:
        harness.unlink()
    assert p.returncode == 0, p.stderr[-2000:]
    out = re.search(r'<pre id="out">(.*?)</pre>', p.stdout, re.S)
    assert out is not None, p.stdout[-2000:]
    lines = out.group(1).splitlines()
    assert len(lines) == len(srcs)
    assert [x for x in lines if not x.startswith("ok ")] == []


def test_a_broken_image_is_caught(report: Path):
    """The harness itself: a missing file and a corrupt SVG both report 'fail'."""
    bad = report.parent / "plots" / "_corrupt.svg"
    bad.write_text("<svg this is not xml")
    harness = report.parent / "_harness2.html"
    harness.write_text(HARNESS % json.dumps(["plots/_corrupt.svg", "plots/_missing.svg"]))
    try:
        p = _chromium(["--virtual-time-budget=10000", "--dump-dom", harness.as_uri()], report.parent.parent)
    finally:
        harness.unlink()
        bad.unlink()
    out = re.search(r'<pre id="out">(.*?)</pre>', p.stdout, re.S)
    assert out is not None and out.group(1).splitlines() == ["fail plots/_corrupt.svg", "fail plots/_missing.svg"]
