"""Training: a scale -> open_clip_train arguments -> a run directory evaluation can load.

``train(scale, data, out)`` trains (or reuses / resumes) a run; ``load_model(run_dir)`` returns
``(model, preprocess_val, tokenizer)`` for evaluation and embedding.
"""
from __future__ import annotations

from .data import TrainData, find_train_data
from .launch import TrainConfig, train
from .launchers import slurm_script, train_command
from .models import check_checkpoint, load_model, load_open_clip, materialise
from .monitor import parse_train_log
from .protocol import build_args, reference_scale_config, resolve_scale
from .rundir import finish_run

__all__ = ["train", "TrainConfig", "load_model", "build_args", "train_command", "find_train_data", "TrainData",
           "load_open_clip", "materialise", "parse_train_log", "reference_scale_config", "resolve_scale", "slurm_script",
           "check_checkpoint", "finish_run"]

from .._stage_module import make_callable  # noqa: E402

make_callable(__name__, 'train')  # datacomp.train(...) calls train
