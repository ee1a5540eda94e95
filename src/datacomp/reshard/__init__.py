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

Speed: the scan reads one window per tar member at most (header + small members + the ends of
images; a sample's small members usually share one window) and never the image bytes; the json
uid comes from a byte-level match on img2dataset's flat json (``json.loads`` for anything
else); uid membership is a vectorised ``searchsorted`` over 16-byte keys per shard. The pack
writes with ``fasttar.FastTarWriter`` (ustar headers from a template, byte-identical to
``ShardWriter``): images are not read into Python — a run of samples that lie in the input as
they will in the output is copied with one ``os.copy_file_range`` and the new headers, small
members and padding are written over it — and txt/json come from the scan file. With the local
executor both passes run in ``workers`` threads of this process (the units' system calls
release the GIL; a worker process costs ~1-2 s to start), and for a plain reshard (no shuffle,
no blur) each output shard is packed as soon as the scans before it are done, overlapping the
passes; worker processes only above ``SCAN_PARALLEL_MIN`` / ``PACK_PARALLEL_MIN`` samples. Ray
always gets the units.

Compiled path: for runs of at least ``KERNEL_MIN`` input samples (or in a process where numba is
loaded already), the scan's header walk (checksums, sample grouping, unsafe names, the flat-json
uid, the image-end check) and the pack's layout of a batch (headers, small members, padding and
the input ranges to copy) run as numba kernels (``_tar_kernels``) that make their own
``pread`` / ``pwrite`` calls without the GIL: one call per tar or ~4 MB batch instead of Python
per member, so the two worker threads run in parallel. Anything the kernels do not handle (a bad
checksum, pax / GNU long-name headers, non-octal sizes, non-ASCII or long names, truncation, a
json that is not flat) sends the tar or output shard to the Python code, so the output bytes
never depend on the path taken (tested on hostile tars). Loading numba costs ~0.45 s of CPU once
per process; below ``KERNEL_MIN`` that is more than the kernels save.

Damage: members whose names escape the directory (``../``, absolute) are refused (the sample is
skipped, ``unsafe_member_count``); a truncated tar keeps the samples before the damage; a json
without a valid uid is counted (``json_without_uid_count``); a selected sample whose image is
visibly broken (a JPEG without its end marker, a PNG without IEND, an empty image) is skipped
(``broken_image_count``) — images are not decoded.

Options: ``shuffle_bufsize`` shuffles the emitted sequence within consecutive windows (seeded,
deterministic); ``apply_blur`` blurs ``face_bboxes`` from ``POOL/metadata`` with the reference
algorithm (``datacomp.pool.blur``) and re-encodes those images as WebP (quality 100).

Modules: ``resharder`` (the stage driver), ``scan`` (pass 1), ``pack`` (pass 2), ``plan`` (what
goes where, the pipelined release of pack units, the accounting), ``compiled`` (the kernel
decision, ``KERNEL_MIN``) and ``_tar_kernels`` (the kernels), ``keys`` (uid keys), ``arrow``
(Arrow <-> NumPy through the buffers), ``fasttar`` (the writers). The header walk is
``formats.ustar``, the member rules ``formats.tar``; the passes run through ``executors``
(``run_units``, and ``run_pipelined`` for the overlap).
"""
from __future__ import annotations

from .resharder import reshard

__all__ = ["reshard"]

from .._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'reshard')  # datacomp.reshard(...) calls reshard
