"""Zero-shot classification and image-text retrieval as clip_benchmark runs them (DATACOMP.md §5.1)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .evalsets import EvalSet, ImageDataset, collate_images
from .metrics import classification_metrics, retrieval_metrics

log = logging.getLogger(__name__)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda")
    return contextlib.nullcontext()


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def format_template(template: str, classname: str) -> str:
    return template.replace("{c}", classname)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (float32, on the model's device)."""
    device = _device_of(model)
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i : i + batch_size]).to(device)
        with _autocast(device):
            emb = model.encode_text(tokens)
        out.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames: list[str], templates: list[str], batch_size: int = 256) -> torch.Tensor:
    """(dim, n_classes): per class, templates encoded, normalised, averaged, renormalised."""
    texts = [format_template(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, batch_size).view(len(classnames), len(templates), -1)
    mean = emb.mean(dim=1)
    return (mean / mean.norm(dim=-1, keepdim=True)).t().contiguous()


@torch.no_grad()
def encode_images(
    model, evalset: EvalSet, preprocess: Callable, batch_size: int = 256, workers: int = 2, autocast: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (sample indices that decoded, their L2-normalised image features, number skipped)."""
    device = _device_of(model)
    dataset = ImageDataset(evalset, preprocess)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_images,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    idx_all, feats, failed = [], [], 0
    try:
        for idx, images, n_failed in loader:
            failed += n_failed
            if images is None:
                continue
            ctx = _autocast(device) if autocast else contextlib.nullcontext()
            with ctx:
                f = model.encode_image(images.to(device, non_blocking=True))
            feats.append(F.normalize(f.float(), dim=-1))
            idx_all.append(idx)
    finally:
        dataset.close()
    if failed:
        log.warning("task %s: %d image(s) failed to decode and were skipped", evalset.task.key, failed)
    if not feats:
        return torch.empty(0, dtype=torch.long), torch.empty(0), failed
    return torch.cat(idx_all), torch.cat(feats), failed


@torch.no_grad()
def zeroshot_classification(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (metrics, {"indices", "logits", "labels"}); image forward in fp32 like the reference."""
    classifier = class_embeddings(model, tokenizer, evalset.classnames, evalset.templates, batch_size)
    idx, feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, autocast=False)
    labels = torch.tensor([evalset.samples[i].label for i in idx.tolist()], dtype=torch.long)
    logits = 100.0 * feats @ classifier if len(idx) else torch.empty(0, len(evalset.classnames))
    metrics = classification_metrics(
        logits.cpu(), labels, len(evalset.classnames), f1=evalset.task.main_metric == "F1-macro_all"
    )
    metrics["n_samples"] = int(len(idx))
    metrics["n_skipped"] = int(failed)
    return metrics, {"indices": idx, "logits": logits.cpu(), "labels": labels}


@torch.no_grad()
def zeroshot_retrieval(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (metrics, {"scores", "text_to_image"}); images that fail to decode drop with their captions."""
    idx, img_feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, autocast=True)
    texts: list[str] = []
    text_to_image: list[int] = []
    for j, i in enumerate(idx.tolist()):
        caps = evalset.samples[i].captions or []
        texts.extend(caps)
        text_to_image.extend([j] * len(caps))
    txt_feats = encode_texts(model, tokenizer, texts, batch_size)
    t2i = torch.tensor(text_to_image, dtype=torch.long)
    scores = (txt_feats @ img_feats.t()).cpu() if texts else torch.empty(0, len(idx))
    metrics: dict[str, Any] = retrieval_metrics(scores, t2i)
    metrics["n_samples"] = int(len(idx))
    metrics["n_captions"] = len(texts)
    metrics["n_skipped"] = int(failed)
    return metrics, {"scores": scores, "text_to_image": t2i}
