"""Filter recipes: reference semantics, ties, caching, resume, sidecar, bad input."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datacomp.errors import ConfigError, DatacompError, FormatError, InputError
from datacomp.filters import list_ops_and_recipes, load_recipe, run_filter
from datacomp.filters.ops import language as language_mod
from datacomp.formats.pool import write_metadata, write_npz
from pool_tables import pool_table
from datacomp.formats.uids import SUBSET_DTYPE, is_sorted, make_subset, read_subset, uids_to_pairs

ENGLISH = [
    "a photo of a dog on the beach",
    "two cats sleeping on a red sofa",
    "the old bridge over the river at sunset",
    "a bowl of fresh fruit on a wooden table",
]
EDGE_TEXTS = [
    "big red dog",               # 3 words, 11 chars -> passes caption rules
    "red dog",                   # 2 words -> fails words > 2
    "a b c",                     # 3 words, 5 chars -> fails chars > 5
    "a b cd",                    # 3 words, 6 chars -> passes caption rules
    "a dog\non the\nbeach today",  # newlines: split() counts 6 words
    "ein Hund am Strand bei Sonnenuntergang",  # German
    "un chat sur le canapé rouge",  # French
    "",
]


def _uid(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def _table(texts, widths, heights, b32=None, l14=None, uids=None, rng=None) -> pa.Table:
    rng = rng or np.random.default_rng(0)
    n = len(texts)
    uids = uids or [_uid(rng) for _ in range(n)]
    b32 = b32 if b32 is not None else rng.uniform(0.1, 0.4, n).astype(np.float32)
    l14 = l14 if l14 is not None else rng.uniform(0.1, 0.4, n).astype(np.float32)
    return pool_table(texts, widths, heights, b32, l14, uids)


def _make_pool(root: Path, tables: list[pa.Table]) -> Path:
    for i, t in enumerate(tables):
        write_metadata(root / "metadata" / f"{i:08d}.parquet", t)
    return root


@pytest.fixture()
def edge_pool(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    texts, ws, hs = [], [], []
    sizes = [(200, 200), (199, 400), (400, 199), (600, 200), (601, 200), (200, 600), (300, 900),
             (1000, 333), (0, 500), (512, 512)]
    for t in EDGE_TEXTS + ENGLISH:
        for w, h in sizes:
            texts.append(t)
            ws.append(w)
            hs.append(h)
    n = len(texts)
    half = n // 2
    t1 = _table(texts[:half], ws[:half], hs[:half], rng=rng)
    t2 = _table(texts[half:], ws[half:], hs[half:], rng=rng)
    return _make_pool(tmp_path / "pool", [t1, t2])


def _all_rows(pool: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((pool / "metadata").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pydict()


def _reference_basic(pool: Path) -> np.ndarray:
    """A straightforward per-row implementation of the reference basic filter."""
    model = language_mod.load_model(str(language_mod.bundled_model_path()))
    rows = _all_rows(pool)
    keep = []
    for uid, text, w, h in zip(rows["uid"], rows["text"], rows["original_width"], rows["original_height"]):
        lang = model.predict(text.replace("\n", " "))[0][0].replace("__label__", "")
        lo, hi = min(w, h), max(w, h)
        aspect = hi / lo if lo else float("inf")
        if lang == "en" and len(text.split()) > 2 and len(text) > 5 and lo >= 200 and aspect <= 3.0:
            keep.append(uid)
    return make_subset(uids_to_pairs(keep))


def test_basic_filter_matches_reference_and_edges(edge_pool: Path, tmp_path: Path):
    out = tmp_path / "subsets" / "basic.npy"
    side = run_filter(edge_pool, "basic_filter", out, workers=1)
    got = read_subset(out)
    assert got.dtype == SUBSET_DTYPE and is_sorted(got)
    expected = _reference_basic(edge_pool)
    assert np.array_equal(np.asarray(got), expected)
    assert side["counts"]["kept"] == len(expected)
    # spot checks of edges: which captions / sizes survive
    rows = _all_rows(edge_pool)
    kept = set(map(tuple, np.asarray(got).tolist()))
    def is_kept(text, w, h):
        idx = [i for i in range(len(rows["uid"])) if rows["text"][i] == text and rows["original_width"][i] == w and rows["original_height"][i] == h]
        return tuple(uids_to_pairs([rows["uid"][idx[0]]])[0].tolist()) in kept
    t = ENGLISH[0]
    assert is_kept(t, 200, 200)
    assert not is_kept(t, 199, 400) and not is_kept(t, 400, 199)
    assert is_kept(t, 600, 200) and is_kept(t, 200, 600)  # aspect exactly 3.0 kept
    assert not is_kept(t, 601, 200)
    assert is_kept(t, 300, 900)
    assert not is_kept(t, 1000, 333)  # 3.003
    assert not is_kept(t, 0, 500)
    assert not is_kept("red dog", 512, 512)  # 2 words
    assert not is_kept("a b c", 512, 512)  # 5 chars
    assert not is_kept("ein Hund am Strand bei Sonnenuntergang", 512, 512)
    # removed-by table: marginal and sequential counts per rule
    by = {r["rule"]: r for r in side["removed_by"]}
    assert list(by) == ["language == en", "caption_words > 2", "caption_chars > 5", "image_min_side >= 200", "image_aspect <= 3.0"]
    assert sum(r["sequential"] for r in side["removed_by"]) == side["counts"]["pool_rows"] - side["counts"]["kept"]
    n_small = sum(1 for w, h in zip(rows["original_width"], rows["original_height"]) if min(w, h) < 200)
    assert by["image_min_side >= 200"]["marginal"] == n_small
    n_words = sum(1 for t in rows["text"] if len(t.split()) <= 2)
    assert by["caption_words > 2"]["marginal"] == n_words
    assert json.loads(out.with_suffix(".json").read_text())["counts"] == side["counts"]


def test_no_filter_keeps_everything(edge_pool: Path, tmp_path: Path):
    out = tmp_path / "all.npy"
    side = run_filter(edge_pool, "no_filter", out, workers=1)
    rows = _all_rows(edge_pool)
    assert np.array_equal(np.asarray(read_subset(out)), make_subset(uids_to_pairs(rows["uid"])))
    assert side["counts"]["kept"] == side["counts"]["pool_rows"] == len(rows["uid"])


def _score_pool(tmp_path: Path, scores: list[np.ndarray]) -> Path:
    rng = np.random.default_rng(2)
    tables = []
    for s in scores:
        n = len(s)
        tables.append(_table(["a photo of a dog"] * n, [256] * n, [256] * n, b32=s, l14=s, rng=rng))
    return _make_pool(tmp_path / "spool", tables)


def test_clip_fraction_ties_and_threshold(tmp_path: Path):
    s1 = np.array([0.30, 0.25, 0.25, 0.10, 0.40], np.float32)
    s2 = np.array([0.25, 0.20, 0.35, 0.25, 0.05], np.float32)
    pool = _score_pool(tmp_path, [s1, s2])
    allscores = np.concatenate([s1, s2])
    rows = _all_rows(pool)
    uids = np.array(rows["uid"])

    out = tmp_path / "clip30.npy"
    side = run_filter(pool, "clip_score_l14_30", out, workers=1)
    n = len(allscores)
    thr = -np.sort(-allscores)[int(n * 0.3)]  # the reference's get_threshold
    assert side["globals"]["threshold"] == pytest.approx(float(thr))
    expected = make_subset(uids_to_pairs(uids[allscores >= thr]))
    assert np.array_equal(np.asarray(read_subset(out)), expected)
    # rank int(10 * 0.3) = 3 -> 0.25; four rows tie at 0.25 and all are kept (N*f + 1 + ties)
    assert side["globals"]["threshold"] == pytest.approx(0.25)
    assert len(expected) == 7 and side["counts"]["kept"] == 7

    # fraction 0.2: rank 2 -> 0.30; N*f + 1 = 3 rows (0.40, 0.35, 0.30)
    out = tmp_path / "clip20.npy"
    side = run_filter(pool, "clip_score_l14_30", out, overrides={"fraction": 0.2}, workers=1)
    assert side["globals"]["threshold"] == pytest.approx(0.30)
    assert side["counts"]["kept"] == 3
    assert side["recipe_params"] == {"fraction": 0.2, "threshold": None}

    # threshold mode: no quantile, keep >= t
    out = tmp_path / "clip_t.npy"
    side = run_filter(pool, "clip_score_b32_30", out, overrides={"threshold": "0.25"}, workers=1)
    assert side["globals"]["threshold"] == 0.25 and side["globals"]["threshold_source"] == "given"
    expected = make_subset(uids_to_pairs(uids[allscores >= np.float32(0.25)]))
    assert np.array_equal(np.asarray(read_subset(out)), expected)

    with pytest.raises(ConfigError, match="exactly one of"):
        run_filter(pool, "clip_score_l14_30", tmp_path / "x.npy", overrides={"fraction": 0.2, "threshold": 0.2})
    with pytest.raises(ConfigError, match="unknown parameter"):
        run_filter(pool, "clip_score_l14_30", tmp_path / "x.npy", overrides={"fractoin": 0.2})


def test_fraction_one_keeps_all(tmp_path: Path):
    pool = _score_pool(tmp_path, [np.array([0.3, 0.1, 0.2], np.float32)])
    side = run_filter(pool, "clip_score_l14_30", tmp_path / "all.npy", overrides={"fraction": 1.0}, workers=1)
    assert side["counts"]["kept"] == 3


def test_nan_scores_error_names_parquet(tmp_path: Path):
    pool = _score_pool(tmp_path, [np.array([0.3, 0.2], np.float32), np.array([0.3, np.nan], np.float32)])
    with pytest.raises(FormatError, match=r"00000001\.parquet.*NaN"):
        run_filter(pool, "clip_score_l14_30", tmp_path / "x.npy", workers=1)


def test_language_cache_reused_across_recipes(edge_pool: Path, tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = language_mod.predict_languages

    def counting(model, texts):
        calls["n"] += len(texts)
        return real(model, texts)

    monkeypatch.setattr(language_mod, "predict_languages", counting)
    side1 = run_filter(edge_pool, "basic_filter", tmp_path / "a.npy", workers=1)
    n_rows = side1["counts"]["pool_rows"]
    assert calls["n"] == n_rows
    lang_key = next(k for k in side1["cache"]["ops"] if k.startswith("fasttext_language"))
    assert side1["cache"]["ops"][lang_key]["computed_rows"] == n_rows
    assert (edge_pool / "cache" / "scores" / lang_key / "00000000.parquet").is_file()

    # a second recipe using language ID (written by a user) does not pay for it again
    recipe = tmp_path / "english_long.yaml"
    recipe.write_text(
        "name: english_long\n"
        "steps:\n  - op: fasttext_language\n  - op: caption_length\n"
        "keep:\n  - language in [en]\n  - caption_chars > 10\n"
    )
    side2 = run_filter(edge_pool, recipe, tmp_path / "b.npy", workers=1)
    assert calls["n"] == n_rows
    assert side2["cache"]["ops"][lang_key] == {"computed_rows": 0, "cached_rows": n_rows, "seconds": 0.0}
    # the same recipe again: the output is up to date and reused
    side3 = run_filter(edge_pool, "basic_filter", tmp_path / "a.npy", workers=1)
    assert side3.get("reused") and calls["n"] == n_rows
    # embed rewrites a parquet with new score columns: same uids, so language ID stays cached,
    # but the subset is recomputed
    import pyarrow.parquet as pq
    p0 = edge_pool / "metadata" / "00000000.parquet"
    t = pq.read_table(p0)
    t = t.set_column(t.schema.get_field_index("clip_l14_similarity_score"), "clip_l14_similarity_score",
                     pa.array(np.full(t.num_rows, 0.5, np.float32)))
    write_metadata(p0, t)
    side4 = run_filter(edge_pool, "basic_filter", tmp_path / "a.npy", workers=1)
    assert not side4.get("reused") and calls["n"] == n_rows
    # different uids (a different pool in the same place): recomputed for that shard only
    t = t.set_column(0, "uid", pa.array([u[::-1] for u in t.column("uid").to_pylist()]))
    write_metadata(p0, t)
    run_filter(edge_pool, "basic_filter", tmp_path / "a.npy", workers=1)
    assert calls["n"] == n_rows + t.num_rows


def test_resume_after_kill(edge_pool: Path, tmp_path: Path, monkeypatch):
    from datacomp.filters import engine

    out = tmp_path / "basic.npy"
    real = engine.select_unit
    seen = []

    def dying(parquet, *a, **k):
        if len(seen) == 1:
            raise KeyboardInterrupt("killed")
        seen.append(parquet)
        return real(parquet, *a, **k)

    monkeypatch.setattr(engine, "select_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        run_filter(edge_pool, "basic_filter", out, workers=1)
    assert not out.exists()
    done = list((tmp_path / ".basic.npy.work" / "select" / ".done").glob("*.json"))
    assert len(done) == 1
    calls = []
    monkeypatch.setattr(engine, "select_unit", lambda parquet, *a, **k: calls.append(parquet) or real(parquet, *a, **k))
    side = run_filter(edge_pool, "basic_filter", out, workers=1)
    assert len(calls) == 1 and calls[0] != seen[0]  # only the unfinished shard ran again
    assert np.array_equal(np.asarray(read_subset(out)), _reference_basic(edge_pool))
    assert side["counts"]["pool_rows"] == len(_all_rows(edge_pool)["uid"])
    assert not (tmp_path / ".basic.npy.work").exists()


def test_two_workers_same_result(edge_pool: Path, tmp_path: Path):
    a = run_filter(edge_pool, "basic_filter", tmp_path / "w1.npy", workers=1, cache_dir=tmp_path / "c1")
    b = run_filter(edge_pool, "basic_filter", tmp_path / "w2.npy", workers=2, cache_dir=tmp_path / "c2")
    assert a["counts"] == b["counts"] and a["removed_by"] == b["removed_by"]
    assert np.array_equal(np.asarray(read_subset(tmp_path / "w1.npy")), np.asarray(read_subset(tmp_path / "w2.npy")))


def test_large_pool_rule_loads_uid_kernels_same_subset(edge_pool: Path, tmp_path: Path, monkeypatch):
    """Pools with >= KERNEL_MIN_ROWS rows per worker run the uid work compiled in every worker
    (the workers are told, not left to guess); the subset is the same bytes either way."""
    import subprocess
    import sys

    from datacomp.filters import engine

    a = run_filter(edge_pool, "no_filter", tmp_path / "a.npy", workers=2, cache_dir=tmp_path / "c")
    monkeypatch.setattr(engine, "KERNEL_MIN_ROWS", 1)
    b = run_filter(edge_pool, "no_filter", tmp_path / "b.npy", workers=2, cache_dir=tmp_path / "c")
    assert a["counts"] == b["counts"]
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    # what a worker does with the flag: a fresh process without numba loads it for the uid work
    code = (
        "import sys; from pathlib import Path; from datacomp.filters.engine import select_unit\n"
        "from datacomp.filters.recipe import load_recipe; from datacomp.filters.registry import OpEnv\n"
        f"p = sorted(Path({str(edge_pool / 'metadata')!r}).glob('*.parquet'))[0]\n"
        "for k in (None, True):\n"
        f"    select_unit(str(p), load_recipe('no_filter'), OpEnv(kernels=k), None, {str(tmp_path / 'part.npy')!r})\n"
        "    print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_npz_clip_score(tmp_path: Path):
    rng = np.random.default_rng(5)
    n = 6
    img = rng.normal(size=(n, 8)).astype(np.float32)
    txt = rng.normal(size=(n, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    pool = _score_pool(tmp_path, [np.full(n, np.nan, np.float32)])
    pq_path = pool / "metadata" / "00000000.parquet"
    write_npz(pq_path.with_suffix(".npz"), {"b32_img": img.astype(np.float16), "b32_txt": txt.astype(np.float16)})
    recipe = tmp_path / "npz.yaml"
    recipe.write_text("steps:\n  - op: clip_score\n    arch: b32\n    source: npz\n    dim: 8\n"
                      "keep:\n  - clip_b32_similarity_score >= 0.0\n")
    side = run_filter(pool, recipe, tmp_path / "npz.npy", workers=1)
    scores = np.einsum("ij,ij->i", img.astype(np.float16).astype(np.float32), txt.astype(np.float16).astype(np.float32))
    assert side["counts"]["kept"] == int((scores >= 0).sum())

    bad_dim = tmp_path / "npz16.yaml"
    bad_dim.write_text(recipe.read_text().replace("dim: 8", "dim: 16"))
    with pytest.raises(FormatError, match=r"00000000\.npz.*dimension 8"):
        run_filter(pool, bad_dim, tmp_path / "d.npy", workers=1)
    write_npz(pq_path.with_suffix(".npz"), {"b32_img": img[:4], "b32_txt": txt[:4]})
    with pytest.raises(FormatError, match=r"00000000\.npz.*4 rows"):
        run_filter(pool, recipe, tmp_path / "r.npy", workers=1)
    pq_path.with_suffix(".npz").unlink()
    write_npz(pq_path.with_suffix(".npz"), {"l14_img": img})
    with pytest.raises(FormatError, match=r"00000000\.npz.*no key 'b32_img'"):
        run_filter(pool, recipe, tmp_path / "k.npy", workers=1)


def test_bad_inputs(tmp_path: Path, edge_pool: Path):
    with pytest.raises(InputError, match="does not exist"):
        run_filter(tmp_path / "nope", "no_filter", tmp_path / "x.npy")
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*basic_filter"):
        run_filter(edge_pool, "nope", tmp_path / "x.npy")
    bad_op = tmp_path / "bad_op.yaml"
    bad_op.write_text("steps:\n  - op: frobnicate\nkeep: []\n")
    with pytest.raises(ConfigError, match=r"bad_op\.yaml.*unknown op 'frobnicate'"):
        run_filter(edge_pool, bad_op, tmp_path / "x.npy")
    bad_col = tmp_path / "bad_col.yaml"
    bad_col.write_text("steps:\n  - op: caption_length\nkeep:\n  - language == en\n")
    with pytest.raises(ConfigError, match=r"bad_col\.yaml.*column 'language', which no step makes"):
        run_filter(edge_pool, bad_col, tmp_path / "x.npy")
    bad_ref = tmp_path / "bad_ref.yaml"
    bad_ref.write_text("steps:\n  - op: clip_score\nkeep:\n  - clip_l14_similarity_score >= @threshold\n")
    with pytest.raises(ConfigError, match=r"bad_ref\.yaml.*@threshold"):
        run_filter(edge_pool, bad_ref, tmp_path / "x.npy")
    bad_param = tmp_path / "bad_param.yaml"
    bad_param.write_text("steps:\n  - op: clip_score\n    arch: h14\nkeep: []\n")
    with pytest.raises(ConfigError, match=r"bad_param\.yaml: step 1 \(clip_score\): 'arch'"):
        run_filter(edge_pool, bad_param, tmp_path / "x.npy")

    # parquet without uid / without a needed column
    no_uid = tmp_path / "p1"
    t = _table(["a dog on a mat"], [300], [300]).drop(["uid"])
    (no_uid / "metadata").mkdir(parents=True)
    import pyarrow.parquet as pq
    pq.write_table(t, no_uid / "metadata" / "00000000.parquet")
    with pytest.raises(FormatError, match=r"00000000\.parquet.*'uid'"):
        run_filter(no_uid, "no_filter", tmp_path / "x.npy", workers=1)
    no_w = _make_pool(tmp_path / "p2", [_table(["a dog on a mat"], [300], [300]).drop(["original_width"])])
    with pytest.raises(FormatError, match=r"00000000\.parquet.*'original_width'"):
        run_filter(no_w, "basic_filter", tmp_path / "x.npy", workers=1)
    bad_uid = _make_pool(tmp_path / "p3", [_table(["a dog on a mat"], [300], [300], uids=["xyz"])])
    with pytest.raises(FormatError, match=r"00000000\.parquet.*uid"):
        run_filter(bad_uid, "no_filter", tmp_path / "x.npy", workers=1)
    empty = tmp_path / "p4"
    (empty / "metadata").mkdir(parents=True)
    with pytest.raises(InputError, match="no .parquet"):
        run_filter(empty, "no_filter", tmp_path / "x.npy")


def test_rule_forms_and_listing(tmp_path: Path, edge_pool: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "params: {lang: 'no', min_words: 3}\n"
        "steps:\n  - op: fasttext_language\n  - op: caption_length\n"
        "keep:\n  - language != ${lang}\n  - {column: caption_words, op: '>=', value: '${min_words}'}\n"
        "  - language not in [de, fr]\n"
    )
    plan = load_recipe(recipe, {"min_words": 4})
    assert [r.text for r in plan.keep][0] == "language != no"  # 'no' stays a word, not YAML false
    side = run_filter(edge_pool, recipe, tmp_path / "r.npy", overrides={"min_words": 4}, workers=1)
    rows = _all_rows(edge_pool)
    assert side["counts"]["kept"] <= sum(1 for t in rows["text"] if len(t.split()) >= 4)
    kinds = {k for k, _, _ in list_ops_and_recipes()}
    names = {n for _, n, _ in list_ops_and_recipes()}
    assert kinds == {"op", "global-op", "recipe"}
    assert {"basic_filter", "no_filter", "clip_score_l14_30", "clip_score_b32_30", "fasttext_language",
            "quantile_threshold"} <= names
    assert all(d for _, _, d in list_ops_and_recipes())


def test_errors_are_datacomp_errors():
    assert issubclass(FormatError, DatacompError)


def test_global_step_where_rules(tmp_path: Path):
    """A quantile over English rows only (paper Table 16's 'L/14 + English' thresholds)."""
    texts = ["a photo of a dog on the beach"] * 4 + ["ein Hund am Strand bei Sonnenuntergang"] * 4
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6], np.float32)
    pool = _make_pool(tmp_path / "pool", [_table(texts, [300] * 8, [300] * 8, b32=scores, l14=scores)])
    recipe = tmp_path / "en_clip.yaml"
    recipe.write_text(
        "params: {fraction: 0.5}\n"
        "steps:\n  - op: fasttext_language\n  - op: clip_score\n"
        "  - op: quantile_threshold\n    column: clip_l14_similarity_score\n    fraction: ${fraction}\n"
        "    where: [language == en]\n"
        "keep:\n  - language == en\n  - clip_l14_similarity_score >= @threshold\n"
    )
    side = run_filter(pool, recipe, tmp_path / "en.npy", workers=1)
    assert side["globals"]["threshold"] == pytest.approx(0.2)  # rank int(4 * 0.5) = 2 of [.4 .3 .2 .1]
    assert side["globals"]["threshold_pool_rows"] == 4
    assert side["counts"]["kept"] == 3
    assert [r["sequential"] for r in side["removed_by"]] == [4, 1]
    assert [r["marginal"] for r in side["removed_by"]] == [4, 1]


def test_word_char_kernel_long_rows_and_slices():
    """The 8-bytes-at-a-time kernel: rows crossing word boundaries, every slice offset mod 8,
    multi-byte whitespace inside and at the edges of rows, rows after empty and null rows."""
    import re

    from datacomp.filters.ops._text import fasttext_token_count, words_and_chars

    def ft_tokens(t: str) -> int:  # fastText: runs of bytes other than 7 blanks, plus '</s>' per newline
        b = t.encode()
        return len(re.findall(rb"[^ \n\r\t\v\f\x00]+", b)) + b.count(b"\n")

    rng = np.random.default_rng(1)
    alphabet = list("abc  \t\n\r\x00\x0b\x1c\x85\xa0\u2000\u2009\u200b\u3000\u3001\u2019é日\U0001F600")
    texts = ["".join(rng.choice(alphabet, int(rng.integers(0, 70)))) for _ in range(2000)]
    texts[7] = texts[8] = ""
    arr = pa.array(texts[:20] + [None] + texts[20:])
    texts = texts[:20] + [""] + texts[20:]
    for compiled in (True, False):
        for start in range(9):
            words, chars = words_and_chars(arr.slice(start), compiled)
            assert words.tolist() == [len(t.split()) for t in texts[start:]]
            assert chars.tolist() == [len(t) for t in texts[start:]]
            assert fasttext_token_count(arr.slice(start), compiled).tolist() == [ft_tokens(t) for t in texts[start:]]


def test_uid_pairs_match_reference():
    from datacomp.filters import _uids
    from datacomp.formats.uids import pairs_to_uids

    rng = np.random.default_rng(2)
    n = 5000
    a = np.empty(n, dtype=SUBSET_DTYPE)
    a["f0"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    a["f1"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    uids = pairs_to_uids(a)
    for compiled in (True, False):
        assert _uids.uid_pairs(pa.array(uids), compiled).tobytes() == uids_to_pairs(uids).tobytes()
        # upper case, and a slice whose rows do not start on an 8-byte boundary
        assert _uids.uid_pairs(pa.array([u.upper() for u in uids]).slice(3), compiled).tobytes() == uids_to_pairs(uids[3:]).tobytes()
        assert _uids.uid_pairs(pa.chunked_array([uids[:7], uids[7:]]), compiled).tobytes() == uids_to_pairs(uids).tobytes()
        scratch = _uids.uid_pairs(pa.array(uids[:10]), compiled, scratch=True)
        assert scratch.tobytes() == uids_to_pairs(uids[:10]).tobytes()
        for bad in (["0" * 31 + "g"], ["0" * 31], ["0" * 30 + " 1"], [uids[0], "0" * 33], ["0" * 31, "0" * 33]):
            with pytest.raises(ValueError):
                _uids.uid_pairs(pa.array(bad), compiled)


def test_streamed_part_and_merge_files_equal_reference_save(tmp_path: Path, monkeypatch):
    """write_part / merge_parts (the select pass's writes) give the bytes of
    np.save(make_subset(...)) for every kernel path, keep mask, chunking and thread split,
    including near-ties, equal high halves, duplicates, empty parts and unsorted parts."""
    from datacomp.filters import _uids

    rng = np.random.default_rng(5)
    n = 6000
    a = np.empty(n, dtype=SUBSET_DTYPE)
    a["f0"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    a["f1"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    a["f0"][:1000] = a["f0"][1000:2000] ^ rng.integers(0, 4, 1000, dtype=np.uint64)  # ties in the kept bits
    a[2000:2010] = a[2010:2020]  # duplicates
    a["f0"][3000:3100] = 7  # equal hi, lo in any order
    monkeypatch.setattr(_uids, "_CHUNK", 257)  # many chunks, with junctions to check
    monkeypatch.setattr(_uids, "_THREADED_MIN", 16)
    monkeypatch.setattr(_uids, "_BUCKET_ROWS", 300)  # many value ranges
    fully = _uids._write_sorted_fully

    def saved(arr):
        p = tmp_path / "ref.npy"
        np.save(p, make_subset(arr))
        return p.read_bytes()

    for compiled in (True, False):
        chunks = np.array_split(a, 6)
        chunks.insert(2, a[:0])  # an empty part
        keeps = [rng.random(len(c)) < 0.7 for c in chunks]
        keeps[0][:] = True
        paths, groups = [], []
        for i, (c, keep) in enumerate(zip(chunks, keeps)):
            paths.append(tmp_path / f"part{i}.npy")
            scratch = _uids._scratch("pairs", len(c), SUBSET_DTYPE)  # a reused buffer, as workers pass
            scratch[:] = c
            count, ends = _uids.write_part(scratch, keep, paths[-1], compiled)
            assert count == int(keep.sum()) and len(ends) == 256 and ends[-1] == count
            groups.append(ends)
            part = np.load(paths[-1])  # the kept rows, grouped by the top byte of hi, stably
            kept = c[keep]
            assert part.tobytes() == kept[np.argsort(kept["f0"] >> np.uint64(56), kind="stable")].tobytes()
        kept_all = np.concatenate([c[k] for c, k in zip(chunks, keeps)])
        for threads in (1, 2):
            for given in (groups, None):  # group ends from write_part, or counted by the merge
                out = tmp_path / f"subset{threads}.npy"
                assert _uids.merge_parts(paths, out, given, compiled, threads=threads) == len(kept_all)
                assert out.read_bytes() == saved(kept_all)
        # group ends that lie (a corrupt marker): the checks notice, the output is still right
        liar = [list(reversed(g)) for g in groups]
        assert _uids.merge_parts(paths, tmp_path / "l.npy", liar, compiled) == len(kept_all)
        assert (tmp_path / "l.npy").read_bytes() == saved(kept_all)
        assert not list(tmp_path.glob(".*.tmp*"))  # no temporary left behind
        # sorted parts (also grouped by top byte) merge the same way
        for i, (c, keep) in enumerate(zip(chunks, keeps)):
            np.save(paths[i], make_subset(c[keep]))
        assert _uids.merge_parts(paths, tmp_path / "s.npy", None, compiled) == len(kept_all)
        assert (tmp_path / "s.npy").read_bytes() == saved(kept_all)
        # parts in no order: a check fails while streaming and the whole array is sorted
        bad = [tmp_path / "u0.npy", tmp_path / "u1.npy", tmp_path / "u2.npy"]
        np.save(bad[0], a[:3000])
        np.save(bad[1], make_subset(a[3000:4500])[::-1])  # descending: binary search cuts go astray
        np.save(bad[2], a[4500:])
        for threads in (1, 2):
            assert _uids.merge_parts(bad, tmp_path / "u.npy", None, compiled, threads=threads) == n
            assert (tmp_path / "u.npy").read_bytes() == saved(a)
        # an empty subset and a single row
        assert _uids.write_part(a[:5], np.zeros(5, dtype=bool), tmp_path / "e.npy", compiled)[0] == 0
        assert (tmp_path / "e.npy").read_bytes() == saved(a[:0])
        assert _uids.merge_parts([tmp_path / "e.npy"], tmp_path / "e2.npy", None, compiled) == 0
        assert (tmp_path / "e2.npy").read_bytes() == saved(a[:0])
        assert _uids.write_part(a[:1], None, tmp_path / "one.npy", compiled)[0] == 1
        assert (tmp_path / "one.npy").read_bytes() == saved(a[:1])
        # an error in the second thread (here: a disk that fills up) reaches the caller
        clean = np.empty(3000, dtype=SUBSET_DTYPE)
        clean["f0"] = rng.integers(0, 2**64, 3000, dtype=np.uint64)
        clean["f1"] = rng.integers(0, 2**64, 3000, dtype=np.uint64)
        clean[100:110] = clean[2900:2910]  # duplicates: key ties whose rows are in order
        clean_paths = [tmp_path / f"clean{i}.npy" for i in range(3)]
        clean_groups = [_uids.write_part(c, None, p, compiled)[1] for c, p in zip(np.array_split(clean, 3), clean_paths)]
        # hash-like uids stream without the fallback (which would hide a streaming bug)
        def no_fallback(*_):
            raise AssertionError("fell back to the full sort")

        monkeypatch.setattr(_uids, "_write_sorted_fully", no_fallback)
        for threads in (1, 2):
            assert _uids.merge_parts(clean_paths, tmp_path / "c.npy", clean_groups, compiled, threads=threads) == 3000
            assert (tmp_path / "c.npy").read_bytes() == saved(clean)
        monkeypatch.setattr(_uids, "_write_sorted_fully", fully)
        real_write = _uids._write_all
        calls = []

        def full_disk(fd, data, offset=0):
            calls.append(threading.current_thread() is threading.main_thread())
            if not calls[-1]:
                raise OSError(28, "No space left on device")
            return real_write(fd, data, offset)

        monkeypatch.setattr(_uids, "_write_all", full_disk)
        with pytest.raises(OSError, match="No space"):
            _uids.merge_parts(clean_paths, tmp_path / "full.npy", clean_groups, compiled, threads=2)
        monkeypatch.setattr(_uids, "_write_all", real_write)
        assert False in calls and not (tmp_path / "full.npy").exists()
        # a truncated part is an error naming the file
        (tmp_path / "t.npy").write_bytes((tmp_path / "one.npy").read_bytes()[:-3])
        with pytest.raises(ValueError, match="t.npy: truncated"):
            _uids.merge_parts([tmp_path / "t.npy"], tmp_path / "t2.npy", None, compiled)
