"""Parity with clip_benchmark (the reference's evaluation engine) on the same model and data.

A tiny random open_clip model and tiny wds tasks are built in tmp; clip_benchmark's own wds
builder, zero-shot classifier, classification loop, accuracy and retrieval functions run
in-process (fp32, amp off: the reference's autocast is a GPU feature) and are compared with ours.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

cb_builder = pytest.importorskip("clip_benchmark.datasets.builder")
from clip_benchmark.metrics import zeroshot_classification as zsc  # noqa: E402
from clip_benchmark.metrics import zeroshot_retrieval as zsr  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from datacomp.evaluate import open_evalset  # noqa: E402
from datacomp.train import load_model  # noqa: E402
from datacomp.evaluate.zeroshot import zeroshot_classification, zeroshot_retrieval  # noqa: E402

from test_evaluate import make_cls_task, make_run, write_tar  # noqa: E402


def structured_png(rng: np.random.Generator, size: int = 40) -> bytes:
    """Blocky random images (more varied features than white noise for a random model)."""
    from PIL import Image

    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def make_wds_retrieval(d: Path, n: int, seed: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    (d / "test").mkdir(parents=True)
    (d / "dataset_type.txt").write_text("retrieval\n")  # clip_benchmark needs it
    (d / "test" / "nshards.txt").write_text("2")
    per = [n // 2, n - n // 2]
    j = 0
    for s, m in enumerate(per):
        members = []
        for _ in range(m):
            caps = "\n".join(f"a {['red', 'blue', 'green'][c % 3]} thing number {j} view {c}" for c in range(1 + j % 3))
            members += [(f"r{j:05d}.png", structured_png(rng)), (f"r{j:05d}.txt", caps.encode())]
            j += 1
        write_tar(d / "test" / f"{s}.tar", members)
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    run = make_run(root, seed=3)
    model, preprocess, tok = load_model(run)
    return root, model, preprocess, tok


def _cb_classification(root: Path, key: str, model, preprocess, tok):
    ds = cb_builder.build_dataset(dataset_name=f"wds/{key}", root=str(root), transform=preprocess, split="test",
                                  download=False)
    loader = torch.utils.data.DataLoader(ds.batched(16), batch_size=None, shuffle=False, num_workers=0)
    clf = zsc.zero_shot_classifier(model, tok, ds.classes, ds.templates, "cpu", amp=False)
    logits, target = zsc.run_classification(model, clf, loader, "cpu", amp=False)
    return ds, logits, target


def test_classification_parity(tiny):
    root, model, preprocess, tok = tiny
    ev = root / "ev_cls"
    make_cls_task(ev, "synth/concepts", n_classes=12, per_shard=[150, 130], seed=11)
    es = open_evalset(ev, "synth/concepts")
    ours, aux = zeroshot_classification(model, preprocess, tok, es, batch_size=32, workers=0)

    ds, logits, target = _cb_classification(ev / "synth-concepts", "synth/concepts", model, preprocess, tok)
    assert torch.equal(target, aux["labels"])
    pred_cb = logits.argmax(1)
    agree = float((pred_cb == aux["logits"].argmax(1)).float().mean())
    assert agree >= 0.999, agree
    acc1, acc5 = zsc.accuracy(logits, target, topk=(1, 5))
    n = len(target)
    assert abs(ours["acc1"] - acc1) <= 1 / n and abs(ours["acc5"] - acc5) <= 1 / n
    mpcr = balanced_accuracy_score(target.numpy(), pred_cb.numpy())
    assert abs(ours["mean_per_class_recall"] - mpcr) <= 1 / n
    assert torch.allclose(aux["logits"], logits, atol=1e-3)
    print(f"parity: {agree:.2%} of {n} predictions equal; acc1 {ours['acc1']:.4f} vs {acc1:.4f}")


def test_retrieval_parity(tiny):
    root, model, preprocess, tok = tiny
    ev = root / "ev_ret"
    make_wds_retrieval(ev / "synth-retrieval", n=60)
    es = open_evalset(ev, "synth/retrieval")
    ours, aux = zeroshot_retrieval(model, preprocess, tok, es, batch_size=16, workers=0)

    ds = cb_builder.build_dataset(dataset_name="wds/synth/retrieval", root=str(ev / "synth-retrieval"),
                                  transform=preprocess, split="test", download=False, task="zeroshot_retrieval")
    loader = torch.utils.data.DataLoader(ds.batched(16, collation_fn=cb_builder.image_captions_collate_fn),
                                         batch_size=None, shuffle=False, num_workers=0)
    ref = zsr.evaluate(model, loader, tok, "cpu", amp=False, recall_k_list=[1, 5, 10])
    n_img, n_txt = es.size, es.n_captions
    for k in (1, 5, 10):
        assert abs(ours[f"image_retrieval_recall@{k}"] - ref[f"image_retrieval_recall@{k}"]) <= 1 / n_txt
        assert abs(ours[f"text_retrieval_recall@{k}"] - ref[f"text_retrieval_recall@{k}"]) <= 1 / n_img
    ref_mean = 0.5 * (ref["image_retrieval_recall@1"] + ref["text_retrieval_recall@1"])
    assert abs(ours["mean_recall@1"] - ref_mean) <= 1 / n_img
    # per-caption top-1 image agrees (ours under the same fp32 arithmetic on CPU)
    assert aux["scores"].shape == (n_txt, n_img)


def test_trimmed_text_encoding_is_exact(tiny):
    """Our text path (length-sorted batches cut after the longest prompt) equals open_clip's."""
    import torch.nn.functional as F

    from datacomp.evaluate.zeroshot import _trim_position, encode_texts

    _, model, _, tok = tiny
    texts = ["a", "a photo of a dog.", "an extremely long prompt " * 6, "two words", "x y z w", "a photo of a cat."]
    assert _trim_position(model, tok(texts)) is not None  # the fast path is taken for this model
    ours = encode_texts(model, tok, texts, batch_size=4)
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok(texts)), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5)
