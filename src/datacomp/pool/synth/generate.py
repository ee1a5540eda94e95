"""Rows of the embedded world: the candidate pool, the curated set, and the shard units writing them.

Every row is a pure function of (seed, stream, row index) and the noise plan, so shards are
independent units of work (``datacomp.executors.run_units``) and a duplicate re-creates its
source row wherever that row lives.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import FormatError
from ...formats.atomic import atomic_path
from ...formats.pool import POOL_SCHEMA, write_metadata
from ...formats.shards import ShardWriter, sample_key
from .captions import boilerplate, caption_for, english, junk
from .evalsuite import eval_item, task_sizes
from .noise import Plan, cached_plan, noise_key
from .render import decode, encode_jpeg, render_banner, render_scene, render_text, shifted_copy
from .scene import Scene, make_rng, perturb_concept, pick, sample_scene, stream_seed
from .world import World, load_world

URL_ROOT = "https://img.synth.example"
QUALITY = 90
# (width, height) of common web banners: all have aspect > 3; some also have a min side < 200
AD_SIZES = ((728, 90), (970, 250), (468, 60), (1200, 300), (970, 90), (320, 50), (960, 240), (1456, 180),
            (1000, 200), (1500, 400))


@dataclass
class Row:
    text: str
    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    scene: Scene
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    seed: int
    n_concepts: int
    noise_json: str
    n_rows: int
    sizes: tuple[tuple[str, int], ...]

    @property
    def world(self) -> World:
        return load_world(self.n_concepts)

    @property
    def noise(self) -> dict[str, Any]:
        return _noise(self.noise_json)

    @property
    def plan(self) -> Plan:
        return cached_plan(self.n_rows, self.seed, self.noise_json, sum(n for _, n in self.sizes))

    def eval_ref(self, flat: int) -> tuple[str, int]:
        for key, n in self.sizes:
            if flat < n:
                return key, flat
            flat -= n
        raise IndexError(flat)


@lru_cache(maxsize=4)
def _noise(noise_json: str) -> dict[str, Any]:
    return json.loads(noise_json)


# ---- geometry -----------------------------------------------------------------------------------

def _aspect_sides(short: float, aspect: float) -> tuple[int, int]:
    """(w, h) with min side ``short`` and w/h = ``aspect``."""
    if aspect >= 1:
        return int(round(short * aspect)), int(round(short))
    return int(round(short)), int(round(short / aspect))


NORMAL_ORIGINAL_MIN = 200   # px: basic_filter's min-side rule
NORMAL_STORED_MIN = 40      # px: the stored min side of the smallest normal image


def normal_geometry(rng) -> tuple[tuple[int, int], tuple[int, int]]:
    """((stored w, h), (original w, h)) of a normal web image: min side 200-1500 px, aspect 0.8-1.25."""
    o_min = int(round(math.exp(rng.uniform(math.log(NORMAL_ORIGINAL_MIN), math.log(1500)))))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    ow, oh = _aspect_sides(o_min, aspect)
    sw, sh = _aspect_sides(rng.randint(NORMAL_STORED_MIN, 52), ow / oh)
    return (sw, sh), (ow, oh)


def tiny_geometry(rng, power: float = 1.0) -> tuple[tuple[int, int], tuple[int, int]]:
    """((stored w, h), (original w, h)) of a small web image: min side 24-199 px, stored at
    ``40 px * (original / 200 px) ** power`` (power 1: the smallest normal image's scale, 200 px ->
    40 px; ``noise['tiny_stored_power']`` = 0.5 ships: a 100 px original is stored at 28 px, a 30 px
    thumbnail at 15), so a 150 px image keeps most of what a 200 px one shows and a thumbnail little
    — small web images are informative, as on CommonPool, where basic_filter's size rule drops
    usable pairs and costs nothing (Tables 3 / 26)."""
    o_min = rng.randint(24, 199)
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    ow, oh = _aspect_sides(o_min, aspect)
    s_min = max(5, round(NORMAL_STORED_MIN * (o_min / NORMAL_ORIGINAL_MIN) ** power))
    sw, sh = _aspect_sides(s_min, ow / oh)
    return (sw, sh), (ow, oh)


def banner_geometry(rng) -> tuple[tuple[int, int], tuple[int, int]]:
    ow, oh = rng.choice(AD_SIZES)
    if rng.random() < 0.5:
        ow, oh = int(ow * rng.uniform(0.9, 1.1)), oh
    sw = 80
    return (sw, max(6, int(round(sw * oh / ow)))), (ow, oh)


# ---- rows ---------------------------------------------------------------------------------------

def _boilerplate_content(ctx: Context, i: int, caption_kind: str) -> dict[str, int]:
    """Page boilerplate sits on a page's non-content images: with probability
    ``noise['boilerplate_web_only']`` a boilerplate row shows a web-only concept (drawn from its own
    stream, so other rows keep their bytes); else any concept, as other rows."""
    rate = float(ctx.noise.get("boilerplate_web_only", 0.0))
    web = ctx.world.web_ids
    if caption_kind != "boilerplate" or not rate or not web:
        return {}
    rw = make_rng(ctx.seed, "pool-content", i)
    return {"concept": rw.choice(web)} if rw.random() < rate else {}


def _fresh_row(ctx: Context, i: int) -> Row:
    world, noise, plan = ctx.world, ctx.noise, ctx.plan
    ck = plan.caption_kinds[plan.caption_kind[i]]
    ik = plan.image_kinds[plan.image_kind[i]]
    rs = make_rng(ctx.seed, "pool-scene", i)
    rc = make_rng(ctx.seed, "pool-caption", i)
    scene = sample_scene(rs, world, noise, **_boilerplate_content(ctx, i, ck))
    other = perturb_concept(rc, world, scene, rc.random() < float(noise["mismatch_keep_colour"])) if ck == "mismatched" else None
    text, ctruth = caption_for(ck, scene, world, rc, noise, other)
    if ik == "normal":
        (w, h), orig = normal_geometry(rs)
        img = render_scene(scene, world, w, h)
    elif ik == "tiny":
        (w, h), orig = tiny_geometry(rs, float(noise.get("tiny_stored_power", 1.0)))
        img = render_scene(scene, world, w, h)
    elif ik == "banner":
        (w, h), orig = banner_geometry(rs)
        img = render_banner(scene, world, w, h)
    elif ik == "textonly":
        (w, h), orig = normal_geometry(rs)
        img = render_text(text, w, h, world.backgrounds[scene.bg_colour], rs)
    else:
        raise ValueError(f"unknown image kind {ik!r}")
    truth = {"caption_kind": ck, "image_kind": ik, **ctruth}
    return Row(text, encode_jpeg(img, QUALITY), w, h, orig[0], orig[1], scene, truth)


def pool_row(ctx: Context, i: int) -> Row:
    """Row ``i`` of the candidate pool (caption, stored JPEG, sizes, hidden truth)."""
    plan = ctx.plan
    if plan.eval_copy[i] >= 0:
        world, noise = ctx.world, ctx.noise
        task, j = ctx.eval_ref(int(plan.eval_copy[i]))
        item = eval_item(ctx.seed, task, j, world, noise)
        rs = make_rng(ctx.seed, "pool-scene", i)
        rc = make_rng(ctx.seed, "pool-caption", i)
        ck = plan.caption_kinds[plan.caption_kind[i]]
        scene = item.scene
        other = perturb_concept(rc, world, scene, True) if ck == "mismatched" else None
        text, ctruth = caption_for(ck, scene, world, rc, noise, other)
        exact = bool(plan.eval_exact[i])
        data = item.jpeg if exact else encode_jpeg(shifted_copy(decode(item.jpeg), rs), 85)
        side = int(round(math.exp(rs.uniform(math.log(200), math.log(1500)))))
        truth = {"caption_kind": ck, "image_kind": "normal", **ctruth,
                 "eval_copy": f"{task}:{j:06d}", "eval_copy_kind": "exact" if exact else "near"}
        w, h = decode(data).size
        return Row(text, data, w, h, side, side, scene, truth)
    if plan.dup_src[i] >= 0:
        src_i = int(plan.dup_src[i])
        src = _fresh_row(ctx, src_i)
        rs = make_rng(ctx.seed, "pool-scene", i)
        exact = bool(plan.dup_exact[i])
        data = src.jpeg if exact else encode_jpeg(shifted_copy(decode(src.jpeg), rs), 80)
        if plan.dup_same_caption[i]:
            text, ctruth = src.text, {k: v for k, v in src.truth.items() if k not in ("caption_kind", "image_kind")}
        else:
            rc = make_rng(ctx.seed, "pool-caption", i)
            ck = src.truth["caption_kind"]
            other = perturb_concept(rc, ctx.world, src.scene, rc.random() < 0.5) if ck == "mismatched" else None
            text, ctruth = caption_for(ck, src.scene, ctx.world, rc, ctx.noise, other)
        truth = {**src.truth, **ctruth, "duplicate_of": make_uid(row_url(ctx.seed, "pool", src_i), src.text),
                 "duplicate_kind": "exact" if exact else "near"}
        return Row(text, data, src.width, src.height, src.original_width, src.original_height, src.scene, truth)
    return _fresh_row(ctx, i)


def row_url(seed: int, stream: str, i: int) -> str:
    tok = f"{stream_seed(seed, stream + '-url', i):016x}"
    return f"{URL_ROOT}/{tok[:2]}/{tok[2:]}.jpg" if stream == "pool" else f"{URL_ROOT}/{stream}/{tok[:2]}/{tok[2:]}.jpg"


def make_uid(url: str, text: str) -> str:
    """32 lowercase hex: a hash of (url, text), like CommonPool's uids."""
    return hashlib.md5(f"{url}\n{text}".encode("utf-8")).hexdigest()


def _record(key: str, url: str, text: str, row: Row, sha: str, uid: str) -> dict[str, Any]:
    return {"url": url, "caption": text, "key": key, "status": "success", "error_message": None,
            "width": row.width, "height": row.height, "original_width": row.original_width,
            "original_height": row.original_height, "sha256": sha, "uid": uid}


NOISE_TAGS = {"mismatched": "mismatched_caption", "boilerplate": "boilerplate_caption", "foreign": "foreign_caption", "junk": "junk_caption",
              "tiny": "tiny_image", "banner": "banner_image", "textonly": "text_image"}


def write_pool_shard(out: str, seed: int, n_concepts: int, noise_json: str, n_rows: int,
                     sizes: tuple[tuple[str, int], ...], shard: int, start: int, end: int) -> dict[str, Any]:
    """Unit of work: pool rows [start, end) -> shards/, metadata/ and truth/ files of ``shard``."""
    ctx = Context(seed, n_concepts, noise_json, n_rows, sizes)
    world = ctx.world
    out_p = Path(out)
    name = f"{shard:08d}"
    meta: dict[str, list] = {c: [] for c in POOL_SCHEMA.names}
    truth_rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    with ShardWriter(out_p / "shards" / f"{name}.tar") as w:
        for idx, i in enumerate(range(start, end)):
            row = pool_row(ctx, i)
            url = row_url(seed, "pool", i)
            uid = make_uid(url, row.text)
            sha = hashlib.sha256(row.jpeg).hexdigest()
            key = sample_key(shard, idx)
            rec = _record(key, url, row.text, row, sha, uid)
            w.write(key, {"jpg": row.jpeg, "txt": row.text.encode("utf-8"),
                          "json": json.dumps(rec, sort_keys=True).encode("utf-8")}, rec)
            for col, v in (("uid", uid), ("url", url), ("text", row.text), ("original_width", row.original_width),
                           ("original_height", row.original_height), ("clip_b32_similarity_score", float("nan")),
                           ("clip_l14_similarity_score", float("nan")), ("face_bboxes", []), ("sha256", sha)):
                meta[col].append(v)
            t = row.truth
            kinds = [NOISE_TAGS[t[k]] for k in ("caption_kind", "image_kind") if t[k] in NOISE_TAGS]
            if "duplicate_kind" in t:
                kinds.append("duplicate" if t["duplicate_kind"] == "exact" else "near_duplicate")
            if "eval_copy" in t:
                kinds.append("eval_copy")
            for k in kinds or ["clean"]:
                counts[k] = counts.get(k, 0) + 1
            sc = row.scene
            truth_rows.append({
                "uid": uid, "key": key, "row": i,
                "caption_kind": t["caption_kind"], "image_kind": t["image_kind"], "noise": kinds,
                "clean": t["caption_kind"] == "english" and t["image_kind"] == "normal",
                "concept_id": sc.concept, "concept": world.concepts[sc.concept].name,
                "caption_concept_id": int(t.get("caption_concept", -1)), "lang": t.get("lang", ""),
                "junk_kind": t.get("junk_kind"), "foreign_kind": t.get("foreign_kind"),
                "colour": sc.colour, "count": sc.count, "position": sc.position, "size": sc.size,
                "background": sc.background,
                "duplicate_of": t.get("duplicate_of"),
                "duplicate_kind": t.get("duplicate_kind"),
                "eval_copy": t.get("eval_copy"), "eval_copy_kind": t.get("eval_copy_kind"),
                "width": row.width, "height": row.height,
            })
    write_metadata(out_p / "metadata" / f"{name}.parquet", pa.table(meta, schema=POOL_SCHEMA))
    with atomic_path(out_p / "truth" / f"{name}.parquet", suffix=".parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(truth_rows, schema=TRUTH_SCHEMA), tmp, compression="zstd")
    return {"rows": end - start, "counts": counts}


TRUTH_SCHEMA = pa.schema([
    ("uid", pa.string()), ("key", pa.string()), ("row", pa.int64()),
    ("caption_kind", pa.string()), ("image_kind", pa.string()), ("noise", pa.list_(pa.string())),
    ("clean", pa.bool_()), ("concept_id", pa.int32()), ("concept", pa.string()),
    ("caption_concept_id", pa.int32()), ("lang", pa.string()), ("junk_kind", pa.string()),
    ("foreign_kind", pa.string()),
    ("colour", pa.string()), ("count", pa.int8()), ("position", pa.string()), ("size", pa.string()),
    ("background", pa.string()), ("duplicate_of", pa.string()), ("duplicate_kind", pa.string()),
    ("eval_copy", pa.string()), ("eval_copy_kind", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])


# ---- curated ------------------------------------------------------------------------------------

UNINFORMATIVE_JUNK = {"filename": 0.5, "phrase": 0.3, "number": 0.2}  # junk that names no concept


@lru_cache(maxsize=2)
def _eval_shas(path: str) -> frozenset[str]:
    d = json.loads(Path(path).read_text())
    return frozenset(s for shas in d.values() for s in shas)


def curated_row(seed: int, world: World, noise: dict[str, Any], i: int, attempt: int = 0) -> Row:
    stream = "curated" if attempt == 0 else f"curated-retry{attempt}"
    rs = make_rng(seed, f"{stream}-scene", i)
    rc = make_rng(seed, f"{stream}-caption", i)
    scene = sample_scene(rs, world, noise)
    (w, h), (ow, oh) = normal_geometry(rs)
    img = render_scene(scene, world, w, h)
    if rc.random() < float(noise.get("curated_uninformative", 0.0)):
        # web data too: text that describes nothing, so the teachers learn it matches no image
        kind = "boilerplate" if rc.random() < 0.5 else "junk"
        text = boilerplate(world, rc) if kind == "boilerplate" else junk(scene, world, rc, pick(rc, UNINFORMATIVE_JUNK))
        return Row(text, encode_jpeg(img, QUALITY), w, h, ow, oh, scene, {"caption_kind": kind, "image_kind": "normal"})
    return Row(english(scene, world, rc), encode_jpeg(img, QUALITY), w, h, ow, oh, scene,
               {"caption_kind": "english", "image_kind": "normal"})


MAX_RERENDERS = 100  # renders of one curated row before an eval-image collision is an error


def write_curated_shard(out: str, seed: int, n_concepts: int, noise_json: str, eval_sha_path: str,
                        shard: int, start: int, end: int) -> dict[str, Any]:
    """Unit of work: curated rows [start, end) -> curated/{shard}.tar (never an eval image)."""
    world, noise = load_world(n_concepts), _noise(noise_json)
    banned = _eval_shas(eval_sha_path)
    retries = 0
    with ShardWriter(Path(out) / "curated" / f"{shard:08d}.tar") as w:
        for idx, i in enumerate(range(start, end)):
            attempt = 0
            row = curated_row(seed, world, noise, i)
            sha = hashlib.sha256(row.jpeg).hexdigest()
            while sha in banned:  # bounded like the targets' re-renders; counted in the synth manifest
                attempt += 1
                if attempt >= MAX_RERENDERS:
                    raise FormatError(f"{eval_sha_path}: curated row {i} equals an eval image in {MAX_RERENDERS} renders")
                row = curated_row(seed, world, noise, i, attempt)
                sha = hashlib.sha256(row.jpeg).hexdigest()
            retries += attempt
            url = row_url(seed, "curated", i)
            uid = make_uid(url, row.text)
            key = sample_key(shard, idx)
            rec = _record(key, url, row.text, row, sha, uid)
            rec["concept"] = world.concepts[row.scene.concept].name
            w.write(key, {"jpg": row.jpeg, "txt": row.text.encode("utf-8"),
                          "json": json.dumps(rec, sort_keys=True).encode("utf-8")}, rec)
    return {"rows": end - start, "eval_collisions_rerendered": retries}


def pool_units_args(out: str, seed: int, n_concepts: int, noise: dict[str, Any], world_cfg: dict[str, Any],
                    n_rows: int) -> list[tuple[str, tuple, int]]:
    shard_size = int(world_cfg["shard_size"])
    sizes = task_sizes(world_cfg)
    units = []
    for s, start in enumerate(range(0, n_rows, shard_size)):
        end = min(n_rows, start + shard_size)
        units.append((f"pool-{s:08d}", (out, seed, n_concepts, noise_key(noise), n_rows, sizes, s, start, end), end - start))
    return units
