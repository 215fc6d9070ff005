"""SIGBUS as one line from ``gpu-pitr``: a file read through a memory map was cut short.

The cpu restore, ``verify`` and ``inspect`` map the log's pages rather than copy
them (``format/mapped.py``), and a restore from a snapshot maps its vectors. A
mapped page of a file truncated in place since (``truncate``, ``cp`` over it) is a
SIGBUS when read, and by default the process dies with "Bus error" and nothing
else. Python cannot handle it: its handler only notes the signal and returns, and
the load that faulted runs again, forever. ``install(status)`` puts a compiled
handler in place (a Numba ``cfunc``, cached like the package's other code) that
writes one line to stderr and ends the process with ``status`` at once
(``write`` and ``_exit``, both safe in a signal handler). Outputs are renamed into
place only when whole, so none is left half-written; the temp files go at the next
run (``tempfiles.remove_stale_temps``). Only the ``gpu-pitr`` command installs it:
a program calling the library keeps its own handling.
"""

from __future__ import annotations

import ctypes
import signal
import sys

import numpy as np
from numba import cfunc, types

from gpu_pitr import jit  # noqa: F401 - its cache locator, before the cfuncs compile

MESSAGE = ("gpu-pitr: error: a file read through a memory map (a segment of the log, or "
           "a snapshot's vectors) was cut short while it was read (SIGBUS): it was "
           "truncated or overwritten in place; no output was put in place\n")
_TEXT = np.frombuffer(MESSAGE.encode(), np.uint8).copy()

# libc's, linked by name: nothing of this process is baked in, so the handlers cache.
_write = types.ExternalFunction("write", types.intp(types.intc, types.voidptr, types.uintp))
_exit = types.ExternalFunction("_exit", types.void(types.intc))


def _exit_1(signum):
    _write(2, _TEXT.ctypes.data, _TEXT.size)
    _exit(1)


def _exit_2(signum):
    _write(2, _TEXT.ctypes.data, _TEXT.size)
    _exit(2)


_installed: list = []  # the handler in place: its machine code must outlive the call


def install(status: int) -> bool:
    """SIGBUS from now on: ``MESSAGE`` on stderr, exit ``status`` (1 or 2). False where
    there is no SIGBUS (not POSIX) or no handler could be set: the command runs on
    without one (the signal's default)."""
    if not hasattr(signal, "SIGBUS") or not sys.platform.startswith(("linux", "darwin")):
        return False
    try:
        # Compiled (or loaded from the cache) here: only the one the command needs.
        handler = cfunc(types.void(types.intc), cache=True)({1: _exit_1, 2: _exit_2}[status])
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        if libc.signal(int(signal.SIGBUS), handler.address) == ctypes.c_void_p(-1).value:
            return False
    except Exception:  # noqa: BLE001 - a handler is a nicety; the command must run
        return False
    _installed[:] = [handler]
    return True
