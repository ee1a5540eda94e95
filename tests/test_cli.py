"""The command line: bad input gets one line naming the file and the problem, exit code 2,
and nothing is written half."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.cli import main
from datacomp.formats.pool import write_metadata, write_npz
from datacomp.formats.shards import ShardWriter, sample_key
from datacomp.formats.uids import SUBSET_DTYPE


def _mini_pool(root: Path, rows: int = 4, with_uid: bool = True) -> Path:
    uids = [f"{i + 1:032x}" for i in range(rows)]
    cols = {
        "url": [f"http://x/{i}.jpg" for i in range(rows)],
        "text": ["a red star on a table"] * rows,
        "original_width": [300] * rows,
        "original_height": [300] * rows,
        "clip_b32_similarity_score": pa.array([0.3] * rows, pa.float32()),
        "clip_l14_similarity_score": pa.array([0.3] * rows, pa.float32()),
    }
    if with_uid:
        cols = {"uid": uids, **cols}
    write_metadata(root / "metadata" / "00000000.parquet", pa.table(cols))
    with ShardWriter(root / "shards" / "00000000.tar") as w:
        for i, u in enumerate(uids):
            w.write(sample_key(0, i), {"jpg": b"\xff\xd8", "txt": b"a red star", "json": json.dumps({"uid": u}).encode()})
    return root


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_missing_pool_directory(tmp_path, capsys):
    code, err = _run(["filter", "--pool", str(tmp_path / "nope"), "--recipe", "no_filter", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "nope" in err and "does not exist" in err
    assert not (tmp_path / "s.npy").exists()


def test_parquet_without_uid(tmp_path, capsys):
    pool = _mini_pool(tmp_path / "pool", with_uid=False)
    code, err = _run(["filter", "--pool", str(pool), "--recipe", "no_filter", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "00000000.parquet" in err and "uid" in err
    assert not (tmp_path / "s.npy").exists()


def test_npz_row_count_differs(tmp_path, capsys):
    pool = _mini_pool(tmp_path / "pool")
    write_npz(pool / "metadata" / "00000000.npz", {"b32_img": np.zeros((3, 8), np.float16)})
    code, err = _run(["filter", "--pool", str(pool), "--recipe", "no_filter", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "00000000.npz" in err and "3 rows" in err
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("kind", ["unsorted", "wrong_dtype"])
def test_bad_subset_file_for_reshard(tmp_path, capsys, kind):
    pool = _mini_pool(tmp_path / "pool")
    bad = tmp_path / f"{kind}.npy"
    if kind == "unsorted":
        np.save(bad, np.array([(0, 3), (0, 1)], dtype=SUBSET_DTYPE))
    else:
        np.save(bad, np.array([1, 2, 3], dtype=np.int64))
    code, err = _run(["reshard", "--pool", str(pool), "--subset", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"{kind}.npy" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar"))


@pytest.mark.parametrize("args", [
    ["train", "--scale", "gigantic", "--data", "x", "--out", "y"],
    ["run", "--scale", "gigantic", "--workdir", "w"],
    ["synth", "--scale", "gigantic", "--out", "p"],
])
def test_unknown_scale(tmp_path, capsys, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(args, capsys)
    assert code == 2 and "unknown scale 'gigantic'" in err and "synth_test" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_recipe(tmp_path, capsys):
    pool = _mini_pool(tmp_path / "pool")
    code, err = _run(["filter", "--pool", str(pool), "--recipe", "best_filter_ever", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "best_filter_ever" in err
    code, err = _run(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "w"), "--recipes", "no_filter,best_filter_ever"], capsys)
    assert code == 2 and "best_filter_ever" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, msg", [
    (["--seeds", "0,x"], "--seeds: 'x' is not an integer"),
    (["--seeds", "1,1"], "seed 1 given twice"),
    (["--seeds", "0,-1"], "seed -1 is not a non-negative integer"),
    (["--seeds", ","], "no seeds given"),
    (["--recipes", "no_filter,no_filter"], "recipe 'no_filter' given twice"),
])
def test_run_bad_seeds_and_recipes(tmp_path, capsys, args, msg):
    code, err = _run(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "w"), *args], capsys)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_run_seed_and_seeds_exclusive_and_pseudo_recipes_known(tmp_path, capsys):
    code, err = _run(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "w"), "--seed", "1", "--seeds", "0,1"], capsys)
    assert code == 2 and "not allowed with argument" in err and len(err.strip().splitlines()) == 1
    code, err = _run(["run", "--scale", "synth_test", "--workdir", str(tmp_path / "w"), "--recipes", "oracle,orakel"], capsys)
    assert code == 2 and "unknown recipe 'orakel'" in err and "oracle" in err and "random_basic" in err


def test_reference_scale_refused_by_run(tmp_path, capsys):
    code, err = _run(["run", "--scale", "small", "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "reference scale" in err


def test_info_verbs(capsys):
    assert main(["info", "scales", "--json"]) == 0
    scales = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert scales["xlarge"]["batch_size"] == 90112 and scales["synth_test"]["embedded"]
    assert main(["info", "recipes"]) == 0
    out = capsys.readouterr().out
    assert "basic_filter" in out and "clip_score_l14_30" in out
    assert "run-only" in out and "random_basic" in out and "oracle" in out
    assert main(["info", "tasks", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    keys = {t["key"] for t in tasks}
    assert "imagenet1k" in keys and "synth/concepts" in keys


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "datacomp"
    p = subprocess.run([str(exe), "reshard", "--pool", str(tmp_path / "none"), "--subset", "s.npy", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("datacomp: error: ") and "Traceback" not in p.stderr


def test_scale_table_holds_only_scales():
    """scales.yaml also holds shared definitions (the teachers' score_scales): never a scale."""
    from datacomp.config import load_scale, scale_names
    from datacomp.errors import ConfigError

    names = scale_names()
    assert "score_scales" not in names and {"small", "synth_test", "synth_demo"} <= set(names)
    with pytest.raises(ConfigError, match="unknown scale 'score_scales'"):
        load_scale("score_scales")
    demo = load_scale("synth_demo")
    assert [a["score"] for a in demo.teachers["b32"]["score_scale"]] == [0.28, 0.247]
