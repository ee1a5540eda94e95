"""datacomp.embed: npz keys/rows/normalisation, scores = row-wise dot products, resume, bad inputs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp.config import Scale, load_scale
from datacomp.embed import embed
from datacomp.errors import ConfigError, FormatError, InputError
from datacomp.formats.pool import read_metadata, read_npz
from datacomp.pool.synth import synthesize
from datacomp.pool.synth.targets import render_targets, world_spec
from datacomp.pool.synth.world import load_world
from datacomp.train.models import WEIGHTS_NAME, materialise
from datacomp.train.toydata import write_toy_shards


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """A local-dir student config + randomly initialised weights (no training needed)."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("model")
    materialise("synth-rn-tiny", d)
    torch.manual_seed(0)
    m = open_clip.create_model(f"local-dir:{d}")
    torch.save({"epoch": 1, "state_dict": m.state_dict()}, d / "ckpt.pt")
    return d


def _pool(root: Path, n_shards: int = 2, per_shard: int = 40, drop: tuple[int, ...] = ()) -> Path:
    write_toy_shards(root / "shards", n_shards=n_shards, per_shard=per_shard, metadata=root / "metadata", drop=drop)
    return root


def test_embed_model_mode(tmp_path: Path, random_model: Path) -> None:
    pool = _pool(tmp_path / "pool", drop=(3, 7))
    m = embed(pool, model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", keys=("b32",), workers=1)
    assert m.stage == "embed" and m.counts["rows"] == 80 and m.counts["missing_images"] == 4
    rec = m.extra["models"]["b32"]
    assert rec["checkpoint"] == str((random_model / "ckpt.pt").resolve()) and rec["dim"] == 64
    for i in range(2):
        pq_path = pool / "metadata" / f"{i:08d}.parquet"
        t = read_metadata(pq_path)
        assert t.schema.field("clip_b32_similarity_score").type == pa.float32()
        z = read_npz(pq_path.with_suffix(".npz"), ["b32_img", "b32_txt"], expected_rows=40, dim=64)
        img, txt = z["b32_img"].astype(np.float32), z["b32_txt"].astype(np.float32)
        assert z["b32_img"].dtype == np.float16
        present = np.ones(40, bool)
        present[[3, 7]] = False
        np.testing.assert_allclose(np.linalg.norm(img[present], axis=1), 1, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=2e-3)
        assert not img[~present].any()
        score = t.column("clip_b32_similarity_score").to_numpy()
        assert np.isnan(score[~present]).all()
        np.testing.assert_allclose(score[present], (img * txt).sum(1)[present], atol=3e-3)
        # l14 left untouched (still NaN), other columns unchanged
        assert np.isnan(t.column("clip_l14_similarity_score").to_numpy()).all()
        assert t.column("text").to_pylist()[0].startswith("a ")
    assert (pool / "stages" / "embed" / "manifest.json").is_file()
    assert not (pool / "targets").exists() and "targets" not in m.extra  # not an embedded world
    # same params: reused without work
    assert embed(pool, model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", keys=("b32",)).created == m.created


def test_embed_matches_by_uid_and_resumes(tmp_path: Path, random_model: Path) -> None:
    pool = _pool(tmp_path / "pool", n_shards=3, per_shard=16)
    # reverse the row order of parquet 1: matching must be by uid, not position
    p1 = pool / "metadata" / "00000001.parquet"
    t = pq.read_table(p1)
    pq.write_table(t.take(list(range(t.num_rows - 1, -1, -1))), p1)
    kw = dict(model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", keys=("b32", "l14"), workers=1)
    embed(pool, **kw)
    z0 = read_npz(pool / "metadata" / "00000001.npz", ["b32_img", "l14_img", "l14_txt"])
    np.testing.assert_array_equal(z0["b32_img"], z0["l14_img"])  # one model, both key sets
    # simulate a kill after shard 0: drop the manifest and the other markers, corrupt shard 2's outputs
    sdir = pool / "stages" / "embed"
    (sdir / "manifest.json").unlink()
    for name in ("00000001.b32+l14.json", "00000002.b32+l14.json"):
        (sdir / ".done" / name).unlink()
    before = (pool / "metadata" / "00000000.npz").stat().st_mtime_ns
    (pool / "metadata" / "00000002.npz").unlink()
    m = embed(pool, **kw)
    assert (pool / "metadata" / "00000000.npz").stat().st_mtime_ns == before  # finished shard skipped
    assert (pool / "metadata" / "00000002.npz").is_file() and m.counts["rows"] == 48
    z1 = read_npz(pool / "metadata" / "00000001.npz", ["b32_img"])
    np.testing.assert_array_equal(z0["b32_img"], z1["b32_img"])
    # row i of the reversed parquet is the image of that uid: compare with the unreversed pool
    pool2 = _pool(tmp_path / "pool2", n_shards=3, per_shard=16)
    embed(pool2, **kw)
    z2 = read_npz(pool2 / "metadata" / "00000001.npz", ["b32_img"])
    np.testing.assert_array_equal(z1["b32_img"][::-1], z2["b32_img"])


def test_embed_bad_inputs(tmp_path: Path, random_model: Path) -> None:
    kw = dict(model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", keys=("b32",), workers=1)
    with pytest.raises(InputError, match="nope"):
        embed(tmp_path / "nope", **kw)
    pool = _pool(tmp_path / "pool", n_shards=1, per_shard=4)
    t = pq.read_table(pool / "metadata" / "00000000.parquet")
    pq.write_table(t.drop(["uid"]), pool / "metadata" / "00000000.parquet")
    with pytest.raises(FormatError, match=r"00000000\.parquet.*uid"):
        embed(pool, **kw)
    pool = _pool(tmp_path / "pool3", n_shards=2, per_shard=4)
    (pool / "shards" / "00000001.tar").unlink()
    with pytest.raises(InputError, match=r"00000001\.tar"):
        embed(pool, **kw)
    pool = _pool(tmp_path / "pool4", n_shards=1, per_shard=4)
    with pytest.raises(InputError, match="missing.pt"):
        embed(pool, model=f"local-dir:{random_model}", checkpoint=random_model / "missing.pt")
    with pytest.raises(ConfigError, match="no-such-model"):
        embed(pool, model="no-such-model", checkpoint=random_model / "ckpt.pt")
    with pytest.raises(ConfigError, match="unknown scale"):
        embed(pool, scale="no_such_scale")
    with pytest.raises(ConfigError, match="no scale recorded"):
        embed(pool)  # teacher mode, pool without a manifest naming its scale


@pytest.mark.slow
def test_embed_teachers(tmp_path: Path) -> None:
    """Teacher mode on a tiny curated set: trains both teachers, exports local-dir folders, embeds."""
    import open_clip

    pool = _pool(tmp_path / "pool", n_shards=1, per_shard=32)
    write_toy_shards(pool / "curated", n_shards=1, per_shard=64, seed=1)
    base = load_scale("synth_test")
    teachers = {k: dict(v, samples_seen=64, batch_size=32, warmup=1) for k, v in base.teachers.items()}
    s = Scale(**{**base.__dict__, "teachers": teachers})
    m = embed(pool, scale=s, workers=1)
    for key, dim in (("b32", 64), ("l14", 96)):  # + 2: the score scale's modality gap
        tdir = pool / "teachers" / key
        assert (tdir / "open_clip_config.json").is_file() and (tdir / WEIGHTS_NAME).is_file()
        assert m.extra["models"][key]["dim"] == dim + 2
        assert 0 < m.extra["models"][key]["teacher"]["score_scale"]["a"] < 1
        open_clip.create_model_and_transforms(f"local-dir:{tdir}")
    z = read_npz(pool / "metadata" / "00000000.npz", ["b32_img", "b32_txt", "l14_img", "l14_txt"], expected_rows=32)
    assert z["l14_img"].shape == (32, 98)
    t = read_metadata(pool / "metadata" / "00000000.parquet")
    score = t.column("clip_l14_similarity_score").to_numpy()
    assert not np.isnan(score).any()
    dot = np.einsum("ij,ij->i", z["l14_img"].astype(np.float32), z["l14_txt"].astype(np.float32))
    np.testing.assert_allclose(score, dot, atol=2e-3)  # the score is the npz embeddings' cosine
    assert json.loads((pool / "teachers" / "b32" / "teacher.json").read_text())["model"] == "synth-teacher-s"
    assert not (pool / "targets").exists()  # a pool that is not an embedded world gets no targets


def test_embed_world_pool_writes_targets_and_resumes(tmp_path: Path, random_model: Path) -> None:
    """On an embedded world, the model that fills l14 also embeds the image-based filter's targets."""
    from datacomp.embed.core import embed_images

    base = load_scale("synth_test")
    world = {"concepts": 12, "shard_size": 200, "curated_size": 50, "eval_size": 24, "retrieval_size": 12}
    pool = tmp_path / "pool"
    synthesize(pool, dataclasses.replace(base, name="synth_mini", pool_size=400, world=world), seed=0, workers=1)
    kw = dict(model=f"local-dir:{random_model}", checkpoint=random_model / "ckpt.pt", workers=1)
    m = embed(pool, **kw)
    path = pool / "targets" / "l14_img.npy"
    x = np.load(path, allow_pickle=False)
    n = len(load_world(12).task_ids) * 50  # default 50 per task concept
    assert x.dtype == np.float32 and x.shape == (n, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    rec = m.extra["targets"]
    assert json.loads(path.with_suffix(".json").read_text()) == rec
    assert rec["model"] == m.params["keys"]["l14"] and rec["concepts"] == load_world(12).task_names
    assert (rec["n"], rec["stream"], rec["seed"]) == (n, "targets", 0)
    tg = render_targets(world_spec(pool))
    np.testing.assert_allclose(embed_images(kw["model"], str(kw["checkpoint"].resolve()), tg.images), x, atol=1e-5)
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    sdir = pool / "stages" / "embed"
    # re-run: reused, untouched
    assert embed(pool, **kw).created == m.created and path.stat().st_mtime_ns == mtime
    # the file deleted: written again, the same bytes, and recorded
    path.unlink()
    assert embed(pool, **kw).extra["targets"]["sha256"] == rec["sha256"] and path.read_bytes() == data
    # killed before the manifest, with the targets file changed since its marker: only the targets are redone
    (sdir / "manifest.json").unlink()
    np.save(path, x[:10])
    npz_mtime = (pool / "metadata" / "00000000.npz").stat().st_mtime_ns
    m2 = embed(pool, **kw)
    assert path.read_bytes() == data and m2.extra["targets"] == {**rec, "seconds": m2.extra["targets"]["seconds"]}
    assert (pool / "metadata" / "00000000.npz").stat().st_mtime_ns == npz_mtime
    # the eval digests it must exclude are gone: one line naming the file
    path.unlink()
    (pool / "evalsets" / "eval_sha256.json").unlink()
    with pytest.raises(InputError, match=r"eval_sha256\.json: eval image digests do not exist"):
        embed(pool, **kw)


# ---- the teachers' score scale (a modality gap fitted to CommonPool's statistics) ----------------

def test_score_scale_is_an_exact_affine_map_of_the_cosine():
    from datacomp.embed.core import apply_score_scale

    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 8)).astype(np.float32)
    txt = rng.normal(size=(50, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    img[3] = 0  # a missing image stays a zero row
    sc = {"a": 0.3, "c": 0.2}
    i2, t2 = apply_score_scale(img, sc, "img"), apply_score_scale(txt, sc, "txt")
    assert i2.shape == (50, 10)
    cos = np.einsum("ij,ij->i", img, txt)
    ok = np.arange(50) != 3
    np.testing.assert_allclose(np.einsum("ij,ij->i", i2, t2)[ok], 0.3 * cos[ok] + 0.7 * 0.2, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(i2[ok], axis=1), 1, atol=1e-6)
    assert not i2[3].any()
    # image-image similarities keep their order (the image-based filter's clusters)
    ii, ii2 = img[ok] @ img[ok].T, i2[ok] @ i2[ok].T
    np.testing.assert_allclose(ii2, 0.3 * ii + 0.7, atol=1e-6)
    assert apply_score_scale(img, None, "img") is img


def test_fit_score_scale_hits_both_anchors():
    from datacomp.embed.core import fit_score_scale

    rng = np.random.default_rng(1)
    raw = rng.uniform(-0.2, 0.9, 4000)
    raw[:100] = np.nan  # rows without an image never pass
    english = rng.random(4000) < 0.4
    anchors = [{"keep": 0.10, "score": 0.28, "english": True}, {"keep": 0.5, "score": 0.247}]
    fit = fit_score_scale(raw, english, anchors)
    assert not fit["clamped"] and 0 < fit["a"] < 1
    score = fit["a"] * raw + fit["b"]
    assert abs(np.mean(english & (score >= 0.28 - 1e-9)) - 0.10) < 0.002
    assert abs(np.mean(score >= 0.247 - 1e-9) - 0.5) < 0.002
    # a teacher whose scores spread less than CLIP's: the first anchor holds, the fit is marked
    narrow = 0.5 + 0.05 * (raw - 0.35)
    fit2 = fit_score_scale(narrow, english, anchors)
    assert fit2["clamped"]
    s2 = fit2["a"] * narrow + fit2["b"]
    assert abs(np.mean(english & (s2 >= 0.28 - 1e-9)) - 0.10) < 0.002
    with pytest.raises(ValueError, match="not reachable"):
        fit_score_scale(raw, np.zeros(4000, bool), anchors)


def test_reused_teacher_keeps_its_score_scale_without_refitting(tmp_path: Path, monkeypatch) -> None:
    """A re-run that reuses a teacher takes the fitted scale from teacher.json (no second embed of
    the calibration shard); other anchors or another teacher run fit again."""
    from datacomp.embed import stage

    dest = tmp_path / "t"
    dest.mkdir()
    anchors = [{"keep": 0.1, "score": 0.28, "english": True}, {"keep": 0.5, "score": 0.247}]
    fit = {"a": 0.3, "c": 0.2, "b": 0.14, "anchors": [{"raw": 0.5, **anchors[0]}, {"raw": 0.1, **anchors[1]}]}
    (dest / "teacher.json").write_text(json.dumps({"run_manifest": "abc", "score_scale": fit}))
    assert stage._previous_score_scale(dest, "abc", anchors) == fit
    assert stage._previous_score_scale(dest, "other-run", anchors) is None
    assert stage._previous_score_scale(dest, "abc", [anchors[0], {"keep": 0.4, "score": 0.2}]) is None
    (dest / "teacher.json").write_text("{broken")
    assert stage._previous_score_scale(dest, "abc", anchors) is None


def test_teachers_at_once_match_one_at_a_time(tmp_path, synth_test_pool):
    """embed(jobs=2) trains both teachers at the same time: the same weights, score scales and npz
    as the session's world, whose teachers trained one after the other."""
    import hashlib
    import json

    from datacomp.config import load_scale
    from datacomp.embed import embed
    from datacomp.pool.synth import synthesize

    pool = tmp_path / "pool"
    scale = load_scale("synth_test")
    synthesize(pool, scale, seed=0, workers=2)
    embed(pool, teacher=True, scale=scale, seed=0, workers=2, jobs=2)

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for key in ("b32", "l14"):
        a, b = synth_test_pool / "teachers" / key, pool / "teachers" / key
        assert digest(a / "open_clip_pytorch_model.bin") == digest(b / "open_clip_pytorch_model.bin")
        assert json.loads((a / "teacher.json").read_text())["score_scale"] == \
            json.loads((b / "teacher.json").read_text())["score_scale"]
    npz = sorted((synth_test_pool / "metadata").glob("*.npz"))
    assert npz and [digest(p) for p in npz] == [digest(pool / "metadata" / p.name) for p in npz]
