"""The environment variables NumPy and Numba act on as the command starts.

A value those libraries cannot use makes them raise while they are imported or start
their threads, a traceback of their internals. The command checks them first
(``problem``, before NumPy is imported) and once Numba is loaded (``threads_problem``),
and says what is wrong in one line, as it does for a value Numba would warn about
(a traceback flattened into the warning) and ignore in the variables the command
depends on (``NUMBA_NUM_THREADS=abc``). Other variables' values the libraries merely
warn about (``NUMBA_OPT=zz``) are left to them. gpu-pitr's own switches
(``GPU_PITR_MAP_READS``, ``GPU_PITR_CUDA_OVERLAP``) are read here too (``switch``), and
the operating system is checked before all (``platform_problem``: not Windows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# numba.core.config's NUMBA_THREADING_LAYER choices (the first four pick among the rest).
THREADING_LAYERS = ("default", "safe", "forksafe", "threadsafe", "tbb", "omp", "workqueue")


# gpu-pitr's own on/off variables, and their values when unset or empty.
SWITCHES = {"GPU_PITR_MAP_READS": True, "GPU_PITR_CUDA_OVERLAP": False}
_ON = ("1", "on", "yes", "true")
_OFF = ("0", "off", "no", "false")


def _switch(name: str, environ: Mapping[str, str]) -> bool | None:
    """The switch ``name`` as set, its default when unset or empty, None for a value
    that is neither on nor off."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return SWITCHES[name]
    return True if value in _ON else False if value in _OFF else None


def _switch_problem(name: str, environ: Mapping[str, str]) -> str:
    return (f"{name}={environ[name]!r} is neither on ({', '.join(_ON)}) nor off "
            f"({', '.join(_OFF)}); set one or unset it")


def switch(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether gpu-pitr's switch ``name`` (a key of ``SWITCHES``) is on; ValueError, one
    line naming the variable, for a value that is neither on nor off (``maybe`` was
    taken as the default, silently)."""
    on = _switch(name, environ)
    if on is None:
        raise ValueError(_switch_problem(name, environ))
    return on


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
    for name in ("NUMBA_NUM_THREADS", "NUMBA_DISABLE_JIT"):
        value = environ.get(name)
        if value is not None and _int(value) is None:
            return (f"{name}={value!r} is not a whole number: Numba reads it at import "
                    "and would ignore it; set it so or unset it")
    # Both whole numbers from here on, where set.
    value = environ.get("NUMBA_NUM_THREADS")
    if value is not None and int(value) < 1:
        return (f"NUMBA_NUM_THREADS={value!r}: Numba needs at least 1 thread; "
                "set a positive number or unset it")
    value = environ.get("NUMBA_DISABLE_JIT")
    if value is not None and int(value):
        return compiler_off(value)
    value = environ.get("NUMBA_THREADING_LAYER")
    if value is not None and value.lower() not in THREADING_LAYERS:
        return (f"NUMBA_THREADING_LAYER={value!r} is not a Numba threading layer "
                f"(one of {', '.join(THREADING_LAYERS)}); set one or unset it")
    for name in SWITCHES:
        if _switch(name, environ) is None:
            return _switch_problem(name, environ)
    return None


def compiler_off(value: str) -> str:
    """The one line for ``NUMBA_DISABLE_JIT=value``, a value that turns the compiler off."""
    return (f"NUMBA_DISABLE_JIT={value!r}: gpu-pitr's loops are compiled by Numba "
            "and do not run with its compiler off; unset it or set it to 0")


def platform_problem(os_name: str | None = None) -> str | None:
    """Why gpu-pitr cannot run on this operating system, or None: it reads and writes
    with POSIX calls (pread, flock, fsync of a directory, a pid's liveness by signal 0)
    that Windows lacks or gives another meaning."""
    os_name = os.name if os_name is None else os_name
    if os_name == "posix":
        return None
    return (f"this system is not supported (os.name is {os_name!r}): gpu-pitr runs on "
            "Linux and macOS; on Windows, run it under WSL")


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
