"""A small CLIP trained in-process on the embedded world's concept renders (seconds on a CPU).

``train_tiny(root)`` renders ``n_train`` concept images of the world (seed 101; the eval sets use
other seeds), captions them with the task's own templates, trains the text side of a tiny ViT CLIP (``TINY_VIT``:
16 patches of 8 px, two layers per tower; a ViT because convolutions cost far more per image on
these CPUs) against the image tower's features with a contrastive loss, and writes a run directory in our layout
(``model/open_clip_config.json``, ``checkpoints/epoch_latest.pt``). A trained model has the
margins a random one lacks, so precision effects show as they do on real checkpoints.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F

from datacomp.pool.synth.evalsuite import TASK_BY_KEY, classnames, eval_item, templates
from datacomp.pool.synth.world import load_noise, load_world
from datacomp.formats.atomic import write_json
from datacomp.train.models import CONFIG_NAME, LOCAL_DIR, load_open_clip

CONCEPTS = 24
TINY_VIT = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest", "size": 32},
}


def train_tiny(root: Path, n_train: int = 1024, steps: int = 80, batch: int = 96, seed: int = 0, lr: float = 5e-3) -> Path:
    from PIL import Image

    torch.manual_seed(seed)
    world = load_world(CONCEPTS)
    noise = load_noise()
    task = TASK_BY_KEY["synth/concepts"]
    names, tmpls = classnames(task, world), templates(task)
    run = root / "trained_run"
    write_json(run / "model" / CONFIG_NAME, TINY_VIT)
    model, preprocess, tok = load_open_clip(f"{LOCAL_DIR}{run / 'model'}")
    images, texts, labels = [], [], []
    for i in range(n_train):
        item = eval_item(101, "synth/concepts", i, world, noise)
        images.append(preprocess(Image.open(io.BytesIO(item.jpeg)).convert("RGB")))
        texts.append(tmpls[i % len(tmpls)].replace("{c}", names[item.label]))
        labels.append(item.label)
    images = torch.stack(images)
    labels = torch.tensor(labels)
    tokens = tok(texts)
    # the image tower stays at its (seeded) random init, whose features already tell colours and
    # shapes apart; the text tower learns to meet them (contrastive loss, text side only), which
    # costs a text forward and backward per step and no image backward
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
    params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(n_train, generator=g)[:batch]
        txt = F.normalize(model.encode_text(tokens[idx]), dim=-1)
        logits = model.logit_scale.exp() * img[idx] @ txt.t()
        same = labels[idx][:, None] == labels[idx][None, :]  # captions of the same concept are positives too
        target = same.float() / same.sum(1, keepdim=True)
        loss = -(target * logits.log_softmax(1)).sum(1).mean() - (target.t() * logits.t().log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "name": "tiny", "state_dict": model.state_dict()}, run / "checkpoints" / "epoch_latest.pt")
    return run
