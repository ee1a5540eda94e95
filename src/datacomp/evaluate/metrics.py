"""Metric arithmetic, as clip_benchmark computes it (DATACOMP.md §5.1).

Pure functions over tensors / arrays so they can be checked on hand-computed cases.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Fraction of rows whose label is among the k highest logits, for each k."""
    n = labels.shape[0]
    if n == 0:
        return [float("nan")] * len(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1, largest=True, sorted=True).indices  # (n, kmax)
    hit = top.eq(labels.view(-1, 1))
    return [float(hit[:, : min(k, kmax)].any(dim=1).float().sum().item()) / n for k in ks]


def mean_per_class_recall(labels: np.ndarray, preds: np.ndarray) -> float:
    """Balanced accuracy (sklearn's definition): mean recall over the classes present in ``labels``."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.size == 0:
        return float("nan")
    classes = np.unique(labels)
    recalls = [float(np.mean(preds[labels == c] == c)) for c in classes]
    return float(np.mean(recalls))


def f1_macro(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    """Macro F1 over every class seen in labels or predictions (sklearn f1_score average='macro')."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    present = np.union1d(np.unique(labels), np.unique(preds))
    scores = []
    for c in present:
        tp = float(np.sum((preds == c) & (labels == c)))
        fp = float(np.sum((preds == c) & (labels != c)))
        fn = float(np.sum((preds != c) & (labels == c)))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_classes: int, f1: bool = False
) -> dict[str, float | None]:
    """acc1, acc5 (None with fewer than 5 classes), mean_per_class_recall (+ F1-macro_all if ``f1``)."""
    logits = logits.float()
    labels = labels.long()
    if n_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, labels, (1, 5))
    else:
        (acc1,) = topk_accuracy(logits, labels, (1,))
        acc5 = None
    preds = logits.argmax(dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    out = {
        "acc1": _clean(acc1),
        "acc5": _clean(acc5),
        "mean_per_class_recall": _clean(mean_per_class_recall(y, preds)),
    }
    if f1:
        out["F1-macro_all"] = _clean(f1_macro(y, preds, n_classes))
    return out


def retrieval_metrics(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image<->text recall@k from a (n_texts, n_images) similarity matrix.

    ``image_retrieval_recall@k``: fraction of captions whose own image is among the top-k images;
    ``text_retrieval_recall@k``: fraction of images with at least one of their captions among the
    top-k captions; ``mean_recall@1`` is the mean of the two recall@1 (DataComp's main metric).
    """
    scores = scores.float()
    n_texts, n_images = scores.shape
    text_to_image = text_to_image.long()
    positive = torch.zeros(n_texts, n_images, dtype=torch.bool, device=scores.device)
    positive[torch.arange(n_texts, device=scores.device), text_to_image.to(scores.device)] = True
    out: dict[str, float] = {}
    for k in ks:
        ki = min(k, n_images)
        top_images = scores.topk(ki, dim=1).indices  # (n_texts, ki)
        hit_i = positive.gather(1, top_images).any(dim=1)
        out[f"image_retrieval_recall@{k}"] = float(hit_i.double().mean().item()) if n_texts else float("nan")
        kt = min(k, n_texts)
        top_texts = scores.t().topk(kt, dim=1).indices  # (n_images, kt)
        hit_t = positive.t().gather(1, top_texts).any(dim=1)
        out[f"text_retrieval_recall@{k}"] = float(hit_t.double().mean().item()) if n_images else float("nan")
    if 1 in ks:
        out["mean_recall@1"] = 0.5 * (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"])
    return {k: _clean(v) for k, v in out.items()}


def _clean(v: float | None) -> float | None:
    """NaN -> None (JSON has no NaN; the reference writes null)."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v
