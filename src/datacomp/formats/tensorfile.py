"""Reading ``.pt`` files that hold data, never code: centroids and target embeddings.

The reference publishes its image-based filter's centroids (``{scale}_centroids_l14.pt``) as a
NumPy array saved with ``torch.save`` (a pickle inside torch's zip container), and its ImageNet
target features as dicts of tensors (``image_features``). A pickle can run any function it
names, so these files are read by a restricted unpickler that accepts only what an array or a
dict of tensors needs: NumPy's array reconstruction (``numpy.core`` of NumPy 1 as well as
``numpy._core``), ``numpy.ndarray``, ``numpy.dtype``, ``_codecs.encode`` (how protocol 2 stores
bytes) and, inside torch's container, torch's own weights-only set (tensors, storages). Any
other global is refused before it is called, with one line naming it.

Three containers: torch's zip format (``torch.save`` since 1.6; read by ``torch.load`` with
``weights_only=True`` and the NumPy names above allowed), torch's legacy format and a plain
pickle (``pickle.dump``; read here by :class:`.safe_pickle.AllowlistUnpickler` with the names above).
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InputError
from .safe_pickle import AllowlistUnpickler

# (module, name) a data file may reference; everything else is refused
_ALLOWED = dict.fromkeys([
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
])  # each the real global (safe_pickle.AllowlistUnpickler)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (pre-zip) files start with this pickled int


class RefusedPickle(FormatError):
    """A pickle that names a function or class outside the data-only set."""


def _numpy_safe_globals() -> list[Any]:
    """NumPy's reconstruction names for torch's weights-only unpickler (under both module paths)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    reconstruct = multiarray._reconstruct
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}]


def _refusal(path: Path, what: str, message: str) -> RefusedPickle:
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"^global ([\w.]+)", message)
    name = m.group(1) if m else "something outside the data-only set"
    return RefusedPickle(f"{path}: refused to load {what}: the file's pickle names {name}, which a data file may not "
                         "(only an array or a dict of tensors is read; code in a pickle is never run)")


def _torch_load(path: Path, what: str) -> Any:
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, what, str(e)) from None


def load_tensor_file(path: str | Path, what: str = "data") -> Any:
    """The array, tensor or dict of tensors / arrays a ``.pt`` / pickle file holds, read without
    running code from it (see the module doc). A missing file is an InputError; a refused or
    unreadable one a FormatError naming the file; an object array is refused too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: {what} file does not exist")
    try:
        if zipfile.is_zipfile(path):
            obj = _torch_load(path, what)
        else:
            raw = path.read_bytes()
            try:
                obj = AllowlistUnpickler(io.BytesIO(raw), _ALLOWED).load()
            except pickle.UnpicklingError as e:
                raise _refusal(path, what, str(e)) from None
            if isinstance(obj, int) and obj == _LEGACY_MAGIC:
                obj = _torch_load(path, what)
    except FormatError:
        raise
    except Exception as e:  # truncated zip, not a pickle at all, torch's own errors
        raise FormatError(f"{path}: cannot read {what}: {' '.join(str(e).split())[:200]}") from None
    _check_data(path, what, obj)
    return obj


def _check_data(path: Path, what: str, obj: Any) -> None:
    import torch

    def plain(x: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return True
        return isinstance(x, np.ndarray) and x.dtype.kind in "biufc"

    ok = plain(obj) or (isinstance(obj, dict) and all(isinstance(k, str) for k in obj)
                        and all(plain(v) or isinstance(v, (int, float, str)) for v in obj.values()))
    if not ok:
        raise FormatError(f"{path}: {what}: holds {type(obj).__name__}, expected an array, a tensor or a dict of tensors")
