"""The ``datacomp`` command: one verb per stage, each a thin call into that stage's module."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import DatacompError

log = logging.getLogger("datacomp")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise DatacompError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


# ---- verbs --------------------------------------------------------------------------------------

def cmd_synth(a: argparse.Namespace) -> int:
    from .config import load_scale
    from .pool.synth import synthesize

    scale = load_scale(a.scale)
    m = synthesize(Path(a.out), scale, seed=a.seed, workers=a.workers, overwrite=a.overwrite)
    print(json.dumps({"pool": a.out, "counts": m.counts, "measured": m.extra.get("measured", {})}, indent=2))
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from .config import load_scale
    from .embed import embed

    if not a.teacher and not (a.model and a.checkpoint):
        raise DatacompError("embed needs --teacher, or --model ARCH with --checkpoint CKPT")
    scale = load_scale(a.scale) if a.scale else None
    keys = tuple(a.keys.split(",")) if a.keys else ("b32", "l14")
    m = embed(Path(a.pool), teacher=a.teacher and not a.model, model=a.model, checkpoint=a.checkpoint,
              scale=scale, seed=a.seed, workers=a.workers, overwrite=a.overwrite, keys=keys)
    print(json.dumps({"pool": a.pool, "counts": m.counts, "timings": m.timings}, indent=2))
    return 0


def cmd_filter(a: argparse.Namespace) -> int:
    from .filters import format_summary, list_ops_and_recipes, run_filter

    if a.list:
        for kind, name, desc in list_ops_and_recipes():
            print(f"{kind:7s} {name:32s} {desc}")
        return 0
    if not (a.pool and a.recipe and a.out):
        raise DatacompError("filter needs --pool, --recipe and --out (or --list)")
    from .formats.pool import validate_pool

    validate_pool(a.pool)  # readable parquets with uids, npz row counts = parquet row counts
    summary = run_filter(Path(a.pool), a.recipe, Path(a.out), overrides=_parse_sets(a.set),
                         executor=a.executor, workers=a.workers)
    print(format_summary(summary))
    return 0


def cmd_reshard(a: argparse.Namespace) -> int:
    from .reshard import reshard

    m = reshard(Path(a.pool), Path(a.subset), Path(a.out), shard_size=a.shard_size, workers=a.workers,
                executor=a.executor, overwrite=a.overwrite)
    print(json.dumps({"out": a.out, "counts": m.counts}, indent=2))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train

    data = [Path(p) for p in a.data.split("::")]
    m = train(a.scale, data, Path(a.out), seed=a.seed, workers=a.workers, print_args=a.print_args,
              resume=a.resume)
    if not a.print_args and m is not None:
        print(json.dumps({"run": a.out, "counts": m.counts, "timings": m.timings}, indent=2))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import aggregate, evaluate

    tasks = a.tasks.split(",") if a.tasks else None
    out = Path(a.out) if a.out else None
    results = evaluate(Path(a.run), Path(a.evalsets), out=out, tasks=tasks)
    for r in results:
        print(f"{r['key']:40s} {r['metrics'].get('main_metric')}")
    print(json.dumps(aggregate(results), indent=2))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .run import run_loop

    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    run_loop(a.scale, Path(a.workdir), recipes=recipes, seed=a.seed, workers=a.workers)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .info import show

    show(a.what, as_json=a.json)
    return 0


# ---- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datacomp", description=__doc__)
    p.add_argument("--version", action="version", version=f"datacomp {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def workers(sp: argparse.ArgumentParser, default: int = 2) -> None:
        sp.add_argument("--workers", type=int, default=default, help="worker processes (default %(default)s)")

    sp = add("synth", cmd_synth, "generate the embedded world: a candidate pool, curated pairs and a downstream suite")
    sp.add_argument("--out", required=True, help="pool directory to write")
    sp.add_argument("--scale", required=True, help="an embedded scale (datacomp info scales)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    workers(sp)

    sp = add("embed", cmd_embed, "CLIP embeddings (npz) and similarity scores (parquet columns) for a pool")
    sp.add_argument("--pool", required=True)
    sp.add_argument("--teacher", action="store_true", help="train the embedded world's teachers on POOL/curated and use them")
    sp.add_argument("--model", help="open_clip model name or local-dir:DIR (instead of --teacher)")
    sp.add_argument("--checkpoint", help="local checkpoint for --model")
    sp.add_argument("--keys", help="npz key sets to fill, e.g. b32 or l14 (default b32,l14)")
    sp.add_argument("--scale", help="scale whose teacher settings to use (default: the pool's)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    workers(sp)

    sp = add("filter", cmd_filter, "apply a filtering recipe to a pool's metadata; write a subset .npy")
    sp.add_argument("--pool")
    sp.add_argument("--recipe", help="a shipped recipe name or a YAML file")
    sp.add_argument("--out", help="subset .npy to write (a .json sidecar goes beside it)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe parameter")
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--list", action="store_true", help="list every op and recipe")
    workers(sp)

    sp = add("reshard", cmd_reshard, "materialise a subset as new webdataset shards")
    sp.add_argument("--pool", required=True, help="pool directory (or a directory of shards)")
    sp.add_argument("--subset", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--shard-size", type=int, default=10000)
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--overwrite", action="store_true")
    workers(sp)

    sp = add("train", cmd_train, "train a CLIP with open_clip at a fixed scale")
    sp.add_argument("--scale", required=True)
    sp.add_argument("--data", required=True, help="shard directory ('::'-separated for several)")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    sp.add_argument("--print-args", action="store_true", help="print the open_clip command line and exit")
    workers(sp, default=1)

    sp = add("evaluate", cmd_evaluate, "evaluate a trained run on a downstream suite")
    sp.add_argument("--run", required=True)
    sp.add_argument("--evalsets", required=True)
    sp.add_argument("--out", help="results file (default RUN/eval_results.jsonl)")
    sp.add_argument("--tasks", help="comma-separated task keys (default: every task present)")

    sp = add("run", cmd_run, "the whole loop for several recipes at one scale")
    sp.add_argument("--scale", required=True)
    sp.add_argument("--workdir", required=True)
    sp.add_argument("--recipes", default="no_filter,basic_filter,clip_score_l14_30")
    sp.add_argument("--seed", type=int, default=0)
    workers(sp)

    sp = add("info", cmd_info, "show the bundled scales, tasks or recipes")
    sp.add_argument("what", choices=["scales", "tasks", "recipes"])
    sp.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return a.fn(a)
    except DatacompError as e:
        print(f"datacomp: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("datacomp: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
