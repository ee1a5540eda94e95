"""datacomp.train: reference arguments, shard discovery, a real tiny CPU run, load_model."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from datacomp.config import Scale, load_scale
from datacomp.errors import ConfigError, DatacompError, FormatError, InputError, StageConflictError
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


# DATACOMP.md §2.2 (open_clip v2.20-era values the reference relied on)
PAPER_FIXED = {"--opt": "adamw", "--wd": "0.2", "--beta1": "0.9", "--eps": "1e-6", "--lr-scheduler": "cosine",
               "--aug-cfg": "scale=(0.9,1.0)", "--dataset-type": "webdataset", "--save-frequency": "0"}
PAPER_SWITCHES = ("--dataset-resampled", "--local-loss", "--gather-with-grad", "--grad-checkpointing",
                  "--ddp-static-graph", "--save-most-recent")


def _as_dict(args: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        assert args[i].startswith("--"), args[i]
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[args[i]] = args[i + 1]
            i += 2
        else:
            out[args[i]] = True
            i += 1
    return out


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("world,accum", [(1, 1), (8, 1), (8, 2)])
def test_reference_scale_args(name: str, world: int, accum: int, tmp_path: Path) -> None:
    """The complete open_clip argument list of every reference scale, against the paper's table."""
    seen, batch, lr, warmup, beta2, model = REFERENCE[name]
    s = load_scale(name)
    data = "/d/{00000000..00000009}.tar"
    args = build_args(s, data, tmp_path / "exp", seed=3, workers=4, world_size=world, accum_freq=accum, device="cuda")
    expected = {
        **PAPER_FIXED, **{f: True for f in PAPER_SWITCHES},
        "--train-data": data, "--train-num-samples": str(seen // 5), "--epochs": "5", "--warmup": str(warmup),
        "--precision": "amp_bfloat16" if name == "xlarge" else "amp", "--workers": "4", "--model": model,
        "--batch-size": str(batch // (world * accum)), "--lr": str(lr), "--beta2": str(beta2),
        "--logs": str(tmp_path), "--name": "exp", "--seed": "3", "--accum-freq": str(accum),
        "--log-every-n-steps": "100", "--resume": "latest",
    }
    assert _as_dict(args) == expected
    assert len(args) == len(expected) + sum(1 for v in expected.values() if v is not True)
    # open_clip_train itself reads them back as the paper's values
    from open_clip_train.params import parse_args

    ns = parse_args(args)
    assert (ns.lr, ns.beta1, ns.beta2, ns.eps, ns.wd) == (lr, 0.9, beta2, 1e-6, 0.2)
    assert ns.batch_size * world * accum == batch and ns.epochs == 5 and ns.warmup == warmup
    assert ns.train_num_samples * ns.epochs == seen and ns.lr_scheduler == "cosine" and ns.opt == "adamw"
    assert ns.aug_cfg == {"scale": (0.9, 1.0)} and ns.dataset_resampled and ns.local_loss and ns.gather_with_grad
    assert ns.grad_checkpointing and ns.model == model and ns.grad_clip_norm is None
    # steps = samples_seen / global batch (DATACOMP.md §2.1, last column)
    assert s.steps == seen // batch
    assert (ns.train_num_samples // (ns.batch_size * world * accum)) * ns.epochs == seen // batch or name == "xlarge"


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


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a training run"):
        load_model(tmp_path / "empty")


# ---- launchers ------------------------------------------------------------------------------------

def test_launch_commands(tmp_path: Path) -> None:
    from datacomp.train import train_command

    args = build_args("small", "x.tar", tmp_path / "e", world_size=8)
    one = train_command(build_args("small", "x.tar", tmp_path / "e"), 1)
    assert one[1:3] == ["-m", "datacomp.train.openclip_entry"]
    tr = train_command(args, 8)
    assert tr[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=8", "--standalone"]
    assert tr[5:7] == ["-m", "datacomp.train.openclip_entry"]
    assert tr[7:] == [("--datacomp-logs" if a == "--logs" else a) for a in args]  # see test_torchrun_parses_our_arguments
    multi = train_command(args, 8, nodes=2)
    assert "--nproc_per_node=4" in multi and "--nnodes=2" in multi and "--rdzv_backend=c10d" in multi
    assert train_command(args, 8, nodes=2, launcher="srun")[0] == "srun"
    with pytest.raises(ConfigError):
        train_command(args, 8, nodes=3)
    with pytest.raises(ConfigError):
        train_command(args, 2, launcher="python")


def test_print_args_world_size(tmp_path: Path, capsys) -> None:
    _touch_shards(tmp_path / "d", range(16))
    cmd = train("medium", tmp_path / "d", tmp_path / "out", print_args=True, gpus=4, accum_freq=2, workers=2)
    out = capsys.readouterr().out
    assert "world size 4 = 1 node(s) x 4 GPU(s) (device cuda)" in out and "per-GPU batch 512 x accum 2" in out
    assert "31250 steps" in out
    assert "torch.distributed.run --nproc_per_node=4 --standalone" in out
    assert _opt(cmd, "--batch-size") == "512" and _opt(cmd, "--precision") == "amp" and "--device" not in cmd
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--slurm"):
        train("medium", tmp_path / "d", tmp_path / "out", gpus=4, nodes=2)


def test_slurm_script(tmp_path: Path, capsys) -> None:
    _touch_shards(tmp_path / "d", range(8))
    sb = tmp_path / "job.sbatch"
    cmd = train("large", tmp_path / "d", tmp_path / "run", nodes=2, gpus=4, workers=4, slurm=sb,
                sbatch_options=["partition=gpu", "--time=48:00:00"])
    text = sb.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=4" in text
    assert "#SBATCH --gpus-per-node=4" in text and "#SBATCH --partition=gpu" in text and "#SBATCH --time=48:00:00" in text
    assert "MASTER_ADDR=" in text and "scontrol show hostnames" in text
    lines = text.strip().splitlines()
    import shlex

    srun = shlex.split(lines[-2])
    assert srun[0] == "srun" and srun[srun.index("-m") + 1] == "datacomp.train.openclip_entry"
    args = srun[srun.index("-m") + 2:]
    assert args == cmd[cmd.index("-m") + 2:]
    assert _opt(args, "--batch-size") == "1024" and _opt(args, "--model") == "ViT-B-16" and _opt(args, "--lr") == "0.0005"
    assert shlex.split(lines[-1])[1:] == ["-m", "datacomp.train.finish", str(tmp_path / "run")]
    # the run directory is prepared for the job (and for finish_run afterwards)
    assert (tmp_path / "run" / "model" / "open_clip_config.json").is_file()
    assert json.loads((tmp_path / "run" / "train_args.json").read_text())["params"]["world_size"] == 8
    from datacomp.train import finish_run

    with pytest.raises(DatacompError, match="has not finished"):
        finish_run(tmp_path / "run")


# ---- data mixing and guard rails ----------------------------------------------------------------

def test_data_weights(tmp_path: Path) -> None:
    _touch_shards(tmp_path / "a", range(4))
    _touch_shards(tmp_path / "b" / "x", range(2))
    _touch_shards(tmp_path / "b" / "y", range(2))
    cmd = train("small", [tmp_path / "a", tmp_path / "b"], tmp_path / "o", print_args=True, data_weights="1::2.5", device="cpu")
    assert _opt(cmd, "--train-data").count("::") == 2
    assert _opt(cmd, "--train-data-upsampling-factors") == "1::2.5::2.5"  # b's two sub-dirs share its weight
    cmd = train("small", f"{tmp_path / 'a'}::{tmp_path / 'b' / 'x'}", tmp_path / "o", print_args=True, data_weights=[1, 3], device="cpu")
    assert _opt(cmd, "--train-data-upsampling-factors") == "1::3"
    with pytest.raises(ConfigError, match="2 data source"):
        train("small", [tmp_path / "a", tmp_path / "b"], tmp_path / "o", print_args=True, data_weights="1")
    for bad in ("1::x", "1::0", "1::-2"):
        with pytest.raises(ConfigError, match="data weights"):
            train("small", [tmp_path / "a", tmp_path / "b"], tmp_path / "o", print_args=True, data_weights=bad)


def test_guard_rails(tmp_path: Path, caplog) -> None:
    from datacomp.train.protocol import expected_repetitions

    _touch_shards(tmp_path / "d", range(3))
    with pytest.raises(InputError, match=r"3 shard\(s\) < 2 node\(s\) x 2 worker\(s\)"):
        train("small", tmp_path / "d", tmp_path / "o", nodes=2, gpus=1, workers=2, print_args=True)
    write_toy_shards(tmp_path / "toy", n_shards=2, per_shard=8)
    write_toy_shards(tmp_path / "toy2", n_shards=1, per_shard=8)
    with caplog.at_level("WARNING"):
        train(_tiny_scale(256), tmp_path / "toy", tmp_path / "o", print_args=True, max_repeats=10)
    assert "seen ~16.0 times (> 10)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train(_tiny_scale(256), tmp_path / "toy", tmp_path / "o", print_args=True, max_repeats=20)
    assert "times" not in caplog.text
    # upsampled mixing: source i gets w_i n_i / sum w n of the samples seen
    a, b = find_train_data(tmp_path / "toy"), find_train_data(tmp_path / "toy2")
    assert expected_repetitions(320, [a, b], [1, 2]) == [10.0, 20.0]
    assert expected_repetitions(320, [a, b], None) == pytest.approx([320 / 24] * 2)


def test_progress_line(tmp_path: Path) -> None:
    from datacomp.train.monitor import Progress

    p = Progress(epochs=5, samples_per_epoch=2_560_000, global_batch=4096, world_size=8, log_file=tmp_path / "p.log")
    head = "2026-01-01,00:00:00 | INFO | "
    line = ("Train Epoch: 1 [ 409600/2560000 (16%)] Data (t): 0.010 Batch (t): 0.500, 8192.00/s, 1024.00/s/gpu "
            "LR: 0.000500 Logit Scale: 30.000 Contrastive_loss: 5.1234 (5.5000) Loss: 5.1234 (5.5000)")
    assert p.update(head + line.replace("409600", "204800"), now=100.0) is not None
    text = p.update(head + line, now=125.0)  # 204800 samples in 25 s -> 8192/s
    assert text.startswith("epoch 2/5 step 725/3125 (23.2%) loss 5.1234 (avg 5.5000) 8192.0 samples/s (1024.0/s/gpu)")
    assert text.endswith("ETA 0:20:00")  # (12.8M - 2.9696M) / 8192 s = 1200 s
    assert "ETA 0:20:00" in (tmp_path / "p.log").read_text()
    assert p.update("Start epoch 2") is None


# ---- bad input: one-line errors ------------------------------------------------------------------

def _other_arch_checkpoint(tmp_path: Path) -> Path:
    import open_clip
    import torch

    from datacomp.train import materialise

    d = materialise("synth-rn-tiny", tmp_path / "other")
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["model_cfg"]["embed_dim"] = 32
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    m = open_clip.create_model(f"local-dir:{d}", load_weights=False)
    ck = tmp_path / "other.pt"
    torch.save({"epoch": 1, "state_dict": m.state_dict()}, ck)
    return ck


def test_checkpoint_from_other_architecture(tmp_path: Path) -> None:
    from datacomp.train import check_checkpoint, materialise

    ck = _other_arch_checkpoint(tmp_path)
    run = tmp_path / "run"
    materialise("synth-rn-tiny", run / "model")
    with pytest.raises(InputError, match=r"other.pt: checkpoint is from another architecture than synth-rn-tiny") as e:
        check_checkpoint(ck, run / "model")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="another architecture") as e:
        load_model(run, checkpoint=ck)
    assert "\n" not in str(e.value)
    write_toy_shards(tmp_path / "toy", n_shards=1, per_shard=8)
    with pytest.raises(InputError, match="another architecture"):
        train(_tiny_scale(), tmp_path / "toy", tmp_path / "run2", resume=str(ck), workers=0, device="cpu")
    assert not (tmp_path / "run2").exists()  # refused before anything was written


@pytest.mark.parametrize("case", ["empty", "gap", "scale", "weights"])
def test_cli_bad_input_one_line(case: str, tmp_path: Path, capsys) -> None:
    from datacomp.cli import main

    (tmp_path / "empty").mkdir()
    _touch_shards(tmp_path / "gap", [0, 2])
    _touch_shards(tmp_path / "ok", [0, 1])
    argv = {"empty": ["--scale", "small", "--data", str(tmp_path / "empty")],
            "gap": ["--scale", "small", "--data", str(tmp_path / "gap")],
            "scale": ["--scale", "huge", "--data", str(tmp_path / "ok")],
            "weights": ["--scale", "small", "--data", str(tmp_path / "ok"), "--data-weights", "1::2"]}[case]
    rc = main(["train", *argv, "--out", str(tmp_path / "o"), "--print-args"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("datacomp: error: ")
    assert {"empty": "no .tar shards", "gap": "gaps", "scale": "unknown scale 'huge'", "weights": "1 data source"}[case] in err[0]


def test_torchrun_parses_our_arguments(tmp_path: Path) -> None:
    """torchrun's own parser sees every argument (abbreviations on): none may look like its options."""
    from torch.distributed.run import get_args_parser

    from datacomp.train import train_command

    args = build_args("xlarge", "a.tar::b.tar", tmp_path / "e", world_size=8, report_to="all", upsampling_factors=[1, 2])
    for nodes in (1, 2):
        cmd = train_command(args, 8, nodes=nodes)
        ns = get_args_parser().parse_args(cmd[3:])
        assert ns.module and ns.training_script == "datacomp.train.openclip_entry"
        assert ns.training_script_args == [("--datacomp-logs" if a == "--logs" else a) for a in args]


def test_report_to(tmp_path: Path, monkeypatch) -> None:
    _touch_shards(tmp_path / "d", range(2))
    cmd = train("small", tmp_path / "d", tmp_path / "o", print_args=True, report_to="wandb", device="cpu")
    assert _opt(cmd, "--report-to") == "wandb" and _opt(cmd, "--wandb-project-name") == "datanet"
    assert "--report-to" not in train("small", tmp_path / "d", tmp_path / "o", print_args=True, device="cpu")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="'tensorboard' package is not installed"):
        train("small", tmp_path / "d", tmp_path / "o", report_to="tensorboard", device="cpu")


def test_saved_checkpoints_are_reproducible_bytes(tmp_path: Path) -> None:
    """torch.save names the zip's records after the file: through the atomic temporary's random
    name, two saves of the same weights differed; models.save_torch gives the same bytes."""
    import torch

    from datacomp.train.models import save_torch

    obj = {"epoch": 1, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}
    save_torch(obj, tmp_path / "a" / "epoch_latest.pt")
    save_torch(obj, tmp_path / "b" / "epoch_latest.pt")
    assert (tmp_path / "a" / "epoch_latest.pt").read_bytes() == (tmp_path / "b" / "epoch_latest.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a" / "epoch_latest.pt", weights_only=True)["state_dict"]["w"], obj["state_dict"]["w"])


def test_trainer_does_not_import_wandb_unless_it_reports_to_it(monkeypatch):
    """wandb's import leaves /tmp/tmp*wandb-* directories behind a stopped trainer: blocked unless asked for."""
    import sys

    from datacomp.train.openclip_entry import _block_unused_wandb

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    assert _block_unused_wandb(["--report-to", "wandb", "--seed", "0"]) is False and "wandb" not in sys.modules
    assert _block_unused_wandb(["--report-to", "all"]) is False and "wandb" not in sys.modules
    assert _block_unused_wandb(["--seed", "0"]) is True
    with pytest.raises(ImportError):
        import wandb  # noqa: F401
    monkeypatch.delitem(sys.modules, "wandb")
