"""Test-wide setup: the CUDA kernels run in Numba's simulator unless a GPU run asks otherwise.

Numba reads ``NUMBA_ENABLE_CUDASIM`` when it is first imported, so it is set here
before any test module imports numba (and read again if pytest imported numba first).
``GPU_PITR_REAL_GPU=1`` (used by ``scripts/gpu_check``) leaves it unset so the same
tests drive a real GPU.
"""

from __future__ import annotations

import errno
import os
import sys

import pytest

if os.environ.get("GPU_PITR_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if "numba" in sys.modules:
        # pytest imported numba first, for pyproject's filterwarnings (a category of
        # numba's) in a run of one process: Numba reads its settings again (numba.cuda,
        # not imported yet, then picks the simulator).
        from numba.core import config

        config.reload_config()

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def no_descriptor_for(monkeypatch):
    """``no_descriptor_for(owner, name, path)``: ``owner.name`` (``os.open``,
    ``os.listdir``, ``segments.open_regular``...) raises EMFILE for ``path`` alone, as it
    does for every file under a ``ulimit -n`` reached."""

    def patch(owner, name: str, path) -> None:
        real = getattr(owner, name)

        def out_of_descriptors(target=".", *args, **kwargs):
            if os.fspath(target) == os.fspath(path):
                raise OSError(errno.EMFILE, "Too many open files", os.fspath(target))
            return real(target, *args, **kwargs)

        monkeypatch.setattr(owner, name, out_of_descriptors)

    return patch
