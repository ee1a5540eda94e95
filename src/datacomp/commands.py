"""The verbs' bodies: each parses nothing and decides nothing, it calls its stage and prints the
stage's summary (the parser and ``main`` are in :mod:`datacomp.cli`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, DatacompError

log = logging.getLogger("datacomp")


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
              scale=scale, seed=a.seed, workers=a.workers, overwrite=a.overwrite, keys=keys, executor=a.executor)
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
                strict=a.strict, first_shard=a.first_shard, num_shards=a.num_shards,
                include_unfinished=a.include_unfinished, inject_blur_metadata=a.inject_blur_metadata,
                dry_run=a.dry_run)
    summary: dict[str, Any] = {"out": a.out, "counts": m.counts}
    skipped = m.extra.get("skipped_unfinished_shards") if m.extra.get("dry_run") else None
    if m.extra.get("dry_run"):
        summary["dry_run"] = True
    elif m.counts.get("skipped_unfinished_shard_count"):
        skipped = json.loads((Path(a.out) / "meta.json").read_text()).get("skipped_unfinished_shards")
    if skipped:
        summary["skipped_unfinished_shards"] = skipped
    print(json.dumps(summary, indent=2))
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

    only_bigger = not a.no_resize_only_if_bigger
    if a.resize_only_if_bigger is not None:  # img2dataset's spelling of the same setting
        if a.no_resize_only_if_bigger and a.resize_only_if_bigger:
            raise ConfigError("--no-resize-only-if-bigger contradicts --resize_only_if_bigger true")
        only_bigger = a.resize_only_if_bigger
    return DownloadOptions(
        image_size=a.image_size, resize_mode=a.resize_mode, resize_only_if_bigger=only_bigger,
        encode_format=a.encode_format, samples_per_shard=a.samples_per_shard, blur=not a.skip_bbox_blurring,
        retries=a.retries, processes=a.processes, threads=a.threads, timeout=a.timeout,
        max_seconds=a.max_seconds, max_bytes=a.max_bytes, max_pixels=a.max_pixels, distributor=a.distributor,
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
                         sbatch_options=a.sbatch or (), max_repeats=a.max_repeats, overwrite=a.overwrite,
                         num_checkpoints=a.num_checkpoints, save_frequency=a.save_frequency,
                         imagenet_val=a.imagenet_val, grad_clip_norm=a.grad_clip_norm,
                         log_every_n_steps=a.log_every_n_steps, max_corrupt_fraction=a.max_corrupt_fraction)
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
    if not a.run and not a.model:
        raise DatacompError("evaluate needs --run RUN or --model ARCH --checkpoint CKPT (or --check)")
    if a.run and a.model:
        raise DatacompError("evaluate: give --run RUN or --model ARCH, not both")
    out = Path(a.out) if a.out else None
    results = evaluate(Path(a.run) if a.run else None, Path(a.evalsets), out=out, tasks=tasks, overwrite=a.overwrite,
                       batch_size=a.batch_size, model=a.model, checkpoint=a.checkpoint, precision=a.precision,
                       strict=a.strict, device=a.device)["results"]
    for r in results:
        print(f"{r['key']:40s} {r['metrics'].get('main_metric')}  ({r.get('precision', 'fp32')})")
    print(json.dumps(aggregate(results, strict=a.strict), indent=2))
    return 0


def cmd_download_evalsets(a: argparse.Namespace) -> int:
    from .evaluate import download_evalsets

    tasks = a.tasks.split(",") if a.tasks else None
    print(json.dumps(download_evalsets(Path(a.dest), tasks=tasks, layout=a.layout), indent=2, default=str))
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from .submit import submit

    m = submit(Path(a.run), Path(a.subset), Path(a.out), method_name=a.method_name, author=a.author, email=a.email,
               track=a.track, writeup=a.writeup, samples=a.samples, include_checkpoint=a.include_checkpoint,
               results=Path(a.results) if a.results else None, allow_embedded=a.allow_embedded,
               overwrite=a.overwrite, upload=a.upload)
    print(json.dumps({"bundle": a.out, "counts": m.counts, "average": m.extra.get("average"),
                      "files": m.extra.get("upload"), "uploaded": m.extra.get("uploaded")}, indent=2, default=str))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .run import parse_seeds, run_seeds

    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    seeds = parse_seeds(a.seeds) if a.seeds is not None else [a.seed if a.seed is not None else 0]
    run_seeds(a.scale, Path(a.workdir), recipes=recipes, seeds=seeds, workers=a.workers, jobs=a.jobs)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report.build import build_report

    out = Path(a.out) if a.out else Path(a.workdirs[0]) / "report"
    rep = build_report(a.workdirs, out, n_samples=a.samples, overwrite=a.overwrite)
    for note in rep.notes:
        print(f"datacomp report: note: {note}", file=sys.stderr)
    print(f"wrote {rep.index} ({rep.seconds:.1f} s)")
    return 0


def cmd_aggregate(a: argparse.Namespace) -> int:
    from .evaluate.aggregate import aggregate_file, format_aggregate

    aggs = [aggregate_file(Path(f), suite=a.suite, strict=a.strict) for f in a.results]
    if a.json:
        print(json.dumps(aggs, indent=2, allow_nan=False))
    else:
        print("\n".join(format_aggregate(g) for g in aggs), end="")
    return 0


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from .formats.atomic import write_text
    from .report.leaderboard import build_leaderboard, format_leaderboard, write_html

    board = build_leaderboard(a.dirs, references=not a.no_references)
    for note in board.notes:
        print(f"datacomp leaderboard: note: {note}", file=sys.stderr)
    text = format_leaderboard(board, a.format)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(a.out), text)
        print(f"wrote {a.out}")
    else:
        print(text, end="")
    if a.html:
        print(f"wrote {write_html(board, a.dirs, Path(a.html))}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .info import show

    show(a.what, as_json=a.json)
    return 0


# ---- parser -------------------------------------------------------------------------------------
