"""Kill-and-resume of a real CPU training run: same final step count, a checkpoint that evaluates
within noise of an uninterrupted run, loadable by plain open_clip and by the evaluation stage."""
from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from datacomp.config import Scale, load_scale
from datacomp.train import load_model, train
from datacomp.train.toydata import write_toy_shards

EPOCHS, PER_EPOCH, BATCH = 3, 320, 32  # 10 steps per epoch, 30 in all


def _scale() -> Scale:
    s = load_scale("synth_test")
    # a non-embedded copy keeps the optimizer state in its checkpoints, as the reference scales do
    return Scale(**{**s.__dict__, "name": "tiny3", "samples_seen": EPOCHS * PER_EPOCH, "batch_size": BATCH,
                    "warmup": 3, "num_checkpoints": EPOCHS, "embedded": False, "teachers": {}})


def _ckpt_steps(path: Path) -> tuple[int, int]:
    import torch

    st = torch.load(path, map_location="cpu", weights_only=True)
    steps = {int(v["step"]) for v in st["optimizer"]["state"].values()}
    assert len(steps) == 1
    return int(st["epoch"]), steps.pop()


def _eval_loss(run: Path, shards: Path) -> float:
    """Symmetric CLIP loss of the run's model on the first 64 toy pairs (fixed, no augmentation)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from datacomp.formats.shards import iter_samples

    model, pre, tok = load_model(run)
    imgs, txts = [], []
    for s in iter_samples(sorted(shards.glob("*.tar"))[0]):
        imgs.append(pre(Image.open(io.BytesIO(s.files["jpg"])).convert("RGB")))
        txts.append(s.files["txt"].decode())
        if len(imgs) == 64:
            break
    with torch.no_grad():
        fi = F.normalize(model.encode_image(torch.stack(imgs)), dim=-1)
        ft = F.normalize(model.encode_text(tok(txts)), dim=-1)
        logits = model.logit_scale.exp() * fi @ ft.T
        y = torch.arange(len(imgs))
        return float((F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2)


def _try(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        return e


@pytest.mark.slow
def test_kill_and_resume(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_toy_shards(shards, n_shards=2, per_shard=64)
    s = _scale()

    # the uninterrupted reference run, alongside (its time is mostly process start-up)
    ref = tmp_path / "ref"
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(_try(train, s, shards, ref, seed=0, workers=0, device="cpu")))
    t.start()

    # the same run in a subprocess, SIGKILLed (with its open_clip child) once the first epoch's checkpoint lands
    run = tmp_path / "run"
    code = ("import pickle, sys; from datacomp.train import train; "
            f"train(pickle.loads(bytes.fromhex(sys.argv[1])), {str(shards)!r}, {str(run)!r}, seed=0, workers=0, device='cpu')")
    proc = subprocess.Popen([sys.executable, "-c", code, pickle.dumps(s).hex()], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "epoch_latest.pt"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists() and not (run / "manifest.json").exists(), "the run was not killed mid-way"
    killed_epoch, killed_steps = _ckpt_steps(latest)
    assert 1 <= killed_epoch < EPOCHS and killed_steps == killed_epoch * PER_EPOCH // BATCH

    t.join()
    assert done and not isinstance(done[0], BaseException), done
    # re-running the same command resumes from epoch_latest.pt with the same schedule
    m = train(s, shards, run, seed=0, workers=0, device="cpu")
    assert "resuming checkpoint" in (run / "out.log").read_text() or "Found latest resume" in (run / "out.log").read_text()
    assert _ckpt_steps(run / "checkpoints" / "epoch_latest.pt") == _ckpt_steps(ref / "checkpoints" / "epoch_latest.pt") \
        == (EPOCHS, EPOCHS * PER_EPOCH // BATCH)
    assert m.counts["epochs"] == EPOCHS and m.counts["steps"] == EPOCHS * PER_EPOCH // BATCH
    assert m.counts["unique_samples"] == 128 and m.counts["expected_repetitions"] == EPOCHS * PER_EPOCH / 128
    # the last logged LR is the same: one cosine schedule over the same total steps
    from datacomp.train import parse_train_log

    assert parse_train_log(run / "out.log")[-1]["lr"] == parse_train_log(ref / "out.log")[-1]["lr"]

    # evaluates within noise of the uninterrupted run
    l_ref, l_run = _eval_loss(ref, shards), _eval_loss(run, shards)
    assert abs(l_ref - l_run) < 0.1 * l_ref, (l_ref, l_run)

    # the final weights load in plain open_clip
    import open_clip

    open_clip.create_model_and_transforms(f"local-dir:{run / 'model'}")

    # a finished run that lost only its manifest is completed without training again
    (run / "manifest.json").unlink()
    n_cmds = (run / "stdout.log").read_text().count("\n$ ")
    train(s, shards, run, seed=0, workers=0, device="cpu")
    assert (run / "stdout.log").read_text().count("\n$ ") == n_cmds and (run / "manifest.json").is_file()
