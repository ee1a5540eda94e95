"""Embedding: CLIP models -> npz embeddings + score columns; teacher (filtering-network) training.

``embed(pool, ...)`` is the stage (see :mod:`datacomp.embed.stage`); ``embed_shard`` is its unit.
"""
from __future__ import annotations

from .core import embed_shard, score_column
from .filter_network import filter_network
from .stage import embed, stage_dir, teacher_dir, teacher_scale, train_network, train_teacher

__all__ = ["embed", "embed_shard", "filter_network", "score_column", "stage_dir", "teacher_dir", "teacher_scale",
           "train_network", "train_teacher"]

from .._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'embed')  # datacomp.embed(...) calls embed
