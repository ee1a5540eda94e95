"""The ``datacomp`` command: the parser (one verb per stage, every option with its help) and ``main``
(one-line errors, exit codes, signals); each verb's body is a thin call into its stage, in
:mod:`datacomp.commands`."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Callable

from . import __version__
from .errors import ConfigError, DatacompError, describe_os_error
from .commands import _download_options  # noqa: F401  (re-exported: tests and scripts build options from args)
from .commands import (
    cmd_synth,
    cmd_embed,
    cmd_filter,
    cmd_decontaminate,
    cmd_reshard,
    cmd_download,
    cmd_download_retry,
    cmd_byod,
    cmd_train,
    cmd_evaluate,
    cmd_download_evalsets,
    cmd_submit,
    cmd_run,
    cmd_report,
    cmd_aggregate,
    cmd_leaderboard,
    cmd_info,
)

log = logging.getLogger("datacomp")

# Verbs whose job is to fetch from the Hugging Face hub; every other verb runs offline by default.
HUB_VERBS = {"download", "download-evalsets"}


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


def _corrupt_fraction(text: str) -> float:
    """argparse type of ``train --max-corrupt-fraction``: a number in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return v


def _boolean(text: str) -> bool:
    """argparse type: true/false (also 1/0, yes/no), as img2dataset's command line takes them."""
    v = text.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# ---- verbs --------------------------------------------------------------------------------------

DESCRIPTION = ("the DataComp-CLIP benchmark loop: curate an image-text pool, train CLIP at a fixed scale,\n"
               "evaluate it on the 38-task suite, compare and submit")

LOOP_HELP = """\
the loop (DataComp-CLIP):
  download | byod  ->  embed  ->  filter  ->  reshard  ->  train  ->  evaluate  ->  report
  ->  aggregate, leaderboard, submit
  (a real pool: CommonPool metadata + img2dataset shards, or your own data)
  synth -> run: the same loop on the embedded world, offline on a laptop

on real pools: download, download-retry, byod, embed --model / --filter-network, filter,
  decontaminate, reshard, train, evaluate, download-evalsets, report, aggregate,
  leaderboard, submit, info
embedded world only: synth, run, embed --teacher

logging: -q warnings only (and no progress lines), -v debug for datacomp, -vv debug for
  the libraries too. Python API: import datacomp; datacomp.filter(...), datacomp.reshard(...)
  (docs/API.md)."""


def log_levels(verbose: int, quiet: bool) -> tuple[int, int]:
    """(datacomp's loggers, every other logger) for ``-v`` counts and ``-q``: by default ours at
    INFO and the libraries' at WARNING; ``-v`` raises only ours to DEBUG, ``-vv`` the libraries too."""
    if quiet:
        return logging.WARNING, logging.WARNING
    ours = logging.DEBUG if verbose >= 1 else logging.INFO
    return ours, logging.DEBUG if verbose >= 2 else logging.WARNING


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="datacomp", description=DESCRIPTION, epilog=LOOP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"datacomp {__version__}")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="count", default=0,
                      help="-v: debug messages of datacomp; -vv: of the libraries too (default: datacomp at info, "
                           "libraries at warning)")
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="warnings and errors only, no progress lines (DATACOMP_PROGRESS=0); results still print")
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
    sp.add_argument("--seed", type=int, default=0, help="seed of the world (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("embed", cmd_embed, "CLIP embeddings (npz) and similarity scores (parquet columns) for a pool")
    sp.add_argument("--pool", required=True, help="pool directory (from synth, download or byod)")
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
    sp.add_argument("--seed", type=int, default=0, help="seed of the teachers' training (--teacher; default %(default)s)")
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local processes, or one Ray task per shard (a GPU each where the cluster has GPUs; "
                         "RAY_ADDRESS joins a cluster) (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("filter", cmd_filter, "apply a filtering recipe to a pool's metadata; write a subset .npy")
    sp.add_argument("--pool", help="pool directory (required unless --list)")
    sp.add_argument("--recipe", help="a shipped recipe name or a YAML file")
    sp.add_argument("--out", help="subset .npy to write (a .json sidecar goes beside it)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe parameter")
    sp.add_argument("--executor", choices=["local", "ray"], default="local", help="run units in-process (local) or as Ray tasks (default %(default)s)")
    sp.add_argument("--list", action="store_true", help="list every op and recipe")
    sp.add_argument("--explain", type=int, metavar="N", help="also show N dropped rows per deciding rule, with the "
                    "values that decided, and write them to SUBSET.explain.parquet")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("decontaminate", cmd_decontaminate, "which eval tasks a pool contaminates: pool images that are near-duplicates "
             "of eval-set test images (POOL/decontaminate/contamination.parquet, and the pool without them)")
    sp.add_argument("--pool", required=True, help="pool directory with l14_img embeddings (datacomp embed)")
    sp.add_argument("--evalsets", help="eval-set directory in clip_benchmark's layout (default POOL/evalsets)")
    sp.add_argument("--threshold", type=float, help="cosine at or above which a pool image is a copy (default: the recipe's)")
    sp.add_argument("--model", help="the model that made the pool's l14_img embeddings (default: the embed manifest's)")
    sp.add_argument("--checkpoint", help="local checkpoint for --model")
    sp.add_argument("--executor", choices=["local", "ray"], default="local", help="run units in-process (local) or as Ray tasks (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("reshard", cmd_reshard, "materialise a subset as new webdataset shards")
    sp.add_argument("--pool", required=True, help="pool directory (or a directory of shards)")
    sp.add_argument("--subset", required=True, help="subset .npy of (uid_high, uid_low) u8 pairs, sorted (datacomp filter --out)")
    sp.add_argument("--out", required=True, help="directory for the new shards (and meta.json)")
    sp.add_argument("--shard-size", type=POSITIVE, default=10000, help="samples per output shard (default %(default)s)")
    sp.add_argument("--executor", choices=["local", "ray"], default="local", help="run units in-process (local) or as Ray tasks (default %(default)s)")
    sp.add_argument("--shuffle-bufsize", type=_count(0), default=0, help="shuffle samples within windows of this size (default %(default)s: no shuffle)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default %(default)s)")
    sp.add_argument("--apply-blur", action="store_true", help="blur face_bboxes from the pool's metadata")
    sp.add_argument("--reencode", choices=["webp", "jpg"], default="webp", help="format of blurred images (default %(default)s)")
    sp.add_argument("--quality", type=_count(1, 100), default=100, help="re-encoding quality of blurred images (default %(default)s)")
    sp.add_argument("--allow-empty", action="store_true", help="write an empty output for an empty subset")
    sp.add_argument("--strict", action="store_true", help="a damaged input shard is an error, not a warning")
    sp.add_argument("--first-shard", type=_count(0), default=0,
                    help="number of the first input shard to read, as the reference's --first-shard (default %(default)s)")
    sp.add_argument("-n", "--num-shards", type=POSITIVE, default=None,
                    help="read only the input shards numbered FIRST_SHARD..FIRST_SHARD+N-1, the reference's way to split "
                         "a reshard over nodes: one output directory per node, train --data takes their parent "
                         "(default: every shard from FIRST_SHARD on)")
    sp.add_argument("--include-unfinished", action="store_true",
                    help="also read input shards without _stats.json (default: skipped, counted and named, as the reference)")
    sp.add_argument("--inject-blur-metadata", action="store_true",
                    help="add face_bboxes from the pool's metadata to each output sample's json (default off)")
    sp.add_argument("--dry-run", action="store_true",
                    help="scan the input and print the counts the reshard would give; write nothing (default off)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    def image_flags(sp: argparse.ArgumentParser) -> None:
        # img2dataset's and the reference download_upstream.py's flag names are aliases of ours
        sp.add_argument("--image-size", "--image_size", type=POSITIVE, default=512,
                        help="largest side after resizing, in pixels (default %(default)s, as the reference)")
        sp.add_argument("--resize-mode", "--resize_mode", default="keep_ratio_largest",
                        choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"],
                        help="img2dataset's resize mode (default %(default)s, as the reference)")
        sp.add_argument("--no-resize-only-if-bigger", "--no_resize_only_if_bigger", action="store_true",
                        help="also upscale images smaller than --image-size (default: resize only bigger ones)")
        sp.add_argument("--resize_only_if_bigger", type=_boolean, default=None, metavar="BOOL",
                        help="img2dataset's form of the same setting: true (the default) or false")
        sp.add_argument("--encode-format", "--encode_format", default="jpg", choices=["jpg", "png", "webp"],
                        help="image format in the shards (default %(default)s, as the reference)")
        sp.add_argument("--samples-per-shard", "--number_sample_per_shard", type=POSITIVE, default=10000,
                        help="samples per output shard (default %(default)s, as the reference)")
        sp.add_argument("--skip-bbox-blurring", "--skip_bbox_blurring", action="store_true",
                        help="do not blur face_bboxes (default: blur them with the reference's kernel)")
        sp.add_argument("--retries", type=_count(0), default=2,
                        help="img2dataset's re-attempts per URL within a round (default %(default)s, as the reference)")
        sp.add_argument("--processes", "--processes_count", type=POSITIVE, default=2,
                        help="download processes; with --distributor ray, the CPUs of a local Ray instance "
                             "(default %(default)s; the reference uses 16 on a download node)")
        sp.add_argument("--threads", "--thread_count", type=POSITIVE, default=64,
                        help="fetch threads per process (default %(default)s; the reference uses 128)")
        sp.add_argument("--distributor", choices=["multiprocessing", "ray"], default="multiprocessing",
                        help="img2dataset's distributor: processes on this machine, or one Ray task per shard on "
                             "the Ray cluster at RAY_ADDRESS (else a local instance) (default %(default)s)")
        sp.add_argument("--timeout", type=float, default=10.0,
                        help="seconds per socket operation (default %(default)s, img2dataset's)")
        sp.add_argument("--max-seconds", type=float, default=30.0,
                        help="seconds per whole transfer of one file (default %(default)s)")
        sp.add_argument("--max-bytes", type=POSITIVE, default=32 * 1024 * 1024,
                        help="largest file accepted, in bytes (default %(default)s)")
        sp.add_argument("--max-pixels", type=POSITIVE, default=89_478_485,
                        help="largest decoded image area accepted, in pixels (default %(default)s)")

    sp = add("download", cmd_download, "fetch CommonPool / your own metadata and download images with img2dataset")
    sp.add_argument("--pool", "--data_dir", required=True,
                    help="pool directory: metadata/ and shards/ go under it (the reference's --data_dir)")
    sp.add_argument("--metadata", nargs="*", help="local parquet files or directories (default: the DataComp hub repo of --scale)")
    sp.add_argument("--scale", help="small, medium, large, xlarge or datacomp_1b (hub metadata; needs network)")
    sp.add_argument("--download-npz", "--download_npz", action="store_true",
                    help="also fetch the hub's npz embeddings (default: parquets only)")
    sp.add_argument("--skip-shards", "--skip_shards", action="store_true", help="metadata only")
    sp.add_argument("--overwrite-metadata", "--overwrite_metadata", action="store_true",
                    help="fetch or copy the metadata again even if POOL/metadata has it")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    sp.add_argument("--retry-rounds", type=_count(0), default=0,
                    help="re-fetch failed uids this many times after the first round (default %(default)s)")
    image_flags(sp)

    sp = add("download-retry", cmd_download_retry, "re-download only the failed uids of a finished download into new shards")
    sp.add_argument("--pool", "--data_dir", required=True, help="pool directory of a finished download")
    image_flags(sp)

    sp = add("byod", cmd_byod, "bring your own data: url/caption tables or existing shards -> a pool")
    sp.add_argument("--out", required=True, help="pool directory to write")
    sp.add_argument("--table", nargs="*", help="parquet or csv files with url and caption columns")
    sp.add_argument("--url-col", help="URL column (default: the first of url, URL, image_url, img_url present)")
    sp.add_argument("--text-col", help="caption column (default: the first of text, caption, TEXT, alt, alt_text present)")
    sp.add_argument("--rows-per-file", type=POSITIVE, default=500_000, help="rows per metadata parquet file (default %(default)s)")
    sp.add_argument("--shards", help="a directory of webdataset tars")
    sp.add_argument("--strict", action="store_true", help="a damaged input tar is an error, not a warning")
    sp.add_argument("--executor", choices=["local", "ray"], default="local", help="run units in-process (local) or as Ray tasks (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    workers(sp)

    sp = add("train", cmd_train, "train a CLIP with open_clip at a fixed scale")
    sp.add_argument("--scale", required=True, help="scale name (datacomp info scales): fixes model, samples seen and protocol")
    sp.add_argument("--data", required=True, help="shard directory ('::'-separated for several)")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--seed", type=int, default=0, help="training seed (default %(default)s)")
    sp.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    sp.add_argument("--print-args", action="store_true", help="print the open_clip command line and exit")
    sp.add_argument("--data-weights", help="'::'-separated upsampling weight per --data source (e.g. 1::2)")
    sp.add_argument("--gpus", type=POSITIVE, help="GPUs (processes) per node (default: all visible; 1 on CPU)")
    sp.add_argument("--nodes", type=POSITIVE, default=1, help="nodes (> 1 needs --slurm or --print-args; default %(default)s)")
    sp.add_argument("--accum-freq", type=POSITIVE, default=1, help="gradient accumulation: per-GPU batch = global / (world x accum) (default %(default)s)")
    sp.add_argument("--precision", help="override the scale's precision (e.g. amp_bfloat16)")
    sp.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    sp.add_argument("--slurm", metavar="OUT.sbatch", help="write a Slurm script (srun, one task per GPU) instead of training")
    sp.add_argument("--sbatch", action="append", metavar="OPT", help="extra #SBATCH option, e.g. partition=gpu (repeatable)")
    sp.add_argument("--report-to", choices=["tensorboard", "wandb", "wandb,tensorboard", "all"], help="also log to these")
    sp.add_argument("--wandb-project", default=None, help="wandb project (default datanet, as the reference)")
    sp.add_argument("--max-repeats", type=float, default=10.0, help="warn when a sample will be seen more often than this (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace another run in --out: the new run trains beside it and replaces it once finished")
    sp.add_argument("--max-corrupt-fraction", type=_corrupt_fraction, default=0.1,
                    help="fail when more than this fraction of the training members read (after the first 500, per "
                         "data-loader worker) cannot be read; 1 turns the limit off (default %(default)s)")
    # the reference train.py's flags, passed to open_clip as it passes them
    sp.add_argument("--num-checkpoints", type=POSITIVE, default=None,
                    help="epochs = checkpoints, each samples_seen / N samples; the reference lets it vary (its "
                         "default 5, its Slurm script 8); samples seen stay fixed (default: the scale's)")
    sp.add_argument("--save-frequency", type=_count(0), default=0,
                    help="also keep epoch_N.pt every N epochs; the model is the same (default %(default)s: epoch_latest.pt "
                         "and the final one)")
    sp.add_argument("--imagenet-val", metavar="DIR",
                    help="ImageNet val folder for open_clip's zero-shot check after each epoch; only logs (default none)")
    sp.add_argument("--grad-clip-norm", type=float, default=None,
                    help="clip the gradient norm; the reference's flag, not part of the protocol (default: no clipping)")
    sp.add_argument("--log-every-n-steps", type=POSITIVE, default=None,
                    help="open_clip's log interval in steps; only logs (default 100 as the reference; embedded scales steps/10)")
    workers(sp, default=1)

    sp = add("evaluate", cmd_evaluate, "evaluate a trained run (or any open_clip model) on a downstream suite")
    sp.add_argument("--run", help="training run directory (datacomp train's, or the reference train.py's with info.pkl)")
    sp.add_argument("--model", metavar="ARCH", help="evaluate this model instead of a run: an open_clip architecture, "
                                                    "a bundled config, or local-dir:DIR (needs --out)")
    sp.add_argument("--checkpoint", metavar="CKPT", help="with --model: a checkpoint file or an open_clip pretrained tag")
    sp.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 256 on a GPU, 64 on a CPU)")
    sp.add_argument("--precision", choices=["reference", "fp32", "amp_fp16", "amp_bf16"], default="reference",
                    help="reference (default): the reference's, text towers under fp16 autocast on CUDA, fp32 on a "
                         "CPU; the others force it (amp_* on a CPU run the reference's mixed path there)")
    sp.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    sp.add_argument("--strict", action="store_true",
                    help="refuse unless every scored task of the suite is evaluated (38 for the DataComp suite)")
    sp.add_argument("--evalsets", required=True, help="eval-set directory (POOL/evalsets for the embedded world, or download-evalsets' output)")
    sp.add_argument("--check", action="store_true", help="only check which tasks are present and well-formed")
    sp.add_argument("--out", help="results file (default RUN/eval_results.jsonl)")
    sp.add_argument("--tasks", help="comma-separated task keys (default: every task present)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")

    sp = add("download-evalsets", cmd_download_evalsets, "download the DataComp evaluation sets (needs network)")
    sp.add_argument("dest", help="directory to write the eval sets to")
    sp.add_argument("--tasks", help="comma-separated task keys (default: all 40)")
    sp.add_argument("--layout", choices=["ours", "reference"], default="ours",
                    help="task directory names: ours (<key, / -> ->) or reference (wds_<key>_test, what the "
                         "reference's evaluate.py --data_dir reads); evaluate reads both (default %(default)s)")

    sp = add("submit", cmd_submit, "validate a finished run and write (and with --upload push) its submission bundle")
    sp.add_argument("--run", required=True, help="the training run (datacomp train's or the reference train.py's)")
    sp.add_argument("--subset", required=True, help="the subset it was trained on (SUBSET.npy)")
    sp.add_argument("--out", required=True, help="bundle directory to write")
    sp.add_argument("--method-name", required=True, help="shown on the leaderboard")
    sp.add_argument("--author", required=True, help="shown on the leaderboard")
    sp.add_argument("--email", help="contact; kept in BUNDLE/contact.json, never uploaded")
    sp.add_argument("--track", choices=["filtering", "byod"], default="filtering",
                    help="the competition track: filtering (a subset of CommonPool) or byod (your own data) (default %(default)s)")
    sp.add_argument("--writeup", metavar="FILE|URL", help="a write-up file (bundled) or a link")
    sp.add_argument("--samples", type=int, default=1000, help="uids of the subset listed in uid_sample.txt (default 1000)")
    sp.add_argument("--include-checkpoint", action="store_true", help="bundle (and upload) the checkpoint too")
    sp.add_argument("--results", help="results file (default RUN/eval_results.jsonl)")
    sp.add_argument("--allow-embedded", action="store_true", help="bundle a run of an embedded-world scale (practice)")
    sp.add_argument("--upload", metavar="USER/REPO", help="push the bundle to this Hugging Face dataset repo")
    sp.add_argument("--overwrite", action="store_true", help="replace another bundle in --out")

    sp = add("run", cmd_run, "the whole loop for several recipes at one scale, over one or several seeds")
    sp.add_argument("--scale", required=True, help="scale name (datacomp info scales)")
    sp.add_argument("--workdir", required=True, help="work directory: pool/, subsets/, shards/, runs/, results and report")
    sp.add_argument("--recipes", default="no_filter,basic_filter,clip_score_l14_30",
                    help="shipped recipes or YAML files, plus the pseudo-recipes oracle (the world's clean pairs) "
                         "and random_basic (random, basic_filter's size) (default %(default)s)")
    seed = sp.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=None, help="one seed: world and training (default 0)")
    seed.add_argument("--seeds", metavar="N,N,...",
                      help="several seeds, one world each under WORKDIR/seed-N; tables give mean ± std")
    workers(sp)
    sp.add_argument("--jobs", type=POSITIVE, default=None,
                    help="trainings at once, recipes' and teachers' (default 2 where there are 2 or more cores, else 1; 2 on 2 cores nearly halves the training time); "
                         "each its own process with the threads a lone training has, so results do not depend on it")

    sp = add("report", cmd_report, "an HTML report (results, published baselines, plots, ground truth, samples) "
                                   "of every run under the given work directories")
    sp.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="work directories (datacomp run) or run directories")
    sp.add_argument("--out", help="directory for index.html, plots/ and samples/ (default FIRST_WORKDIR/report)")
    sp.add_argument("--samples", type=int, default=8, help="kept and dropped samples shown per recipe (default %(default)s)")
    sp.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")

    sp = add("aggregate", cmd_aggregate, "suite scores of results files (ours or the reference's), as the reference's "
                                         "aggregate_scores.py computes them, and the FairFace / UTKFace tables")
    sp.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="eval_results.jsonl files")
    sp.add_argument("--suite", choices=["datacomp", "synth"], help="task suite (default: the one the file's tasks belong to)")
    sp.add_argument("--strict", action="store_true", help="refuse a file that lacks any of the suite's scored tasks")
    sp.add_argument("--json", action="store_true", help="print the scores as JSON (a list, one object per file)")

    sp = add("leaderboard", cmd_leaderboard, "every evaluated run under the given directories, ranked per scale and "
                                             "track, beside the published baselines of the same scale")
    sp.add_argument("dirs", nargs="+", metavar="DIR", help="work directories (datacomp run) or run directories")
    sp.add_argument("--format", choices=["text", "md", "csv", "json"], default="text", help="output format (default %(default)s)")
    sp.add_argument("--out", help="write the table to this file instead of standard output")
    sp.add_argument("--html", metavar="DIR", help="also write DIR/index.html, a static page of the leaderboard")
    sp.add_argument("--no-references", action="store_true", help="leave out the paper's and the released checkpoints' rows")

    sp = add("info", cmd_info, "show the bundled scales, tasks or recipes")
    sp.add_argument("what", choices=["scales", "tasks", "recipes"], help="what to list")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
    if a.verb not in HUB_VERBS and not (a.verb == "submit" and a.upload):  # submit --upload pushes to the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ours, libraries = log_levels(a.verbose, a.quiet)
    logging.basicConfig(level=libraries, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("datacomp").setLevel(ours)
    if a.quiet:
        os.environ["DATACOMP_PROGRESS"] = "0"
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
