"""torchrun on CPU: two processes with gloo through the same code path as a multi-GPU run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datacomp.config import Scale, load_scale
from datacomp.train import load_model, train
from datacomp.train.toydata import write_toy_shards


@pytest.mark.slow
def test_torchrun_two_processes_cpu(tmp_path: Path) -> None:
    write_toy_shards(tmp_path / "shards", n_shards=2, per_shard=64)
    s = load_scale("synth_test")
    s = Scale(**{**s.__dict__, "name": "tiny", "samples_seen": 256, "batch_size": 32, "warmup": 2, "teachers": {}})
    m = train(s, tmp_path / "shards", tmp_path / "run", workers=1, device="cpu", gpus=2)
    cmd = json.loads((tmp_path / "run" / "train_args.json").read_text())["command"]
    assert "torch.distributed.run" in cmd and "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("--batch-size") + 1] == "16" and "--local-loss" in cmd and "--gather-with-grad" in cmd
    log = (tmp_path / "run" / "out.log").read_text()
    assert "total 2" in log  # open_clip: "Running in distributed mode ... (global: 0, local 0), total 2."
    assert m.counts["world_size"] == 2 and m.counts["steps"] == 8 and m.counts["epochs"] == 1
    assert "/s/gpu" in (tmp_path / "run" / "progress.log").read_text()
    model, _, _ = load_model(tmp_path / "run")  # DDP's 'module.' prefix is gone
    assert model is not None
