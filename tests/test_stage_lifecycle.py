"""The one stage lifecycle (formats.stage.StageOutput): reuse, resume, the conflict rule, --overwrite."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from datacomp.errors import StageConflictError
from datacomp.formats.guard import file_records
from datacomp.formats.manifest import Manifest, mark_done, read_marker
from datacomp.formats.stage import PENDING_NAME, StageOutput, describe_diff, params_diff


def _run(out: Path, params: dict, overwrite: bool = False, **kw) -> Manifest:
    """A toy stage: one unit writing data.txt from the params, through the lifecycle."""
    life = StageOutput("toy", out, params, overwrite=overwrite, owned=["data.txt"], **kw)
    done = life.begin()
    if done is not None:
        return done
    if read_marker(out, "u0") is None:
        (out / "data.txt").write_text(json.dumps(params))
        mark_done(out, "u0", {"n": 1})
    return life.finish(Manifest(stage="toy", params=params, extra={"files": file_records(out, ["data.txt"])}))


def test_diff_names_keys():
    assert describe_diff({"seed": 0, "w": {"c": 3}}, {"seed": 1, "w": {"c": 3}}) == "seed 0 -> 1"
    assert "and 1 more" in describe_diff({"a": 1, "b": 1, "c": 1, "d": 1}, {"a": 2, "b": 2, "c": 2, "d": 2})


def test_reuse_refuse_overwrite(tmp_path: Path):
    out = tmp_path / "o"
    m = _run(out, {"seed": 0})
    assert not m.reused and not (out / PENDING_NAME).exists()
    again = _run(out, {"seed": 0})
    assert again.reused and again["params"] == {"seed": 0}
    with pytest.raises(StageConflictError) as e:
        _run(out, {"seed": 1})
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "finished" in msg and "seed 0 -> 1" in msg
    assert json.loads((out / "data.txt").read_text()) == {"seed": 0}  # refused: nothing touched
    m2 = _run(out, {"seed": 1}, overwrite=True)
    assert not m2.reused and json.loads((out / "data.txt").read_text()) == {"seed": 1}


def test_unfinished_resume_and_refuse(tmp_path: Path):
    out = tmp_path / "o"
    life = StageOutput("toy", out, {"seed": 0})
    assert life.begin() is None  # a run that dies after its pending file and one marker
    mark_done(out, "u0", {"n": 1})
    (out / "data.txt").write_text("partial")
    with pytest.raises(StageConflictError, match="unfinished 'toy' output made with other parameters .seed 0 -> 2"):
        _run(out, {"seed": 2})
    _run(out, {"seed": 0})  # same params: resumed, the finished unit is kept
    assert (out / "data.txt").read_text() == "partial"
    out2 = tmp_path / "o2"
    StageOutput("toy", out2, {"seed": 0}).begin()
    mark_done(out2, "u0", {"n": 1})
    _run(out2, {"seed": 3}, overwrite=True)  # overwrite: markers cleared, the unit runs again
    assert json.loads((out2 / "data.txt").read_text()) == {"seed": 3}


def test_damaged_output_is_redone(tmp_path: Path, caplog):
    out = tmp_path / "o"
    _run(out, {"seed": 0})
    (out / "data.txt").write_text("x")
    m = _run(out, {"seed": 0})
    assert not m.reused and "not reusing" in caplog.text
    assert json.loads((out / "data.txt").read_text()) == {"seed": 0}


def test_exclusive_and_other_stage(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stray.bin").write_bytes(b"x")
    with pytest.raises(StageConflictError, match="not a 'toy' output .e.g. stray.bin"):
        StageOutput("toy", out, {}, exclusive=True).begin()
    StageOutput("toy", out, {}, exclusive=True, overwrite=True).begin()
    assert not (out / "stray.bin").exists()
    other = tmp_path / "p"
    _run(other, {"seed": 0})
    with pytest.raises(StageConflictError, match="made by stage 'toy'"):
        StageOutput("other", other, {"seed": 0}).begin()


def test_aside_keeps_the_old_output_until_finish(tmp_path: Path):
    out = tmp_path / "o"
    _run(out, {"seed": 0}, replace="aside")
    life = StageOutput("toy", out, {"seed": 1}, overwrite=True, replace="aside")
    assert life.begin() is None and (out / "manifest.json").is_file()  # killed here: the old output stands
    assert _run(out, {"seed": 0}, replace="aside").reused


# ---- the rule, once per stage, through each stage's own entry point --------------------------------
#
# Each stage runs for real up to its lifecycle's begin(); the work after it (training, img2dataset,
# rendering, ...) is replaced by a function that raises _Stop, so the whole file stays quick. A
# finished output is the stage's pending parameters turned into its manifest (what finish() writes).

class _Stop(Exception):
    pass


def _stop(*a, **k):
    raise _Stop()


def _tiny_pool(root: Path, n: int = 4) -> Path:
    from pool_tables import pool_table

    from datacomp.formats.pool import write_metadata

    t = pool_table([f"a photo of a dog {i}" for i in range(n)], [300] * n, [300] * n, [0.3] * n, [0.3] * n,
                   [f"{i:032x}" for i in range(n)])
    write_metadata(root / "metadata" / "00000000.parquet", t)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "shards" / "00000000.tar").write_bytes(b"\0" * 1024)
    return root


def _synth(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.config import load_scale
    from datacomp.pool.synth import synthesize

    return synthesize(tmp / o, load_scale("synth_test"), seed={"a": 0, "b": 1}[v], workers=1, overwrite=overwrite)


def _embed(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.embed import embed

    pool = tmp / o if (tmp / o / "metadata").is_dir() else _tiny_pool(tmp / o)
    return embed(pool, teacher=False, model={"a": "synth-rn-tiny", "b": "RN50"}[v], keys=("b32",), workers=1,
                 overwrite=overwrite)


def _filter(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.filters import run_filter

    pool = tmp / "pool" if (tmp / "pool").is_dir() else _tiny_pool(tmp / "pool")
    return run_filter(pool, {"a": "no_filter", "b": "basic_filter"}[v], tmp / o / "subset.npy", workers=1,
                      cache_dir=tmp / "cache", overwrite=overwrite)


def _train(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.train import train
    from datacomp.train.toydata import write_toy_shards

    data = tmp / "data"
    if not data.is_dir():
        write_toy_shards(data, n_shards=2, per_shard=8)
    return train("synth_test", [data], tmp / o, seed={"a": 0, "b": 1}[v], workers=1, device="cpu",
                 overwrite=overwrite, max_repeats=None)


def _evaluate(tmp: Path, v: str, o: str, overwrite: bool):
    from test_evaluate import make_cls_task, make_run

    from datacomp.evaluate import evaluate

    for name in ("ev_a", "ev_b"):
        if not (tmp / name).is_dir():
            make_cls_task(tmp / name, "synth/concepts", per_shard=[2])
    if not (tmp / "run").is_dir():  # the model evaluated (its checkpoint's digest is the results' input)
        make_run(tmp)
    (tmp / o).mkdir(parents=True, exist_ok=True)
    return evaluate(tmp / "run", tmp / f"ev_{v}", out=tmp / o / "eval_results.jsonl", workers=0, overwrite=overwrite)


def _download(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.pool.download import DownloadOptions, download

    meta = tmp / "meta"
    if not meta.is_dir():
        _tiny_pool(tmp / "src")
        (tmp / "src" / "metadata").rename(meta)
    return download(tmp / o, metadata=meta, options=DownloadOptions(image_size={"a": 512, "b": 256}[v]),
                    overwrite=overwrite)


def _byod(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.pool.byod import byod_from_shards

    for name in ("tars_a", "tars_b"):
        if not (tmp / name).is_dir():
            (tmp / name).mkdir()
            import tarfile

            with tarfile.open(tmp / name / "00000000.tar", "w"):
                pass
    return byod_from_shards(tmp / f"tars_{v}", tmp / o, workers=1, overwrite=overwrite)


def _report(tmp: Path, v: str, o: str, overwrite: bool):
    from datacomp.report.build import build_report

    (tmp / "wd").mkdir(exist_ok=True)
    return build_report([tmp / "wd"], tmp / o, n_samples={"a": 8, "b": 4}[v], overwrite=overwrite)


# stage -> (entry point, what to stop after begin(), lifecycle dir / manifest / pending name relative to o,
#           replace mode)
STAGES = {
    "synth": (_synth, "datacomp.pool.synth.task_sizes", ".", "manifest.json", ".params.json", "swap"),
    "embed": (_embed, "datacomp.train.models.cached_open_clip", "stages/embed", "stages/embed/manifest.json",
              ".params.json", "clear"),
    "filter": (_filter, "datacomp.filters.stage._global_steps", ".subset.npy.work", "subset.json", ".params.json",
               "aside"),
    "train": (_train, "datacomp.train.launch._train_here", ".", "manifest.json", ".params.json", "swap"),
    "evaluate": (_evaluate, "datacomp.evaluate.runner._run_tasks", ".", "eval_results.manifest.json",
                 ".eval_results.params.json", "clear"),
    "download": (_download, "datacomp.pool.download.run_img2dataset", "download", "manifest.json", ".params.json",
                 "clear"),
    "byod": (_byod, "datacomp.pool.byod.run_units", ".", "manifest.json", ".params.json", "clear"),
    "report": (_report, "datacomp.report.build.collect", ".", "manifest.json", ".params.json", "aside"),
}


def _begin(call, tmp: Path, v: str, o: str, overwrite: bool = False) -> None:
    """Run the stage up to its work: its lifecycle has begun (pending parameters written)."""
    with pytest.raises(_Stop):
        call(tmp, v, o, overwrite)


def _work(stage: str, tmp: Path, o: str) -> Path:
    """Where an overwrite of ``o`` is being written: beside it for a swapping stage that found an output."""
    swap = STAGES[stage][5] == "swap" and (tmp / f".{o}.swap-new").is_dir()
    return tmp / (f".{o}.swap-new" if swap else o)


def _finish_pending(stage: str, tmp: Path, o: str) -> dict:
    """Turn the unfinished output in ``o`` into a finished one, as the stage's finish() would."""
    _, _, d, man, pend, replace = STAGES[stage]
    pending = json.loads((_work(stage, tmp, o) / d / pend).read_text())
    if replace == "swap":
        life = StageOutput(stage, tmp / o, pending["params"], inputs=pending["inputs"], replace="swap")
        if _work(stage, tmp, o) != tmp / o:
            life._retarget(_work(stage, tmp, o))  # as begin() left it: finish() swaps the new output in
    else:
        life = StageOutput(stage, tmp / o / d, pending["params"], inputs=pending["inputs"], manifest=tmp / o / man,
                           pending=pend)
    extra: dict = {}
    if stage == "evaluate":  # a finished evaluation lists its tasks, whose lines are in the results file
        from datacomp.formats.results import append_result

        append_result(tmp / o / "eval_results.jsonl", {"key": "synth/concepts", "dataset": "Synth Concepts",
                                                        "metrics": {"main_metric": 0.5}})
        extra = {"tasks": ["synth/concepts"]}
    if stage == "report":
        extra = {"index": str(tmp / o / "index.html")}
    life.finish(Manifest(stage=stage, params=pending["params"], extra=extra))
    return pending["params"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_conflict_rule_per_stage(stage: str, tmp_path: Path, monkeypatch):
    call, work, d, man, pend, replace = STAGES[stage]
    mod, attr = work.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(mod), attr, _stop)
    # a finished output: same parameters -> reused
    _begin(call, tmp_path, "a", "o")
    params_a = _finish_pending(stage, tmp_path, "o")
    again = call(tmp_path, "a", "o", False)
    assert isinstance(again, Manifest) and again.reused and again.params == params_a
    # other parameters on it -> one line naming the output and what differs; nothing touched
    before = (tmp_path / "o" / man).read_bytes()
    with pytest.raises(StageConflictError) as e:
        call(tmp_path, "b", "o", False)
    msg = str(e.value)
    assert "\n" not in msg and f"holds a finished '{stage}' output made with other parameters" in msg
    assert str(tmp_path / "o") in msg and "--overwrite" in msg
    assert (tmp_path / "o" / man).read_bytes() == before
    # --overwrite: replaced (the old manifest goes at once, or, written aside or beside, when the new one is done)
    _begin(call, tmp_path, "b", "o", overwrite=True)
    assert (tmp_path / "o" / man).exists() == (replace in ("aside", "swap"))
    if replace == "swap":  # the old output untouched; the new one is built in the sibling
        assert (tmp_path / "o" / man).read_bytes() == before and (tmp_path / ".o.swap-new" / pend).is_file()
    params_b = _finish_pending(stage, tmp_path, "o")
    assert params_b != params_a and call(tmp_path, "b", "o", False).reused
    assert not list(tmp_path.glob(".o.swap-*"))
    # an unfinished output (a finished unit in it) made with other parameters -> refused too
    _begin(call, tmp_path, "b", "p")
    pending_b = json.loads((tmp_path / "p" / d / pend).read_text())["params"]
    mark_done(tmp_path / "p" / d, "unit-0")
    with pytest.raises(StageConflictError, match=f"holds an unfinished '{stage}' output made with other parameters"):
        call(tmp_path, "a", "p", False)
    _begin(call, tmp_path, "a", "p", overwrite=True)
    pending_a = json.loads((_work(stage, tmp_path, "p") / d / pend).read_text())["params"]
    assert pending_a != pending_b and params_diff(pending_a, pending_b) == params_diff(params_a, params_b)
    assert read_marker(_work(stage, tmp_path, "p") / d, "unit-0") is None


def test_swap_cut_before_the_exchange_puts_other_stages_outputs_back(tmp_path: Path, monkeypatch):
    """A swapping overwrite moves the other stages' outputs into the new directory just before the
    exchange; killed there, the next run puts them back into the old output before dropping the new."""
    import datacomp.formats.stage as stage_mod

    out = tmp_path / "o"
    _run(out, {"seed": 0}, replace="swap")
    (out / "other").mkdir()
    (out / "other" / "theirs.bin").write_bytes(b"another stage's output")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(a, b):  # the kill lands after the moves, before the exchange
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_mod, "_exchange", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(out, {"seed": 1}, overwrite=True, replace="swap")
    assert not (out / "other").exists() and (tmp_path / ".o.swap-new" / "other" / "theirs.bin").is_file()
    monkeypatch.undo()
    again = _run(out, {"seed": 0}, replace="swap")  # the next run settles the cut swap first
    assert again.reused and not list(tmp_path.glob(".o.swap-*"))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
