"""A one-line progress bar on stderr for long restores: phase, bytes, records, rate, ETA.

It is fed by the ``progress`` callback of ``gpu_pitr.restore`` and draws only on a
terminal, at most about ten times a second, rewriting its line with ``\\r``. While
Numba compiles (the first run after an install or an upgrade), it says so instead of
showing a rate and an ETA, and the time compiling does not count in the rate.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

_BAR_CELLS = 12
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, three significant digits or so (``1.23 GB``)."""
    for unit in _UNITS:
        if abs(n) < 1000 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _clock_text(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Call it as ``bar(phase, bytes_done, bytes_total, records)``; ``close()`` at the end.

    Redraws when the phase changes, else at most once per ``interval`` seconds,
    and clears its line on ``close()`` so what follows starts on a clean line.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.started: float | None = None
        self.last_draw = -float("inf")
        self.state = ("read", 0, 0, 0)
        self.shown = 0  # characters on the line now
        self.compiled = 0.0  # seconds spent compiling, ended compiles
        self.compiling_since: float | None = None
        self._lock = threading.Lock()  # compiles are told from the thread that compiles

    def __call__(self, phase: str, bytes_done: int, bytes_total: int, records: int) -> None:
        with self._lock:
            now = self._now()
            changed = phase != self.state[0]
            self.state = (phase, int(bytes_done), int(bytes_total), int(records))
            if changed or now - self.last_draw >= self.interval:
                self.last_draw = now
                self._draw(self.line(now))

    def phase(self, phase: str) -> None:
        """Show a new phase (e.g. "write") with the last counts."""
        self(phase, *self.state[1:])

    def compiling(self, active: bool) -> None:
        """Numba starts (True) or stops (False) compiling: ``gpu_pitr.jit.watch_compiles``."""
        with self._lock:
            now = self._now()
            if active:
                self.compiling_since = now
            elif self.compiling_since is not None:
                self.compiled += now - self.compiling_since
                self.compiling_since = None
            self.last_draw = now
            self._draw(self.line(now))

    def _now(self) -> float:
        now = self.clock()
        if self.started is None:
            self.started = now
        return now

    def line(self, now: float) -> str:
        """The text of the bar for the current state at time ``now``."""
        phase, done, total, records = self.state
        elapsed = max(now - (self.started if self.started is not None else now), 0.0)
        frac = min(done / total, 1.0) if total else 1.0
        cells = int(frac * _BAR_CELLS)
        compiling = self.compiling_since is not None
        parts = [
            f"{'compile' if compiling else phase:<6} {frac * 100:3.0f}% "
            f"[{'#' * cells}{'.' * (_BAR_CELLS - cells)}]",
            f"{human_bytes(done)}/{human_bytes(total)}",
            f"{records:,} records",
        ]
        if compiling:  # no rate or ETA: the bytes wait for the compiler
            parts.append(f"{_clock_text(elapsed)} (then cached)")
            return " ".join(parts)
        eta = None
        working = elapsed - self.compiled
        if working > 0 and done:
            rate = done / working
            parts.append(f"{rate / 1e6:.1f} MB/s")
            if phase == "read" and done < total:
                eta = (total - done) / rate
        # What is left while reading; how long it took once read.
        parts.append(f"ETA {_clock_text(eta)}" if eta is not None else _clock_text(elapsed))
        return " ".join(parts)

    def _draw(self, text: str) -> None:
        width = self._columns() - 1  # the last column would wrap on some terminals
        text = text[:width]
        pad = " " * max(self.shown - len(text), 0)
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self.shown = len(text)

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        # 0: not known (some serial consoles). A narrow terminal is still cut to its
        # width: a longer line wraps, and the \r of each redraw leaves a row behind.
        return columns if columns > 0 else 80

    def close(self) -> None:
        """Clear the bar's line (nothing is written if it never drew)."""
        with self._lock:
            if self.shown:
                self.stream.write("\r" + " " * self.shown + "\r")
                self.stream.flush()
                self.shown = 0


def progress_bar(quiet: bool = False, stream: TextIO | None = None) -> ProgressBar | None:
    """A bar on ``stream`` (stderr), or None when ``quiet`` or the stream is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # closed or not a real file
        return None
    return ProgressBar(stream)
