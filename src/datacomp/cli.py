"""The ``datacomp`` command: one verb per stage, each a thin call into that stage's module."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import ConfigError, DatacompError, describe_os_error

log = logging.getLogger("datacomp")

# Verbs whose job is to fetch from the Hugging Face hub; every other verb runs offline by default.
HUB_VERBS = {"download", "download-evalsets"}


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    from .formats.strict_yaml import load_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = load_yaml(v, f"--set {item}")
    return out


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high], refused at parse time with the flag's name."""
    want = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {want}, got {text!r}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected an integer {want}, got {v}")
        return v
    parse.__name__ = "count"
    return parse


POSITIVE = _count(1)


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

    scale = load_scale(a.scale) if a.scale else None
    if a.train_filter_network or a.filter_network:
        from .embed import filter_network

        if a.train_filter_network and a.filter_network:
            raise DatacompError("embed: give --train-filter-network or --filter-network DIR, not both")
        m = filter_network(Path(a.pool), data=a.data, model=a.filter_network, checkpoint=a.checkpoint, scale=scale,
                           seed=a.seed, workers=a.workers, overwrite=a.overwrite)
        print(json.dumps({"pool": a.pool, "counts": m.counts, "timings": m.timings,
                          "score_column": m.extra["network"]["score_column"]}, indent=2))
        return 0
    if not a.teacher and not (a.model and a.checkpoint):
        raise DatacompError("embed needs --teacher, or --model ARCH with --checkpoint CKPT")
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
                         executor=a.executor, workers=a.workers, overwrite=a.overwrite)
    print(format_summary(summary))
    if a.explain:
        _explain(Path(a.pool), Path(a.out), summary, a.explain)
    return 0


def cmd_decontaminate(a: argparse.Namespace) -> int:
    from .filters.contamination import decontaminate_pool, format_contamination
    from .formats.pool import validate_pool

    validate_pool(a.pool)
    summary = decontaminate_pool(Path(a.pool), evalsets=a.evalsets, threshold=a.threshold, model=a.model,
                                 checkpoint=a.checkpoint, workers=a.workers, executor=a.executor,
                                 overwrite=a.overwrite)
    print(format_contamination(summary))
    return 0


def _explain(pool: Path, out: Path, summary: dict[str, Any], n: int) -> None:
    import pyarrow.parquet as pq

    from .filters.explain import explain_dropped
    from .formats.atomic import atomic_path

    table = explain_dropped(pool, summary, n)
    path = out.with_suffix(".explain.parquet")
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    rule = None
    for r in table.to_pylist():
        if r["rule"] != rule:
            rule = r["rule"]
            print(f"\ndropped by {rule}:")
        text = " ".join(str(r.get("text") or "").split())
        print(f"  {r['uid']}  {r['reason']}  {text[:60]!r}")
    print(f"\nwrote {path} ({table.num_rows} rows: up to {n} per deciding rule, every column the recipe computed)")


def cmd_reshard(a: argparse.Namespace) -> int:
    from .reshard import reshard

    m = reshard(Path(a.pool), Path(a.subset), Path(a.out), shard_size=a.shard_size, workers=a.workers,
                executor=a.executor, overwrite=a.overwrite, shuffle_bufsize=a.shuffle_bufsize, seed=a.seed,
                apply_blur=a.apply_blur, reencode=a.reencode, quality=a.quality, allow_empty=a.allow_empty,
                strict=a.strict)
    print(json.dumps({"out": a.out, "counts": m.counts}, indent=2))
    _warn_losses(m)
    return 0


def _warn_losses(m) -> None:
    """The last line a stage prints: what damaged input shards cost (nothing when none were)."""
    from .formats.shards import describe_losses

    line = describe_losses(m.extra.get("losses") or {})
    if line is not None:
        print(f"datacomp: warning: {line}; --strict makes this an error", file=sys.stderr)


def _download_options(a: argparse.Namespace):
    from .pool.download import DownloadOptions

    return DownloadOptions(
        image_size=a.image_size, resize_mode=a.resize_mode, resize_only_if_bigger=not a.no_resize_only_if_bigger,
        encode_format=a.encode_format, samples_per_shard=a.samples_per_shard, blur=not a.skip_bbox_blurring,
        retries=a.retries, processes=a.processes, threads=a.threads, timeout=a.timeout,
        max_seconds=a.max_seconds, max_bytes=a.max_bytes, max_pixels=a.max_pixels,
    )


def cmd_download(a: argparse.Namespace) -> int:
    from .pool.download import download

    m = download(Path(a.pool), metadata=a.metadata or None, scale=a.scale, options=_download_options(a),
                 download_npz=a.download_npz, skip_shards=a.skip_shards, overwrite_metadata=a.overwrite_metadata,
                 retry_rounds=a.retry_rounds, overwrite=a.overwrite)
    print(json.dumps({"pool": a.pool, "counts": m.counts}, indent=2, default=str))
    return 0


def cmd_download_retry(a: argparse.Namespace) -> int:
    from .pool.download import retry_failed, summarize

    info = retry_failed(Path(a.pool), _download_options(a))
    print(json.dumps({"retry": info, "summary": summarize(Path(a.pool))}, indent=2, default=str))
    return 0


def cmd_byod(a: argparse.Namespace) -> int:
    from .pool.byod import byod_from_shards, byod_metadata

    if bool(a.table) == bool(a.shards):
        raise DatacompError("byod needs either --table PATH [...] or --shards DIR")
    if a.table:
        m = byod_metadata(a.table, Path(a.out), url_col=a.url_col, text_col=a.text_col,
                          rows_per_file=a.rows_per_file, overwrite=a.overwrite)
    else:
        m = byod_from_shards(Path(a.shards), Path(a.out), workers=a.workers, executor=a.executor, overwrite=a.overwrite,
                             strict=a.strict)
    print(json.dumps({"pool": a.out, "counts": m.counts}, indent=2, default=str))
    _warn_losses(m)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    data = [Path(p) for p in a.data.split("::")]
    config = TrainConfig(seed=a.seed, workers=a.workers, print_args=a.print_args, resume=a.resume, gpus=a.gpus,
                         nodes=a.nodes, accum_freq=a.accum_freq, data_weights=a.data_weights, precision=a.precision,
                         device=a.device, report_to=a.report_to, wandb_project=a.wandb_project, slurm=a.slurm,
                         sbatch_options=a.sbatch or (), max_repeats=a.max_repeats, overwrite=a.overwrite)
    m = train(a.scale, data, Path(a.out), config)
    if not a.print_args and not a.slurm and m is not None:
        print(json.dumps({"run": a.out, "counts": m.counts, "timings": m.timings}, indent=2))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import aggregate, check_evalsets, evaluate, format_check

    tasks = a.tasks.split(",") if a.tasks else None
    if a.check:
        for line in format_check(check_evalsets(Path(a.evalsets), tasks=tasks)):
            print(line)
        return 0
    if not a.run:
        raise DatacompError("evaluate needs --run RUN (or --check)")
    out = Path(a.out) if a.out else None
    results = evaluate(Path(a.run), Path(a.evalsets), out=out, tasks=tasks, overwrite=a.overwrite)["results"]
    for r in results:
        print(f"{r['key']:40s} {r['metrics'].get('main_metric')}")
    print(json.dumps(aggregate(results), indent=2))
    return 0


def cmd_download_evalsets(a: argparse.Namespace) -> int:
    from .evaluate import download_evalsets

    tasks = a.tasks.split(",") if a.tasks else None
    print(json.dumps(download_evalsets(Path(a.dest), tasks=tasks), indent=2, default=str))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .run import parse_seeds, run_seeds

    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    seeds = parse_seeds(a.seeds) if a.seeds is not None else [a.seed if a.seed is not None else 0]
    run_seeds(a.scale, Path(a.workdir), recipes=recipes, seeds=seeds, workers=a.workers)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report.build import build_report

    out = Path(a.out) if a.out else Path(a.workdirs[0]) / "report"
    rep = build_report(a.workdirs, out, n_samples=a.samples, overwrite=a.overwrite)
    for note in rep.notes:
        print(f"datacomp report: note: {note}", file=sys.stderr)
    print(f"wrote {rep.index} ({rep.seconds:.1f} s)")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .info import show

    show(a.what, as_json=a.json)
    return 0


# ---- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="datacomp", description=__doc__)
    p.add_argument("--version", action="version", version=f"datacomp {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def workers(sp: argparse.ArgumentParser, default: int = 2) -> None:
        sp.add_argument("--workers", type=POSITIVE, default=default, help="worker processes (default %(default)s)")

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
    sp.add_argument("--train-filter-network", action="store_true",
                    help="train a data filtering network (CLIP on high-quality pairs: --data, default POOL/curated) at "
                         "the scale's teachers.dfn protocol and score the pool with it (npz dfn_img/dfn_txt, column "
                         "clip_dfn_similarity_score; recipe dfn_top_30)")
    sp.add_argument("--data", help="directory of webdataset shards of high-quality pairs for --train-filter-network")
    sp.add_argument("--filter-network", metavar="DIR",
                    help="score the pool with a filtering network trained elsewhere: an open_clip local-dir (config + "
                         "weights), an open_clip name, or an ARCH with --checkpoint CKPT")
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
    sp.add_argument("--explain", type=int, metavar="N", help="also show N dropped rows per deciding rule, with the "
                    "values that decided, and write them to SUBSET.explain.parquet")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("decontaminate", cmd_decontaminate, "which eval tasks a pool contaminates: pool images that are near-duplicates "
             "of eval-set test images (POOL/decontaminate/contamination.parquet, and the pool without them)")
    sp.add_argument("--pool", required=True)
    sp.add_argument("--evalsets", help="eval-set directory in clip_benchmark's layout (default POOL/evalsets)")
    sp.add_argument("--threshold", type=float, help="cosine at or above which a pool image is a copy (default: the recipe's)")
    sp.add_argument("--model", help="the model that made the pool's l14_img embeddings (default: the embed manifest's)")
    sp.add_argument("--checkpoint", help="local checkpoint for --model")
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("reshard", cmd_reshard, "materialise a subset as new webdataset shards")
    sp.add_argument("--pool", required=True, help="pool directory (or a directory of shards)")
    sp.add_argument("--subset", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--shard-size", type=POSITIVE, default=10000)
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--shuffle-bufsize", type=_count(0), default=0, help="shuffle samples within windows of this size")
    sp.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    sp.add_argument("--apply-blur", action="store_true", help="blur face_bboxes from the pool's metadata")
    sp.add_argument("--reencode", choices=["webp", "jpg"], default="webp", help="format of blurred images")
    sp.add_argument("--quality", type=_count(1, 100), default=100, help="re-encoding quality of blurred images")
    sp.add_argument("--allow-empty", action="store_true", help="write an empty output for an empty subset")
    sp.add_argument("--strict", action="store_true", help="a damaged input shard is an error, not a warning")
    sp.add_argument("--overwrite", action="store_true")
    workers(sp)

    def image_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--image-size", type=POSITIVE, default=512)
        sp.add_argument("--resize-mode", default="keep_ratio_largest")
        sp.add_argument("--no-resize-only-if-bigger", action="store_true")
        sp.add_argument("--encode-format", default="jpg")
        sp.add_argument("--samples-per-shard", type=POSITIVE, default=10000)
        sp.add_argument("--skip-bbox-blurring", action="store_true", help="do not blur face_bboxes")
        sp.add_argument("--retries", type=_count(0), default=2)
        sp.add_argument("--processes", type=POSITIVE, default=2)
        sp.add_argument("--threads", type=POSITIVE, default=64)
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation")
        sp.add_argument("--max-seconds", type=float, default=30.0, help="seconds per whole transfer")
        sp.add_argument("--max-bytes", type=POSITIVE, default=32 * 1024 * 1024, help="largest file accepted")
        sp.add_argument("--max-pixels", type=POSITIVE, default=89_478_485, help="largest decoded image area accepted")

    sp = add("download", cmd_download, "fetch CommonPool / your own metadata and download images with img2dataset")
    sp.add_argument("--pool", required=True)
    sp.add_argument("--metadata", nargs="*", help="local parquet files or directories (default: the DataComp hub repo of --scale)")
    sp.add_argument("--scale", help="small, medium, large, xlarge or datacomp_1b (hub metadata; needs network)")
    sp.add_argument("--download-npz", action="store_true")
    sp.add_argument("--skip-shards", action="store_true", help="metadata only")
    sp.add_argument("--overwrite-metadata", action="store_true")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    sp.add_argument("--retry-rounds", type=_count(0), default=0, help="re-fetch failed uids this many times")
    image_flags(sp)

    sp = add("download-retry", cmd_download_retry, "re-download only the failed uids of a finished download into new shards")
    sp.add_argument("--pool", required=True)
    image_flags(sp)

    sp = add("byod", cmd_byod, "bring your own data: url/caption tables or existing shards -> a pool")
    sp.add_argument("--out", required=True, help="pool directory to write")
    sp.add_argument("--table", nargs="*", help="parquet or csv files with url and caption columns")
    sp.add_argument("--url-col")
    sp.add_argument("--text-col")
    sp.add_argument("--rows-per-file", type=POSITIVE, default=500_000)
    sp.add_argument("--shards", help="a directory of webdataset tars")
    sp.add_argument("--strict", action="store_true", help="a damaged input tar is an error, not a warning")
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
    sp.add_argument("--data-weights", help="'::'-separated upsampling weight per --data source (e.g. 1::2)")
    sp.add_argument("--gpus", type=POSITIVE, help="GPUs (processes) per node (default: all visible; 1 on CPU)")
    sp.add_argument("--nodes", type=POSITIVE, default=1, help="nodes (> 1 needs --slurm or --print-args)")
    sp.add_argument("--accum-freq", type=POSITIVE, default=1, help="gradient accumulation: per-GPU batch = global / (world x accum)")
    sp.add_argument("--precision", help="override the scale's precision (e.g. amp_bfloat16)")
    sp.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    sp.add_argument("--slurm", metavar="OUT.sbatch", help="write a Slurm script (srun, one task per GPU) instead of training")
    sp.add_argument("--sbatch", action="append", metavar="OPT", help="extra #SBATCH option, e.g. partition=gpu (repeatable)")
    sp.add_argument("--report-to", choices=["tensorboard", "wandb", "wandb,tensorboard", "all"], help="also log to these")
    sp.add_argument("--wandb-project", default=None, help="wandb project (default datanet, as the reference)")
    sp.add_argument("--max-repeats", type=float, default=10.0, help="warn when a sample will be seen more often than this")
    sp.add_argument("--overwrite", action="store_true", help="replace another run in --out")
    workers(sp, default=1)

    sp = add("evaluate", cmd_evaluate, "evaluate a trained run on a downstream suite")
    sp.add_argument("--run", help="training run directory")
    sp.add_argument("--evalsets", required=True)
    sp.add_argument("--check", action="store_true", help="only check which tasks are present and well-formed")
    sp.add_argument("--out", help="results file (default RUN/eval_results.jsonl)")
    sp.add_argument("--tasks", help="comma-separated task keys (default: every task present)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")

    sp = add("download-evalsets", cmd_download_evalsets, "download the DataComp evaluation sets (needs network)")
    sp.add_argument("dest", help="directory to write the eval sets to")
    sp.add_argument("--tasks", help="comma-separated task keys (default: all 40)")

    sp = add("run", cmd_run, "the whole loop for several recipes at one scale, over one or several seeds")
    sp.add_argument("--scale", required=True)
    sp.add_argument("--workdir", required=True)
    sp.add_argument("--recipes", default="no_filter,basic_filter,clip_score_l14_30",
                    help="shipped recipes or YAML files, plus the pseudo-recipes oracle (the world's clean pairs) "
                         "and random_basic (random, basic_filter's size) (default %(default)s)")
    seed = sp.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=None, help="one seed: world and training (default 0)")
    seed.add_argument("--seeds", metavar="N,N,...",
                      help="several seeds, one world each under WORKDIR/seed-N; tables give mean ± std")
    workers(sp)

    sp = add("report", cmd_report, "an HTML report (results, published baselines, plots, ground truth, samples) "
                                   "of every run under the given work directories")
    sp.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="work directories (datacomp run) or run directories")
    sp.add_argument("--out", help="directory for index.html, plots/ and samples/ (default FIRST_WORKDIR/report)")
    sp.add_argument("--samples", type=int, default=8, help="kept and dropped samples shown per recipe (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")

    sp = add("info", cmd_info, "show the bundled scales, tasks or recipes")
    sp.add_argument("what", choices=["scales", "tasks", "recipes"])
    sp.add_argument("--json", action="store_true")
    return p


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (through main), not usage and a message."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _fail(message: str, code: int = 2) -> int:
    try:
        print(f"datacomp: error: {message}", file=sys.stderr, flush=True)
    except OSError:  # stderr itself is gone: the exit code is all that is left
        pass
    return code


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush into a closed pipe cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except ConfigError as e:
        return _fail(str(e))
    if a.verb not in HUB_VERBS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    previous = _interrupt_on_sigterm()
    try:
        return a.fn(a)
    except DatacompError as e:
        return _fail(str(e), e.exit_code)
    except BrokenPipeError:
        _detach_stdout()
        return _fail("standard output was closed before the output was written (broken pipe)")
    except OSError as e:
        return _fail(describe_os_error(e, next((getattr(a, k) for k in ("out", "pool", "workdir", "dest")
                                                if getattr(a, k, None)), None)))
    except KeyboardInterrupt:
        return _fail("interrupted; finished units are kept, re-run the same command to resume", 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt_on_sigterm():
    """SIGTERM raises KeyboardInterrupt, so stages end their child processes on the way out."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (main() called from a worker thread)
        return None


if __name__ == "__main__":
    sys.exit(main())
