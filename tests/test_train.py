"""datacomp.train: reference arguments, shard discovery, a real tiny CPU run, load_model."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from datacomp.config import Scale, load_scale
from datacomp.errors import ConfigError, FormatError, InputError, StageConflictError
from datacomp.train import build_args, find_train_data, load_model, train
from datacomp.train.toydata import write_toy_shards


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# DATACOMP.md §2.1: samples seen, global batch, lr, warmup, beta2 (None = 0.98), model
REFERENCE = {
    "debug": (128_000, 1024, 1e-4, 500, 0.98, "ViT-B-32"),
    "small": (12_800_000, 4096, 5e-4, 500, 0.98, "ViT-B-32"),
    "medium": (128_000_000, 4096, 5e-4, 500, 0.98, "ViT-B-32"),
    "large": (1_280_000_000, 8192, 5e-4, 500, 0.98, "ViT-B-16"),
    "xlarge": (12_800_000_000, 90112, 1e-3, 10_000, 0.95, "ViT-L-14"),
}


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("world", [1, 8])
def test_reference_scale_args(name: str, world: int, tmp_path: Path) -> None:
    seen, batch, lr, warmup, beta2, model = REFERENCE[name]
    s = load_scale(name)
    args = build_args(s, "/d/{00000000..00000009}.tar", tmp_path / "exp", seed=3, workers=4, world_size=world, device="cuda")
    assert _opt(args, "--train-num-samples") == str(seen // 5)
    assert _opt(args, "--epochs") == "5"
    assert int(_opt(args, "--batch-size")) == batch // world
    assert int(_opt(args, "--batch-size")) * world == batch
    assert float(_opt(args, "--lr")) == lr
    assert int(_opt(args, "--warmup")) == warmup
    assert float(_opt(args, "--beta2")) == beta2
    assert (s.beta2 is not None) == (name == "xlarge")
    assert _opt(args, "--model") == model
    assert _opt(args, "--wd") == "0.2" and _opt(args, "--beta1") == "0.9" and _opt(args, "--eps") == "1e-6"
    assert _opt(args, "--dataset-type") == "webdataset" and "--dataset-resampled" in args
    assert _opt(args, "--precision") == ("amp_bfloat16" if name == "xlarge" else "amp")
    for flag in ("--local-loss", "--gather-with-grad", "--grad-checkpointing", "--ddp-static-graph", "--save-most-recent"):
        assert flag in args
    assert _opt(args, "--seed") == "3" and _opt(args, "--workers") == "4"
    assert _opt(args, "--logs") == str(tmp_path) and _opt(args, "--name") == "exp"
    assert _opt(args, "--resume") == "latest" and "--device" not in args
    # steps = samples_seen / global batch (DATACOMP.md §2.1, last column)
    assert s.steps == seen // batch


def test_step_counts() -> None:
    assert load_scale("small").steps == 3125
    assert load_scale("medium").steps == 31250
    assert load_scale("large").steps == 156250
    assert load_scale("xlarge").steps == 142045  # 12.8B // 90112 (the reference's ≈142,046 rounds up)


def test_accum_and_bad_world(tmp_path: Path) -> None:
    args = build_args("medium", "x.tar", tmp_path / "e", world_size=8, accum_freq=2)
    assert _opt(args, "--batch-size") == "256" and _opt(args, "--accum-freq") == "2"
    with pytest.raises(ConfigError):
        build_args("medium", "x.tar", tmp_path / "e", world_size=3)


def test_cpu_args_and_bundled_model(tmp_path: Path) -> None:
    args = build_args("synth_test", "x.tar", tmp_path / "e", device="cpu")
    assert _opt(args, "--device") == "cpu" and _opt(args, "--precision") == "fp32"
    assert _opt(args, "--model") == f"local-dir:{tmp_path / 'e' / 'model'}"
    assert "--local-loss" not in args
    assert _opt(build_args("small", "x.tar", tmp_path / "e", device="cpu"), "--precision") == "fp32"


def test_unknown_scale(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        train("nope", tmp_path, tmp_path / "out", print_args=True)


def _touch_shards(d: Path, nums: list[int], prefix: str = "") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in nums:
        (d / f"{prefix}{n:08d}.tar").write_bytes(b"")


def test_shard_pattern(tmp_path: Path) -> None:
    _touch_shards(tmp_path / "a", [0, 1, 2, 3])
    td = find_train_data(tmp_path / "a")
    assert td.pattern == f"{tmp_path / 'a'}/{{00000000..00000003}}.tar" and td.num_shards == 4
    _touch_shards(tmp_path / "b", [7])
    assert find_train_data(tmp_path / "b").pattern == f"{tmp_path / 'b'}/00000007.tar"
    both = find_train_data([tmp_path / "a", tmp_path / "b"])
    assert both.pattern.count("::") == 1 and both.num_shards == 5
    # parent dir of resharder outputs: sub-dirs are searched; meta.json's output_shard_count is used
    _touch_shards(tmp_path / "p" / "r0", [0, 1, 2])
    (tmp_path / "p" / "r0" / "meta.json").write_text(json.dumps({"output_shard_count": 2}))
    _touch_shards(tmp_path / "p" / "r1", [0])
    td = find_train_data(tmp_path / "p")
    assert td.num_shards == 3 and "{00000000..00000001}" in td.pattern


def test_shard_pattern_errors(tmp_path: Path) -> None:
    _touch_shards(tmp_path / "gap", [0, 1, 3])
    with pytest.raises(FormatError, match="gap.*00000002.tar"):
        find_train_data(tmp_path / "gap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no .tar shards"):
        find_train_data(tmp_path / "empty")
    with pytest.raises(InputError, match="missing"):
        find_train_data(tmp_path / "missing")
    with pytest.raises(InputError, match="empty"):
        train("synth_test", tmp_path / "empty", tmp_path / "out")


def test_print_args_does_not_train(tmp_path: Path, capsys) -> None:
    _touch_shards(tmp_path / "d", [0, 1])
    cmd = train("synth_test", tmp_path / "d", tmp_path / "out", print_args=True)
    assert cmd[1:3] == ["-m", "datacomp.train.openclip_entry"] and "--train-data" in cmd
    assert not (tmp_path / "out").exists()
    assert "datacomp.train.openclip_entry --save-frequency 0" in capsys.readouterr().out


def _tiny_scale(samples: int = 256) -> Scale:
    s = load_scale("synth_test")
    return Scale(**{**s.__dict__, "name": "tiny", "samples_seen": samples, "batch_size": 32, "warmup": 2, "teachers": {}})


def test_real_tiny_run(tmp_path: Path) -> None:
    write_toy_shards(tmp_path / "shards", n_shards=2, per_shard=64)
    out = tmp_path / "run"
    m = train(_tiny_scale(), tmp_path / "shards", out, seed=0, workers=0)
    assert m.stage == "train" and (out / "manifest.json").is_file()
    assert (out / "checkpoints" / "epoch_latest.pt").is_file()
    assert (out / "model" / "open_clip_config.json").is_file()
    info = json.loads((out / "info.json").read_text())
    assert info["unique_samples"] == 128 and info["expected_repetitions"] == 2.0
    ref = pickle.loads((out / "info.pkl").read_bytes())
    assert set(ref) == {"scale", "checkpoint", "scale_config", "data"} and ref["scale_config"]["model"] == "synth-rn-tiny"
    model, pre, tok = load_model(out)
    import open_clip
    import torch
    from PIL import Image

    with torch.no_grad():
        f = model.encode_image(pre(Image.new("RGB", (32, 32), (200, 0, 0))).unsqueeze(0))
        t = model.encode_text(tok(["a red circle"]))
    assert f.shape == t.shape == (1, 64)
    # the model folder alone is open_clip-loadable with the trained weights
    m2, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out / 'model'}")
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    # same parameters: reused; other parameters: conflict unless overwrite
    assert train(_tiny_scale(), tmp_path / "shards", out, workers=0).created == m.created
    with pytest.raises(StageConflictError):
        train(_tiny_scale(), tmp_path / "shards", out, seed=1, workers=0)
    # embedded scales keep one copy of the final weights
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_latest.pt"]


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path: Path) -> None:
    """Same seed, same data -> same weights (the sample shuffle is seeded too; CPU, fp32)."""
    import torch

    write_toy_shards(tmp_path / "shards", n_shards=2, per_shard=64)
    sds = []
    for run in ("a", "b"):
        train(_tiny_scale(), tmp_path / "shards", tmp_path / run, seed=5, workers=1)
        sds.append(torch.load(tmp_path / run / "checkpoints" / "epoch_latest.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])


@pytest.mark.slow
def test_resume_after_kill(tmp_path: Path) -> None:
    """An interrupted run (no manifest, an earlier epoch_latest.pt) resumes where it stopped."""
    write_toy_shards(tmp_path / "shards", n_shards=1, per_shard=64)
    s = Scale(**{**_tiny_scale(64).__dict__, "num_checkpoints": 2, "embedded": False})
    out = tmp_path / "run"
    extra = ["--save-frequency", "1"]  # keep epoch_1.pt to fake the kill with
    train(s, tmp_path / "shards", out, workers=0, extra_args=extra, device="cpu")
    (out / "manifest.json").unlink()
    (out / "checkpoints" / "epoch_1.pt").replace(out / "checkpoints" / "epoch_latest.pt")
    m = train(s, tmp_path / "shards", out, workers=0, extra_args=extra, device="cpu")
    assert m.stage == "train" and (out / "manifest.json").is_file()
    assert "resuming checkpoint" in (out / "out.log").read_text()
    # a finished run that lost only its manifest is completed without training again
    (out / "manifest.json").unlink()
    n_cmds = (out / "stdout.log").read_text().count("\n$ ")
    train(s, tmp_path / "shards", out, workers=0, extra_args=extra, device="cpu")
    assert (out / "stdout.log").read_text().count("\n$ ") == n_cmds


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a training run"):
        load_model(tmp_path / "empty")
