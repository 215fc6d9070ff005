"""Numba CUDA kernels of the cuda executor (installed as gpu_pitr.kernels).

numba-cuda caches kernels through a caching module of its own: the package's cache
locator goes there too before any kernel is compiled (``gpu_pitr.jit``), so an edit to
the payload parser they inline recompiles them, and a read-only install still finds
a cache directory (or compiles in memory) instead of failing at import.
"""

from gpu_pitr.jit import install_for

install_for("numba.cuda.core.caching")
