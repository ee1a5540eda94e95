"""decontaminate and the data filtering network end to end on a toy pool embedded by a random
open_clip model (real model, real tars): eval copies found and tabled per task, an eval-set
directory without images, a bad dimension; a filtering network given as a local-dir scores the
pool into its own npz keys and column, and dfn_top_30 keeps its top 30 %. Also the decontaminate
op's search (exact and IVF) on hand-made embeddings."""
from __future__ import annotations

import io
import json
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
