"""The hostile-input campaign (issue 16), kept as a suite.

Every case damages a copy of a tiny finished world (``hostile_world.build_world``), runs one
verb on it in-process, and asserts: exit code 2, exactly one line on stderr, that line naming
the damaged file (or flag), and every file that existed before byte-identical afterwards.
Cases that need a real process (a closed stdout, a file-size limit, a hang) run one, bounded
by a timeout far below what the case would take to do damage.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from datacomp.cli import main
from datacomp.formats.uids import SUBSET_DTYPE

from hostile_world import jpeg, build_world, changed, snapshot


@pytest.fixture(scope="module")
def world_src(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("hostile") / "world")


@pytest.fixture
def world(world_src, tmp_path) -> Path:
    dst = tmp_path / "world"
    shutil.copytree(world_src, dst, symlinks=True)
    return dst


@dataclass(frozen=True)
class Case:
    """``setup(root)`` damages the world and returns the argv; ``names`` must all be in the error line."""
    id: str
    setup: Callable[[Path], list[str]]
    names: tuple[str, ...]


def _recipe(text: str | bytes) -> Callable[[Path], list[str]]:
    def setup(w: Path) -> list[str]:
        p = w / "bad.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["filter", "--pool", str(w / "pool"), "--recipe", str(p), "--out", str(w / "s.npy")]
    return setup


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _random_shard(w: Path) -> list[str]:
    d = w / "junk"
    _write(d / "00000000.tar", np.random.default_rng(0).bytes(20_000))
    _write(d / "00000000_stats.json", json.dumps({"successes": 100, "count": 100}).encode())
    return ["train", "--scale", "synth_test", "--data", str(d), "--out", str(w / "run")]


def _meta_list(w: Path) -> list[str]:
    (w / "resharded" / "meta.json").write_text("[1, 2, 3]\n")
    return ["train", "--scale", "synth_test", "--data", str(w / "resharded"), "--out", str(w / "run")]


def _subset_file(data: bytes) -> Callable[[Path], list[str]]:
    def setup(w: Path) -> list[str]:
        _write(w / "odd.npy", data)
        return ["reshard", "--pool", str(w / "pool"), "--subset", str(w / "odd.npy"), "--out", str(w / "out")]
    return setup


def _empty_subset_bytes() -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, np.zeros(0, SUBSET_DTYPE))
    return b.getvalue()


def _manifest_list(w: Path) -> list[str]:
    (w / "resharded" / "manifest.json").write_text("[]\n")
    return ["reshard", "--pool", str(w / "pool"), "--subset", str(w / "subset.npy"), "--out", str(w / "resharded"),
            "--shard-size", "2"]


def _byod_bad_table_overwrite(w: Path) -> list[str]:
    main(["byod", "--table", str(w / "table.csv"), "--out", str(w / "p")])  # a finished byod pool
    (w / "bad.csv").write_text("nothing,useful\n1,2\n")
    return ["byod", "--table", str(w / "bad.csv"), "--out", str(w / "p"), "--overwrite"]


def _byod_table_inside_out(w: Path) -> list[str]:
    main(["byod", "--table", str(w / "table.csv"), "--out", str(w / "p")])
    shutil.copy(w / "table.csv", w / "p" / "metadata" / "t.csv")
    return ["byod", "--table", str(w / "p" / "metadata" / "t.csv"), "--out", str(w / "p"), "--overwrite"]


def _fake_ckpt(w: Path) -> Path:
    return _write(w / "garbage.pt", b"not a checkpoint at all" * 10)


def _npz_scores(damage: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], list[str]]:
    """The pool's b32 image embeddings damaged; a recipe that scores from the npz."""
    def setup(w: Path) -> list[str]:
        from datacomp.formats.pool import write_npz

        npz = w / "pool" / "metadata" / "00000000.npz"
        with np.load(npz) as z:
            write_npz(npz, {"b32_img": damage(z["b32_img"])})
        recipe = "steps:\n  - op: clip_score\n    arch: b32\n    source: npz\nkeep: ['clip_b32_similarity_score > -2']\n"
        return _recipe(recipe)(w)
    return setup


W = lambda w, *p: str(w.joinpath(*p))  # noqa: E731

CASES = [
    # ---- an output that is, contains or lies inside an input (refused before anything is removed)
    Case("reshard-out-is-pool-shards", lambda w: ["reshard", "--pool", W(w, "pool"), "--subset", W(w, "subset.npy"),
                                                  "--out", W(w, "pool", "shards"), "--overwrite"], ("shards",)),
    Case("reshard-out-contains-pool", lambda w: ["reshard", "--pool", W(w, "pool"), "--subset", W(w, "subset.npy"),
                                                 "--out", str(w), "--overwrite"], ("contains",)),
    Case("reshard-out-is-subset", lambda w: ["reshard", "--pool", W(w, "pool"), "--subset", W(w, "subset.npy"),
                                             "--out", W(w, "subset.npy"), "--overwrite"], ("subset.npy",)),
    Case("filter-out-in-pool-metadata", lambda w: ["filter", "--pool", W(w, "pool"), "--recipe", "no_filter",
                                                   "--out", W(w, "pool", "metadata", "00000000.npz")], ("metadata",)),
    Case("byod-out-is-shards", lambda w: ["byod", "--shards", W(w, "pool", "shards"), "--out", W(w, "pool", "shards"),
                                          "--overwrite"], ("shards",)),
    Case("byod-out-contains-shards", lambda w: ["byod", "--shards", W(w, "pool", "shards"), "--out", W(w, "pool"),
                                                "--overwrite"], ("contains",)),
    Case("byod-table-inside-out", _byod_table_inside_out, ("t.csv",)),
    Case("download-metadata-is-pool-metadata", lambda w: ["download", "--pool", W(w, "pool"), "--metadata", W(w, "pool", "metadata"),
                                                          "--overwrite-metadata", "--skip-shards"], ("metadata",)),
    Case("train-out-is-data", lambda w: ["train", "--scale", "synth_test", "--data", W(w, "resharded"),
                                         "--out", W(w, "resharded"), "--overwrite"], ("resharded",)),
    Case("train-out-inside-data", lambda w: ["train", "--scale", "synth_test", "--data", W(w, "resharded"),
                                             "--out", W(w, "resharded", "run"), "--overwrite"], ("lies inside",)),
    # ---- validate every input before --overwrite removes anything
    Case("byod-overwrite-bad-table", _byod_bad_table_overwrite, ("bad.csv",)),
    Case("embed-overwrite-bad-checkpoint", lambda w: ["embed", "--pool", W(w, "pool"), "--model", "synth-rn-tiny",
                                                      "--checkpoint", str(_fake_ckpt(w)), "--overwrite"], ("garbage.pt",)),
    Case("train-resume-garbage", lambda w: ["train", "--scale", "synth_test", "--data", W(w, "resharded"),
                                            "--out", W(w, "run"), "--resume", str(_fake_ckpt(w))], ("garbage.pt",)),
    # ---- the world outside: an output path that is a directory or a file
    Case("filter-out-is-directory", lambda w: ["filter", "--pool", W(w, "pool"), "--recipe", "no_filter",
                                               "--out", W(w, "resharded")], ("resharded",)),
    Case("reshard-out-is-file", lambda w: ["reshard", "--pool", W(w, "pool"), "--subset", W(w, "subset.npy"),
                                           "--out", W(w, "table.csv")], ("table.csv",)),
    Case("byod-out-is-file", lambda w: ["byod", "--table", W(w, "table.csv"), "--out", W(w, "recipe.yaml")], ("recipe.yaml",)),
    Case("synth-out-is-file", lambda w: ["synth", "--scale", "synth_test", "--out", W(w, "table.csv")], ("table.csv",)),
    Case("train-out-is-file", lambda w: ["train", "--scale", "synth_test", "--data", W(w, "resharded"),
                                         "--out", W(w, "table.csv")], ("table.csv",)),
    Case("evaluate-evalsets-is-file", lambda w: ["evaluate", "--check", "--evalsets", W(w, "table.csv")], ("table.csv",)),
    # ---- recipe YAML
    Case("recipe-keep-is-int", _recipe("steps: []\nkeep: 5\n"), ("bad.yaml", "keep")),
    Case("recipe-params-is-list", _recipe("params: [1, 2]\nsteps: []\nkeep: []\n"), ("bad.yaml", "params")),
    Case("recipe-op-is-list", _recipe("steps:\n  - op: [a, b]\nkeep: []\n"), ("bad.yaml", "op")),
    Case("recipe-integer-keys", _recipe("1: 2\nsteps: []\nkeep: []\n"), ("bad.yaml", "1")),
    Case("recipe-not-utf8", _recipe(b"name: \xff\xfe\nsteps: []\nkeep: []\n"), ("bad.yaml", "UTF-8")),
    Case("recipe-alias-bomb", _recipe("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                      "steps: []\nkeep: []\n"), ("bad.yaml", "alias")),
    Case("recipe-duplicate-key", _recipe("steps: []\nkeep: []\nkeep: ['caption_words > 2']\n"), ("bad.yaml", "duplicate key")),
    Case("recipe-without-keep", _recipe("name: x\nsteps: []\n"), ("bad.yaml", "keep")),
    Case("recipe-step-unknown-param", _recipe("steps:\n  - op: caption_length\n    bogus: 1\nkeep: []\n"), ("bad.yaml", "bogus")),
    Case("filter-set-unparsable", lambda w: ["filter", "--pool", W(w, "pool"), "--recipe", "no_filter", "--out", W(w, "s.npy"),
                                             "--set", "k=["], ("--set k=[",)),
    Case("run-bad-yaml-recipe-first", lambda w: ["run", "--scale", "synth_test", "--workdir", W(w, "wd"), "--recipes",
                                                 _recipe("steps: []\nkeep: 5\n")(w)[4]], ("bad.yaml",)),
    # ---- arguments refused at parse time
    *[Case(f"{verb}-workers-negative", (lambda v: lambda w: [*v, "--workers", "-1"])(argv), ("--workers",)) for verb, argv in [
        ("synth", ["synth", "--scale", "synth_test", "--out", "p"]),
        ("embed", ["embed", "--pool", "p", "--teacher"]),
        ("filter", ["filter", "--pool", "p", "--recipe", "no_filter", "--out", "s.npy"]),
        ("reshard", ["reshard", "--pool", "p", "--subset", "s.npy", "--out", "o"]),
        ("byod", ["byod", "--table", "t.csv", "--out", "o"]),
        ("train", ["train", "--scale", "synth_test", "--data", "d", "--out", "o"]),
        ("run", ["run", "--scale", "synth_test", "--workdir", "wd"]),
    ]],
    Case("train-accum-freq-zero", lambda w: ["train", "--scale", "synth_test", "--data", "d", "--out", "o", "--accum-freq", "0"],
         ("--accum-freq",)),
    Case("reshard-shard-size-zero", lambda w: ["reshard", "--pool", "p", "--subset", "s", "--out", "o", "--shard-size", "0"],
         ("--shard-size",)),
    Case("reshard-quality-101", lambda w: ["reshard", "--pool", "p", "--subset", "s", "--out", "o", "--quality", "101"],
         ("--quality",)),
    Case("download-processes-zero", lambda w: ["download", "--pool", "p", "--processes", "0"], ("--processes",)),
    Case("run-seed-and-seeds", lambda w: ["run", "--scale", "synth_test", "--workdir", "w", "--seed", "1", "--seeds", "0,1"],
         ("--seeds",)),
    # ---- damaged inputs
    Case("train-random-bytes-shard", _random_shard, ("00000000.tar",)),
    Case("train-meta-json-is-list", _meta_list, ("meta.json",)),
    Case("reshard-zero-byte-subset", _subset_file(b""), ("odd.npy",)),
    Case("reshard-empty-subset", _subset_file(_empty_subset_bytes()), ("odd.npy", "--allow-empty")),
    Case("reshard-truncated-subset", lambda w: _subset_file((w / "subset.npy").read_bytes()[:-5])(w), ("odd.npy",)),
    Case("reshard-manifest-is-list", _manifest_list, ("manifest.json",)),
    Case("filter-all-zero-embeddings", _npz_scores(lambda a: a * 0), ("00000000.npz", "all-zero")),
    Case("filter-non-unit-embeddings", _npz_scores(lambda a: a * 3), ("00000000.npz", "unit norm")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_and_nothing_changed(case: Case, world: Path, capsys, monkeypatch):
    monkeypatch.chdir(world)
    argv = case.setup(world)
    capsys.readouterr()
    before = snapshot(world)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("datacomp: error: "), err
    for name in case.names:
        assert name in lines[0], lines[0]
    assert changed(before, snapshot(world)) == []


# ---- reuse verifies what it reuses ---------------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete", "truncate", "rewrite"])
@pytest.mark.parametrize("verb", ["reshard", "byod"])
def test_reuse_redoes_a_damaged_output(world: Path, verb: str, damage: str, caplog):
    from datacomp.pool.byod import byod_from_shards
    from datacomp.reshard import reshard

    out = world / "r"
    stage = {"reshard": lambda: reshard(world / "pool", world / "subset.npy", out, shard_size=2, workers=1),
             "byod": lambda: byod_from_shards(world / "pool" / "shards", out, workers=1)}[verb]
    stage()
    before = snapshot(out)
    tar = out / ("00000001.tar" if verb == "reshard" else "shards/00000000.tar")
    if damage == "delete":
        tar.unlink()
    elif damage == "truncate":
        tar.write_bytes(tar.read_bytes()[:1000])
    else:
        data = bytearray(tar.read_bytes())
        data[600] ^= 0xFF
        tar.write_bytes(bytes(data))
    stage()
    assert "not reusing" in caplog.text and tar.name in caplog.text
    after = snapshot(out)
    timed = lambda k: k in ("manifest.json", "meta.json") or k.endswith("_stats.json")  # noqa: E731 - hold timings
    assert {k: v for k, v in after.items() if not timed(k)} == {k: v for k, v in before.items() if not timed(k)}


def test_filter_reuse_redoes_a_truncated_subset(world: Path, caplog):
    from datacomp.filters import run_filter

    out = world / "s.npy"
    run_filter(world / "pool", "no_filter", out, workers=1)
    good = out.read_bytes()
    out.write_bytes(good[:-8])
    again = run_filter(world / "pool", "no_filter", out, workers=1)
    assert not again.get("reused") and "not reusing" in caplog.text
    assert out.read_bytes() == good


# ---- strict inputs that are handled, not refused -------------------------------------------------

@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
@pytest.mark.parametrize("verb", ["reshard", "byod"])
def test_link_members_are_unsafe_not_samples(world: Path, verb: str, link: bytes):
    src = world / "links"
    src.mkdir()
    with tarfile.open(src / "00000000.tar", "w") as tf:
        def add(ti: tarfile.TarInfo, data: bytes = b"") -> None:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for i, uid in enumerate(["%032x" % 1, "%032x" % 2]):
            add(tarfile.TarInfo(f"{i:09d}.json"), json.dumps({"uid": uid, "url": f"http://h/{i}"}).encode())
            add(tarfile.TarInfo(f"{i:09d}.txt"), b"caption %d" % i)
            img = tarfile.TarInfo(f"{i:09d}.jpg")
            if i == 1:
                img.type, img.linkname = link, "/etc/passwd" if link == tarfile.SYMTYPE else "000000000.jpg"
            add(img, jpeg(i) if i == 0 else b"")
    if verb == "reshard":
        from datacomp.reshard import reshard

        m = reshard(src, world / "subset.npy", world / "out", workers=1, include_unfinished=True)
        assert m.counts["unsafe_member_count"] == 1 and m.counts["output_count"] == 1
    else:
        from datacomp.pool.byod import byod_from_shards

        m = byod_from_shards(src, world / "out", workers=1, executor="local")
        assert m.counts["with_link_member"] == 1 and m.counts["samples"] == 1


def test_outputs_get_the_users_umask(world: Path):
    from datacomp.filters import run_filter

    old = os.umask(0o022)
    try:
        run_filter(world / "pool", "no_filter", world / "s.npy", workers=1)
    finally:
        os.umask(old)
    for p in [world / "s.npy", world / "s.json", world / "resharded" / "00000000.tar", world / "resharded" / "manifest.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# ---- cases that need a real process --------------------------------------------------------------

def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "datacomp.cli", *args], capture_output=kw.pop("capture", True),
                          text=True, timeout=60, env=env, **kw)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [l for l in stderr.splitlines() if l.startswith("datacomp: error:")]


def test_closed_stdout_is_one_line(world: Path):
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "datacomp.cli", "info", "scales"], stdout=w, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(w)
    assert p.returncode == 2 and len(_error_lines(p.stderr)) == 1 and "broken pipe" in p.stderr


def test_file_size_limit_is_one_line_and_keeps_the_old_output(world: Path):
    """A full disk, as far as the writer can tell: RLIMIT_FSIZE makes every large write fail (EFBIG)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))

    before = snapshot(world)
    p = subprocess.run([sys.executable, "-m", "datacomp.cli", "reshard", "--pool", str(world / "pool"),
                        "--subset", str(world / "subset.npy"), "--out", str(world / "out"), "--workers", "1"],
                       capture_output=True, text=True, timeout=60, preexec_fn=limit)
    lines = _error_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1 and "File too large" in lines[0] and "re-run" in lines[0], p.stderr
    assert str(world / "out") in lines[0]
    assert changed(before, snapshot(world)) == []


def _read_only_mount(d: Path) -> str | None:
    """The shell line that remounts ``d`` read-only in a private mount namespace (``unshare -m``,
    so nothing outside the test's process sees it), or None where this machine does not allow it."""
    import shutil as sh

    if sh.which("unshare") is None or sh.which("mount") is None:
        return None
    line = f"mount --bind {d} {d} && mount -o remount,bind,ro {d}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{line} && ! touch {d}/.probe 2>/dev/null"],
                           capture_output=True, timeout=20)
    (d / ".probe").unlink(missing_ok=True)
    return line if probe.returncode == 0 else None


def test_read_only_output_is_one_line_and_changes_nothing(world: Path):
    """The output directory on a file system mounted read-only for real (root ignores mode bits)."""
    ro = world / "ro"
    ro.mkdir()
    (ro / "old.npy").write_bytes((world / "subset.npy").read_bytes())
    mount = _read_only_mount(ro)
    if mount is None:
        pytest.skip("no private read-only bind mount here (unshare -m / mount --bind not permitted)")
    before = snapshot(world)
    argv = ["filter", "--pool", str(world / "pool"), "--recipe", str(world / "recipe.yaml"), "--out", str(ro / "s.npy")]
    p = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && exec \"$0\" \"$@\"", sys.executable, "-m",
                        "datacomp.cli", *argv], capture_output=True, text=True, timeout=60)
    lines = _error_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert str(ro) in lines[0] and "read-only" in lines[0].lower(), lines[0]
    assert changed(before, snapshot(world)) == [] and set(snapshot(world)) == set(before)


# ---- a killed parent takes its children; one train per run directory -----------------------------

def test_busy_run_directory_refuses_naming_the_holder(world: Path, capsys):
    from datacomp.executors.children import dir_lock

    run = world / "run"
    with dir_lock(run, "train"):
        before = snapshot(world)
        code = main(["train", "--scale", "synth_test", "--data", str(world / "resharded"), "--out", str(run)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"pid {os.getpid()}" in err[0] and str(run) in err[0]
        assert changed(before, snapshot(world)) == []
    assert not (run / ".lock").exists()


def test_unreadable_training_data_fails_fast_with_bounded_logs(tmp_path: Path):
    """webdataset's endless "... Ignoring" lines on data with no valid sample end the run."""
    from datacomp.errors import FormatError
    from datacomp.train import monitor

    spin = "import sys\nwhile True: print('wds | WARNING | invalid header in shard, Ignoring', flush=True)"
    with pytest.raises(FormatError, match="yields no valid sample"):
        monitor.stream([sys.executable, "-c", spin], dict(os.environ), tmp_path / "stdout.log")
    assert (tmp_path / "stdout.log").stat().st_size < 200_000


def test_curated_rerenders_are_bounded(tmp_path: Path, monkeypatch):
    """A curated row whose every render collides with an eval image is an error after a bounded
    number of renders, not a loop (the renders done are counted in the synth manifest)."""
    from datacomp.errors import FormatError
    from datacomp.pool.synth import generate
    from datacomp.pool.synth.world import load_noise

    class Everything(frozenset):
        def __contains__(self, item) -> bool:
            return True

    monkeypatch.setattr(generate, "_eval_shas", lambda path: Everything())
    with pytest.raises(FormatError, match=f"curated row 0 equals an eval image in {generate.MAX_RERENDERS} renders"):
        generate.write_curated_shard(str(tmp_path), 0, 12, json.dumps(load_noise()), str(tmp_path / "eval.json"), 0, 0, 1)


def _trainers_of(parent: int) -> list[int]:
    from datacomp.executors.children import group_members

    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent and b"openclip_entry" in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return [p for p in found if group_members(p)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_train_takes_the_trainer_along(world: Path, sig):
    import time

    p = subprocess.Popen([sys.executable, "-m", "datacomp.cli", "train", "--scale", "synth_test", "--data",
                          str(world / "resharded"), "--out", str(world / "run"), "--device", "cpu"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        kids: list[int] = []
        while not kids and time.time() < deadline and p.poll() is None:
            kids = _trainers_of(p.pid)
            time.sleep(0.05)
        assert kids, "the trainer never started"
        p.send_signal(sig)
        p.wait(timeout=30)
        deadline = time.time() + 15
        while any(Path(f"/proc/{k}").exists() and "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1][:3]
                  for k in kids) and time.time() < deadline:
            time.sleep(0.05)
        alive = [k for k in kids if Path(f"/proc/{k}").exists()
                 and "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1][:3]]
        assert alive == [], f"trainer {alive} outlived its parent"
        if sig == signal.SIGTERM:
            assert p.returncode == 130 and "interrupted" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


# ---- a truncated input shard: a visible loss, or with --strict an error --------------------------

def _truncate_pool_shard(w: Path) -> Path:
    tar = w / "pool" / "shards" / "00000000.tar"
    tar.write_bytes(tar.read_bytes()[: 512 * 9 + 100])  # cut inside the third sample: 2 of 6 readable
    return tar


@pytest.mark.parametrize("verb", ["reshard", "byod"])
@pytest.mark.parametrize("strict", [False, True], ids=["warn", "strict"])
def test_truncated_input_shard_is_a_visible_loss(world: Path, capsys, verb: str, strict: bool):
    tar = _truncate_pool_shard(world)
    argv = (["reshard", "--pool", str(world / "pool"), "--subset", str(world / "subset.npy"), "--out", str(world / "out")]
            if verb == "reshard" else ["byod", "--shards", str(world / "pool" / "shards"), "--out", str(world / "out")])
    before = snapshot(world)
    code = main(argv + ["--workers", "1"] + (["--strict"] if strict else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert changed(before, snapshot(world)) == []
    assert str(tar) in err[-1] and "damaged input shard" in err[-1]
    if strict:
        assert code == 2 and len(err) == 1 and err[0].startswith("datacomp: error:") and "--strict" in err[0]
        assert not (world / "out" / "manifest.json").exists()
    else:
        assert code == 0 and err[-1].startswith("datacomp: warning:")
        assert "samples lost" in err[-1] and (verb == "byod" or "4 samples lost" in err[-1])
        assert json.loads((world / "out" / "manifest.json").read_text())["losses"]["damaged_shards"]


# ---- tidy: nothing of a killed run is left inside a finished output ------------------------------

def _stale(directory: Path, name: str, suffix: str = "") -> Path:
    """What a writer killed inside ``atomic_path`` leaves: ``.NAME.XXXXXXXX.tmpSUFFIX``."""
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    fd, p = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=directory)
    os.write(fd, b"half a file")
    os.close(fd)
    return Path(p)


def _temps(root: Path) -> list[str]:
    from datacomp.formats.atomic import _TEMP

    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if _TEMP.match(p.name) or p.name.endswith(".work"))


@pytest.mark.parametrize("verb", ["reshard", "byod", "filter"])
def test_rerun_after_a_crash_leaves_no_temporaries(world: Path, monkeypatch, verb: str):
    from datacomp.filters import run_filter
    from datacomp.pool import byod as byod_mod
    from datacomp.reshard import reshard, resharder

    out = world / "out"
    stage = {
        "reshard": lambda: reshard(world / "pool", world / "subset.npy", out, shard_size=2, workers=1),
        "byod": lambda: byod_mod.byod_from_shards(world / "pool" / "shards", out, workers=1),
        "filter": lambda: run_filter(world / "pool", "no_filter", out / "s.npy", workers=1),
    }[verb]
    if verb != "filter":  # killed just before the manifest, with half-written files about
        module = resharder if verb == "reshard" else byod_mod

        def killed(*a, **k):
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(module.StageOutput, "finish", killed)  # the lifecycle writes the manifest
            with pytest.raises(KeyboardInterrupt):
                stage()
        _stale(out, "00000000.tar", ".tar")
        _stale(out / ("shards" if verb == "byod" else "."), "00000001_stats.json")
    else:
        _stale(out, "s.npy", ".npy")
        (out / ".s.npy.work").mkdir()
    assert _temps(out)
    stage()
    assert _temps(out) == []
