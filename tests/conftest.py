"""Fixtures shared across test modules.

``synth_test_pool``: one embedded world at the smallest scale (synth seed 0 + its teachers'
embeddings), built once per session. The slow loop tests copy it into their work directory, where
`datacomp run` finds finished synth and embed stages and reuses them — so the ~55 s of teacher
training is paid once, not once per module. Each test still runs every later stage itself.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_test_pool(tmp_path_factory) -> Path:
    from datacomp.config import load_scale
    from datacomp.embed import embed
    from datacomp.pool.synth import synthesize

    pool = tmp_path_factory.mktemp("shared-world") / "pool"
    scale = load_scale("synth_test")
    synthesize(pool, scale, seed=0, workers=2)
    embed(pool, teacher=True, scale=scale, seed=0, workers=2)
    return pool


def seed_workdir(pool: Path, workdir: Path) -> Path:
    """Copy a finished pool into WORKDIR/pool (the layout `datacomp run` uses); returns the copy."""
    workdir.mkdir(parents=True, exist_ok=True)
    dst = workdir / "pool"
    shutil.copytree(pool, dst, symlinks=True)
    return dst
