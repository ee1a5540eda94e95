"""Shard ops that read columns or files beside the shard, called on hand-made columns: image
size, any column as is, teacher CLIP scores, and the WordNet concept match."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.errors import FormatError, InputError
from datacomp.filters.ops.clip_score import ClipScore
from datacomp.filters.ops.concepts import ConceptMatch
from datacomp.filters.ops.image_size import ImageSize
from datacomp.filters.ops.metadata import Column
from datacomp.filters.registry import OpParamError, ShardContext
from datacomp.formats.pool import write_npz


def test_image_size_min_side_and_aspect():
    w = pa.array([640, 100, 0, None, 300], pa.int64())
    h = pa.array([480, 400, 50, 20, 300], pa.int64())
    out = ImageSize().compute({"original_width": w, "original_height": h}, ShardContext(Path("s.parquet"), 5))
    assert out["image_min_side"].to_pylist() == [480, 100, 0, 0, 300]
    aspect = out["image_aspect"].to_pylist()
    assert aspect[:2] == [640 / 480, 4.0] and aspect[4] == 1.0
    assert math.isinf(aspect[2]) and math.isinf(aspect[3])  # a zero or missing side
    assert out["image_aspect"].type == pa.float64()


def test_image_size_reads_int32_columns_as_int64():
    out = ImageSize(width="w", height="h").compute({"w": pa.array([7, 9], pa.int32()), "h": pa.array([8, 3], pa.int32())},
                                                   ShardContext(Path("s.parquet"), 2))
    assert out["image_min_side"].type == pa.int64() and out["image_min_side"].to_pylist() == [7, 3]


def test_column_op_passes_columns_through_and_checks_its_parameters():
    col = pa.array([1.5, None, 3.0])
    op = Column(columns="aesthetic")
    assert op.inputs() == op.outputs() == ["aesthetic"]
    assert op.compute({"aesthetic": col}, ShardContext(Path("s.parquet"), 3))["aesthetic"] is col
    with pytest.raises(OpParamError, match="uid"):
        Column(columns=["uid"])
    with pytest.raises(OpParamError, match="column name"):
        Column(columns=[])
    with pytest.raises(OpParamError, match="missing required"):
        Column()


def test_clip_score_from_the_parquet_column():
    op = ClipScore(arch="b32")
    col = pa.array(np.array([0.25, 0.31], np.float32))
    out = op.compute({"clip_b32_similarity_score": col}, ShardContext(Path("s.parquet"), 2))
    assert out["clip_b32_similarity_score"].type == pa.float32()
    assert out["clip_b32_similarity_score"].to_pylist() == col.to_pylist()
    with pytest.raises(FormatError, match=r"s\.parquet: column 'clip_b32_similarity_score' has 1 NaN"):
        op.compute({"clip_b32_similarity_score": pa.array([0.2, None], pa.float32())}, ShardContext(Path("s.parquet"), 2))
    with pytest.raises(OpParamError, match="arch"):
        ClipScore(arch="h14")


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


def test_clip_score_recomputed_from_the_npz(tmp_path: Path):
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(4, 8))), _unit(rng.normal(size=(4, 8)))
    parquet = tmp_path / "00000000.parquet"
    write_npz(tmp_path / "00000000.npz", {"l14_img": img, "l14_txt": txt})
    op = ClipScore(arch="l14", source="npz", output="score")
    assert op.cache and op.reads_npz() and op.inputs() == []
    got = op.compute({}, ShardContext(parquet, 4))["score"].to_numpy()
    want = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32))
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # a step with ``where`` rules gets its rows only
    rows = np.array([1, 3])
    np.testing.assert_array_equal(op.compute({}, ShardContext(parquet, 4, rows=rows))["score"].to_numpy(), got[rows])
    write_npz(tmp_path / "00000000.npz", {"l14_img": np.zeros((4, 8), np.float16)})
    with pytest.raises(FormatError, match="all-zero rows"):
        op.compute({}, ShardContext(parquet, 4))


def _wordnet_root() -> Path:
    from datacomp.filters.wordnet import check_dir

    try:
        return check_dir(None)
    except InputError:
        pytest.skip("no WordNet directory (make wordnet)")


def test_concept_match_uses_the_first_synset_of_each_token(tmp_path: Path):
    root = _wordnet_root()
    from datacomp.filters.wordnet import load_wordnet

    dog = load_wordnet(str(root)).synsets("dog")[0].offset()
    ids = tmp_path / "ids.txt"
    ids.write_text(f"n{dog:08d}\n")
    op = ConceptMatch(ids=str(ids))
    texts = pa.array(["a dog on the beach", "Dog", "hot-dog stand", "a cat", None, "dogs running"])
    got = op.compute({"text": texts}, ShardContext(Path("s.parquet"), len(texts)))["concept_match"].to_pylist()
    # "Dog": WordNet lookups fold case; "dogs": morphy finds "dog"; "hot-dog" is one other token
    assert got == [True, True, False, False, False, True]
    with pytest.raises(OpParamError, match="ids"):
        ConceptMatch(ids="")
