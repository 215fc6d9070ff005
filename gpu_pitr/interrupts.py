"""SIGINT and SIGTERM during a command: stop at once, or at the latest before any rename.

Python runs a signal handler between two bytecodes of the main thread, wherever that
thread is. When that is inside a weakref callback, a ``__del__`` or a garbage
collector callback, the exception the handler raises cannot propagate: Python
prints "Exception ignored in ..." and carries on, so the restore would run to
completion and rename its outputs after it was told to stop. Here the handler also
records the signal; such a swallowed stop is not printed, and it is raised again at
the next ``check()`` (each chunk read), before an output is renamed into place
(``committing()``), and at the latest when the command ends: an interrupted command
never puts an output in place, nor exits 0. When the handler runs inside C code that
then returns a result anyway, Python raises SystemError from the stop, and C code may
print the stop and raise an error of its own (an import that fails): the stop is
raised instead. From the first rename on the handler only
records: a stop there would leave one file of a pair renamed and the other not, or
report a complete output as removed. Once the command has finished, a signal changes
nothing.

Outside ``handle_signals()`` (the library called from user code), a call of the
library's entry points (``raises_stops``) whose SIGINT handler is Python's own puts this
module's handler in for SIGINT for the call's duration, so that a Ctrl-C in a notebook
or a program is the KeyboardInterrupt it always was, but never raised inside llvmlite or
Numba's cache (a crash, below) nor inside ``holding()``; SIGTERM is left to the program.
Otherwise nothing is recorded, and ``check()`` and ``committing()`` cost nothing.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    active = False  # inside handle_signals()
    library = False  # inside a library call's SIGINT handler (``_library_call``)
    deferring = False  # an output is in place, or the command is over: record only
    pending: int | None = None  # the signal recorded, not yet raised where it propagates


_state = _State()
# Per thread: how deep inside ``holding()`` it is. Only the holding thread's own checks
# wait (the main thread, where the handler runs and records); another thread's, such
# as verify's copies being checked on a pool, stop at their next read as ever.
_held = threading.local()


def _holding() -> bool:
    return getattr(_held, "depth", 0) > 0


def stop_for(signum: int) -> BaseException:
    """The exception a stop by ``signum`` raises (KeyboardInterrupt, ``Terminated``)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def signal_of(stop: BaseException) -> int:
    """The signal a stop (``stop_for``'s exception) stands for."""
    return signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM


def announce(signum: int, writes: bool = False) -> int:
    """The command's one line on stderr for a stop by ``signum`` (``writes``: a command
    that writes outputs, whose incomplete ones were removed); its exit status."""
    print(f"gpu-pitr: interrupted by {signal.Signals(signum).name}"
          + ("; outputs not yet complete were removed" if writes else ""), file=sys.stderr)
    handled()
    return 128 + signum


def handled() -> None:
    """Tell the interpreter the KeyboardInterrupt was handled, so that the exit status
    the command returns is the one the process ends with.

    CPython notes a KeyboardInterrupt that leaves code run from a string (``exec`` or
    ``eval`` of text: dataclasses, namedtuple and Numba make functions that way) as
    "unhandled", even when an outer ``except`` catches it; under ``python -m`` it then
    ends the process by SIGINT once the command has returned: status -2, not 130, in 3
    of 273 restores interrupted at random moments on a loaded 2-core host. Running any
    string resets that note; this one does nothing else.
    """
    exec("pass")  # noqa: S102 - the reset is what runs it (see above)


def stop_in(err: BaseException) -> BaseException | None:
    """The stop (KeyboardInterrupt, ``Terminated``) ``err`` comes of, if any:

    - the SystemError of a handler that ran inside C code which then returned a result
      (a compiled function's call): Python raises "returned a result with an exception
      set" from the stop, and again from that for each compiled call it was inside
      (five deep seen in a restore);
    - an error raised while the stop went by, by code it cut short: a Ctrl-C inside
      ``threading.Condition.wait`` (a thread pool's ``result``) left its lock released,
      and the ``with`` around it raised "cannot release un-acquired lock" instead (a
      traceback and status 1, once in 300 restores interrupted at random moments).
      Not one raised ``from None``, which says it replaces what it handled.
    """
    if err is None:
        return None
    return next((e for e in _chain(err) if isinstance(e, (KeyboardInterrupt, Terminated))),
                None)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, then what it comes of, as ``stop_in`` follows it: a SystemError's cause,
    else the error it was raised while handling; it ends at an error raised out of
    nothing (no context) or at one raised ``from`` another (that says what it replaces).
    (A chain is short; 100 bounds a cyclic one.)"""
    for _ in range(100):
        yield err
        if isinstance(err, SystemError) and err.__cause__ is not None:
            err = err.__cause__
        elif err.__suppress_context__ or err.__context__ is None:
            return
        else:
            err = err.__context__


def _origin_unknown(err: BaseException) -> bool:
    """Whether ``err``'s chain (``_chain``) ends in an error raised out of nothing (no
    context, no cause): not one raised ``from`` another, which says what it replaces or
    comes of."""
    *_, last = _chain(err)
    return (last.__context__ is None and not last.__suppress_context__
            and not (isinstance(last, SystemError) and last.__cause__ is not None))


def _stop_of(err: Exception) -> BaseException | None:
    """The stop to raise for ``err`` leaving a command's or a library call's block: the
    one it comes of (``stop_in``), or the one recorded if ``err`` came out of nothing
    before an output was put in place (C code that printed the stop and raised an error
    of its own, chained to nothing: numba's "ImportError: numba._devicearray failed to
    import", a traceback and status 1 once in 60 ``expire`` runs stopped at random
    moments; the stop, asked for, ends it with nothing in place either way)."""
    stop = stop_in(err)
    if (stop is None and _state.pending is not None and not _state.deferring
            and _origin_unknown(err)):
        stop = stop_for(_state.pending)
    return stop


def _end_armed() -> None:
    """No stop armed in a caller any more, and the trace function a raised one unset set
    again (the end of a command's or a library call's block)."""
    _disarm()
    if _armed.unset is not None:
        sys.settrace(_armed.unset)
        _armed.unset = None


def raises_stops(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn``, raising a stop that landed in compiled code, or that code it cut short
    raised an error over, as the stop itself (``stop_in``): Ctrl-C in a notebook or a
    program calling the library is the KeyboardInterrupt its ``except`` is written for.
    Typed so that a type checker sees ``fn``'s own signature (untyped, ``restore`` and
    the others it wraps were ``Any`` to a caller's mypy or pyright)."""

    @functools.wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            with _library_call():
                return fn(*args, **kwargs)
        except Exception as err:
            stop = stop_in(err)
            if stop is None:
                raise
            raise stop from None

    return call


@contextmanager
def _library_call() -> Iterator[None]:
    """The library called from a program's main thread whose SIGINT handler is Python's
    own (a script, IPython, a Jupyter kernel as it runs a cell): for the block, this
    module's handler serves instead. A Ctrl-C is the KeyboardInterrupt it was, raised
    where it lands, but inside llvmlite or Numba's cache it is raised in their caller
    (``shielded``: a notebook's kernel died by SIGSEGV there), and inside ``holding()``
    after the block held; one swallowed where it landed is raised at the next ``check``
    or as the call returns, and for an error of unknown origin raised after it (see
    ``handle_signals``). Anywhere else (another handler, another thread, a command's
    ``handle_signals``, a call inside a call) the block runs as it is."""
    if (_state.active or _state.library
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    deferring = _state.deferring
    _state.library, _state.deferring, _state.pending = True, False, None
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
        if _state.pending is not None:  # swallowed where it landed: the call stops now
            raise KeyboardInterrupt()
    except Exception as err:
        stop = _stop_of(err)  # as in a command (``handle_signals``)
        if stop is not None:
            raise stop from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _end_armed()
        _state.library, _state.deferring, _state.pending = False, deferring, None


#: Modules a stop is never raised inside: it is raised in their caller, once they return.
_SHIELDED = ("llvmlite", "numba.core.caching")


def _shielded(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _SHIELDED)


def _outermost_shielded_frame(frame):
    """The outermost frame of a ``_SHIELDED`` module on ``frame``'s stack, if any."""
    found = None
    while frame is not None:
        if _shielded(frame.f_globals.get("__name__") or ""):
            found = frame
        frame = frame.f_back
    return found


def shielded(frame) -> bool:
    """Whether ``frame`` (a signal handler's) runs where a stop must not be raised:

    - inside llvmlite, which Numba calls to make machine code or load it. LLVM calls
      back into Python there (the object cache's ``getbuffer``, through ctypes). A stop
      raised in such a callback is swallowed by ctypes, and the function's machine
      code is never loaded: Numba then writes its environment's address to address 0,
      and the process dies by SIGSEGV. That happened twice in some 1,000 restores
      interrupted at random moments, and every time in a test that stops inside each
      such callback;
    - inside Numba's cache (``numba.core.caching``), which loads a function (that
      callback, then the environment) or saves it: it writes the index naming a data
      file before the data file itself. Stopped between the two, in a first run after
      an upgrade, it left the index naming the file the version before wrote, which
      the next run would load as this version's code.

    There the stop is raised in the caller of the outermost such frame as soon as that
    goes on (``_raise_on_return``): a load or a save takes milliseconds. (Numba's
    compiler itself is left alone: a stop goes through it as any exception does, and
    waiting until a whole compile returned took up to 11 s of a first run.)"""
    return _outermost_shielded_frame(frame) is not None


class _Armed:
    frame = None  # a shielded frame's caller, whose next line raises the pending stop
    previous = None  # the trace function it replaced (a debugger's, coverage's)
    unset = None  # that one, when the stop was raised: set again as the block ends


_armed = _Armed()


def _raise_on_return(caller) -> None:
    """Raise the pending stop in ``caller`` (the frame that called a shielded one) at its
    next event: the line after the call, or its return. Python's trace functions do this
    (a debugger's ``set_trace`` is built so): the global one traces no new frame,
    ``caller``'s own raises."""
    if _armed.frame is None:
        _armed.previous = sys.gettrace()
    else:  # (a second signal, from deeper down)
        _armed.frame.f_trace = None
    _armed.frame = caller
    caller.f_trace = _stop_in_caller
    sys.settrace(_trace_no_new_frame)


def _trace_no_new_frame(frame, event, arg) -> None:
    return None


def _disarm() -> None:
    if _armed.frame is not None:
        _armed.frame.f_trace = None
        _armed.frame = None
        sys.settrace(_armed.previous)
        _armed.previous = None


def _stop_in_caller(frame, event, arg):
    previous = _armed.previous
    _disarm()
    if _state.pending is not None and not (_state.deferring or _holding()):
        # Python unsets tracing when a trace function raises: ``handle_signals`` sets
        # the one before again as it ends.
        _armed.unset = previous
        raise stop_for(_state.pending)
    return None  # (held or deferred: ``check`` raises it, as for any stop held)


def _handler(signum, frame) -> None:
    _state.pending = signum
    if _state.deferring or _holding():
        return
    outermost = _outermost_shielded_frame(frame)
    if outermost is None:
        _disarm()
        raise stop_for(signum)
    if outermost.f_back is not None:
        _raise_on_return(outermost.f_back)


def check() -> None:
    """Raise the stop a signal asked for, if one was recorded and not yet raised."""
    if _state.pending is not None and not _holding():  # set inside handle_signals()
        _disarm()
        raise stop_for(_state.pending)


def committing() -> None:
    """Call before renaming outputs into place: a signal recorded before now stops the
    command here. From now on a signal is only recorded, and raised at the next
    ``check`` or ``committing``: never between two renames, nor after the last one,
    where the outputs in place are complete and a stop would only misreport them."""
    check()
    _state.deferring = _state.active


@contextmanager
def holding() -> Iterator[None]:
    """The block runs to its end whatever stop comes, one already recorded included (the
    command is being stopped): for the short write that records what a stopped command
    did, such as ``archive``'s checksums of the copies it made. A stop that came is
    raised at the next ``check`` after the block; as after any rename, one that came
    during the last write of a command that then ends changes nothing. It holds the
    stop for this thread alone: other threads' ``check`` raises it as ever (verify's
    copy checks on a pool read on past a Ctrl-C while the scan's read-ahead closed)."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1


@contextmanager
def handle_signals(*, restore: bool = True) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM ``Terminated`` for the block's duration.

    Afterwards signals are ignored, then the previous handlers come back when
    ``restore``; without it they stay ignored (for a process about to exit, whose
    outputs are complete). Only the main thread can set handlers: elsewhere, and when
    already inside one, the block runs as it is.
    """
    if _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_hook, previous_excepthook = sys.unraisablehook, sys.excepthook

    def unraisable(info) -> None:
        if _state.pending is not None and issubclass(info.exc_type, (KeyboardInterrupt,
                                                                     Terminated)):
            return  # recorded: check() raises it where it can propagate
        previous_hook(info)

    def excepthook(exc_type, value, tb) -> None:
        # C code that prints the error it got (``PyErr_Print``) and raises one of its
        # own instead: numba's ``_dispatcher`` when the import of ``numba._devicearray``
        # it runs fails. The stop is recorded: not printed (see below).
        if _state.pending is not None and issubclass(exc_type, (KeyboardInterrupt,
                                                                Terminated)):
            return
        previous_excepthook(exc_type, value, tb)

    _state.deferring = False
    _state.pending = None
    previous = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    _state.active = True
    try:
        yield
        # Swallowed where it landed, and no output was put in place: the command stops
        # now (a verify or inspect that ran on), rather than report that it finished.
        if _state.pending is not None and not _state.deferring:
            raise stop_for(_state.pending)
    except Exception as err:
        # The handler ran inside C code (a compiled function's call) that went on and
        # returned a result, or cut short code that then raised an error of its own, or
        # C code printed the stop and raised an error out of nothing: it is the stop
        # (``_stop_of``).
        stop = _stop_of(err)
        if stop is not None:
            raise stop from None
        raise
    finally:
        _state.deferring = True  # the command is over: a signal now changes nothing
        _end_armed()
        for sig in _SIGNALS:
            signal.signal(sig, previous[sig] if restore else signal.SIG_IGN)
        sys.unraisablehook, sys.excepthook = previous_hook, previous_excepthook
        _state.active = False
        _state.pending = None
