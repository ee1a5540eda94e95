"""``python -m datacomp.train.openclip_entry ARGS``: ``open_clip_train.main`` with seeded sample shuffling.

open_clip_train seeds model init, shard resampling and augmentation from ``--seed``, but
webdataset's sample shuffle buffer draws its seed from the process id and the clock, so two runs
with the same seed see samples in different orders. This entry point gives that buffer a
generator seeded from the data-loader worker's seed (which torch derives from ``--seed``, the
rank and the worker id), then runs open_clip_train unchanged. Everything else is open_clip's.
"""
from __future__ import annotations

import random
import sys


def _install_seeded_shuffle() -> None:
    import torch
    import webdataset
    import webdataset.filters as wf

    original = wf._shuffle

    def _seeded_shuffle(data, bufsize=1000, initial=100, rng=None, handler=None):
        if rng is None:
            info = torch.utils.data.get_worker_info()
            rng = random.Random(info.seed if info is not None else torch.initial_seed())
        return original(data, bufsize, initial, rng, handler)

    seeded = wf.pipelinefilter(_seeded_shuffle)
    wf.shuffle = seeded
    webdataset.shuffle = seeded


def main(argv: list[str] | None = None) -> int | None:
    _install_seeded_shuffle()
    from open_clip_train.main import main as open_clip_main

    return open_clip_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    rc = main()
    sys.exit(1 if isinstance(rc, int) and rc != 0 else 0)
