"""Ctrl-C in a program or a notebook that calls the library (gpu_pitr.interrupts).

The commands install handlers of their own (``handle_signals``); a program calling
``gpu_pitr.restore`` and the other entry points keeps Python's. There a Ctrl-C that
landed while Numba loaded compiled code from its cache (LLVM's object-cache callback,
through ctypes, swallows it) left a function unloaded, and the process died by SIGSEGV:
a notebook's kernel, and everything the user held in it, gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gpu_pitr import interrupts
from gpu_pitr.synth import write_synthetic_wal

# A program: Ctrl-C inside the K-th callback LLVM makes as compiled code is loaded.
_PROGRAM = """
import os, signal, sys
# Python's own handler, as a program started from a terminal has it (a child of a pytest
# worker inherits SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
import numba.core.codegen as codegen
load = codegen.CPUCodeLibrary._object_getbuffer_hook.__func__
loads = [0]
def signalled_load(cls, module):
    loads[0] += 1
    if loads[0] == {k}:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100000):  # the handler runs here, between two bytecodes
            pass
    return load(cls, module)
codegen.CPUCodeLibrary._object_getbuffer_hook = classmethod(signalled_load)
import gpu_pitr
try:
    gpu_pitr.restore({wal!r})
    print("finished", loads[0] >= {k})
except KeyboardInterrupt:
    print("interrupted")
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
print(len(gpu_pitr.restore({wal!r}).ids))
"""


@pytest.fixture(autouse=True)
def pythons_own_handler():
    """Python's SIGINT handler for each test, as a program or a notebook has it (pytest-
    xdist's workers run with SIGINT ignored), and the one before it back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    wal = tmp_path_factory.mktemp("libint") / "wal"
    write_synthetic_wal(wal, total_bytes=64 << 10, dim=4, segments=1, seed=3)
    subprocess.run([sys.executable, "-c", f"import gpu_pitr; gpu_pitr.restore({str(wal)!r})"],
                   check=True, timeout=600)  # (compiled into the cache, if it was not)
    return wal


@pytest.mark.parametrize("k", [2, 5, 8])
def test_ctrl_c_while_a_program_loads_compiled_code_is_a_keyboard_interrupt_not_a_crash(wal, k):
    """Status -11 (SIGSEGV) before, for k = 5 and 8; now the program's ``except
    KeyboardInterrupt`` runs, Python's handler is back, and the next restore works."""
    from gpu_pitr import restore

    expected = len(restore(wal).ids)
    proc = subprocess.run([sys.executable, "-c", _PROGRAM.format(k=k, wal=str(wal))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n") == ["interrupted", str(expected), ""], proc.stdout


def _signalled(after: list | None = None):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100000):  # the handler runs here
        pass
    if after is not None:
        after.append("went on")


def test_in_a_library_call_ctrl_c_is_raised_where_it_lands_and_pythons_handler_comes_back():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen, after = [], []

    def call():
        seen.append(signal.getsignal(signal.SIGINT))
        _signalled(after)

    with pytest.raises(KeyboardInterrupt):
        interrupts.raises_stops(call)()
    assert after == [] and seen == [interrupts._handler]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert interrupts._state.pending is None and not interrupts._state.library
    assert interrupts.raises_stops(lambda: 7)() == 7  # and a call with no signal


def test_in_a_library_call_ctrl_c_inside_holding_is_raised_after_the_block():
    """As for a command: ``holding`` (the read-ahead's close, a report after its index)
    runs to its end; the stop is raised at the next ``check``."""
    done = []

    def call():
        with interrupts.holding():
            _signalled(done)
            done.append("block ended")
        done.append("after the block")  # no check() here: raised as the call returns
        interrupts.check()
        done.append("past the check")

    with pytest.raises(KeyboardInterrupt):
        interrupts.raises_stops(call)()
    assert done == ["went on", "block ended", "after the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_in_a_library_call_a_ctrl_c_swallowed_where_it_landed_stops_the_call():
    """Inside a ``__del__`` Python prints the KeyboardInterrupt and goes on; the call
    returned as if nothing had happened. It now raises it as it returns."""
    class Dropped:
        def __del__(self):
            _signalled()

    def call():
        Dropped()  # (its __del__ runs at once)
        return "result"

    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.raises_stops(call)()
    finally:
        sys.unraisablehook = hook
    assert [u.exc_type for u in unraisable] == [KeyboardInterrupt]


def test_a_programs_own_sigint_handler_is_left_as_it_is():
    def own(signum, frame):
        raise RuntimeError("the program's own")

    seen = []
    previous = signal.signal(signal.SIGINT, own)
    try:
        interrupts.raises_stops(lambda: seen.append(signal.getsignal(signal.SIGINT)))()
        assert seen == [own] and signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


def test_in_a_library_call_an_error_out_of_nothing_after_a_ctrl_c_is_the_stop():
    """C code that prints the stop and raises an error of its own, chained to nothing
    (numba's ``_dispatcher`` when the import it runs fails: "ImportError:
    numba._devicearray failed to import"), as in a command; an error raised ``from``
    another, or with no stop recorded, stays what it is."""
    def printed_and_replaced():
        try:
            _signalled()
        except KeyboardInterrupt:
            pass  # (printed, in C)
        raise ImportError("numba._devicearray failed to import")

    with pytest.raises(KeyboardInterrupt):
        interrupts.raises_stops(printed_and_replaced)()

    def replaced_from(err_type):
        try:
            _signalled()
        except KeyboardInterrupt as stop:
            saved = stop
        raise err_type("says what it replaces") from ValueError(str(saved))

    with pytest.raises(ImportError, match="replaces"):
        interrupts.raises_stops(replaced_from)(ImportError)

    def no_stop():
        raise ImportError("no stop came")

    with pytest.raises(ImportError, match="no stop"):
        interrupts.raises_stops(no_stop)()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
