"""Every DataComp baseline against a row-by-row statement of the reference rules (DATACOMP.md §3).

The pools here are built to hit the edges the rules hinge on: ties at the fraction threshold,
captions with newlines, 2 vs 3 words, 5 vs 6 characters, min side 199/200, aspect exactly 3.0,
tokens whose first synset is / is not in the id list, capitalised tokens, float32 thresholds,
samples equidistant between centroids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp.errors import ConfigError, FormatError, InputError
from datacomp.filters import load_recipe, run_filter
from datacomp.filters.ops import language as language_mod
from datacomp.filters.wordnet import bundled_ids, check_dir, load_wordnet, read_wnids
from datacomp.formats.pool import write_metadata
from pool_tables import pool_table
from datacomp.formats.uids import SUBSET_DTYPE, make_subset, read_subset, uids_to_pairs

TEXTS = [
    "big red dog",                  # 3 words, 11 chars
    "red dog",                      # 2 words: fails basic; 2 fastText tokens: passes image-based
    "a b c",                        # 3 words, 5 chars
    "a b cd",                       # 3 words, 6 chars
    "Dogs\non the beach",           # newline: 4 words; 5 fastText tokens; capitalised 'Dogs' -> dog.n.01
    "dogs\n",                       # 1 word, 2 fastText tokens ('</s>'), 5 chars
    "kitten\n",                     # 1 word, 2 fastText tokens, 7 chars: passes the image-based caption rule
    "a photograph of the old bridge",  # 'photograph' -> photograph.n.01 (not an ImageNet-21k id)
    "dog, cat.",                    # punctuation kept: no synsets
    "A Cat sleeping on the sofa",   # 'Cat' -> cat.n.01
    "ein Hund am Strand bei Sonnenuntergang",
    "un chat sur le canapé rouge",
    "the\u2003cat\u00a0sat",         # Unicode spaces split words as str.split() does
    "",
]
SIZES = [(200, 200), (199, 400), (400, 199), (600, 200), (601, 200), (200, 600), (1000, 333), (0, 500)]


_table = pool_table


# 4-d image embeddings: unit axes, and rows exactly between two axes (ties)
E = np.eye(4, dtype=np.float32)
H = np.float32(np.sqrt(0.5))
EMB_KINDS = [E[0], E[1], E[2], E[3], np.array([H, H, 0, 0], np.float32), np.array([0, H, H, 0], np.float32)]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines") / "pool"
    rng = np.random.default_rng(7)
    rows = [(t, w, h) for t in TEXTS for (w, h) in SIZES]
    n = len(rows)
    # scores with many ties (a 0.01 grid), plus the float32 values the threshold tests need
    b32 = rng.integers(20, 35, n).astype(np.float32) / 100
    l14 = rng.integers(15, 30, n).astype(np.float32) / 100
    b32[:3] = [np.float32(0.28), np.nextafter(np.float32(0.28), np.float32(0)), np.float32(0.7)]
    emb = np.stack([EMB_KINDS[i % len(EMB_KINDS)] for i in range(n)]).astype(np.float16)
    uids = [rng.bytes(16).hex() for _ in range(n)]
    half = n // 2
    for i, sl in enumerate([slice(0, half), slice(half, n)]):
        t, w, h = zip(*rows[sl])
        write_metadata(root / "metadata" / f"{i:08d}.parquet", _table(t, w, h, b32[sl], l14[sl], uids[sl]))
        np.savez_compressed(root / "metadata" / f"{i:08d}.npz", l14_img=emb[sl], b32_img=emb[sl])
    (root / "targets").mkdir()
    np.save(root / "targets" / "l14_img.npy", np.stack([E[0], E[2]]).astype(np.float16))
    np.save(root / "centroids4.npy", np.eye(4, dtype=np.float32))
    return root


def _rows(pool: Path) -> dict[str, list]:
    tables = [pq.read_table(p) for p in sorted((pool / "metadata").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pydict()


def _emb(pool: Path) -> np.ndarray:
    return np.concatenate([np.load(p)["l14_img"] for p in sorted((pool / "metadata").glob("*.npz"))])


def _subset(uids) -> np.ndarray:
    return make_subset(uids_to_pairs(list(uids)))


def _same(out: Path, expected: np.ndarray) -> None:
    got = read_subset(out)
    assert got.dtype == SUBSET_DTYPE
    assert np.array_equal(np.asarray(got), expected)


# ---- the reference rules, row by row --------------------------------------------------------------

def _fasttext_en(text: str) -> bool:
    model = language_mod.load_model(str(language_mod.bundled_model_path()))
    return model.predict(text.replace("\n", " "))[0][0] == "__label__en"


def _fasttext_tokens(text: str) -> int:
    """fastText's Dictionary::readWord loop (what fasttext.tokenize returns), byte by byte."""
    data, i, tokens = text.encode(), 0, 0
    word = b""
    while i < len(data):
        c = data[i:i + 1]
        i += 1
        if c in (b" ", b"\n", b"\r", b"\t", b"\v", b"\f", b"\0"):
            if not word:
                if c == b"\n":
                    tokens += 1  # EOS
                continue
            tokens += 1
            word = b""
            if c == b"\n":
                i -= 1
            continue
        word += c
    return tokens + (1 if word else 0)


def _caption_filter(text: str) -> bool:  # the image-based pre-filter
    return _fasttext_en(text) and _fasttext_tokens(text) > 1 and len(text) > 5


def _threshold(scores: np.ndarray, fraction: float):
    return -np.sort(-scores)[int(len(scores) * fraction)]


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    import torch  # the reference: einsum on float32 features, torch.argmax (first on ties)

    sims = torch.einsum("ik, jk -> ij", torch.from_numpy(x).float(), torch.from_numpy(centroids).float())
    return torch.argmax(sims, dim=1).numpy()


# ---- tests ----------------------------------------------------------------------------------------

def test_caption_token_counts_edges():
    assert [_fasttext_tokens(t) for t in ["red dog", "dogs\n", "Dogs\non the beach", "", "\n\n", "a\x00b"]] == [2, 2, 5, 0, 2, 2]
    import sys

    from datacomp.filters.ops._text import PY_WS, fasttext_token_count, py_word_count, words_and_chars
    assert PY_WS == [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    texts = TEXTS + ["\n", " a  b ", "x\ry\tz\x0bw\x0cv", "\x1cA\x1fB\x85C"]
    rng = np.random.default_rng(0)
    alphabet = list("ab \n\t\x0b\x0c\r\x1c\x1f\x00\x01\x85\xa0\u1680\u2000\u200a\u200b\u2028\u202f\u205f\u3000é日\U0001F600")
    texts += ["".join(rng.choice(alphabet, int(rng.integers(0, 10)))) for _ in range(3000)]
    arr = pa.array(texts)
    for compiled in (True, False):  # the numba kernel and the NumPy fallback
        assert fasttext_token_count(arr, compiled).tolist() == [_fasttext_tokens(t) for t in texts]
        assert py_word_count(arr, compiled).tolist() == [len(t.split()) for t in texts]
        assert py_word_count(arr.slice(3, 100), compiled).tolist() == [len(t.split()) for t in texts[3:103]]
        words, chars = words_and_chars(arr.slice(5, 500), compiled)
        assert chars.tolist() == [len(t) for t in texts[5:505]]
        assert words.tolist() == [len(t.split()) for t in texts[5:505]]


def test_language_batch_equals_per_caption_predict(pool: Path):
    rows = _rows(pool)
    model = language_mod.load_model(str(language_mod.bundled_model_path()))
    batch = language_mod.predict_languages(model, language_mod.model_inputs(pa.array(rows["text"])))
    single = [model.predict(t.replace("\n", " "))[0][0][9:] for t in rows["text"]]
    assert batch == single


def test_basic_filter(pool: Path, tmp_path: Path):
    rows = _rows(pool)
    keep = []
    for uid, t, w, h in zip(rows["uid"], rows["text"], rows["original_width"], rows["original_height"]):
        lo, hi = min(w, h), max(w, h)
        aspect = hi / lo if lo else float("inf")
        if _fasttext_en(t) and len(t.split()) > 2 and len(t) > 5 and lo >= 200 and aspect <= 3.0:
            keep.append(uid)
    out = tmp_path / "basic.npy"
    run_filter(pool, "basic_filter", out, workers=1)
    _same(out, _subset(keep))
    kept = {u for u in keep}
    by = {(t, w, h): u for u, t, w, h in zip(rows["uid"], rows["text"], rows["original_width"], rows["original_height"])}
    assert by[("big red dog", 200, 200)] in kept and by[("big red dog", 199, 400)] not in kept
    assert by[("big red dog", 600, 200)] in kept and by[("big red dog", 601, 200)] not in kept  # aspect 3.0 kept


@pytest.mark.parametrize("recipe, caption_rules", [("english_only", False), ("english_caption_length", True)])
def test_english_rows_of_table26(pool: Path, tmp_path: Path, recipe: str, caption_rules: bool):
    """The paper's "English (fasttext) only" and "English + caption length" rows: basic_filter's
    language rule, with and without its caption-length rules, never an image rule."""
    rows = _rows(pool)
    keep = [u for u, t in zip(rows["uid"], rows["text"])
            if _fasttext_en(t) and (not caption_rules or (len(t.split()) > 2 and len(t) > 5))]
    out = tmp_path / f"{recipe}.npy"
    run_filter(pool, recipe, out, workers=1)
    _same(out, _subset(keep))
    by = {(t, w, h): u for u, t, w, h in zip(rows["uid"], rows["text"], rows["original_width"], rows["original_height"])}
    assert by[("big red dog", 199, 400)] in keep and by[("big red dog", 1000, 333)] in keep  # sizes never matter
    assert (by[("red dog", 200, 200)] in keep) == (not caption_rules or not _fasttext_en("red dog"))
    basic = tmp_path / "basic.npy"
    run_filter(pool, "basic_filter", basic, workers=1)
    assert set(map(tuple, np.asarray(read_subset(basic)).tolist())) <= set(map(tuple, np.asarray(read_subset(out)).tolist()))


@pytest.mark.parametrize("arch", ["b32", "l14"])
@pytest.mark.parametrize("fraction", [0.3, 0.25, 0.1])
def test_clip_score_fraction(pool: Path, tmp_path: Path, arch: str, fraction: float):
    rows = _rows(pool)
    scores = np.asarray(rows[f"clip_{arch}_similarity_score"], np.float32)
    thr = _threshold(scores, fraction)
    assert (scores == thr).sum() > 1  # the pool has ties at the threshold
    expected = _subset(np.array(rows["uid"])[scores >= thr])
    out = tmp_path / f"{arch}.npy"
    side = run_filter(pool, f"clip_score_{arch}_30", out, overrides={"fraction": fraction}, workers=1)
    _same(out, expected)
    assert side["globals"]["threshold"] == float(thr)
    assert len(expected) >= int(len(scores) * fraction) + 1


def test_clip_score_threshold_float32_semantics(pool: Path, tmp_path: Path):
    """A given threshold is compared as NumPy compares a float32 column with a Python float."""
    rows = _rows(pool)
    scores = np.asarray(rows["clip_b32_similarity_score"], np.float32)
    for t in (0.7, 0.28, 0.25):
        out = tmp_path / f"t{t}.npy"
        run_filter(pool, "clip_score_b32_30", out, overrides={"threshold": t}, workers=1)
        _same(out, _subset(np.array(rows["uid"])[scores >= t]))
    # float32(0.7) < 0.7 in float64, yet NumPy's float32 comparison (the reference's) keeps it
    assert (scores >= 0.7).sum() == 1 and (scores.astype(np.float64) >= 0.7).sum() == 0


def test_laion2b(pool: Path, tmp_path: Path):
    import gcld3

    det = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    rows = _rows(pool)
    scores = np.asarray(rows["clip_b32_similarity_score"], np.float32)
    lang = np.array([det.FindLanguage(text=t).language == "en" for t in rows["text"]])
    expected = _subset(np.array(rows["uid"])[lang & (scores >= 0.28)])
    out = tmp_path / "laion.npy"
    side = run_filter(pool, "laion2b", out, workers=1)
    _same(out, expected)
    assert 0 < side["counts"]["kept"] < len(scores)
    # exactly float32(0.28) is kept, the float32 just below it is not
    by_uid = dict(zip(rows["uid"], range(len(scores))))
    kept = {tuple(x) for x in np.asarray(read_subset(out)).tolist()}
    first = [u for u in rows["uid"] if by_uid[u] in (0, 1)]
    assert scores[0] == np.float32(0.28) and scores[1] < scores[0]
    assert (tuple(uids_to_pairs([first[1]])[0].tolist()) in kept) is False


def test_text_based(pool: Path, tmp_path: Path):
    wn = load_wordnet(str(check_dir(None)))
    ids = read_wnids(bundled_ids())
    assert len(ids) == 21843

    def first_in(word: str) -> bool:
        s = wn.synsets(word)
        return bool(s) and s[0].offset() in ids

    assert first_in("Dogs") and first_in("cat") and first_in("Cat")
    assert not first_in("photograph") and not first_in("dog,") and not first_in("the")
    rows = _rows(pool)
    keep = [u for u, t in zip(rows["uid"], rows["text"]) if _fasttext_en(t) and any(first_in(w) for w in t.split())]
    out = tmp_path / "text.npy"
    side = run_filter(pool, "text_based", out, workers=1)
    _same(out, _subset(keep))
    assert 0 < side["counts"]["kept"] < len(rows["uid"])


def _image_based_expected(pool: Path, centroids: np.ndarray, targets: np.ndarray, mask=None) -> np.ndarray:
    rows = _rows(pool)
    emb = _emb(pool)
    target_ids = set(_nearest(targets.astype(np.float32), centroids).tolist())
    cap = np.array([_caption_filter(t) for t in rows["text"]])
    if mask is not None:
        cap &= mask
    nearest = _nearest(emb, centroids)
    keep = cap & np.isin(nearest, list(target_ids))
    return _subset(np.array(rows["uid"])[keep])


def test_image_based_given_centroids_and_ties(pool: Path, tmp_path: Path):
    centroids = np.eye(4, dtype=np.float32)
    targets = np.load(pool / "targets" / "l14_img.npy")
    expected = _image_based_expected(pool, centroids, targets)
    out = tmp_path / "img.npy"
    side = run_filter(pool, "image_based", out, overrides={"centroids": str(pool / "centroids4.npy")}, workers=1)
    _same(out, expected)
    assert side["globals"]["target_clusters_count"] == 2
    # ties: (e0+e1)/sqrt2 goes to centroid 0 (a target), (e1+e2)/sqrt2 to centroid 1 (not a target)
    assert _nearest(np.stack(EMB_KINDS[4:]), centroids).tolist() == [0, 1]
    rows = _rows(pool)
    emb = _emb(pool)
    kept = {tuple(x) for x in np.asarray(read_subset(out)).tolist()}
    caption_ok = [i for i, t in enumerate(rows["text"]) if _caption_filter(t)]
    tie0 = [i for i in caption_ok if np.array_equal(emb[i].astype(np.float32), EMB_KINDS[4].astype(np.float16).astype(np.float32))]
    tie1 = [i for i in caption_ok if np.array_equal(emb[i].astype(np.float32), EMB_KINDS[5].astype(np.float16).astype(np.float32))]
    assert tie0 and tie1
    assert all(tuple(uids_to_pairs([rows["uid"][i]])[0].tolist()) in kept for i in tie0)
    assert not any(tuple(uids_to_pairs([rows["uid"][i]])[0].tolist()) in kept for i in tie1)


def test_image_based_kmeans_and_intersection(pool: Path, tmp_path: Path):
    import faiss

    out = tmp_path / "img_km.npy"
    side = run_filter(pool, "image_based", out, overrides={"num_clusters": 3}, workers=2)
    cpath = Path(side["globals"]["centroids"])
    assert cpath.is_file() and side["globals"]["centroids_k"] == 3
    # the reference's clustering: faiss k-means over the caption-filtered rows of the whole pool
    rows = _rows(pool)
    emb = _emb(pool)
    cap = np.array([_caption_filter(t) for t in rows["text"]])
    assert side["globals"]["centroids_points"] == int(cap.sum())
    x = emb[cap].astype(np.float32)
    clus = faiss.Clustering(4, 3)
    clus.niter, clus.seed, clus.max_points_per_centroid = 20, 0, 10_000_000
    clus.train(x, faiss.IndexFlatL2(4))
    ref_centroids = faiss.vector_to_array(clus.centroids).reshape(3, 4)
    assert np.array_equal(np.load(cpath), ref_centroids)
    targets = np.load(pool / "targets" / "l14_img.npy")
    _same(out, _image_based_expected(pool, ref_centroids, targets))

    # image_based ∩ clip_score_l14_30: the pool-level L/14 threshold, then the image-based filter;
    # the centroids are the image-based ones (reused, not recomputed)
    out2 = tmp_path / "inter.npy"
    side2 = run_filter(pool, "image_based_clip_score_l14_30", out2, overrides={"num_clusters": 3}, workers=1)
    assert side2["globals"]["centroids"] == str(cpath)
    l14 = np.asarray(rows["clip_l14_similarity_score"], np.float32)
    expected = _image_based_expected(pool, ref_centroids, targets, mask=l14 >= _threshold(l14, 0.3))
    _same(out2, expected)
    assert [r["rule"] for r in side2["removed_by"]][0] == "clip_l14_similarity_score >= @threshold"


def test_union_and_intersection_recipes(pool: Path, tmp_path: Path):
    (tmp_path / "u.yaml").write_text("name: u\nunion: [laion2b, basic_filter]\n")
    (tmp_path / "i.yaml").write_text("name: i\nintersect: [laion2b, basic_filter]\nparams: {threshold: 0.25}\n")
    a = tmp_path / "a.npy"
    b = tmp_path / "b.npy"
    run_filter(pool, "laion2b", a, workers=1)
    run_filter(pool, "basic_filter", b, workers=1)
    A = {tuple(x) for x in np.asarray(read_subset(a)).tolist()}
    B = {tuple(x) for x in np.asarray(read_subset(b)).tolist()}
    side = run_filter(pool, tmp_path / "u.yaml", tmp_path / "u.npy", workers=1)
    assert {tuple(x) for x in np.asarray(read_subset(tmp_path / "u.npy")).tolist()} == A | B
    assert [m["member"] for m in side["union_members"]] == ["laion2b", "basic_filter"]
    assert side["union_members"][-1]["removed_by_all_so_far"] == side["counts"]["removed"]
    run_filter(pool, "laion2b", a, overrides={"threshold": 0.25}, workers=1, overwrite=True)
    A25 = {tuple(x) for x in np.asarray(read_subset(a)).tolist()}
    run_filter(pool, tmp_path / "i.yaml", tmp_path / "i.npy", workers=1)
    assert {tuple(x) for x in np.asarray(read_subset(tmp_path / "i.npy")).tolist()} == A25 & B
    plan = load_recipe(tmp_path / "i.yaml")
    assert [s.op.name for s in plan.steps].count("fasttext_language") == 1 and plan.params["threshold"] == 0.25
    (tmp_path / "clash.yaml").write_text("intersect: [clip_score_l14_30, clip_score_b32_30]\n")
    with pytest.raises(ConfigError, match=r"clash\.yaml.*'threshold'"):
        load_recipe(tmp_path / "clash.yaml")


def test_language_column_cached_across_recipes(pool: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    s1 = run_filter(pool, "basic_filter", tmp_path / "1.npy", workers=1, cache_dir=cache)
    s2 = run_filter(pool, "text_based", tmp_path / "2.npy", workers=1, cache_dir=cache)
    key = next(k for k in s1["cache"]["ops"] if k.startswith("fasttext_language"))
    n = s1["counts"]["pool_rows"]
    assert s1["cache"]["ops"][key]["computed_rows"] == n
    assert s2["cache"]["ops"][key]["computed_rows"] == 0 and s2["cache"]["ops"][key]["cached_rows"] == n


# ---- bad input: one-line errors naming the file ----------------------------------------------------

def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _copy_pool(pool: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(pool / "metadata", dest / "metadata")
    shutil.copytree(pool / "targets", dest / "targets")
    return dest


def test_bad_npz_inputs(pool: Path, tmp_path: Path):
    centroids = str(pool / "centroids4.npy")
    p = _copy_pool(pool, tmp_path / "p")
    z = p / "metadata" / "00000001.npz"
    emb = np.load(z)["l14_img"]
    np.savez(z, b32_img=emb)  # wrong key
    with pytest.raises(FormatError, match=r"00000001\.npz: npz has no key 'l14_img'") as e:
        run_filter(p, "image_based", tmp_path / "x.npy", overrides={"centroids": centroids}, workers=1)
    _one_line(e)
    np.savez(z, l14_img=np.zeros((len(emb), 8), np.float16))  # wrong dim
    with pytest.raises(FormatError, match=r"00000001\.npz.*dimension 8.*centroids 4") as e:
        run_filter(p, "image_based", tmp_path / "x.npy", overrides={"centroids": centroids}, workers=1)
    _one_line(e)
    np.savez(z, l14_img=emb[:-1])  # wrong row count
    with pytest.raises(FormatError, match=r"00000001\.npz.*rows but its parquet has") as e:
        run_filter(p, "image_based", tmp_path / "k2.npy", overrides={"num_clusters": 2}, workers=1)  # other params
    _one_line(e)
    bad = emb.copy()
    bad[3] = np.nan
    np.savez(z, l14_img=bad)  # NaN embeddings
    with pytest.raises(FormatError, match=r"00000001\.npz.*NaN") as e:
        run_filter(p, "image_based", tmp_path / "x.npy", overrides={"centroids": centroids}, workers=1)
    _one_line(e)
    np.savez(z, l14_img=emb)
    (p / "targets" / "l14_img.npy").unlink()
    with pytest.raises(InputError, match=r"targets/l14_img\.npy: target embeddings file does not exist") as e:
        run_filter(p, "image_based", tmp_path / "x.npy", overrides={"centroids": centroids}, workers=1)
    _one_line(e)


def test_bad_text_inputs(pool: Path, tmp_path: Path):
    with pytest.raises(InputError, match=r"nowhere/corpora/wordnet: WordNet directory does not exist") as e:
        run_filter(pool, "text_based", tmp_path / "x.npy", overrides={"wordnet_dir": str(tmp_path / "nowhere")}, workers=1)
    _one_line(e)
    broken = tmp_path / "wn" / "corpora" / "wordnet"
    broken.mkdir(parents=True)
    (broken / "index.noun").write_text("")
    with pytest.raises(InputError, match=r"wn/corpora/wordnet: WordNet directory lacks lexnames") as e:
        run_filter(pool, "text_based", tmp_path / "x.npy", overrides={"wordnet_dir": str(tmp_path / "wn")}, workers=1)
    _one_line(e)
    with pytest.raises(InputError, match=r"ids\.txt: WordNet id list does not exist") as e:
        run_filter(pool, "text_based", tmp_path / "x.npy", overrides={"ids": str(tmp_path / "ids.txt")}, workers=1)
    _one_line(e)
    (tmp_path / "bad_ids.txt").write_text("n02084071\ndog\n")
    with pytest.raises(FormatError, match=r"bad_ids\.txt: line 2") as e:
        run_filter(pool, "text_based", tmp_path / "x.npy", overrides={"ids": str(tmp_path / "bad_ids.txt")}, workers=1)
    _one_line(e)
    p = tmp_path / "p"
    t = pq.read_table(pool / "metadata" / "00000000.parquet").drop(["text"])
    write_metadata(p / "metadata" / "00000000.parquet", t)
    with pytest.raises(FormatError, match=r"00000000\.parquet: parquet has no 'text' column") as e:
        run_filter(p, "laion2b", tmp_path / "x.npy", workers=1)
    _one_line(e)


def test_nan_scores_in_laion2b(pool: Path, tmp_path: Path):
    p = _copy_pool(pool, tmp_path / "p")
    f = p / "metadata" / "00000001.parquet"
    t = pq.read_table(f)
    s = t.column("clip_b32_similarity_score").to_numpy().copy()
    s[2] = np.nan
    t = t.set_column(t.schema.get_field_index("clip_b32_similarity_score"), "clip_b32_similarity_score", pa.array(s))
    write_metadata(f, t)
    with pytest.raises(FormatError, match=r"00000001\.parquet: column 'clip_b32_similarity_score' has 1 NaN") as e:
        run_filter(p, "laion2b", tmp_path / "x.npy", workers=1)
    _one_line(e)


def test_score_step_where_computes_only_those_rows(pool: Path, tmp_path: Path):
    """A score step with ``where`` runs on the rows passing it; the others get null (never kept)."""
    recipe = tmp_path / "w.yaml"
    recipe.write_text(
        "steps:\n  - op: image_size\n  - op: caption_length\n    where: [image_min_side >= 200]\n"
        "keep:\n  - caption_words > 2\n"
    )
    side = run_filter(pool, recipe, tmp_path / "w.npy", workers=1)
    rows = _rows(pool)
    keep = [u for u, t, w, h in zip(rows["uid"], rows["text"], rows["original_width"], rows["original_height"])
            if min(w, h) >= 200 and len(t.split()) > 2]
    _same(tmp_path / "w.npy", _subset(keep))
    assert side["resolved"]["steps"][1]["where"] == ["image_min_side >= 200"]


def test_wordnet_dir_built_elsewhere(pool: Path, tmp_path: Path):
    """`python -m datacomp.filters.wordnet --out DIR` makes a directory text_based can be pointed at."""
    from datacomp.filters.wordnet import DEBIAN_SRC, main

    if not (DEBIAN_SRC / "data.noun").is_file():
        pytest.skip("Debian wordnet-base is not installed (make wordnet installs it)")
    assert main(["--out", str(tmp_path / "nltk")]) == 0
    a = run_filter(pool, "text_based", tmp_path / "a.npy", workers=1)
    b = run_filter(pool, "text_based", tmp_path / "b.npy", overrides={"wordnet_dir": str(tmp_path / "nltk")}, workers=1)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert a["counts"] == b["counts"]
