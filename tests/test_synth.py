"""The embedded synthetic world (datacomp.pool.synth): layout, determinism, noise, calibration."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from datacomp.config import load_scale
from datacomp.errors import ConfigError, InputError, StageConflictError
from datacomp.formats.manifest import marker_path, read_manifest
from datacomp.formats.pool import POOL_COLUMNS, POOL_SCHEMA, list_parquets
from datacomp.formats.shards import iter_samples, list_shards, read_stats
from datacomp.pool.synth import TASKS, measure, synthesize
from datacomp.pool.synth.calibration import languages
from datacomp.pool.synth.captions import foreign
from datacomp.pool.synth.evalsuite import classnames
from datacomp.pool.synth.render import object_masks
from datacomp.pool.synth.scene import make_rng, sample_scene
from datacomp.pool.synth.targets import render_targets, world_spec
from datacomp.pool.synth.world import all_concepts, load_noise, load_world

HEX32 = re.compile(r"^[0-9a-f]{32}$")
LEMMAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet21k_wordnet_lemmas.txt"


def mini_scale(**world):
    base = load_scale("synth_test")
    w = {"concepts": 12, "shard_size": 200, "curated_size": 150, "eval_size": 36, "retrieval_size": 12, **world}
    return dataclasses.replace(base, name="synth_mini", pool_size=500, world=w)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "pool"
    synthesize(out, load_scale("synth_test"), seed=0, workers=2)
    return out


def _bytes_of(root: Path) -> dict[str, bytes]:
    """Every file that must be byte-identical across runs (stats carry durations; manifest timings)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".done") and not rel.endswith("_stats.json") and rel != "manifest.json":
            out[rel] = p.read_bytes()
    return out


# ---- world data ---------------------------------------------------------------------------------

def test_world_data_has_100_distinct_concepts():
    cs = all_concepts()
    assert len(cs) >= 100
    assert len({(c.shape, c.mark) for c in cs}) == len(cs)
    assert len({c.name for c in cs}) == len(cs)
    assert {c.shape for c in cs[:12]} == {c.shape for c in cs}  # first 12 = the 12 plain shapes
    for c in cs:
        assert set(c.tr) >= {"de", "fr", "es", "it"}
    if LEMMAS.is_file():
        lemmas = {w.strip().lower() for line in LEMMAS.read_text().splitlines() for w in line.split(",")}
        assert [c.name for c in cs if c.name not in lemmas] == []


def test_concept_masks_are_distinct():
    cs = all_concepts()[:24]
    masks = [np.asarray(object_masks(c.shape, c.mark, 20)[0], dtype=np.float32) / 255
             + 2 * np.asarray(object_masks(c.shape, c.mark, 20)[1], dtype=np.float32) / 255 for c in cs]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert np.abs(masks[i] - masks[j]).mean() > 0.02, (cs[i].name, cs[j].name)


def test_foreign_captions_are_identified_as_their_language():
    world, noise = load_world(40), load_noise()
    texts, langs = [], []
    for i in range(200):
        rng = make_rng(3, "t", i)
        lang = ["de", "fr", "es", "it"][i % 4]
        texts.append(foreign(sample_scene(rng, world, noise), world, rng, lang))
        langs.append(lang)
    got = languages(texts)
    assert np.mean([g == want for g, want in zip(got, langs)]) > 0.95


def test_foreign_captions_naming_the_english_word_stay_foreign():
    """Code-switched captions ("ein dog in Rot") name the concept in English, keep the language's
    article, and fastText still calls them their language: only the CLIP filters can keep them."""
    world, noise = load_world(40), load_noise()
    texts, langs = [], []
    for i in range(200):
        rng = make_rng(4, "t", i)
        lang = ["de", "fr", "es", "it"][i % 4]
        scene = sample_scene(rng, world, noise)
        c = world.concepts[scene.concept]
        text = foreign(scene, world, rng, lang, english_name=True)
        word = c.name if scene.count == 1 else c.plural
        assert word in text.lower() or word.capitalize() in text, (text, word)
        if scene.count == 1 and " " in c.tr[lang][0]:
            assert c.tr[lang][0].split(" ", 1)[0].lower() in text.lower().split(), text  # the article stays
        assert c.tr[lang][0].split(" ", 1)[-1] not in text.split(), text  # the translation is gone
        texts.append(text)
        langs.append(lang)
    got = languages(texts)
    assert np.mean([g == want for g, want in zip(got, langs)]) > 0.95


# ---- layout and formats -------------------------------------------------------------------------

def test_pool_layout_and_formats(pool):
    parquets = list_parquets(pool)
    tars = list_shards(pool / "shards")
    assert [p.stem for p in parquets] == [t.stem for t in tars] == ["00000000", "00000001", "00000002"]
    total = 0
    all_uids = []
    for pq_path, tar in zip(parquets, tars):
        t = pq.read_table(pq_path)
        assert t.column_names == POOL_COLUMNS
        assert t.schema.equals(POOL_SCHEMA)
        d = t.to_pydict()
        assert all(HEX32.match(u) for u in d["uid"])
        assert all(math.isnan(x) for x in d["clip_b32_similarity_score"] + d["clip_l14_similarity_score"])
        assert all(fb == [] for fb in d["face_bboxes"])
        assert all(u.startswith("https://img.synth.example/") for u in d["url"])
        samples = list(iter_samples(tar))
        assert [s.meta["uid"] for s in samples] == d["uid"]
        for s, text, sha, ow, oh in zip(samples, d["text"], d["sha256"], d["original_width"], d["original_height"]):
            meta = s.meta
            assert s.text == text == meta["caption"]
            assert hashlib.sha256(s.files["jpg"]).hexdigest() == sha == meta["sha256"]
            assert meta["status"] == "success" and meta["error_message"] is None
            assert (meta["original_width"], meta["original_height"]) == (ow, oh)
            assert meta["key"] == s.key and len(s.key) == 12 and s.key.startswith(tar.stem)
        assert read_stats(tar)["successes"] == len(samples) == t.num_rows
        truth = pq.read_table(pool / "truth" / pq_path.name)
        assert truth.column("uid").to_pylist() == d["uid"]
        assert "clean" in truth.column_names and "noise" in truth.column_names
        total += t.num_rows
        all_uids += d["uid"]
    assert total == 2400 and len(set(all_uids)) == total
    m = read_manifest(pool)
    assert m.stage == "synth" and m.counts["rows"] == 2400
    assert set(m.extra["measured"]) >= {"english_caption_len", "basic_filter"}


def test_image_sizes_follow_kinds(pool):
    truth = pq.read_table(pool / "truth" / "00000000.parquet").to_pandas()
    meta = pq.read_table(pool / "metadata" / "00000000.parquet").to_pandas()
    mn = np.minimum(meta.original_width, meta.original_height)
    mx = np.maximum(meta.original_width, meta.original_height)
    normal = (truth.image_kind == "normal").values
    assert (mn[normal] >= 200).all() and (mn[normal] <= 1500).all() and (mx[normal] / mn[normal] <= 1.3).all()
    assert (mn[(truth.image_kind == "tiny").values] < 200).all()
    assert (mx / mn)[(truth.image_kind == "banner").values].min() > 3
    tiny = (truth.image_kind == "tiny").values
    # small images are stored at 40 px * (original / 200 px) ** tiny_stored_power: 24-199 -> 14-40
    power = load_noise()["tiny_stored_power"]
    assert power == 0.5
    stored = np.minimum(truth.width, truth.height)[tiny]
    assert stored.between(14, 40).all() and stored.max() > 35 and stored.min() < 18
    assert (abs(stored - np.maximum(5, 40 * (mn[tiny] / 200) ** power)) <= 1).all()
    # a 100 px original keeps 28 px of detail, not the 20 px a linear scale would give
    half = tiny & mn.between(95, 105).values
    assert half.any() and np.minimum(truth.width, truth.height)[half].between(27, 30).all()
    assert truth.width[normal].between(32, 72).all()


def test_evalsets_layout(pool):
    world = load_world(load_scale("synth_test").world["concepts"])
    tasks = json.loads((pool / "evalsets" / "tasks.json").read_text())
    assert set(tasks) == {t.key for t in TASKS}
    for t in TASKS:
        d = pool / "evalsets" / t.key.replace("/", "-")
        assert (d / "test" / "nshards.txt").read_text().strip() == "1"
        samples = list(iter_samples(d / "test" / "0.tar"))
        assert len(samples) == tasks[t.key]["n"] > 0
        if t.kind == "classification":
            names = (d / "classnames.txt").read_text().splitlines()
            assert names == classnames(t, world)
            tmpls = (d / "zeroshot_classification_templates.txt").read_text().splitlines()
            assert tmpls and all("{c}" in x for x in tmpls)
            labels = [int(s.files["cls"].decode("ascii")) for s in samples]
            assert min(labels) >= 0 and max(labels) < len(names)
            assert len(set(labels)) == len(names)  # balanced over classes
        else:
            for s in samples:
                caps = s.files["txt"].decode().strip().split("\n")
                assert 2 <= len(caps) <= 5 and all(len(c.split()) >= 2 for c in caps)
    assert (pool / "evalsets" / "synth-count" / "classnames.txt").read_text().splitlines() == \
        ["one object", "two objects", "three objects"]
    assert (pool / "evalsets" / "synth-position" / "classnames.txt").read_text().splitlines() == \
        ["on the left", "on the right", "at the top", "at the bottom"]


def test_class_texts_occur_in_pool_captions(pool):
    texts = " | ".join(t for p in list_parquets(pool) for t in pq.read_table(p, columns=["text"]).column("text").to_pylist())
    for phrase in ["one object", "two objects", "three objects", "on the left", "on the right", "at the top",
                   "at the bottom"]:
        assert texts.count(phrase) >= 10, phrase


# ---- noise, calibration, contamination ----------------------------------------------------------

def _truth(pool):
    import pandas as pd

    return pd.concat([pq.read_table(p).to_pandas() for p in sorted((pool / "truth").glob("*.parquet"))])


def test_noise_fractions_match_config(pool):
    noise, tr = load_noise(), _truth(pool)
    n = len(tr)
    for kind, rate in noise["caption_kinds"].items():
        assert abs((tr.caption_kind == kind).mean() - rate) < 0.01, kind
    for kind, rate in noise["image_kinds"].items():
        assert abs((tr.image_kind == kind).mean() - rate) < 0.01, kind
    dup = tr.duplicate_of.notna()
    assert abs(dup.mean() - noise["duplicates"]) < 0.005
    assert set(tr.duplicate_of[dup]) <= set(tr.uid)  # duplicates copy rows of this pool
    assert abs(tr.eval_copy.notna().sum() - round(noise["eval_copies"] * n)) <= 1
    langs = tr.lang[tr.caption_kind == "foreign"]
    assert set(langs) == {"de", "fr", "es", "it"}
    fk = tr.foreign_kind[tr.caption_kind == "foreign"]
    assert set(fk) == {"english_name", "translated"} and tr.foreign_kind[tr.caption_kind != "foreign"].isna().all()
    assert abs((fk == "english_name").mean() - noise["foreign_english_name"]) < 0.1
    assert 0.10 < tr.clean.mean() < 0.18  # english (22 %) x normal image (60 %)


def test_duplicates_and_eval_copies_are_copies(pool):
    tr = _truth(pool)
    meta = __import__("pandas").concat([pq.read_table(p).to_pandas() for p in list_parquets(pool)])
    sha_by_uid = dict(zip(meta.uid, meta.sha256))
    exact = tr[tr.duplicate_kind == "exact"]
    assert len(exact) > 0
    assert all(sha_by_uid[u] == sha_by_uid[src] for u, src in zip(exact.uid, exact.duplicate_of))
    eval_shas = json.loads((pool / "evalsets" / "eval_sha256.json").read_text())
    all_eval = {s for v in eval_shas.values() for s in v}
    copies = tr[tr.eval_copy_kind == "exact"]
    assert all(sha_by_uid[u] in all_eval for u in copies.uid)
    for ref in copies.eval_copy:
        task, idx = ref.split(":")
        assert sha_by_uid[copies.uid[copies.eval_copy == ref].iloc[0]] == eval_shas[task][int(idx)]


def test_calibration_matches_commonpool(pool):
    measured = read_manifest(pool).extra["measured"]
    assert 0.20 <= measured["basic_filter"] <= 0.26
    assert 0.34 <= measured["english_caption_len"] <= 0.40
    again = measure(pool)
    assert again["basic_filter"] == measured["basic_filter"]


def test_curated_shares_no_image_with_evalsets(pool):
    eval_shas = {s for v in json.loads((pool / "evalsets" / "eval_sha256.json").read_text()).values() for s in v}
    n = short = 0
    for tar in list_shards(pool / "curated"):
        for s in iter_samples(tar):
            assert hashlib.sha256(s.files["jpg"]).hexdigest() not in eval_shas
            short += len(s.text.split()) < 2  # junk alt-text among the uninformative share
            n += 1
    assert n == 1200
    assert read_manifest(pool).counts["curated_rows"] == 1200
    assert short < load_noise()["curated_uninformative"] * n


def test_targets_are_balanced_fresh_renders_not_eval_images(pool, tmp_path):
    """The image-based filter's targets: every concept equally often, their own stream, no eval image."""
    spec = world_spec(pool, per_concept=4)
    task = load_world(18).task_ids
    assert (spec.seed, spec.n_concepts, spec.n, spec.stream) == (0, 18, 48, "targets")
    tg = render_targets(spec)
    assert tg.concepts == [task[i % 12] for i in range(48)] and len(tg.images) == 48
    assert len(set(tg.sha256)) == 48
    eval_shas = {s for v in json.loads((pool / "evalsets" / "eval_sha256.json").read_text()).values() for s in v}
    curated = {hashlib.sha256(s.files["jpg"]).hexdigest() for t in list_shards(pool / "curated") for s in iter_samples(t)}
    pooled = {s for p in list_parquets(pool) for s in pq.read_table(p, columns=["sha256"]).column("sha256").to_pylist()}
    assert not set(tg.sha256) & (eval_shas | curated | pooled)
    assert all(im.mode == "RGB" and 40 <= min(im.size) <= 52 for im in tg.images)  # web-image geometry, as curated
    # a pure function of (seed, stream, index): same bytes again, a prefix for fewer per concept, other seed differs
    assert render_targets(spec).sha256 == tg.sha256
    assert render_targets(dataclasses.replace(spec, per_concept=2)).sha256 == tg.sha256[:24]
    assert not set(render_targets(dataclasses.replace(spec, seed=1)).sha256) & set(tg.sha256)
    # a render equal to an eval image is redrawn from the retry stream; the others stay
    banned = tmp_path / "eval_sha256.json"
    banned.write_text(json.dumps({"synth/concepts": [tg.sha256[5]]}))
    again = render_targets(dataclasses.replace(spec, eval_shas=banned))
    assert again.rerendered == 1 and again.sha256[5] != tg.sha256[5] and again.concepts == tg.concepts
    assert again.sha256[:5] + again.sha256[6:] == tg.sha256[:5] + tg.sha256[6:]
    # not an embedded world -> no targets; bad input -> one line naming the file or field
    assert world_spec(tmp_path) is None
    with pytest.raises(InputError, match=r"nope/eval_sha256\.json: eval image digests do not exist"):
        render_targets(dataclasses.replace(spec, eval_shas=tmp_path / "nope" / "eval_sha256.json"))
    with pytest.raises(ConfigError, match="targets_per_concept"):
        world_spec(pool, per_concept=0)


# ---- determinism, resume, reuse -----------------------------------------------------------------

def test_deterministic_and_seed_dependent(tmp_path):
    scale = mini_scale()
    synthesize(tmp_path / "a", scale, seed=0, workers=1)
    synthesize(tmp_path / "b", scale, seed=0, workers=2)
    synthesize(tmp_path / "c", scale, seed=1, workers=1)
    a, b, c = (_bytes_of(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
    assert a["metadata/00000000.parquet"] != c["metadata/00000000.parquet"]
    assert a["shards/00000001.tar"] != c["shards/00000001.tar"]


def test_resume_after_interruption_is_byte_identical(tmp_path):
    scale = mini_scale()
    out = tmp_path / "pool"
    synthesize(out, scale, seed=0, workers=1)
    before = _bytes_of(out)
    # simulate a kill while shard 1 and a curated shard were being written: no manifest, no marker, no files
    (out / "manifest.json").unlink()
    for unit, files in [("pool-00000001", ["shards/00000001.tar", "metadata/00000001.parquet", "truth/00000001.parquet"]),
                        ("curated-00000000", ["curated/00000000.tar"])]:
        marker_path(out, unit).unlink()
        for f in files:
            (out / f).unlink()
    untouched = (out / "shards" / "00000000.tar").stat().st_mtime_ns
    synthesize(out, scale, seed=0, workers=1)
    assert (out / "shards" / "00000000.tar").stat().st_mtime_ns == untouched  # finished units skipped
    after = _bytes_of(out)
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == []


def test_reuse_conflict_and_overwrite(tmp_path):
    scale = mini_scale()
    out = tmp_path / "pool"
    m1 = synthesize(out, scale, seed=0, workers=1)
    m2 = synthesize(out, scale, seed=0, workers=1)  # same params: reused, nothing rewritten
    assert m2.created == m1.created
    with pytest.raises(StageConflictError):
        synthesize(out, scale, seed=1, workers=1)
    with pytest.raises(StageConflictError):
        synthesize(out, mini_scale(concepts=20), seed=0, workers=1)
    m3 = synthesize(out, scale, seed=1, workers=1, overwrite=True)
    assert m3.params["seed"] == 1 and read_manifest(out).params["seed"] == 1


def test_pool_of_an_older_suite_is_not_reused(tmp_path, monkeypatch):
    """A pool whose eval sets lack a task the suite now has (made by an older version) conflicts
    instead of being reused, so no run silently lacks a task's scores."""
    import datacomp.pool.synth as synth_pkg

    out = tmp_path / "pool"
    monkeypatch.setattr(synth_pkg, "TASKS", synth_pkg.TASKS[:-1])
    synthesize(out, mini_scale(), seed=0, workers=1)
    monkeypatch.undo()
    with pytest.raises(StageConflictError):
        synthesize(out, mini_scale(), seed=0, workers=1)


def test_overwrite_builds_beside_the_old_pool(tmp_path, monkeypatch):
    """--overwrite writes the new world beside the old one and swaps it in when complete: a failed
    overwrite leaves the old pool byte for byte; other stages' files in the pool stay."""
    import datacomp.pool.synth as synth_mod

    scale = mini_scale()
    out = tmp_path / "pool"
    synthesize(out, scale, seed=0, workers=1)
    (out / "stages" / "embed").mkdir(parents=True)
    (out / "stages" / "embed" / "manifest.json").write_text("{}")  # another stage's output in the pool
    before = _bytes_of(out)

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth_mod, "measure", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize(out, scale, seed=1, workers=1, overwrite=True)
    assert (tmp_path / ".pool.swap-new").is_dir() and _bytes_of(out) == before
    assert synthesize(out, scale, seed=0, workers=1).reused  # the old pool, reused; the half-built one dropped
    assert not list(tmp_path.glob(".pool.swap-*")) and _bytes_of(out) == before
    monkeypatch.undo()
    synthesize(out, scale, seed=1, workers=1, overwrite=True)
    assert read_manifest(out).params["seed"] == 1 and not list(tmp_path.glob(".pool.swap-*"))
    assert (out / "stages" / "embed" / "manifest.json").read_text() == "{}"
    seed1 = _bytes_of(out)
    # a swap cut between its two renames (old moved aside, new not yet in place): the old one comes back
    out.rename(tmp_path / ".pool.swap-old")
    (tmp_path / ".pool.swap-new").mkdir()
    assert synthesize(out, scale, seed=1, workers=1).reused and _bytes_of(out) == seed1
    assert not list(tmp_path.glob(".pool.swap-*"))


def test_rejects_non_embedded_scale(tmp_path):
    from datacomp.errors import ConfigError

    with pytest.raises(ConfigError):
        synthesize(tmp_path / "x", load_scale("small"))


# ---- what makes the world learnable and calibrated ------------------------------------------------

def test_objects_mostly_have_their_concepts_typical_colour(pool):
    world, noise = load_world(18), load_noise()
    tr = _truth(pool)
    typical = tr.concept_id.map(lambda c: world.concepts[c].colour)
    share = (tr.colour == typical).mean()
    assert abs(share - noise["concept_colour"]) < 0.03
    # the colour alone does not give the concept away: every colour is some concept's and others'
    assert tr.colour.nunique() == len(world.colours)
    # ...but web-only content and task concepts are drawn in disjoint palettes (as the web's
    # non-ImageNet content looks unlike ImageNet's classes), off-colour objects included
    web = ~tr.concept_id.map(lambda c: world.concepts[c].task)
    web_colours = set(world.concepts[int(tr.concept_id[web].iloc[0])].palette)
    assert 2 <= len(web_colours) < len(world.colours)
    assert set(tr.colour[web]) == web_colours
    assert not set(tr.colour[~web]) & web_colours


@pytest.mark.parametrize("value", [0, -0.5, 3, True, "half"])
def test_noise_rejects_a_bad_tiny_stored_power(value):
    from datacomp.pool.synth.world import validate_noise

    cfg = load_noise()
    cfg["tiny_stored_power"] = value
    with pytest.raises(ConfigError, match=re.escape("noise.yaml: 'tiny_stored_power' must be a number in (0, 2]")):
        validate_noise(cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["concepts"][0].update(colour="teal"), "task concept 'dog' has no colour or one outside its palette ('teal')"),
    (lambda d: d["concepts"][2].update(colour="red"), "web-only concept 'car' has no colour or one outside its palette ('red')"),
    (lambda d: d.update(web_colours=["teal", "mauve"]), "'web_colours' must list at least 2 distinct colours"),
])
def test_concepts_yaml_palettes_are_checked(monkeypatch, edit, message):
    import copy

    from datacomp.pool.synth import world as world_mod

    real = world_mod._load
    data = copy.deepcopy(real("concepts.yaml"))
    edit(data)
    monkeypatch.setattr(world_mod, "_load", lambda name: data if name == "concepts.yaml" else real(name))
    world_mod.all_concepts.cache_clear()
    try:
        with pytest.raises(ConfigError, match=re.escape(message)):
            world_mod.all_concepts()
    finally:
        world_mod.all_concepts.cache_clear()


def test_task_concepts_are_the_eval_classes_and_the_pool_has_web_only_ones(pool):
    world = load_world(18)
    assert len(world.task_ids) == 12 and all(i % 3 != 2 for i in world.task_ids)
    d = pool / "evalsets" / "synth-concepts"
    assert (d / "classnames.txt").read_text().splitlines() == world.task_names
    tr = _truth(pool)
    web_only = ~tr.concept_id.isin(world.task_ids)
    assert 0.25 < web_only.mean() < 0.42  # a third of the concepts, drawn uniformly


def test_boilerplate_captions_are_english_without_imagenet21k_nouns(pool):
    from datacomp.filters.ops.concepts import ConceptMatcher

    tr = _truth(pool)
    meta = __import__("pandas").concat([pq.read_table(p).to_pandas() for p in list_parquets(pool)])
    text = dict(zip(meta.uid, meta.text))
    caps = [text[u] for u in tr.uid[tr.caption_kind == "boilerplate"]]
    assert len(caps) > 100
    assert np.mean(np.array(languages(caps)) == "en") > 0.97
    assert all(len(c.split()) > 2 for c in caps)
    m = ConceptMatcher(None, "in21k")
    assert not any(m.first_offset_in(tok) for c in caps for tok in c.split())


def test_concept_variant_tasks_pin_what_they_name():
    from datacomp.pool.synth.evalsuite import TASK_BY_KEY, eval_item
    from datacomp.pool.synth.render import decode

    world, noise = load_world(18), load_noise()

    def items(key, n=96):
        return [eval_item(0, key, i, world, noise) for i in range(n)]

    for key in ("synth/concepts_v2", "synth/concepts_edge", "synth/concepts_pair", "synth/concepts_lowres",
                "synth/concepts_jpeg", "synth/concepts_object", "synth/concepts_small", "synth/concepts_crowd"):
        got = items(key)
        assert TASK_BY_KEY[key].classnames(world) == world.task_names
        assert [it.label for it in got[:12]] == list(range(12))  # balanced, class k = task concept k
        assert all(it.scene.concept == world.task_ids[it.label] for it in got)
    assert {it.scene.count for it in items("synth/concepts_pair")} == {2}
    assert {it.scene.count for it in items("synth/concepts_crowd")} == {3}
    assert {(it.scene.count, it.scene.size) for it in items("synth/concepts_small")} == {(1, "small")}
    assert {(it.scene.count, it.scene.size, it.scene.position, it.scene.background)
            for it in items("synth/concepts_object")} == {(1, "large", "center", "plain")}
    edge = items("synth/concepts_edge")
    assert {it.scene.position for it in edge} == {"left", "right", "top", "bottom"}
    typical = [it.scene.colour == world.concepts[it.scene.concept].colour for it in items("synth/concepts_v2", 600)]
    main = [it.scene.colour == world.concepts[it.scene.concept].colour for it in items("synth/concepts", 600)]
    assert abs(np.mean(typical) - 0.6) < 0.06 and abs(np.mean(main) - noise["concept_colour"]) < 0.06
    # lowres: drawn at a third of the size and enlarged, so less fine detail; jpeg: fewer bytes
    def detail(key):
        return np.mean([np.abs(np.diff(np.asarray(decode(it.jpeg), dtype=float), axis=1)).mean() for it in items(key, 48)])
    assert detail("synth/concepts_lowres") < 0.8 * detail("synth/concepts")
    normal_bytes = np.mean([len(it.jpeg) for it in items("synth/concepts", 48)])
    assert np.mean([len(it.jpeg) for it in items("synth/concepts_jpeg", 48)]) < 0.7 * normal_bytes
