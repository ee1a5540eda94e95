"""Zero-shot classification, image-text retrieval, WinoGAViL and the FairFace / UTKFace heads, as
the reference runs them (DATACOMP.md §5.1): clip_benchmark's classifier and recall, the
reference's WILDS / fairness / WinoGAViL evaluators for the extra metrics.

Precision (``precision.py``): every evaluation takes a :class:`Precision` (None: the reference's
for the model's device). In fp32 texts are encoded in length-sorted batches cut after their
longest prompt (the same embeddings, tested); under autocast the text side runs exactly as
clip_benchmark runs it — one batch of templates per class, the full context, normalising and
averaging inside the autocast region — since batch shapes change low-precision results.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import numpy as np

from ..executors.children import die_with_parent
from .dataset import EvalSet
from .evaluators import evaluator_of, extra_metrics
from .images import ImageDataset, collate_images
from .metrics import (
    FAIRNESS_OBJECTIVES,
    classification_metrics,
    fairness_metrics,
    fmow_metrics,
    iwildcam_metrics,
    retrieval_metrics,
    winogavil_metrics,
    winogavil_prediction,
    winogavil_prompt,
    worst_group_accuracy,
)
from .precision import FP32, Precision, resolve_precision
from .tasktypes import evaluates

log = logging.getLogger(__name__)


def _precision(model, precision: Precision | None) -> Precision:
    return precision if precision is not None else resolve_precision("reference", _device_of(model))


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def format_template(template: str, classname: str) -> str:
    return template.replace("{c}", classname)


def _trim_position(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """Per row, the position the text tower pools from, when cutting the padded context after it
    cannot change the result; else None.

    That holds for open_clip's ``CLIP`` text tower with a causal attention mask and argmax / eos
    pooling: the pooled token only attends to the tokens before it, so the padding after the
    longest sequence of a batch is dead weight (77 positions where prompts use ~10-20).
    """
    try:
        from open_clip.model import CLIP
    except ImportError:  # pragma: no cover
        return None
    if type(model) is not CLIP or getattr(model, "attn_mask", None) is None:
        return None
    mask = model.attn_mask
    n = mask.shape[0]
    if tokens.shape[1] != n or not torch.equal(torch.isinf(mask), torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)):
        return None
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is not None:
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return None


def _encode_text_trimmed(model, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` over the first ``length`` positions only."""
    from open_clip.transformer import text_global_pool

    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256,
                 precision: Precision | None = None) -> torch.Tensor:
    """L2-normalised text embeddings (float32, on the model's device), in ``texts`` order.

    fp32: texts are encoded in batches of similar length, each cut after its longest prompt where
    the model allows it (``_trim_position``), which gives the same embeddings for a fraction of
    the work. Under autocast: batches in ``texts`` order, full context, normalised inside the
    autocast region (clip_benchmark's retrieval and the reference's WinoGAViL).
    """
    device = _device_of(model)
    if not texts:
        return torch.empty(0)
    precision = _precision(model, precision)
    tokens = tokenizer(texts)
    if precision.amp:
        out = []
        for i in range(0, len(texts), batch_size):
            with precision.autocast():
                out.append(F.normalize(model.encode_text(tokens[i : i + batch_size].to(device)), dim=-1).float())
        return torch.cat(out)
    pos = _trim_position(model, tokens)
    order = torch.argsort(pos, stable=True) if pos is not None else torch.arange(len(texts))
    chunks = []
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        tok = tokens[idx].to(device)
        if pos is not None:
            emb = _encode_text_trimmed(model, tok, int(pos[idx].max()) + 1)
        else:
            emb = model.encode_text(tok)
        chunks.append(F.normalize(emb.float(), dim=-1))
    out = torch.empty(len(texts), chunks[0].shape[1], device=chunks[0].device)
    out[order.to(out.device)] = torch.cat(chunks)
    return out


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames: list[str], templates: list[str], batch_size: int = 256,
                     precision: Precision | None = None) -> torch.Tensor:
    """(dim, n_classes) float32: per class, templates encoded, normalised, averaged, renormalised.

    Under autocast this is clip_benchmark's ``zero_shot_classifier`` step for step (one batch per
    class, every operation inside the autocast region); in fp32 the texts of all classes go
    through :func:`encode_texts`'s sorted batches.
    """
    precision = _precision(model, precision)
    if precision.amp:
        return _class_embeddings_amp(model, tokenizer, classnames, templates, precision)
    texts = [format_template(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, batch_size, FP32).view(len(classnames), len(templates), -1)
    mean = emb.mean(dim=1)
    return (mean / mean.norm(dim=-1, keepdim=True)).t().contiguous()


def _class_embeddings_amp(model, tokenizer, classnames: list[str], templates: list[str],
                          precision: Precision) -> torch.Tensor:
    device = _device_of(model)
    weights = []
    with precision.autocast():
        for c in classnames:
            emb = model.encode_text(tokenizer([format_template(t, c) for t in templates]).to(device))
            w = F.normalize(emb, dim=-1).mean(dim=0)
            w /= w.norm()
            weights.append(w)
        classifier = torch.stack(weights, dim=1)
    return classifier.float()


def _worker_init(worker_id: int) -> None:
    die_with_parent()


@torch.no_grad()
def encode_images(
    model, evalset: EvalSet, preprocess: Callable, batch_size: int = 256, workers: int = 2,
    precision: Precision | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (sample indices that decoded, their L2-normalised float32 image features, number skipped).

    ``precision`` None or fp32: the image tower in fp32 (classification); under autocast the
    features are normalised inside the autocast region, as clip_benchmark's retrieval does."""
    precision = precision or FP32
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
        worker_init_fn=_worker_init if workers else None,  # a killed evaluate takes its decoders along
    )
    idx_all, feats, failed = [], [], 0
    try:
        for idx, images, n_failed in loader:
            failed += n_failed
            if images is None:
                continue
            with precision.autocast():
                f = F.normalize(model.encode_image(images.to(device, non_blocking=True)), dim=-1)
            feats.append(f.float())
            idx_all.append(idx)
    finally:
        dataset.close()
    if failed:
        log.warning("task %s: %d image(s) failed to decode and were skipped", evalset.task.key, failed)
    if not feats:
        return torch.empty(0, dtype=torch.long), torch.empty(0), failed
    return torch.cat(idx_all), torch.cat(feats), failed


@extra_metrics("group")
def _group_metrics(logits: torch.Tensor, labels: torch.Tensor, evalset: EvalSet, idx: torch.Tensor, task) -> dict[str, Any]:
    if not len(idx):
        return {}
    md = evalset.metadata_array()[idx.numpy()]
    return worst_group_accuracy(logits, labels, md, task.metadata, task.group_by, topk=task.topk)


@extra_metrics("wilds_fmow")
def _fmow_metrics(logits: torch.Tensor, labels: torch.Tensor, evalset: EvalSet, idx: torch.Tensor, task) -> dict[str, Any]:
    if not len(idx):
        return {}
    md = evalset.metadata_array()[idx.numpy()]
    return fmow_metrics(logits, labels, md, task.metadata, region_names=(task.value_names or {}).get("region"))


@extra_metrics("wilds_iwildcam")
def _iwildcam_metrics(logits: torch.Tensor, labels: torch.Tensor, evalset: EvalSet, idx: torch.Tensor, task) -> dict[str, Any]:
    return iwildcam_metrics(logits, labels)


@evaluates("zeroshot_classification")
@torch.no_grad()
def zeroshot_classification(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2,
    precision: Precision | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (metrics, {"indices", "logits", "labels"}); the classifier at ``precision``, the image
    forward in fp32, like the reference; then the task's evaluator's metrics (``evaluators.py``)."""
    classifier = class_embeddings(model, tokenizer, evalset.classnames, evalset.templates, batch_size, precision)
    idx, feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, FP32)
    labels = torch.tensor([evalset.samples[i].label for i in idx.tolist()], dtype=torch.long)
    logits = 100.0 * feats @ classifier if len(idx) else torch.empty(0, len(evalset.classnames))
    task = evalset.task
    metrics = classification_metrics(logits.cpu(), labels, len(evalset.classnames))
    evaluator = evaluator_of(task)
    if evaluator is not None:
        metrics.update(evaluator.metrics(logits.cpu(), labels, evalset, idx, task))
    metrics["n_samples"] = int(len(idx))
    metrics["n_skipped"] = int(failed)
    return metrics, {"indices": idx, "logits": logits.cpu(), "labels": labels}


@evaluates("retrieval")
@torch.no_grad()
def zeroshot_retrieval(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2,
    precision: Precision | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (metrics, {"scores", "text_to_image"}); images that fail to decode drop with their captions.
    Images and texts at ``precision`` (the reference: both under autocast on a GPU)."""
    precision = _precision(model, precision)
    idx, img_feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, precision)
    texts: list[str] = []
    text_to_image: list[int] = []
    for j, i in enumerate(idx.tolist()):
        caps = evalset.samples[i].captions or []
        texts.extend(caps)
        text_to_image.extend([j] * len(caps))
    txt_feats = encode_texts(model, tokenizer, texts, batch_size, precision)
    t2i = torch.tensor(text_to_image, dtype=torch.long)
    scores = (txt_feats @ img_feats.t()).cpu() if texts else torch.empty(0, len(idx))
    metrics: dict[str, Any] = retrieval_metrics(scores, t2i)
    metrics["n_samples"] = int(len(idx))
    metrics["n_captions"] = len(texts)
    metrics["n_skipped"] = int(failed)
    return metrics, {"scores": scores, "text_to_image": t2i}


@evaluates("fairness")
@torch.no_grad()
def fairness_classification(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2,
    precision: Precision | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """FairFace / UTKFace: one zero-shot head per objective (race, gender, age, toxic), argmax per
    head, then the reference's group tables (no main metric). Heads at ``precision``, images fp32."""
    heads = [class_embeddings(model, tokenizer, *evalset.objectives[o], batch_size, precision) for o in FAIRNESS_OBJECTIVES]
    idx, feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, FP32)
    preds = np.stack([(100.0 * feats @ w).argmax(dim=1).cpu().numpy() for w in heads], axis=1) if len(idx) else np.zeros((0, 4), int)
    md = evalset.metadata_array()[idx.numpy()] if len(idx) else np.zeros((0, 4), int)
    metrics: dict[str, Any] = fairness_metrics(preds, md) if len(idx) else {}
    metrics["n_samples"] = int(len(idx))
    metrics["n_skipped"] = int(failed)
    return metrics, {"indices": idx, "preds": preds}


@evaluates("winogavil")
@torch.no_grad()
def winogavil(
    model, preprocess, tokenizer, evalset: EvalSet, batch_size: int = 256, workers: int = 2,
    precision: Precision | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score each candidate image by cosine to the cue prompt; predict the top-n (n = number of
    gold associations); Jaccard against the gold set. A candidate whose image does not decode
    scores -inf (counted in ``n_skipped``)."""
    precision = _precision(model, precision)
    idx, feats, failed = encode_images(model, evalset, preprocess, batch_size, workers, precision)
    pos = {i: j for j, i in enumerate(idx.tolist())}
    prompts = encode_texts(model, tokenizer, [winogavil_prompt(e.cue) for e in evalset.examples], batch_size, precision)
    gold, pred = [], []
    for e, t in zip(evalset.examples, prompts):
        rows = [pos.get(i) for i in e.images]
        ok = [r for r in rows if r is not None]
        sc = np.full(len(rows), -np.inf)
        if ok:
            vals = (feats[ok] @ t).cpu().numpy()
            sc[[k for k, r in enumerate(rows) if r is not None]] = vals
        gold.append(np.asarray(e.gold, bool))
        pred.append(winogavil_prediction(sc, int(np.sum(e.gold))))
    metrics: dict[str, Any] = winogavil_metrics(gold, pred)
    metrics["n_samples"] = len(evalset.examples)
    metrics["n_skipped"] = int(failed)
    return metrics, {"gold": gold, "pred": pred}


def auto_batch_size(device: torch.device | str) -> int:
    """Images per forward pass: 256 on a GPU, 64 on a CPU (larger CPU batches gain nothing and
    delay the first results)."""
    return 256 if torch.device(device).type == "cuda" else 64
