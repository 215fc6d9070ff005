"""The environment variables NumPy and Numba act on as the command starts.

A value those libraries cannot use makes them raise while they are imported or start
their threads, a traceback of their internals. The command checks them first
(``problem``, before NumPy is imported) and once Numba is loaded (``threads_problem``),
and says what is wrong in one line. Values the libraries merely warn about and ignore
(``NUMBA_OPT=zz``) are left to their warning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# numba.core.config's NUMBA_THREADING_LAYER choices (the first four pick among the rest).
THREADING_LAYERS = ("default", "safe", "forksafe", "threadsafe", "tbb", "omp", "workqueue")


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """What is wrong with the environment for NumPy's and Numba's import, or None."""
    value = environ.get("NUMPY_MADVISE_HUGEPAGE")
    if value is not None and _int(value) is None:  # NumPy: int(value), at import
        return (f"NUMPY_MADVISE_HUGEPAGE={value!r} is not a whole number: NumPy reads it "
                "at import (0: no huge-page advice, 1: advice); set it so or unset it")
    value = environ.get("NUMBA_NUM_THREADS")
    if value is not None and (count := _int(value)) is not None and count < 1:
        return (f"NUMBA_NUM_THREADS={value!r}: Numba needs at least 1 thread; "
                "set a positive number or unset it")
    value = environ.get("NUMBA_DISABLE_JIT")
    if value is not None and _int(value):
        return (f"NUMBA_DISABLE_JIT={value!r}: gpu-pitr's loops are compiled by Numba "
                "and do not run with its compiler off; unset it or set it to 0")
    value = environ.get("NUMBA_THREADING_LAYER")
    if value is not None and value.lower() not in THREADING_LAYERS:
        return (f"NUMBA_THREADING_LAYER={value!r} is not a Numba threading layer "
                f"(one of {', '.join(THREADING_LAYERS)}); set one or unset it")
    return None


def threads_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where ``NUMBA_THREADING_LAYER`` names a layer: whether Numba can start it here
    (``tbb`` without the tbb package, say), as a one-line problem, or None. Numba is
    imported; its threads start now rather than in the middle of the command."""
    value = environ.get("NUMBA_THREADING_LAYER")
    if value is None or value.lower() == "default":
        return None  # Numba falls back from one layer to the next by itself
    import numba

    try:
        numba.get_num_threads()  # launches the layer's threads
    except (ValueError, ImportError, OSError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), "")
        return (f"NUMBA_THREADING_LAYER={value!r}: Numba cannot start that threading "
                f"layer here ({first.strip().rstrip('.:,')}); unset it or pick another")
    return None
