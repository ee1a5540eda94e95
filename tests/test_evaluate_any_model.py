"""Evaluating any checkpoint, at the reference's precision.

One small CLIP trained in-process (``trained_tiny``) serves every test: the same weights through
our run directory, ``--model ARCH --checkpoint CKPT`` and a run directory in the reference
``train.py``'s layout (``info.pkl`` pickled as it pickles it, with ``pathlib`` paths) give the
same results; ``info.pkl`` is read without unpickling anything else; ``--strict`` refuses a
partial suite; and the reference's mixed precision (classifier text tower under autocast, images
fp32), run on the CPU with bf16 autocast, equals clip_benchmark's ``zero_shot_classifier(amp=True)``
+ ``run_classification(amp=False)`` run the same way.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datacomp.cli import main  # noqa: E402
from datacomp.errors import FormatError, InputError  # noqa: E402
from datacomp.evaluate import evaluate, open_evalset  # noqa: E402
from datacomp.evaluate.precision import Precision, resolve_precision  # noqa: E402
from datacomp.evaluate.zeroshot import class_embeddings, zeroshot_classification  # noqa: E402
from datacomp.formats.info_pkl import read_info_pkl  # noqa: E402
from datacomp.formats.results import read_results  # noqa: E402
from datacomp.pool.synth.evalsuite import write_task  # noqa: E402
from datacomp.pool.synth.world import load_noise  # noqa: E402
from datacomp.train import load_model  # noqa: E402

from trained_tiny import CONCEPTS, train_tiny  # noqa: E402

N_PARITY = 600  # concept images of the precision parity test
TASKS = ["synth/concepts", "synth/retrieval"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine torch's second thread spins (~10x the CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("anymodel")
    run = train_tiny(root)
    # the architecture as --model and info.pkl name it (a local-dir: config; open_clip names load the same way)
    model_name = f"local-dir:{run / 'model'}"
    noise = load_noise()
    small, big = root / "small", root / "big"
    write_task(str(small), 3, CONCEPTS, "synth/concepts", 48, noise)
    write_task(str(small), 3, CONCEPTS, "synth/retrieval", 24, noise)
    write_task(str(big), 7, CONCEPTS, "synth/concepts", N_PARITY, noise)
    return {"root": root, "run": run, "ckpt": run / "checkpoints" / "epoch_latest.pt", "model": model_name,
            "ev": small / "evalsets", "big": big / "evalsets"}


def reference_run(root: Path, ckpt: Path, model: str, checkpoint_at: Path | None = None) -> Path:
    """A run directory as the reference's train.py leaves it: checkpoints/epoch_latest.pt and
    info.pkl from ``save_training_artifacts`` (pathlib paths, the scale config dict)."""
    run = root / "logs" / "small_scale"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt, run / "checkpoints" / "epoch_latest.pt")
    final_checkpoint = checkpoint_at or (root / "logs" / "small_scale" / "checkpoints" / "epoch_latest.pt")
    config = {"batch_size": 4096, "learning_rate": 5e-4, "train_num_samples": 12_800_000, "warmup": 500,
              "model": model, "beta2": None}
    training_artifacts = {"scale": "small", "checkpoint": final_checkpoint, "scale_config": config,
                          "data_dir": Path("/data/shards")}
    pickle.dump(training_artifacts, open(final_checkpoint.parent.parent / "info.pkl", "wb"))
    return run


def _metrics(rows):
    return {r["key"]: r["metrics"] for r in rows}


def test_same_weights_three_ways(world, tmp_path):
    """Our run dir, --model/--checkpoint and the reference's layout: identical result lines."""
    ours = evaluate(world["run"], world["ev"], out=tmp_path / "ours.jsonl", tasks=TASKS, workers=0)
    by_model = evaluate(None, world["ev"], out=tmp_path / "model.jsonl", tasks=TASKS, workers=0, model=world["model"],
                        checkpoint=world["ckpt"], batch_size=7)
    ref = reference_run(tmp_path, world["ckpt"], world["model"])
    by_ref = evaluate(ref, world["ev"], tasks=TASKS, workers=0)
    assert _metrics(ours["results"]) == _metrics(by_model["results"]) == _metrics(by_ref["results"])
    assert ours["results"][0]["metrics"]["acc1"] > 2 / CONCEPTS  # trained: well above chance (1 / CONCEPTS)
    assert {r["precision"] for r in read_results(ref / "eval_results.jsonl")} == {"fp32"}  # CPU: the reference's fp32
    digests = {m.inputs["checkpoint"] for m in (ours, by_model, by_ref)}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")
    assert by_ref.extra["target"]["kind"] == "reference_run" and by_ref.extra["target"]["model"] == world["model"]
    # a re-run reuses; other weights at the same path make the results stale and they are redone
    again = evaluate(None, world["ev"], out=tmp_path / "model.jsonl", tasks=TASKS, workers=0, model=world["model"],
                     checkpoint=world["ckpt"])
    assert again.reused
    other = tmp_path / "other.pt"
    state = torch.load(world["ckpt"], weights_only=True)
    state["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, other)
    redone = evaluate(None, world["ev"], out=tmp_path / "model.jsonl", tasks=TASKS, workers=0, model=world["model"],
                      checkpoint=other)
    assert not redone.reused and redone.counts["evaluated"] == 2
    assert redone.inputs["checkpoint"] != by_model.inputs["checkpoint"]


def test_reference_checkpoint_fallback_and_cli(world, tmp_path, capsys):
    """info.pkl names a checkpoint that moved: checkpoints/epoch_latest.pt, as the reference falls back."""
    ref = reference_run(tmp_path, world["ckpt"], world["model"])
    info = read_info_pkl(ref / "info.pkl")
    assert info["checkpoint"] == str(ref / "checkpoints" / "epoch_latest.pt") and info["data_dir"] == "/data/shards"
    moved = dict(info, checkpoint="/elsewhere/epoch_latest.pt")
    pickle.dump(moved, open(ref / "info.pkl", "wb"))
    code = main(["evaluate", "--run", str(ref), "--evalsets", str(world["ev"]), "--tasks", "synth/concepts",
                 "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 0 and "synth/concepts" in out and "(fp32)" in out
    # --model without --out, --checkpoint without --model: one line each
    code = main(["evaluate", "--model", world["model"], "--checkpoint", str(world["ckpt"]), "--evalsets", str(world["ev"])])
    err = capsys.readouterr().err
    assert code == 2 and "needs --out" in err and len(err.strip().splitlines()) == 1


def test_info_pkl_refuses_code(world, tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "run" / "info.pkl"
    bad.parent.mkdir()
    pickle.dump({"checkpoint": "x.pt", "scale_config": {"model": "ViT-B-32"}, "extra": Boom()}, open(bad, "wb"))
    with pytest.raises(FormatError, match=r"info.pkl: refused to unpickle (posix|os)\.system"):
        read_info_pkl(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FormatError, match="refused"):
        evaluate(bad.parent, world["ev"], workers=0)
    pickle.dump(["not", "a", "dict"], open(bad, "wb"))
    with pytest.raises(FormatError, match="not the reference's dict"):
        read_info_pkl(bad)
    pickle.dump({"checkpoint": "x.pt"}, open(bad, "wb"))
    with pytest.raises(FormatError, match="scale_config.model"):
        read_info_pkl(bad)


def test_strict_refuses_partial_suite(world, tmp_path):
    from datacomp.evaluate.registry import load_tasks

    missing = sum(t.main_metric is not None for t in load_tasks("synth")) - 1  # all but synth/concepts
    with pytest.raises(InputError, match=rf"--strict needs every scored task of the synth suite; {missing} missing: "
                                         r"synth/concepts_style"):
        evaluate(world["run"], world["ev"], out=tmp_path / "r.jsonl", tasks=["synth/concepts"], workers=0, strict=True)
    assert not (tmp_path / "r.jsonl").exists()


def test_precision_resolution():
    assert resolve_precision("reference", "cpu").name == "fp32"
    assert resolve_precision("reference", "cuda").name == "amp_fp16"
    assert resolve_precision("amp_bf16", "cpu").dtype == torch.bfloat16


@pytest.fixture(scope="module")
def parity(world):
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc

    model, preprocess, tok = load_model(world["run"])
    es = open_evalset(world["big"], "synth/concepts")
    ds = build_dataset(dataset_name="wds/synth/concepts", root=str(world["big"] / "synth-concepts"),
                       transform=preprocess, split="test", download=False)
    loader = torch.utils.data.DataLoader(ds.batched(64), batch_size=None, shuffle=False, num_workers=0)
    # the reference's calls, on the CPU: torch.autocast("cpu") is bf16; its classifier comes out in bf16 there
    # (norms stay in bf16 under CPU autocast), which run_classification(amp=False) needs in fp32
    clf = zsc.zero_shot_classifier(model, tok, ds.classes, ds.templates, "cpu", amp=True).float()
    logits, target = zsc.run_classification(model, clf, loader, "cpu", amp=False)
    assert open_clip is not None
    return model, preprocess, tok, es, ds, clf, logits, target


def test_autocast_classifier_is_clip_benchmarks(parity):
    """Under autocast our classifier is clip_benchmark's, bit for bit (per-class batches, same ops);
    in fp32 it is not (the autocast really ran)."""
    model, _, tok, es, ds, clf, _, _ = parity
    bf16 = Precision("amp_bf16", "cpu")
    ours = class_embeddings(model, tok, es.classnames, es.templates, 256, bf16)
    assert ours.dtype == torch.float32 and torch.equal(ours, clf)
    fp32 = class_embeddings(model, tok, es.classnames, es.templates, 256, Precision("fp32", "cpu"))
    assert not torch.equal(fp32, clf) and torch.allclose(fp32, clf, atol=0.05)


def test_reference_precision_metrics_equal_clip_benchmark(parity):
    from sklearn.metrics import balanced_accuracy_score
    from clip_benchmark.metrics import zeroshot_classification as zsc

    model, preprocess, tok, es, ds, clf, logits, target = parity
    ours, aux = zeroshot_classification(model, preprocess, tok, es, 64, 0, Precision("amp_bf16", "cpu"))
    n = len(target)
    assert n == N_PARITY and torch.equal(aux["labels"], target)
    agree = float((aux["logits"].argmax(1) == logits.argmax(1)).float().mean())
    assert agree >= 0.999, agree
    acc1, acc5 = zsc.accuracy(logits, target, topk=(1, 5))
    mpcr = balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy())
    assert abs(ours["acc1"] - acc1) <= 1 / n and abs(ours["acc5"] - acc5) <= 1 / n
    assert abs(ours["mean_per_class_recall"] - mpcr) <= 1 / n
    print(f"amp_bf16 parity: {agree:.2%} of {n} predictions equal; acc1 {ours['acc1']:.4f} vs {acc1:.4f}")


def test_precision_is_recorded_and_part_of_identity(world, tmp_path):
    out = tmp_path / "r.jsonl"
    m = evaluate(world["run"], world["ev"], out=out, tasks=["synth/concepts"], workers=0, precision="amp_bf16")
    assert m.params["precision"] == "amp_bf16" and read_results(out)[0]["precision"] == "amp_bf16"
    from datacomp.errors import StageConflictError

    with pytest.raises(StageConflictError, match="precision"):
        evaluate(world["run"], world["ev"], out=out, tasks=["synth/concepts"], workers=0, precision="fp32")
    assert json.loads(out.with_name("r.manifest.json").read_text())["params"]["precision"] == "amp_bf16"
