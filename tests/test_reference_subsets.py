"""The pseudo-recipes ``oracle`` and ``random_basic`` (datacomp.filters.reference_subsets).

A 500-row world (the synth_test scale, shrunk like tests/test_synth.py's ``mini_scale``) for the
real cases; hand-built pools for the errors.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp.config import load_scale
from datacomp.errors import ConfigError, FormatError, InputError, StageConflictError
from datacomp.filters.reference_subsets import (build_reference_subset, is_pseudo_recipe, oracle_subset,
                                                random_basic_subset, random_subset)
from datacomp.formats.pool import list_parquets, write_metadata
from datacomp.formats.uids import SUBSET_DTYPE, pairs_to_uids, read_subset
from datacomp.pool.synth import synthesize
from pool_tables import pool_table


def _mini_scale():
    base = load_scale("synth_test")
    w = {**base.world, "concepts": 12, "shard_size": 200, "curated_size": 150, "eval_size": 36, "retrieval_size": 12}
    return dataclasses.replace(base, name="synth_mini", pool_size=500, world=w)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refsub") / "pool"
    synthesize(out, _mini_scale(), seed=0, workers=2)
    return out


def _uids(pool: Path) -> list[str]:
    return [u for p in list_parquets(pool) for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()]


def _clean(pool: Path) -> set[str]:
    out = set()
    for p in sorted((pool / "truth").glob("*.parquet")):
        t = pq.read_table(p, columns=["uid", "clean"]).to_pylist()
        out |= {r["uid"] for r in t if r["clean"]}
    return out


def test_oracle_is_exactly_the_clean_pairs(world: Path, tmp_path: Path):
    out = tmp_path / "subsets" / "oracle.npy"
    side = oracle_subset(world, out)
    arr = read_subset(out, mmap=False)  # validates dtype u8,u8 and the sort order
    assert arr.dtype == SUBSET_DTYPE
    got = pairs_to_uids(arr)
    assert got == sorted(_clean(world))
    assert len(set(got)) == len(got) > 0
    assert side["counts"]["kept"] == len(got) and side["counts"]["pool_rows"] == 500
    assert json.loads(out.with_suffix(".json").read_text())["recipe"] == "oracle"
    assert oracle_subset(world, out).get("reused") is True
    assert build_reference_subset("oracle", world, tmp_path / "o2.npy")["counts"] == side["counts"]


def test_random_basic_has_basic_filters_size_and_follows_the_seed(world: Path, tmp_path: Path):
    subsets = tmp_path / "subsets"
    side = random_basic_subset(world, subsets / "random_basic.npy", seed=0, workers=1)
    basic = pairs_to_uids(read_subset(subsets / "basic_filter.npy"))  # computed because it was missing
    got = pairs_to_uids(read_subset(subsets / "random_basic.npy"))
    pool = set(_uids(world))
    assert len(got) == len(basic) == side["counts"]["kept"] > 0
    assert got == sorted(got) and len(set(got)) == len(got) and set(got) <= pool
    assert set(got) != set(basic)
    assert side["seed"] == 0 and side["basic_subset"] == str(subsets / "basic_filter.npy")
    # same seed: same subset (reused, and also when drawn afresh); other seed: another subset
    assert random_basic_subset(world, subsets / "random_basic.npy", seed=0, workers=1).get("reused") is True
    again = random_basic_subset(world, tmp_path / "other" / "rb.npy", seed=0, basic=subsets / "basic_filter.npy")
    assert pairs_to_uids(read_subset(tmp_path / "other" / "rb.npy")) == got and not again.get("reused")
    with pytest.raises(StageConflictError, match=r"random_basic.npy: holds a finished 'filter' output .*seed 0 -> 1"):
        random_basic_subset(world, subsets / "random_basic.npy", seed=1, workers=1)
    side1 = random_basic_subset(world, subsets / "random_basic.npy", seed=1, workers=1, overwrite=True)
    assert not side1.get("reused") and side1["seed"] == 1
    got1 = pairs_to_uids(read_subset(subsets / "random_basic.npy"))
    assert len(got1) == len(got) and got1 != got


def test_random_subset_is_uniform_without_replacement(world: Path, tmp_path: Path):
    index = {u: i for i, u in enumerate(_uids(world))}
    hits = np.zeros(500)
    for s in range(3):
        random_subset(world, tmp_path / f"r{s}.npy", 250, s)
        got = pairs_to_uids(read_subset(tmp_path / f"r{s}.npy"))
        assert len(got) == len(set(got)) == 250
        hits[[index[u] for u in got]] += 1
    assert hits.sum() == 750 and 0 < (hits == 0).sum() < 200  # three different halves of the pool
    random_subset(world, tmp_path / "all.npy", 500, 0)
    assert pairs_to_uids(read_subset(tmp_path / "all.npy")) == sorted(index)
    with pytest.raises(ConfigError, match="cannot draw 501 of 500"):
        random_subset(world, tmp_path / "too_many.npy", 501, 0)


def _hand_pool(root: Path, n: int = 6, truth: bool = True, truth_uids: list[str] | None = None) -> Path:
    uids = [f"{i + 1:032x}" for i in range(n)]
    write_metadata(root / "metadata" / "00000000.parquet",
                   pool_table(["a red star on a table"] * n, [300] * n, [300] * n, [0.3] * n, [0.3] * n, uids))
    if truth:
        (root / "truth").mkdir(parents=True)
        pq.write_table(pa.table({"uid": truth_uids or uids, "clean": [i % 2 == 0 for i in range(n)]}),
                       root / "truth" / "00000000.parquet")
    return root


def test_oracle_on_a_hand_built_pool_and_its_errors(tmp_path: Path):
    pool = _hand_pool(tmp_path / "p")
    oracle_subset(pool, tmp_path / "o.npy")
    assert pairs_to_uids(read_subset(tmp_path / "o.npy")) == [f"{i + 1:032x}" for i in (0, 2, 4)]
    with pytest.raises(InputError, match="ground truth"):
        oracle_subset(_hand_pool(tmp_path / "real", truth=False), tmp_path / "x.npy")
    other = _hand_pool(tmp_path / "other", truth_uids=[f"{i + 100:032x}" for i in range(6)])
    with pytest.raises(FormatError, match="not those of"):
        oracle_subset(other, tmp_path / "x.npy")
    (pool / "truth" / "00000000.parquet").unlink()
    with pytest.raises(InputError, match="ground truth missing"):
        oracle_subset(pool, tmp_path / "x.npy")
    with pytest.raises(ConfigError, match="must not end in .json"):
        oracle_subset(_hand_pool(tmp_path / "p2"), tmp_path / "x.json")
    assert not (tmp_path / "x.npy").exists()


def test_names():
    assert is_pseudo_recipe("oracle") and is_pseudo_recipe("random_basic") and not is_pseudo_recipe("basic_filter")
    with pytest.raises(ConfigError, match="unknown pseudo-recipe"):
        build_reference_subset("oracle2", "p", "o.npy")


def test_fidelity_truth_composition_of_oracle_and_random(world: Path, tmp_path: Path):
    """bench/fidelity.py's composition columns: the oracle is all clean pairs and keeps every one;
    a random subset's clean share is the pool's, within sampling noise."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_fidelity_c", Path(__file__).resolve().parents[1] / "bench" / "fidelity.py")
    fid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid)
    seed_dir = tmp_path / "seed"
    (seed_dir / "subsets").mkdir(parents=True)
    (seed_dir / "pool").symlink_to(world)
    assert fid.truth_composition(seed_dir, "oracle") is None  # no subset yet
    oracle_subset(world, seed_dir / "subsets" / "oracle.npy")
    assert fid.truth_composition(seed_dir, "oracle") == {"clean_share": 1.0, "clean_recall": 1.0}
    share = len(_clean(world)) / 500
    random_subset(world, seed_dir / "subsets" / "rand.npy", 250, seed=0)
    c = fid.truth_composition(seed_dir, "rand")
    assert abs(c["clean_share"] - share) < 0.08 and abs(c["clean_recall"] - 0.5) < 0.15
    rows = [{"recipe": "oracle"}, {"recipe": "missing"}]
    fid.add_composition(rows, [seed_dir])
    assert rows[0]["clean_share"] == 1.0 and "clean_share" not in rows[1]
