"""GPU check: ViT-B-32 at the small scale's per-GPU batch, JPEG decoding vs pre-decoded tensors.

    .venv/bin/python bench/train_gpu.py [--steps 200] [--workers 12] [--images 16000]
    .venv/bin/python bench/train_gpu.py --device cpu --model synth-rn-tiny --batch 32 --steps 4 --images 256 --size 64  # smoke test

Writes ``--images`` synthetic 512-px JPEG pairs (smooth colour fields + texture + noise,
quality 90) into 16 shards, then measures, on the same device:

* ``jpeg``: ``datacomp.train.train`` with the small scale's protocol (ViT-B-32, amp, local loss,
  grad checkpointing, resampled shards) but ``--steps`` x batch samples seen: the real data path
  (webdataset -> JPEG decode -> RandomResizedCrop 224 -> normalise, ``--workers`` loader processes);
  samples/s from open_clip's batch times (log windows after the first) and end to end;
* ``tensors``: the same model, loss, optimizer and precision in one process on random image
  tensors and token ids already on the device: the model-bound ceiling.

``data_bound`` = 1 - jpeg / tensors: the share of the ceiling lost to loading and decoding.
Prints one JSON line. With the defaults it needs about 6-8 minutes on one H100.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

_BATCH_T = re.compile(r"Train Epoch: .*?Batch \(t\): ([\d.]+),")


def _jpeg(seed: int, size: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0, 255, (3, 3))
    img = np.stack([c[i, 0] + (c[i, 1] - c[i, 0]) * xx + (c[i, 2] - c[i, 0]) * yy for i in range(3)], -1)
    img += 30 * np.sin(xx * rng.uniform(5, 40) + yy * rng.uniform(5, 40))[..., None] + rng.normal(0, 8, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_shard(args: tuple[str, int, int, int]) -> int:
    from datacomp.formats.shards import ShardWriter, sample_key

    path, shard, n, size = args
    words = ["red", "green", "blue", "a", "photo", "of", "dog", "cat", "car", "tree", "house", "river"]
    with ShardWriter(Path(path)) as w:
        for i in range(n):
            key = sample_key(shard, i)
            rng = np.random.default_rng(shard * 1_000_003 + i)
            text = " ".join(rng.choice(words, 8))
            rec = {"uid": f"{shard:016x}{i:016x}", "key": key, "caption": text, "status": "success"}
            w.write(key, {"jpg": _jpeg(shard * 1_000_003 + i, size), "txt": text.encode(), "json": json.dumps(rec).encode()}, rec)
    return n


def write_shards(d: Path, images: int, shards: int, size: int, procs: int) -> None:
    from datacomp.formats.shards import SHARD_FORMAT

    d.mkdir(parents=True, exist_ok=True)
    per = -(-images // shards)
    jobs = [(str(d / SHARD_FORMAT.format(s)), s, per, size) for s in range(shards)]
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_write_shard, jobs))


def run_jpeg(scale, shards: Path, out: Path, workers: int, device: str) -> dict:
    from datacomp.train import train

    t0 = time.perf_counter()
    train(scale, shards, out, workers=workers, device=device, max_repeats=None)
    wall = time.perf_counter() - t0
    times = [float(m.group(1)) for m in map(_BATCH_T.search, (out / "out.log").read_text().splitlines()) if m]
    steady = scale.batch_size / statistics.mean(times[1:] or times) if times else None
    return {"samples_per_s": round(steady, 1) if steady else None, "e2e_samples_per_s": round(scale.samples_seen / wall, 1),
            "wall_s": round(wall, 1)}


def run_tensors(model_name: str, batch: int, steps: int, device: str, precision: str, lr: float) -> dict:
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from datacomp.train.models import materialise

    with tempfile.TemporaryDirectory() as d:
        materialise(model_name, d)
        model = open_clip.create_model(f"local-dir:{d}", device=device, load_weights=False)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        ctx = model.context_length if hasattr(model, "context_length") else 77
    model.set_grad_checkpointing(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    use_amp = precision.startswith("amp") and device == "cuda"
    dtype = torch.bfloat16 if "bf" in precision else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and dtype == torch.float16 else None
    loss_fn = ClipLoss()
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    texts = torch.randint(1, 49407, (batch, ctx), generator=g).to(device)
    times = []
    for step in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype, enabled=use_amp):
            img_f, txt_f, logit_scale = model(images, texts)[:3]
            loss = loss_fn(img_f, txt_f, logit_scale)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    steady = times[min(5, len(times) - 1):]  # after warm-up (cudnn autotune, allocator)
    return {"samples_per_s": round(batch / statistics.mean(steady), 1), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--model", default=None, help="override the scale's model (smoke tests)")
    ap.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: the scale's global batch on 1 GPU)")
    ap.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--images", type=int, default=16000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip", choices=["jpeg", "tensors"], default=None)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from datacomp.config import load_scale

    s = load_scale(a.scale)
    batch = a.batch or s.batch_size
    precision = s.precision if a.device == "cuda" else "fp32"
    scale = replace(s, name=f"{s.name}-gpucheck", model=a.model or s.model, batch_size=batch, samples_seen=batch * a.steps,
                    num_checkpoints=1, precision=precision, embedded=False)
    base = Path(tempfile.mkdtemp(prefix="bench-train-gpu-", dir=a.dir))
    t0 = time.perf_counter()
    write_shards(base / "shards", a.images, 16, a.size, max(1, os.cpu_count() or 1))
    res: dict = {"bench": "train_gpu", "scale": a.scale, "model": scale.model, "per_gpu_batch": batch, "steps": a.steps,
                 "precision": precision, "images": a.images, "image_px": a.size, "workers": a.workers,
                 "shard_write_s": round(time.perf_counter() - t0, 1)}
    if a.skip != "tensors":
        res["tensors"] = run_tensors(scale.model, batch, min(a.steps, 50), a.device, precision, s.lr)
    if a.skip != "jpeg":
        res["jpeg"] = run_jpeg(scale, base / "shards", base / "run", a.workers, a.device)
    if "tensors" in res and "jpeg" in res and res["jpeg"]["samples_per_s"]:
        res["data_bound"] = round(1 - res["jpeg"]["samples_per_s"] / res["tensors"]["samples_per_s"], 3)
    try:
        import torch

        res["device"] = torch.cuda.get_device_name(0) if a.device == "cuda" else platform.processor() or platform.machine()
    except Exception:  # noqa: BLE001
        res["device"] = a.device
    res["cpus"] = os.cpu_count()
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
