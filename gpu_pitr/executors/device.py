"""Whether the cuda executor can run here, without importing GPU packages eagerly."""

from __future__ import annotations

import os
import sys


def simulator_enabled() -> bool:
    """True under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``): as Numba read it,
    once it has (the variable set after numba was imported does not turn it on)."""
    config = sys.modules.get("numba.core.config")
    if config is not None:
        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_unavailable_reason(allow_simulator: bool) -> str | None:
    """None when the cuda executor can run, else why not (one line).

    ``allow_simulator``: an explicit ``cuda`` request runs the kernels in Numba's
    simulator when it is enabled; ``auto`` never picks the simulator.
    """
    if simulator_enabled():
        return None if allow_simulator else "the CUDA simulator is not a GPU"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'gpu-pitr[cuda12]' or '[cuda13]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: report, never crash
        return f"CuPy sees no GPU ({type(err).__name__}: {err})".splitlines()[0]
    if count == 0:
        return "CuPy sees no GPU"
    try:
        from numba import cuda

        if not cuda.is_available():
            return "Numba's CUDA target sees no GPU"
    except Exception as err:
        return f"Numba CUDA is unusable ({type(err).__name__})"
    return None
