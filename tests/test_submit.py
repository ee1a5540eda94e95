"""``datacomp submit``: a bundle from a synth_test-scale run, validated; refusals, one line each;
``--upload`` against a faked hub (huggingface_hub's own CommitOperationAdd, HfApi replaced).

The run is one of ours at the synth_test scale (a tiny open_clip model, a train manifest and
info.json as ``train.rundir.finish`` writes them), evaluated for real on every task of the
embedded suite (small eval sets of the world).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datacomp.cli import main  # noqa: E402
from datacomp.config import load_scale  # noqa: E402
from datacomp.evaluate import evaluate  # noqa: E402
from datacomp.formats.atomic import file_sha256, write_json  # noqa: E402
from datacomp.formats.manifest import Manifest  # noqa: E402
from datacomp.formats.uids import SUBSET_DTYPE, make_subset, pairs_to_uids  # noqa: E402
from datacomp.pool.synth.evalsuite import TASKS, write_task  # noqa: E402
from datacomp.pool.synth.world import load_noise  # noqa: E402
from datacomp.submit import SubmissionRefused, submit, uid_sample  # noqa: E402
from datacomp.train.protocol import reference_scale_config  # noqa: E402

from test_evaluate import make_run  # noqa: E402


def finish_as_train(run: Path, scale_name: str, **changes) -> None:
    """The train manifest and info.json a finished run of ``scale_name`` has (``changes``: other values)."""
    s = load_scale(scale_name)
    sc = {**asdict(s), **changes}
    ck = run / "checkpoints" / "epoch_latest.pt"
    write_json(run / "info.json", {"scale": s.name, "checkpoint": str(ck), "scale_config": reference_scale_config(s),
                                   "samples_seen": sc["samples_seen"], "epochs": s.num_checkpoints})
    m = Manifest(stage="train", params={"scale": sc, "data": "shards/{00000000..00000002}.tar", "seed": 0},
                 counts={"samples_seen": sc["samples_seen"], "epochs": s.num_checkpoints})
    write_json(run / "manifest.json", m.to_json())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: a second intra-op thread only spins
    root = tmp_path_factory.mktemp("submit")
    run = make_run(root, seed=2)
    finish_as_train(run, "synth_test")
    noise = load_noise()
    concepts = load_scale("synth_test").world["concepts"]
    for t in TASKS:
        write_task(str(root / "suite"), 5, concepts, t.key, 10, noise)
    evaluate(run, root / "suite" / "evalsets", workers=0)
    rng = np.random.default_rng(0)
    raw = np.zeros(200, dtype=SUBSET_DTYPE)
    raw["f0"], raw["f1"] = rng.integers(0, 2**63, 200, dtype=np.uint64), rng.integers(0, 2**63, 200, dtype=np.uint64)
    subset = make_subset(raw)
    np.save(root / "subset.npy", subset)
    (root / "writeup.md").write_text("# Keep the red things\n")
    yield {"root": root, "run": run, "subset": root / "subset.npy", "arr": subset}
    torch.set_num_threads(old)


class NoHub:
    def __init__(self, *a, **k):
        raise AssertionError("the hub was contacted without --upload")


def test_bundle_of_a_synth_test_run(world, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", NoHub)
    out = tmp_path / "bundle"
    m = submit(world["run"], world["subset"], out, method_name="red-only", author="A. Person", email="a@b.c",
               writeup=str(world["root"] / "writeup.md"), samples=10, include_checkpoint=True, allow_embedded=True)
    d = out / "synth_test_scale"
    assert (d / "results.jsonl").read_bytes() == (world["run"] / "eval_results.jsonl").read_bytes()
    assert (d / "samples" / "subset.npy").read_bytes() == world["subset"].read_bytes()
    assert (d / "samples" / "subset.npy.sha256").read_text().split()[0] == file_sha256(world["subset"])
    sample = (d / "samples" / "uid_sample.txt").read_text().split()
    assert len(sample) == 10 and sample == sorted(sample) and set(sample) <= set(pairs_to_uids(world["arr"]))
    assert (d / "checkpoint.pt").read_bytes() == (world["run"] / "checkpoints" / "epoch_latest.pt").read_bytes()
    assert (d / "writeup.md").read_text().startswith("# Keep")
    info = json.loads((d / "training_info.json").read_text())
    assert info["scale_config"] == reference_scale_config(load_scale("synth_test"))
    assert info["checkpoint_sha256"] == "sha256:" + file_sha256(world["run"] / "checkpoints" / "epoch_latest.pt")
    rec = json.loads((d / "submission.json").read_text())
    assert rec["method_name"] == "red-only" and rec["track"] == "filtering" and rec["dataset_size"] == 200
    assert "Synth Concepts" in rec and "email" not in rec and rec["average"] is not None
    man = json.loads((out / "manifest.json").read_text())
    assert man["package_version"] and man["counts"]["tasks"] == 17
    assert "contact.json" not in man["upload"] and json.loads((out / "contact.json").read_text())["email"] == "a@b.c"
    assert all(man["sha256"][f] == file_sha256(out / f) for f in man["upload"])
    again = submit(world["run"], world["subset"], out, method_name="red-only", author="A. Person", email="a@b.c",
                   writeup=str(world["root"] / "writeup.md"), samples=10, include_checkpoint=True, allow_embedded=True)
    assert again.reused and m.counts == again.counts
    assert uid_sample(world["arr"], 0) == [] and len(uid_sample(world["arr"], 10**6)) == 200


def _refused(world, tmp_path, match: str, run=None, subset=None, **kw):
    with pytest.raises(SubmissionRefused, match=match) as e:
        submit(run or world["run"], subset or world["subset"], tmp_path / "b", method_name="m", author="a",
               allow_embedded=kw.pop("allow_embedded", True), **kw)
    assert "\n" not in str(e.value) and "submission refused" in str(e.value)
    assert not (tmp_path / "b").exists()  # nothing written


def _copy_run(world, tmp_path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(world["run"], run)
    finish_as_train(run, "synth_test")  # info.json names the copy's checkpoint
    return run


def test_refusals_one_line_each(world, tmp_path):
    _refused(world, tmp_path, "'synth_test' is an embedded-world scale", allow_embedded=False)
    # a missing task
    rows = (world["run"] / "eval_results.jsonl").read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(r for r in rows if '"synth/size"' not in r) + "\n")
    _refused(world, tmp_path, r"1 of the 17 scored synth tasks have no result: synth/size$", results=partial)
    # a wrong scale config
    run = _copy_run(world, tmp_path, "scale")
    finish_as_train(run, "synth_test", lr=0.002)
    _refused(world, tmp_path, r"other protocol values than the published synth_test scale \(lr 0.001 -> 0.002\)", run=run)
    # a reference scale: the 38 tasks, listed
    finish_as_train(run, "small")
    _refused(world, tmp_path, r"38 of the 38 scored datacomp tasks have no result: imagenet1k, ", run=run)
    # an unsorted subset
    bad = tmp_path / "unsorted.npy"
    np.save(bad, world["arr"][::-1].copy())
    _refused(world, tmp_path, "the uids are not sorted", subset=bad)
    np.save(bad, np.zeros(3, dtype="u8"))
    _refused(world, tmp_path, r"dtype 'u8,u8'", subset=bad)
    # a checkpoint that did not make the results
    run = _copy_run(world, tmp_path, "weights")
    ck = run / "checkpoints" / "epoch_latest.pt"
    state = torch.load(ck, weights_only=True)
    state["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, ck)
    _refused(world, tmp_path, r"made by another checkpoint \(sha256:", run=run)
    # results edited after evaluate recorded them
    run = _copy_run(world, tmp_path, "edited")
    res = run / "eval_results.jsonl"
    res.write_text(res.read_text().replace('"main_metric": 0.', '"main_metric": 0.9', 1))
    _refused(world, tmp_path, "not those evaluate recorded", run=run)


def test_cli_refusal_is_one_line(world, tmp_path, capsys):
    code = main(["submit", "--run", str(world["run"]), "--subset", str(world["subset"]), "--out", str(tmp_path / "b"),
                 "--method-name", "m", "--author", "a"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "embedded-world scale" in err


class FakeHub:
    """HfApi's two calls submit makes, recorded (repo, operations); nothing leaves the machine."""

    calls: list = []

    def __init__(self, *a, **k):
        pass

    def create_repo(self, repo_id, repo_type=None, exist_ok=False, **k):
        FakeHub.calls.append(("create_repo", repo_id, repo_type, exist_ok))

    def create_commit(self, repo_id, operations, commit_message, repo_type=None, **k):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        FakeHub.calls.append(("create_commit", repo_id, repo_type, commit_message, files))

        class Info:
            oid = "0" * 40
        return Info()


def test_upload_against_fake_hub(world, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "bundle"
    code = main(["submit", "--run", str(world["run"]), "--subset", str(world["subset"]), "--out", str(out),
                 "--method-name", "m", "--author", "a", "--email", "a@b.c", "--allow-embedded", "--samples", "5",
                 "--upload", "someone/datacomp-entry"])
    assert code == 0, capsys.readouterr().err
    (kind, repo, rtype, exist_ok), commit = FakeHub.calls
    assert kind == "create_repo" and repo == "someone/datacomp-entry" and rtype == "dataset" and exist_ok
    _, repo, rtype, message, files = commit
    assert message == "Upload artifacts (synth_test scale)" and rtype == "dataset"
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(files) == sorted(man["upload"]) and "contact.json" not in files
    assert all(f.startswith("synth_test_scale/") for f in files)
    assert files["synth_test_scale/results.jsonl"] == (world["run"] / "eval_results.jsonl").read_bytes()
    assert b"a@b.c" not in b"".join(files.values())
    # a bundle file changed after it was written is not sent
    FakeHub.calls = []
    (out / "synth_test_scale" / "submission.json").write_text("{}")
    code = main(["submit", "--run", str(world["run"]), "--subset", str(world["subset"]), "--out", str(out),
                 "--method-name", "m", "--author", "a", "--email", "a@b.c", "--allow-embedded", "--samples", "5",
                 "--upload", "someone/datacomp-entry"])
    assert code == 0 and len(FakeHub.calls) == 2  # the damaged bundle is rewritten, then sent
    assert json.loads(FakeHub.calls[1][4]["synth_test_scale/submission.json"])["method_name"] == "m"
