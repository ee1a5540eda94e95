"""Materialise a subset: pool shards + a uid subset -> new webdataset shards (DATACOMP.md §1.4).

Like the reference resharder, every pool sample whose uid is in the subset is written once per
occurrence of the uid in the subset, with key ``"{uid}-{j}"``; at most ``shard_size`` samples go
in each output ``{:08d}.tar`` (+ ``{:08d}_stats.json`` ``{"successes": n}``); ``meta.json``
records the counters and arguments and ``sample_ids.npy`` is a copy of the subset.

Unlike the reference, output numbering is deterministic and contiguous (``0..n-1``, every shard
full except the last), whatever the worker count or timing, in two passes of units:

1. *scan* (one unit per input shard): read the tar's headers and each sample's json (image bytes
   are skipped by seeking), find each uid's multiplicity in the subset with a vectorised
   ``searchsorted`` over the whole shard, and save the selected samples' member offsets;
2. *pack* (one unit per output shard): the emitted sequence is fixed by input order, so output
   shard ``o`` holds emitted samples ``[o*S, (o+1)*S)``; it reads exactly those members by offset.

Both passes leave completion markers, so a killed reshard resumes; ``manifest.json`` comes last.
"""
from __future__ import annotations

from .resharder import reshard

__all__ = ["reshard"]
