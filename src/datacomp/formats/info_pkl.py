"""``info.pkl``, the reference ``train.py``'s record of a training run, read without trusting it.

The reference writes (``save_training_artifacts``) ``pickle.dump({"scale": str, "checkpoint":
pathlib.Path, "scale_config": {batch_size, learning_rate, train_num_samples, warmup, model,
beta2}, "data_dir": pathlib.Path}, f)``; its ``evaluate.py --use_model`` writes
``{"scale_config": {"model": arch}, "checkpoint": str}``. :func:`read_info_pkl` unpickles with a
``find_class`` that builds nothing but plain containers, strings and numbers: the one class it
accepts is a ``pathlib`` path, which becomes its string. Anything else (a class, a function, a
cloud path) is refused in one line before it is constructed, so loading a hostile file runs no
code of its choosing.
"""
from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import FormatError, InputError
from .safe_pickle import AllowlistUnpickler, RefusedGlobal

MAX_BYTES = 1 << 20  # a real info.pkl is a few hundred bytes
_PATH_MODULES = ("pathlib", "pathlib._local")
_POSIX = ("PosixPath", "PurePosixPath", "Path", "PurePath")
_WINDOWS = ("WindowsPath", "PureWindowsPath")
_PLAIN = (str, int, float, bool, type(None))


def _posix(*parts: Any) -> str:
    return str(PurePosixPath(*map(str, parts)))


def _windows(*parts: Any) -> str:
    return str(PureWindowsPath(*map(str, parts)))


# the one class an info.pkl may name: a pathlib path, built as its string
_ALLOWED = {**{(m, n): _posix for m in _PATH_MODULES for n in _POSIX},
            **{(m, n): _windows for m in _PATH_MODULES for n in _WINDOWS}}


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise FormatError(f"a key of {where} is a {type(k).__name__}, not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise FormatError(f"{where} is a {type(obj).__name__}")


def read_info_pkl(path: str | os.PathLike) -> dict[str, Any]:
    """The dict of ``path`` (paths as strings); a one-line InputError / FormatError naming the file
    for a missing, oversized, unreadable or non-plain one, or one without ``checkpoint`` and
    ``scale_config.model``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: info.pkl does not exist")
    data = p.read_bytes()
    if len(data) > MAX_BYTES:
        raise FormatError(f"{p}: {len(data)} bytes is not a training info file (the reference's are < 1 KiB)")
    try:
        obj = AllowlistUnpickler(io.BytesIO(data), _ALLOWED).load()
    except RefusedGlobal as e:
        raise FormatError(f"{p}: refused to unpickle {e.name} (info.pkl may hold only a dict of strings, numbers, "
                          "lists and paths)") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure of a damaged file
        raise FormatError(f"{p}: not a readable pickle ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{p}: holds a {type(obj).__name__}, not the reference's dict")
    try:
        _check_plain(obj, "info")
    except FormatError as e:
        raise FormatError(f"{p}: {e} (info.pkl may hold only strings, numbers, lists and paths)") from None
    cfg = obj.get("scale_config")
    if not isinstance(obj.get("checkpoint"), str) or not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
        raise FormatError(f"{p}: lacks 'checkpoint' or 'scale_config.model' (not a train.py info.pkl)")
    return obj
