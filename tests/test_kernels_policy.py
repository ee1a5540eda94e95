"""datacomp.kernels: one policy for loading the numba kernel modules."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from datacomp import kernels
from datacomp.kernels import KernelModule, size_rule, wanted


def test_a_module_that_does_not_load_is_none():
    assert KernelModule("datacomp.no_such_kernels").get() is None
    broken = KernelModule("datacomp.errors", warm_up=lambda m: 1 / 0)  # imports, but its warm-up fails
    assert broken.get() is None and not broken.available() and broken.use(True) is None


def test_compiled_argument(monkeypatch):
    ok = KernelModule("datacomp.errors")
    assert ok.use(False) is None and ok.use(True) is sys.modules["datacomp.errors"]
    monkeypatch.setattr(kernels, "numba_loaded", lambda: False)
    assert not wanted(None) and ok.use(None) is None
    monkeypatch.setattr(kernels, "numba_loaded", lambda: True)
    assert wanted(None) and ok.use(None) is not None
    assert size_rule(20_000, 20_000) is True and size_rule(19_999, 20_000) is None


def test_the_kernel_modules_load_where_numba_is_installed():
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    from datacomp.filters import _uids
    from datacomp.filters.ops import _text
    from datacomp.reshard import compiled

    for k in (_uids.KERNELS, _text.KERNELS, compiled.KERNELS):
        assert k.available(), k.name
