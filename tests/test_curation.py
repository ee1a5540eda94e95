"""decontaminate and the data filtering network end to end on a toy pool embedded by a random
open_clip model (real model, real tars): eval copies found and tabled per task, an eval-set
directory without images, a bad dimension; a filtering network given as a local-dir scores the
pool into its own npz keys and column, and dfn_top_30 keeps its top 30 %. Also the decontaminate
op's search (exact and IVF) on hand-made embeddings."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datacomp.embed import embed, filter_network
from datacomp.embed.filter_network import recipes_need_network
from datacomp.errors import FormatError, InputError
from datacomp.filters import run_filter
from datacomp.filters.contamination import decontaminate_pool, format_contamination
from datacomp.filters.ops.decontaminate import build_ivf, nearest_eval
from datacomp.formats.shards import iter_samples
from datacomp.train.models import materialise
from datacomp.train.toydata import write_toy_shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy pool (2 shards x 30) embedded into l14 by a random synth-rn-tiny, and an eval-set
    directory whose task 'toy/a' holds exact copies of 3 pool images and 2 images of its own."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("curation")
    model = root / "model"
    materialise("synth-rn-tiny", model)
    torch.manual_seed(0)
    m = open_clip.create_model(f"local-dir:{model}")
    pool = root / "pool"
    write_toy_shards(pool / "shards", n_shards=2, per_shard=30, metadata=pool / "metadata")
    # open_clip's init maps every toy image to nearly one point: fan-in scaled weights, and batch
    # norm statistics of the toy images themselves, make a random but discriminating model
    _, _, pre = open_clip.create_model_and_transforms(f"local-dir:{model}")
    pix = torch.stack([pre(Image.open(io.BytesIO(s.image_bytes())).convert("RGB"))
                       for s in iter_samples(pool / "shards" / "00000000.tar")])
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                torch.nn.init.normal_(p, std=1.0 / np.sqrt(p[0].numel()))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None
                mod.reset_running_stats()
        m.train()
        m.encode_image(pix)
    torch.save({"epoch": 1, "state_dict": m.state_dict()}, model / "ckpt.pt")
    embed(pool, model=f"local-dir:{model}", checkpoint=model / "ckpt.pt", keys=("l14",), workers=1)
    samples = list(iter_samples(pool / "shards" / "00000001.tar"))
    other = list(iter_samples(write_toy_shards(root / "other", n_shards=1, per_shard=2, seed=9)[0]))
    ev = root / "evalsets" / "toy-a" / "test"
    ev.mkdir(parents=True)
    copies = {}
    with tarfile.open(ev / "0.tar", "w") as tf:
        for j, s in enumerate(samples[3:6] + other):
            data = s.image_bytes()
            for name, blob in ((f"{j:06d}.jpg", data), (f"{j:06d}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
            if j < 3:
                copies[s.meta["uid"]] = f"toy-a:{j:06d}"
    (ev / "nshards.txt").write_text("1\n")
    return {"root": root, "pool": pool, "model": model, "copies": copies}


def test_decontaminate_finds_the_copies_per_task(world):
    s = decontaminate_pool(world["pool"], evalsets=world["root"] / "evalsets", threshold=0.99, workers=1)
    t = pq.read_table(s["table"]).to_pydict()
    assert dict(zip(t["uid"], t["eval_id"])) == world["copies"]
    assert s["kept"] == 60 - 3 and s["tasks"] == [{"task": "toy-a", "pool_rows": 3, "eval_images": 3, "test_images": 5,
                                                   "share": 0.6}]
    assert "3 of 60 pool rows" in format_contamination(s)
    # a re-run reuses the subset; the table is rewritten the same
    again = decontaminate_pool(world["pool"], evalsets=world["root"] / "evalsets", threshold=0.99, workers=1)
    assert again["tasks"] == s["tasks"]


def test_eval_dir_without_images_and_a_bad_dimension(world, tmp_path):
    empty = tmp_path / "ev" / "toy-b" / "test"
    empty.mkdir(parents=True)
    with tarfile.open(empty / "0.tar", "w") as tf:
        info = tarfile.TarInfo("000000.cls")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"0"))
    with pytest.raises(InputError, match=r"ev: no eval-set test images"):
        decontaminate_pool(world["pool"], evalsets=tmp_path / "ev", workers=1, out_dir=tmp_path / "o1")
    with pytest.raises(InputError, match=r"nowhere: eval-set directory does not exist"):
        decontaminate_pool(world["pool"], evalsets=tmp_path / "nowhere", workers=1, out_dir=tmp_path / "o2")
    p = tmp_path / "p"
    shutil.copytree(world["pool"] / "metadata", p / "metadata")
    shutil.copytree(world["pool"] / "stages", p / "stages")
    z = dict(np.load(p / "metadata" / "00000000.npz"))
    z["l14_img"] = z["l14_img"][:, :10]
    np.savez(p / "metadata" / "00000000.npz", **z)
    with pytest.raises(FormatError, match=r"00000000\.npz: npz key 'l14_img' has dimension 10, the eval embeddings 64"):
        decontaminate_pool(p, evalsets=world["root"] / "evalsets", workers=1, out_dir=tmp_path / "o3")


def test_filter_network_given_elsewhere_scores_the_pool(world, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(world["pool"], pool)
    m = filter_network(pool, model=f"local-dir:{world['model']}", checkpoint=world["model"] / "ckpt.pt", workers=1)
    assert m.counts["rows"] == 60 and m.extra["network"]["score_column"] == "clip_dfn_similarity_score"
    with np.load(pool / "metadata" / "00000000.npz") as z:
        assert {"l14_img", "l14_txt", "dfn_img", "dfn_txt"} <= set(z.files)
        # the same model as l14 here: the same embeddings
        assert np.array_equal(z["dfn_img"], z["l14_img"])
    assert filter_network(pool, model=f"local-dir:{world['model']}", checkpoint=world["model"] / "ckpt.pt",
                          workers=1).created == m.created  # reused
    sub = run_filter(pool, "dfn_top_30", tmp_path / "dfn.npy", workers=1)
    assert sub["counts"]["kept"] == 19  # int(60 * 0.3) + 1
    assert recipes_need_network(["dfn_top_30"]) and not recipes_need_network(["clip_score_l14_30", "oracle"])


def test_nearest_eval_exact_and_ivf_agree_on_near_copies():
    rng = np.random.default_rng(1)
    evals = rng.normal(size=(400, 16)).astype(np.float32)
    evals /= np.linalg.norm(evals, axis=1, keepdims=True)
    q = evals[::7] + 0.01 * rng.normal(size=(len(evals[::7]), 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s1, i1 = nearest_eval(q, evals)
    assert (i1 == np.arange(0, 400, 7)).all() and (s1 > 0.99).all()
    import faiss
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        build_ivf(evals, Path(d) / "e.ivf")
        index = faiss.read_index(str(Path(d) / "e.ivf"))
    index.nprobe = 16
    s2, i2 = nearest_eval(q, evals, index)
    assert (i2 == i1).all() and np.allclose(s1, s2, atol=1e-5)


def test_decontaminate_writes_the_nearest_table_down_to_the_floor(tmp_path):
    """The op's map and reduce on hand-made embeddings (two shards): an exact copy of eval image 0
    (flagged), a near copy of image 1 at cosine 0.995 (not flagged: in nearest.parquet only), a row
    at 0.894 (below the floor: absent), a row without an image (absent)."""
    from dataclasses import dataclass

    import pyarrow as pa

    from datacomp.filters.ops.decontaminate import Decontaminate
    from datacomp.filters.registry import OpEnv, OpParamError
    from datacomp.formats.atomic import write_json
    from datacomp.formats.pool import write_metadata

    @dataclass
    class Shard:
        parquet: Path
        num_rows: int

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    e = np.eye(8, dtype=np.float32)
    evals = e[:3]
    np.save(tmp_path / "evals.npy", evals)
    write_json(tmp_path / "evals.json", {"ids": ["toy/a:000000", "toy/a:000001", "toy/b:000000"], "images": 3})
    rows = [[("copy", e[0]), ("far", unit(e[2] + 0.5 * e[5]))], [("none", np.zeros(8, np.float32)), ("near", unit(e[1] + 0.1 * e[6]))]]
    uid = {n: f"{i:032x}" for i, n in enumerate(["copy", "far", "none", "near"])}
    name = {u: n for n, u in uid.items()}
    shards = []
    for s, part in enumerate(rows):
        p = tmp_path / "pool" / "metadata" / f"{s:08d}.parquet"
        write_metadata(p, pa.table({"uid": pa.array([uid[n] for n, _ in part])}))
        np.savez(p.with_suffix(".npz"), l14_img=np.stack([v for _, v in part]).astype(np.float16))
        shards.append(Shard(p, len(part)))
    op = Decontaminate(threshold=0.9999)
    op.bind(OpEnv(globals={"eval_embeddings": str(tmp_path / "evals.npy")}, artifacts=tmp_path / "globals",
                  pool_digest="x", shards=[str(s.parquet) for s in shards]))
    g = op.reduce([op.map(s, None) for s in shards])
    assert g["decontaminate_sweep_floor"] == 0.99 and g["decontaminate_nearest_rows"] == 2
    t = pq.read_table(g["decontaminate_nearest"]).to_pydict()
    assert [name[u] for u in t["uid"]] == ["copy", "near"]
    assert t["eval_id"] == ["toy/a:000000", "toy/a:000001"] and t["task"] == ["toy/a", "toy/a"]
    assert t["similarity"][0] == pytest.approx(1.0, abs=1e-3) and t["similarity"][1] == pytest.approx(0.995, abs=1e-3)
    flagged = pq.read_table(g["decontaminate_table"]).to_pydict()
    assert [name[u] for u in flagged["uid"]] == ["copy"] and g["decontaminate_flagged"] == 1
    assert np.load(Path(g["decontaminate"]) / "00000000.npy").tolist() == [False, True]
    assert np.load(Path(g["decontaminate"]) / "00000001.npy").tolist() == [True, True]
    # a lower floor reaches the 0.894 row (its nearest: toy/b's image); a bad one is a one-line error
    low = Decontaminate(threshold=0.9999, sweep_floor=0.85)
    low.bind(op.env)
    g2 = low.reduce([low.map(s, None) for s in shards])
    t2 = pq.read_table(g2["decontaminate_nearest"]).to_pydict()
    assert [name[u] for u in t2["uid"]] == ["copy", "far", "near"] and t2["eval_id"][1] == "toy/b:000000"
    assert g2["decontaminate"] != g["decontaminate"]
    for bad in (1.01, "high", False):
        with pytest.raises(OpParamError, match=r"^'sweep_floor' must be a cosine in \[-1, 1\], got "):
            Decontaminate(sweep_floor=bad)
