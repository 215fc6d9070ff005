"""A one-line progress bar on stderr for long restores: phase, bytes, records, rate, ETA.

It is fed by the ``progress`` callback of ``gpu_pitr.restore`` and draws only on a
terminal, at most about ten times a second, rewriting its line with ``\\r``.
"""

from __future__ import annotations

import os
import sys
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

    def __call__(self, phase: str, bytes_done: int, bytes_total: int, records: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
        changed = phase != self.state[0]
        self.state = (phase, int(bytes_done), int(bytes_total), int(records))
        if changed or now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(self.line(now))

    def phase(self, phase: str) -> None:
        """Show a new phase (e.g. "write") with the last counts."""
        self(phase, *self.state[1:])

    def line(self, now: float) -> str:
        """The text of the bar for the current state at time ``now``."""
        phase, done, total, records = self.state
        elapsed = max(now - (self.started if self.started is not None else now), 0.0)
        frac = min(done / total, 1.0) if total else 1.0
        cells = int(frac * _BAR_CELLS)
        parts = [
            f"{phase:<6} {frac * 100:3.0f}% [{'#' * cells}{'.' * (_BAR_CELLS - cells)}]",
            f"{human_bytes(done)}/{human_bytes(total)}",
            f"{records:,} records",
        ]
        eta = None
        if elapsed > 0 and done:
            rate = done / elapsed
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
        return columns if columns > 20 else 80

    def close(self) -> None:
        """Clear the bar's line (nothing is written if it never drew)."""
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
