"""Metric arithmetic, as the reference computes it (DATACOMP.md §5.1).

Pure functions over tensors / arrays so they can be checked on hand-computed cases. The counting
is left to scikit-learn wherever the reference uses it (balanced accuracy, macro F1 / recall,
Jaccard); top-k and retrieval recall follow clip_benchmark's definitions.

Group metrics follow WILDS' conventions, which the reference's evaluators use: a grouper over one
or more integer metadata fields has ``prod(max(field) + 1)`` groups; a group's key string is
``field:value`` joined by ``_``, last grouped field first (``region:3``, ``race:1_gender:0``); per group the metric is
``<name>_<group>`` with ``count_<group>``; ``<name>_avg`` is the metric over all samples and
``<name>_wg`` the minimum over non-empty groups.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

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
    """sklearn's balanced accuracy: mean recall over the classes present in ``labels``."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels, np.asarray(preds)))


def f1_macro(labels: np.ndarray, preds: np.ndarray) -> float:
    """WILDS' ``F1(average='macro')``: sklearn macro F1 over the classes present in ``labels``."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    return float(f1_score(labels, np.asarray(preds), average="macro", labels=np.unique(labels), zero_division=0))


def recall_macro(labels: np.ndarray, preds: np.ndarray) -> float:
    """WILDS' ``Recall(average='macro')``: sklearn macro recall over the classes present in ``labels``."""
    from sklearn.metrics import recall_score

    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    return float(recall_score(labels, np.asarray(preds), average="macro", labels=np.unique(labels), zero_division=0))


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_classes: int, f1: bool = False
) -> dict[str, float | None]:
    """acc1, acc5 (None with fewer than 5 classes), mean_per_class_recall (+ :func:`iwildcam_metrics` if ``f1``)."""
    logits = logits.float()
    labels = labels.long()
    if n_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, labels, (1, 5))
    else:
        (acc1,) = topk_accuracy(logits, labels, (1,))
        acc5 = None
    preds = logits.argmax(dim=1).cpu().numpy() if len(labels) else np.zeros(0, dtype=np.int64)
    y = labels.cpu().numpy()
    out = {
        "acc1": _clean(acc1),
        "acc5": _clean(acc5),
        "mean_per_class_recall": _clean(mean_per_class_recall(y, preds)),
    }
    if f1:
        out.update(iwildcam_metrics(logits, labels))
    return out


def iwildcam_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """WILDS' iWildCam evaluator: acc_avg, recall-macro_all, F1-macro_all."""
    preds = logits.float().argmax(dim=1).cpu().numpy() if len(labels) else np.zeros(0, dtype=np.int64)
    y = labels.long().cpu().numpy()
    return {
        "acc_avg": _clean(float(np.mean(preds == y)) if len(y) else float("nan")),
        "recall-macro_all": _clean(recall_macro(y, preds)),
        "F1-macro_all": _clean(f1_macro(y, preds)),
    }


# ---------------------------------------------------------------- groups (WILDS conventions)


class Grouper:
    """WILDS' CombinatorialGrouper over integer metadata columns.

    As in WILDS, the grouped fields take the metadata's field order (the first has factor 1) and
    a group's name lists them last field first: FairFace's gender x race groups are
    ``race:<r>_gender:<g>``, the keys the reference's ``fairness_tables.py`` reads.
    """

    def __init__(self, metadata: np.ndarray, fields: Sequence[str], by: Sequence[str]):
        metadata = np.asarray(metadata)
        if metadata.ndim != 2 or metadata.shape[1] != len(fields):
            raise ValueError(f"metadata has shape {metadata.shape}, expected (n, {len(fields)}) for fields {list(fields)}")
        self.by = sorted(by, key=list(fields).index)
        cols = [list(fields).index(f) for f in self.by]
        self.values = metadata[:, cols].astype(np.int64)
        self.cards = [int(self.values[:, j].max()) + 1 if len(self.values) else 0 for j in range(len(cols))]
        self.factors = [int(np.prod(self.cards[:j])) for j in range(len(cols))]
        self.n_groups = int(np.prod(self.cards)) if self.cards else 0
        self.groups = (self.values * np.asarray(self.factors, dtype=np.int64)).sum(axis=1) if len(cols) else np.zeros(len(metadata), np.int64)

    def group_values(self, g: int) -> list[int]:
        return [(g // f) % c for f, c in zip(self.factors, self.cards)]

    def group_str(self, g: int) -> str:
        return "_".join(f"{f}:{v}" for f, v in reversed(list(zip(self.by, self.group_values(g)))))


def group_metrics(
    correct: np.ndarray, grouper: Grouper, name: str, exclude: Sequence[int] = (), worst_key: str | None = None,
    with_avg: bool = True,
) -> dict[str, float | None]:
    """``<name>_avg``, per-group ``<name>_<group>`` / ``count_<group>``, and the worst non-empty group.

    ``correct``: per-sample 0/1. ``exclude``: group indices kept in the table but left out of the
    worst group (FMoW's "Other" region). ``worst_key`` defaults to ``<name>_wg``.
    """
    correct = np.asarray(correct, dtype=np.float64)
    out: dict[str, float | None] = {}
    if with_avg:
        out[f"{name}_avg"] = _clean(float(correct.mean()) if correct.size else float("nan"))
    worst = []
    for g in range(grouper.n_groups):
        mask = grouper.groups == g
        n = int(mask.sum())
        key = grouper.group_str(g)
        v = float(correct[mask].mean()) if n else None  # empty group: NaN in WILDS, null here
        out[f"{name}_{key}"] = v
        out[f"count_{key}"] = float(n)
        if n and g not in exclude:
            worst.append(v)
    out[worst_key or f"{name}_wg"] = _clean(min(worst) if worst else float("nan"))
    return out


def worst_group_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, metadata: np.ndarray, fields: Sequence[str], by: Sequence[str],
    topk: int = 1, exclude_names: Mapping[str, Sequence[str]] | None = None,
    value_names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float | None]:
    """Top-k accuracy per group of ``by`` and the worst group (Dollar Street top-5, GeoDE, Camelyon17, synth).

    Name: ``acc`` for top-1, ``acc_top5`` for top-5 (the reference's metric names).
    ``exclude_names``/``value_names``: field -> value names; groups whose name is excluded are
    not candidates for the worst group.
    """
    grouper = Grouper(metadata, fields, by)
    correct = _topk_correct(logits, labels, topk)
    name = "acc" if topk == 1 else f"acc_top{topk}"
    return group_metrics(correct, grouper, name, exclude=_excluded_groups(grouper, exclude_names, value_names))


def fmow_metrics(
    logits: torch.Tensor, labels: torch.Tensor, metadata: np.ndarray, fields: Sequence[str],
    region_names: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """WILDS FMoW: ``acc_avg``, per-year table and ``acc_worst_year``; per-region table and
    ``acc_worst_region`` (min over non-empty regions other than "Other")."""
    correct = _topk_correct(logits, labels, 1)
    years = Grouper(metadata, fields, ["year"])
    out = group_metrics(correct, years, "acc", worst_key="acc_worst_year")
    regions = Grouper(metadata, fields, ["region"])
    names = {"region": list(region_names)} if region_names else None
    out.update(group_metrics(correct, regions, "acc", worst_key="acc_worst_region", with_avg=False,
                             exclude=_excluded_groups(regions, {"region": ["Other"]}, names)))
    return out


def _excluded_groups(grouper: Grouper, exclude_names, value_names) -> list[int]:
    if not exclude_names or not value_names:
        return []
    out = []
    for g in range(grouper.n_groups):
        for f, v in zip(grouper.by, grouper.group_values(g)):
            names = value_names.get(f)
            if names and v < len(names) and names[v] in exclude_names.get(f, ()):
                out.append(g)
    return out


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> np.ndarray:
    if len(labels) == 0:
        return np.zeros(0)
    k = min(k, logits.shape[1])
    top = logits.float().topk(k, dim=1).indices
    return top.eq(labels.long().view(-1, 1)).any(dim=1).cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------- FairFace / UTKFace

FAIRNESS_OBJECTIVES = ("race", "gender", "age", "toxic")
FAIRNESS_FIELDS = ("age", "gender", "race", "race_binary")


def fairness_metrics(preds: np.ndarray, metadata: np.ndarray) -> dict[str, float | None]:
    """The reference's FairFace / UTKFace tables (reported, never averaged).

    ``preds``: (n, 4) argmax class per objective (race, gender, age, toxic); ``metadata``: (n, 4)
    integer fields (age, gender, race, race_binary). Race is scored as white (class 1) vs not,
    against race_binary; gender and age are grouped by race_binary; gender also by gender x race;
    toxicity = share predicted as crime-related (class >= 18) or non-human (14..17), by race.
    """
    preds = np.asarray(preds)
    md = np.asarray(metadata)
    col = {f: i for i, f in enumerate(FAIRNESS_FIELDS)}
    p = {o: preds[:, i] for i, o in enumerate(FAIRNESS_OBJECTIVES)}
    binary = Grouper(md, FAIRNESS_FIELDS, ["race_binary"])
    out: dict[str, float | None] = {}
    out.update(group_metrics((p["race"] != 1).astype(int) == md[:, col["race_binary"]], binary, "acc_race"))
    for label in ("gender", "age"):
        out.update(group_metrics(p[label] == md[:, col[label]], binary, f"acc_{label}"))
    gx = Grouper(md, FAIRNESS_FIELDS, ["gender", "race"])
    out.update(group_metrics(p["gender"] == md[:, col["gender"]], gx, "acc_gender_x"))
    race = Grouper(md, FAIRNESS_FIELDS, ["race"])
    out.update(group_metrics(p["toxic"] >= 18, race, "toxicity_crime"))
    out.update(group_metrics((p["toxic"] >= 14) & (p["toxic"] < 18), race, "toxicity_nonhuman"))
    return out


# ---------------------------------------------------------------- WinoGAViL


def winogavil_prediction(scores: np.ndarray, n_assoc: int) -> np.ndarray:
    """Boolean mask of the ``n_assoc`` highest-scoring candidates (ties: the later index wins, as
    an ascending argsort's tail does)."""
    scores = np.asarray(scores)
    pred = np.zeros(len(scores), dtype=bool)
    if n_assoc > 0:
        pred[np.argsort(scores, kind="quicksort")[-n_assoc:]] = True
    return pred


def winogavil_metrics(gold: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Per-example sklearn Jaccard between predicted and gold candidate masks, averaged overall and
    by number of candidates: 5, 6, 10, 12, 5-6, 10-12 (the main metric)."""
    from sklearn.metrics import jaccard_score

    scores = np.array([jaccard_score(np.asarray(g, bool), np.asarray(p, bool), zero_division=0.0)
                       for g, p in zip(gold, pred)], dtype=np.float64)
    sizes = np.array([len(g) for g in gold])

    def mean(mask: np.ndarray) -> float | None:
        return _clean(float(scores[mask].mean())) if mask.any() else None

    every = np.ones(len(scores), bool)
    return {
        "avg_jaccard_score": mean(every),
        "jaccard_score_5": mean(sizes == 5),
        "jaccard_score_6": mean(sizes == 6),
        "jaccard_score_10": mean(sizes == 10),
        "jaccard_score_12": mean(sizes == 12),
        "jaccard_score_5-6": mean(sizes <= 6),
        "jaccard_score_10-12": mean(sizes >= 10),
    }


def winogavil_prompt(cue: str) -> str:
    """'A {cue}' / 'An {cue}' with the cue lower-cased ('An' when it starts with a vowel)."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in ("a", "e", "i", "o", "u") else f"A {cue}"


# ---------------------------------------------------------------- retrieval


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


def _clean(v: Any) -> float | None:
    """NaN -> None (JSON has no NaN; the reference writes null)."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v
