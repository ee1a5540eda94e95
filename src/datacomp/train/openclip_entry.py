"""``python -m datacomp.train.openclip_entry ARGS``: ``open_clip_train.main`` with seeded sample shuffling.

open_clip_train seeds model init, shard resampling and augmentation from ``--seed``, but
webdataset's sample shuffle buffer draws its seed from the process id and the clock, so two runs
with the same seed see samples in different orders. This entry point gives that buffer a
generator seeded from the data-loader worker's seed (which torch derives from ``--seed``, the
rank and the worker id), then runs open_clip_train unchanged. Everything else is open_clip's, but
two launch shims: ``--datacomp-logs`` is ``--logs`` (torchrun's parser rejects ``--logs``), and
on ``--device cpu`` DDP gets no ``device_ids`` (so torchrun + gloo trains on CPU); and a guard on
unreadable data (:mod:`.corrupt`: a corrupt fraction above ``--datacomp-max-corrupt-fraction F``,
default 0.1, or a long run of unreadable members ends training in one line).
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


def _install_cpu_ddp() -> None:
    """open_clip_train wraps the model as ``DDP(model, device_ids=[device])``, which torch refuses for a
    CPU module; on ``--device cpu`` (torchrun with gloo: tests, CPU clusters) drop ``device_ids``."""
    import torch

    base = torch.nn.parallel.DistributedDataParallel

    class CpuDDP(base):  # type: ignore[misc, valid-type]
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuDDP


LOGS_ALIAS = "--datacomp-logs"  # torchrun's parser refuses "--logs" (ambiguous with its --logs-specs)


def _take_flag(args: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` (the last one given) from ``args``; -> VALUE."""
    value = None
    while flag in args:
        i = args.index(flag)
        value = args[i + 1] if i + 1 < len(args) else None
        del args[i:i + 2]
    return value


def _block_unused_wandb(args: list[str]) -> bool:
    """open_clip_train imports wandb when it is installed (img2dataset pulls it in), and wandb's import
    creates two ``/tmp/tmp*wandb-*`` directories a trainer that is stopped never removes; unless the run
    reports to wandb, make that import fail as if wandb were absent (open_clip_train then sets it to
    None). -> whether it was blocked."""
    report = args[args.index("--report-to") + 1] if "--report-to" in args[:-1] else ""
    if "wandb" in report or "all" in report or "wandb" in sys.modules:
        return False
    sys.modules["wandb"] = None  # type: ignore[assignment]  # `import wandb` raises ImportError
    return True


def main(argv: list[str] | None = None) -> int | None:
    from . import corrupt

    args = [("--logs" if a == LOGS_ALIAS else a) for a in (sys.argv[1:] if argv is None else argv)]
    _block_unused_wandb(args)
    _install_seeded_shuffle()
    from open_clip_train.main import main as open_clip_main

    fraction = _take_flag(args, corrupt.FLAG)
    corrupt.install(corrupt.check_fraction(fraction) if fraction is not None else corrupt.DEFAULT_MAX_FRACTION)
    if "--device" in args and args[args.index("--device") + 1] == "cpu":
        _install_cpu_ddp()
    return open_clip_main(args)


if __name__ == "__main__":
    rc = main()
    sys.exit(1 if isinstance(rc, int) and rc != 0 else 0)
