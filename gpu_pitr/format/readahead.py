"""Read-ahead of segment bytes: large sequential reads on background threads.

Each segment's records region is cut into pieces of ``chunk_bytes``; threads
read the next pieces (``os.preadv``, which releases the GIL) into a small ring
of reusable buffers while the caller works on the current one. Every buffer
keeps ``headroom`` bytes free in front of its data, so the caller can put the
bytes it carries over (a record split across pieces, records of open
transactions) right before the new data without moving the data.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class Piece:
    """``buf[data : data + length]`` holds file bytes ``[file_offset, +length)``."""

    segment: int
    file_offset: int
    buf: np.ndarray
    data: int
    length: int
    last: bool  # the last piece of its segment


class Readahead:
    """Pieces of the given segment ranges, in order, read ahead of use.

    ``ranges`` lists ``(segment index, path, start offset, end offset)`` in log
    order. Call ``release(piece)`` when done with a piece: its buffer goes back
    to the ring. ``skip(segment)`` drops the pieces of a segment not needed.
    """

    def __init__(self, ranges, chunk_bytes: int, headroom: int,
                 alloc: Callable[[int], np.ndarray], threads: int = 2) -> None:
        self.headroom = headroom
        self._tasks = deque()
        for seg, path, start, end in ranges:
            pos = start
            while True:
                n = min(chunk_bytes, end - pos)
                self._tasks.append((seg, path, pos, n, pos + n >= end))
                pos += n
                if pos >= end:
                    break
        self._ring: queue.Queue = queue.Queue()
        for _ in range(threads + 1):
            self._ring.put(alloc(headroom + chunk_bytes))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpu_pitr-read")
        self._inflight: deque = deque()
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._depth = threads
        self._skip: set[int] = set()
        for _ in range(threads):
            self._submit()

    def _submit(self) -> None:
        if self._tasks:
            task = self._tasks.popleft()
            self._inflight.append((task, self._pool.submit(self._read, task)))

    def _fd(self, path) -> int:
        key = str(path)
        with self._lock:  # two threads may start on the same file
            if key not in self._fds:
                self._fds[key] = os.open(key, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return self._fds[key]

    def _read(self, task) -> Piece:
        seg, path, offset, length, last = task
        buf = self._ring.get()
        if seg in self._skip:
            return Piece(seg, offset, buf, self.headroom, 0, last)
        view = memoryview(buf)[self.headroom:self.headroom + length]
        fd = self._fd(path)
        got = 0
        while got < length:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:  # the file shrank since it was listed
                break
            got += n
        return Piece(seg, offset, buf, self.headroom, got, last)

    def __iter__(self) -> Iterator[Piece]:
        while self._inflight:
            _task, fut = self._inflight.popleft()
            piece = fut.result()
            self._submit()
            if piece.segment in self._skip:
                self.release(piece)
                continue
            yield piece

    def skip(self, segment: int) -> None:
        self._skip.add(segment)

    def release(self, piece: Piece) -> None:
        self._ring.put(piece.buf)

    def close(self) -> None:
        self._tasks.clear()
        for _task, fut in self._inflight:
            fut.cancel()
        self._pool.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
