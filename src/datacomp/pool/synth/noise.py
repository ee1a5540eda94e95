"""The pool's noise plan: which rows get which caption kind, image kind, duplicate or eval copy.

Kinds are assigned as exact counts (largest remainder over the configured rates), then shuffled
with a generator seeded from (seed, "plan"), so measured fractions equal the configured rates up
to rounding. The plan is a few small arrays, recomputed identically by every worker.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .scene import stream_seed


def exact_counts(n: int, rates: dict[str, float]) -> dict[str, int]:
    raw = {k: float(v) * n for k, v in rates.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    rest = n - sum(counts.values())
    order = sorted(raw, key=lambda k: (-(raw[k] - counts[k]), list(raw).index(k)))
    for k in order[:rest]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class Plan:
    caption_kinds: tuple[str, ...]
    image_kinds: tuple[str, ...]
    caption_kind: np.ndarray   # int8 index into caption_kinds
    image_kind: np.ndarray     # int8 index into image_kinds
    dup_src: np.ndarray        # int64 source row, -1 when not a duplicate
    dup_exact: np.ndarray      # bool
    dup_same_caption: np.ndarray  # bool
    eval_copy: np.ndarray      # int64 index into the eval catalogue, -1 when not a copy
    eval_exact: np.ndarray     # bool


def _assign(n: int, rates: dict[str, float], g: np.random.Generator) -> np.ndarray:
    counts = exact_counts(n, rates)
    arr = np.concatenate([np.full(c, i, dtype=np.int8) for i, c in enumerate(counts.values())])
    g.shuffle(arr)
    return arr


def make_plan(n: int, seed: int, noise: dict[str, Any], eval_total: int) -> Plan:
    g = np.random.default_rng(stream_seed(seed, "plan", 0))
    ck = _assign(n, noise["caption_kinds"], g)
    ik = _assign(n, noise["image_kinds"], g)
    normal = list(noise["image_kinds"]).index("normal")

    eval_copy = np.full(n, -1, dtype=np.int64)
    eval_exact = np.zeros(n, dtype=bool)
    n_eval = int(round(float(noise["eval_copies"]) * n)) if eval_total > 0 else 0
    normal_rows = np.flatnonzero(ik == normal)
    n_eval = min(n_eval, len(normal_rows))
    if n_eval:
        rows = g.choice(normal_rows, size=n_eval, replace=False)
        eval_copy[rows] = g.choice(eval_total, size=n_eval, replace=eval_total < n_eval)
        eval_exact[rows] = g.random(n_eval) < 0.5

    dup_src = np.full(n, -1, dtype=np.int64)
    dup_exact = np.zeros(n, dtype=bool)
    dup_same = np.zeros(n, dtype=bool)
    n_dup = int(round(float(noise["duplicates"]) * n))
    free = np.flatnonzero(eval_copy < 0)
    n_dup = min(n_dup, len(free) // 2)
    if n_dup:
        dups = np.sort(g.choice(free, size=n_dup, replace=False))
        is_dup = np.zeros(n, dtype=bool)
        is_dup[dups] = True
        sources = np.flatnonzero(~is_dup & (eval_copy < 0))
        group = ck.astype(np.int64) * 64 + ik
        for gid in np.unique(group[dups]):
            rows = dups[group[dups] == gid]
            cand = sources[group[sources] == gid]
            if len(cand) == 0:  # tiny pools: copy any source and take over its kinds
                cand = sources
            src = g.choice(cand, size=len(rows))
            dup_src[rows] = src
            ck[rows], ik[rows] = ck[src], ik[src]
        dup_exact[dups] = g.random(n_dup) < float(noise["duplicate_kinds"]["exact"])
        dup_same[dups] = g.random(n_dup) < float(noise["duplicate_same_caption"])
    return Plan(tuple(noise["caption_kinds"]), tuple(noise["image_kinds"]), ck, ik, dup_src, dup_exact,
                dup_same, eval_copy, eval_exact)


@lru_cache(maxsize=4)
def cached_plan(n: int, seed: int, noise_json: str, eval_total: int) -> Plan:
    return make_plan(n, seed, json.loads(noise_json), eval_total)


def noise_key(noise: dict[str, Any]) -> str:
    return json.dumps(noise)  # keeps key order: rates are drawn in the order the data file lists them
