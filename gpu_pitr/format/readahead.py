"""Read-ahead of segment bytes: large sequential reads on background threads.

Each segment's records region is cut into pieces of ``chunk_bytes``; threads
read the next pieces (``os.preadv``, which releases the GIL) into a small ring
of reusable buffers while the caller works on the current one. Every buffer
keeps ``headroom`` bytes free in front of its data, so the caller can put the
bytes it carries over (a record split across pieces, records of open
transactions) right before the new data without moving the data.

With ``map_files`` (host buffers the caller only reads and writes: not the
page-locked ones a GPU copies from), the threads map each piece's page-cache
pages into its buffer instead of copying them (``gpu_pitr.format.mapped``).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpu_pitr import interrupts
from gpu_pitr.errors import FileReadError, FileShrankError
from gpu_pitr.format import mapped
from gpu_pitr.format.frame import declared_size, frame_records
from gpu_pitr.format.layout import HEADER_SIZE
from gpu_pitr.format.segments import read_into

# Shared by every pass over the log (restore, verify, inspect).
DEFAULT_CHUNK_BYTES = 16 << 20
# Bytes kept free before each piece's data for what the previous piece carries.
HEADROOM = 1 << 20
READ_THREADS = 2
# One row of the record table per this many bytes of chunk; framing resumes
# within the same bytes when a chunk of tiny records fills the table.
BYTES_PER_ROW = 128
# A segment with at most this many bytes of records (and no more than a chunk) is read
# by the framing thread itself, with its header, in one open: not read ahead. The
# read-ahead's thread-pool task, ring buffer and hand-off cost ~70 us a piece, 20 times
# the read of a small file from the page cache (a log of 5,000 one-record segments).
DIRECT_BYTES = 64 << 10
# Bytes kept free before a directly read segment's data (see HEADROOM): the consumer
# copies what it carries, and the piece, into a buffer of its own when they do not fit.
DIRECT_HEADROOM = 4 << 10
# Items in buffers of their own (small segments) go to the consumer in lists of up to
# this many bytes and items: one hand-off between threads per item cost ~80 us (two
# wake-ups), four times the framing of a small segment. What the items hold in all
# (``_held``: each buffer's headroom and row arrays too, ~5.5 KiB for one record) is
# within this many bytes as well, not only their records' bytes.
BATCH_BYTES = 1 << 20
BATCH_ITEMS = 256


@dataclass
class Piece:
    """``buf[data : data + length]`` holds file bytes ``[file_offset, +length)``."""

    segment: int
    file_offset: int
    buf: np.ndarray
    data: int
    length: int
    last: bool  # the last piece of its segment
    error: OSError | None = None  # the read failed: raised when the piece is reached
    own: bool = False  # ``buf`` is the piece's own, not one of the read-ahead's ring


class Readahead:
    """Pieces of the given segment ranges, in order, read ahead of use.

    ``ranges`` lists ``(segment index, path, start offset, end offset)`` in log
    order. Call ``release(piece)`` when done with a piece: its buffer goes back
    to the ring. ``skip(segment)`` drops the pieces of a segment not needed.
    A range of at most ``direct_bytes`` (and at most ``chunk_bytes``) is not read
    ahead: the framing thread reads it with its segment's header (``direct``).
    """

    def __init__(self, ranges, chunk_bytes: int, headroom: int,
                 alloc: Callable[[int], np.ndarray], threads: int = 2,
                 map_files: bool = False, direct_bytes: int = 0) -> None:
        self.headroom = headroom
        self.chunk_bytes = chunk_bytes
        self._direct: set[int] = set()
        # Pieces are mapped into the buffers, not copied (until a mapping cannot work).
        self.mapping = map_files and mapped.available()
        if self.mapping:
            alloc = mapped.region
        # Buffers (by address) with a file's pages mapped in: anonymous memory goes back
        # before one is read into (a write to a mapped page past its file's end, if
        # that file was cut since, would be a SIGBUS).
        self._mapped: set[int] = set()
        self._tasks = deque()
        # Pieces of each file not read yet: its descriptor is closed after the last
        # (an archive of 20,000 segments would otherwise hold 20,000 of them open).
        self._left: dict[str, int] = {}
        for seg, path, start, end in ranges:
            if end - start <= min(direct_bytes, chunk_bytes):
                self._direct.add(seg)
                continue
            pos = start
            while True:
                n = min(chunk_bytes, end - pos)
                self._tasks.append((seg, path, pos, n, pos + n >= end, end))
                self._left[str(path)] = self._left.get(str(path), 0) + 1
                pos += n
                if pos >= end:
                    break
        self._ring: queue.Queue = queue.Queue()
        # Buffers held at once: the reads in flight, one being framed, one framed
        # and waiting, one in use.
        for _ in range(threads + 3):
            self._ring.put(alloc(headroom + chunk_bytes))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpu_pitr-read")
        self._inflight: deque = deque()
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._skip: set[int] = set()
        try:
            for _ in range(threads):
                self._submit()
        except BaseException:
            # Ctrl-C while a thread started (``Thread.start`` waits for it): the read
            # may run all the same, and nobody would close its file.
            self.close()
            raise

    def _submit(self) -> None:
        if self._tasks:
            task = self._tasks.popleft()
            self._inflight.append((task, self._pool.submit(self._read, task)))

    def _fd(self, path) -> int:
        key = str(path)
        with self._lock:  # two threads may start on the same file
            if self._closed.is_set():  # a read that started after ``close``: none opens
                raise OSError(errno.EBADF, "the read-ahead is closed")
            if key not in self._fds:
                self._fds[key] = os.open(key, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return self._fds[key]

    def _done_with(self, path) -> None:
        """One piece of ``path`` read (or given up): its descriptor closes after the last."""
        key = str(path)
        with self._lock:
            self._left[key] -= 1
            if self._left[key] == 0:
                fd = self._fds.pop(key, None)
                if fd is not None:
                    os.close(fd)

    def _read(self, task) -> Piece | None:
        try:
            return self._read_piece(task)
        finally:
            self._done_with(task[1])

    def _read_piece(self, task) -> Piece | None:
        seg, path, offset, length, last, listed = task
        while True:
            try:
                buf = self._ring.get(timeout=0.05)
                break
            except queue.Empty:
                if self._closed.is_set():  # every buffer is held and nobody reads on
                    return None
        if seg in self._skip:
            return Piece(seg, offset, buf, self.headroom, 0, last)
        try:
            fd = self._fd(path)
            if self.mapping and length >= mapped.MIN_PIECE:
                data = mapped.map_piece(buf, self.headroom, fd, offset, length,
                                        self._stop_mapping)
                if data is not None:
                    self._mapped.add(buf.ctypes.data)
                    return Piece(seg, offset, buf, data, length, last)
            elif buf.ctypes.data in self._mapped:
                mapped.unmap_piece(buf, self.headroom, len(buf) - self.headroom)
            self._mapped.discard(buf.ctypes.data)  # (a failed mapping put it back)
        except OSError as err:
            # Not raised here: the framer may skip this segment (its header unreadable).
            return Piece(seg, offset, buf, self.headroom, 0, last,
                         error=FileReadError(path, offset, err))
        return _fill(Piece(seg, offset, buf, self.headroom, length, last), fd, path, listed)

    def _stop_mapping(self) -> None:
        self.mapping = False

    def direct(self, segment: int) -> bool:
        """Whether the caller reads this segment's range itself (a small one)."""
        return segment in self._direct

    def __iter__(self) -> Iterator[Piece]:
        while self._inflight:
            _task, fut = self._inflight.popleft()
            piece = fut.result()
            if piece is None:
                return
            self._submit()
            if piece.segment in self._skip:
                self.release(piece)
                continue
            if piece.error is not None:
                self.release(piece)
                raise piece.error
            yield piece

    def skip(self, segment: int) -> None:
        self._skip.add(segment)

    def release(self, piece: Piece) -> None:
        self._ring.put(piece.buf)

    def stop(self) -> None:
        """Unblock every read waiting for a buffer; reads end from now on."""
        self._closed.set()

    def close(self) -> None:
        """End the reads, wait for the threads, close the files. A stop (Ctrl-C) landing
        here is raised after it (``interrupts.holding``): cut short, the close left the
        threads reading into buffers the command was about to free as it exited."""
        with interrupts.holding():
            self.stop()
            self._tasks.clear()
            for _task, fut in self._inflight:
                fut.cancel()
            self._pool.shutdown(wait=True)
            with self._lock:
                fds, self._fds = list(self._fds.values()), {}
            for fd in fds:
                os.close(fd)


def _held(item: Framed) -> int:
    """The bytes an item in a buffer of its own keeps alive: the whole buffer (its
    headroom included) and its row arrays, not only the records' ``end - start``."""
    return sum(a.nbytes for a in (item.buf, item.off, item.length, item.seq,
                                  item.row_segment, item.row_file_offset)
               if a is not None)


def _read_whole(seg, head: bytearray, view: np.ndarray) -> tuple[int, OSError | None]:
    """Read a segment's first bytes into ``head``, then ``view``, in one read where
    Python has ``os.preadv``: how many were read (fewer at the file's end), and the
    error that stopped the read, if one did."""
    got = 0
    try:
        fd = os.open(seg.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        return 0, err
    first, rest = memoryview(head), memoryview(view)
    try:
        while got < len(head) + len(rest):
            if got < len(head):
                n = _read_two(fd, first[got:], rest, got)
            else:
                n = read_into(fd, rest[got - len(head):], got)
            if n == 0:
                break
            got += n
    except OSError as err:
        # The header alone may still read: the error is then in the records (a
        # FileReadError), not in the header (a segment that cannot be read).
        while got < len(head):
            try:
                more = os.pread(fd, len(head) - got, got)
            except OSError:
                break
            if not more:
                break
            head[got:got + len(more)] = more
            got += len(more)
        return got, err
    finally:
        os.close(fd)
    return got, None


def _read_two(fd: int, first: memoryview, second: memoryview, offset: int) -> int:
    """``read_into`` of ``first`` then ``second`` from ``offset``."""
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [first, second], offset)
    n = read_into(fd, first, offset)
    if n < len(first):
        return n
    return n + read_into(fd, second, offset + n)


def _frame_rows(frame, buf, pos: int, end: int, rows: list, n: int) -> tuple[int, int]:
    """Frame the whole records of ``buf[pos:end]`` into ``rows`` (``off``, ``length``,
    ``seq``, then any arrays kept row for row beside them, grown with them: replaced in
    the list) from row ``n`` on. Returns the rows filled and where framing stopped."""
    while True:
        cap = len(rows[0])
        got, pos, _ = frame(buf, pos, end, rows[0][n:], rows[1][n:], rows[2][n:], cap - n)
        n += got
        if n < cap:
            return n, pos
        for k, old in enumerate(rows):
            rows[k] = np.empty(2 * cap, old.dtype)
            rows[k][:n] = old[:n]


def _fill(piece: Piece, fd: int, path, listed: int) -> Piece:
    """``piece`` with its ``length`` bytes read from ``fd`` at its file offset, or
    with the error met instead (a file shorter now than when listed: not a torn tail)."""
    view = memoryview(piece.buf)[piece.data:piece.data + piece.length]
    got = 0
    try:
        while got < piece.length:
            n = read_into(fd, view[got:], piece.file_offset + got)
            if n == 0:
                piece.error = FileShrankError(path, piece.file_offset + got, listed)
                break
            got += n
    except OSError as err:
        piece.error = FileReadError(path, piece.file_offset + got, err)
    if piece.error is not None:
        piece.length = 0
    return piece


@dataclass
class Framed:
    """A piece framed ahead, or a segment whose header is not readable.

    For a piece: ``buf[start:end]`` holds the bytes the previous piece left
    unframed followed by the piece's data; ``file_start`` is the file offset of
    ``buf[start]``; the ``n`` records framed are in ``off``/``length``/``seq``
    (offsets into ``buf``). ``ring`` is the read-ahead piece that owns ``buf``
    (None when ``buf`` is a buffer of its own). ``torn`` is ``(file offset,
    bytes lost)`` when the segment ends inside a record.
    """

    segment: int
    problem: str | None = None
    header_len: int = 0
    buf: np.ndarray | None = None
    ring: Piece | None = None
    start: int = 0
    end: int = 0
    file_start: int = 0
    n: int = 0
    off: np.ndarray | None = None
    length: np.ndarray | None = None
    seq: np.ndarray | None = None
    torn: tuple | None = None
    bytes_read: int = 0
    # Several small segments in one item (``FrameAhead(merge_small=...)``): the
    # segment and file offset of each row, and every torn tail as ``(segment, file
    # offset, bytes lost)``; ``segment``, ``file_start`` and ``torn`` are then unused.
    row_segment: np.ndarray | None = None
    row_file_offset: np.ndarray | None = None
    torn_tails: list | None = None

    def torn_list(self) -> list:
        """The item's torn tails, as ``(segment, file offset, bytes lost)``."""
        if self.torn_tails is not None:
            return self.torn_tails
        return [] if self.torn is None else [(self.segment, *self.torn)]

    def file_offset(self, i: int) -> int:
        """The file offset of row ``i`` (in its own segment's file)."""
        if self.row_file_offset is not None:
            return int(self.row_file_offset[i])
        return int(self.off[i]) - self.start + self.file_start


class FrameAhead:
    """Frames segment pieces one piece ahead of their use, on a thread of its own.

    Framing is a chain of dependent loads (each length says where the next
    record starts), so it runs beside decoding and applying the previous piece
    rather than before it. Yields ``Framed`` items in log order. Items that hold
    no read-ahead buffer are handed over in batches (``BATCH_BYTES``).

    With ``merge_small``, consecutive small segments (read directly: see ``Readahead``)
    are read whole, one after the other, into one buffer and framed into one item
    (``Framed.row_segment``) holding up to a chunk of records (``"chunk"``: a restore)
    or up to a batch (``"batch"``: a scan, whose chunk is cut to its largest segment):
    a log of thousands of one-record segments then costs an open and a read a segment,
    not an item each.
    """

    def __init__(self, segments, reader: Readahead, alloc: Callable[[int], np.ndarray],
                 frame, header_problem, header_size: int,
                 starts: dict[int, int] | None = None,
                 merge_small: str | None = None) -> None:
        self._segments = segments
        # Where framing starts in a segment (a resumed restore), if not after its header.
        self._starts = starts or {}
        self._reader = reader
        self._alloc = alloc
        self._frame = frame
        self._header_problem = header_problem
        self._header_size = header_size
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._batch: list[Framed] = []  # (framing thread) items not handed over yet
        self._batch_bytes = 0
        self._batch_held = 0  # what the batch's items hold in all (``_held``)
        # (a scan's chunk may be as small as its largest segment: see scan_chunk_bytes)
        self._batch_limit = min(BATCH_BYTES, max(reader.chunk_bytes, DIRECT_BYTES))
        self._ready: deque = deque()  # (consumer) items handed over, not yielded yet
        self._stop = threading.Event()
        self.frame_seconds = 0.0
        # Bytes read that no item carries: the headers of segments without records.
        # Read once the thread is done (``close``).
        self.header_only_bytes = 0
        self._merge_small = merge_small is not None
        # The bytes of records an item of small segments holds at most.
        if merge_small not in (None, "chunk", "batch"):
            raise ValueError(f"merge_small={merge_small!r}: None, 'chunk' or 'batch'")
        self._merge_limit = (self._batch_limit if merge_small == "batch"
                             else min(self._batch_limit, reader.chunk_bytes))
        self._small_item: Framed | None = None  # (merge_small) the item being filled
        self._thread = threading.Thread(target=self._run, name="gpu_pitr-frame", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            # Ctrl-C while the thread started: it may run all the same, and would wait
            # forever to hand over its first item. It ends at its next look at the stop.
            self._stop.set()
            reader.stop()
            raise

    def __iter__(self) -> Iterator[Framed]:
        while True:
            if not self._ready:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._ready.extend(item)
            yield self._ready.popleft()

    def peek(self) -> Framed | None:
        """The piece to be yielded next, if it is framed already; never waits.

        None when it is not ready yet, or when what comes next is the end or an
        error. Its bytes ``buf[start:end]`` do not change from here on (a
        consumer may start copying them), and its buffer stays held until the
        consumer has taken the item and released it.
        """
        if self._ready:
            return self._ready[0]
        with self._queue.mutex:
            item = self._queue.queue[0] if self._queue.queue else None
        return item[0] if isinstance(item, list) else None

    def _emit(self, item: Framed) -> bool:
        """Hand ``item`` to the consumer: after the batch, or in it (``_hand_over``)."""
        if item.ring is not None:
            return self._hand_over() and self._put([item])
        self._batch.append(item)
        self._batch_bytes += item.end - item.start
        self._batch_held += _held(item)
        if (self._batch_bytes < self._batch_limit and self._batch_held < BATCH_BYTES
                and len(self._batch) < BATCH_ITEMS):
            return True
        return self._hand_over()

    def _hand_over(self) -> bool:
        """Hand the batch over now (before waiting on a read, an error or the end)."""
        if not self._batch:
            return True
        batch, self._batch, self._batch_bytes, self._batch_held = self._batch, [], 0, 0
        return self._put(batch)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            pieces = iter(self._reader)
            for index, seg in enumerate(self._segments):
                start = self._starts.get(index, self._header_size)
                if self._mergeable(index, seg, start):
                    if not self._merge(index, seg):
                        return
                    continue
                if not self._end_merge():
                    return
                head, fd = self._head(seg)
                piece = None  # the piece of all its records, when read here
                try:
                    if not isinstance(head, OSError) and len(head) < min(seg.size,
                                                                         self._header_size):
                        # Emptied or cut since it was listed: not a torn header.
                        raise FileShrankError(seg.path, len(head), seg.size)
                    problem = self._header_problem(head)
                    has_records = seg.size > start
                    if problem is None and has_records and self._reader.direct(index):
                        piece = self._small(fd, index, seg, start)
                finally:
                    if fd is not None:
                        os.close(fd)
                if problem is not None:
                    if has_records:
                        self._reader.skip(index)
                    header_len = 0 if isinstance(head, OSError) else len(head)
                    if not self._emit(Framed(index, problem=problem, header_len=header_len)):
                        return
                    continue
                if not has_records:
                    self.header_only_bytes += len(head)
                    continue
                if piece is None and not self._hand_over():  # its pieces are read ahead
                    return
                if not self._segment(index, pieces if piece is None else iter([piece]),
                                     len(head), start):
                    return
            if not self._end_merge():
                return
        except BaseException as err:  # handed to the consumer, raised there
            if self._end_merge() and self._hand_over():
                self._put(err)
            return
        if self._hand_over():
            self._put(None)

    def _mergeable(self, index: int, seg, start: int) -> bool:
        return (self._merge_small and start == self._header_size and seg.size > start
                and self._reader.direct(index))

    def _merge(self, index: int, seg) -> bool:
        """Read a small segment whole, its records into the item being filled right
        after the records there, and frame them.

        The item is ended first when the segment does not fit, and after it (with the
        segment emitted as an item of its own) when its header is not right.
        """
        item = self._small_item
        records = seg.size - self._header_size
        if item is not None and item.end + records > len(item.buf):
            if not self._end_merge():
                return False
            item = None
        if item is None:
            item = self._small_item = self._new_merge(index)
        t = time.perf_counter()
        at = item.end
        head = bytearray(self._header_size)
        got, err = _read_whole(seg, head, item.buf[at:at + records])
        if got < self._header_size:
            if err is None:  # emptied or cut since it was listed: not a torn header
                raise FileShrankError(seg.path, got, seg.size)
            head = err
        problem = self._header_problem(head if isinstance(head, OSError) else bytes(head))
        if problem is not None:
            self.frame_seconds += time.perf_counter() - t
            header_len = 0 if isinstance(head, OSError) else len(head)
            return self._end_merge() and self._emit(
                Framed(index, problem=problem, header_len=header_len))
        if err is not None:
            raise FileReadError(seg.path, got, err)
        if got < seg.size:
            raise FileShrankError(seg.path, got, seg.size)
        first = item.n
        end = at + records
        stop = self._frame_into(item, at, end)
        item.row_segment[first:item.n] = index
        shift = at - self._header_size  # buffer offset - file offset of its records
        np.subtract(item.off[first:item.n], shift, out=item.row_file_offset[first:item.n])
        if stop < end:
            item.torn_tails.append((index, stop - shift, end - stop))
        item.end = end
        item.bytes_read += seg.size
        self.frame_seconds += time.perf_counter() - t
        return True

    def _new_merge(self, index: int) -> Framed:
        """An empty item for small segments from ``index`` on: its buffer holds the
        records of as many of those that follow as fit in a chunk and a batch."""
        limit = self._merge_limit
        size, rows = 0, 0
        for i in range(index, len(self._segments)):
            seg = self._segments[i]
            if not self._mergeable(i, seg, self._starts.get(i, self._header_size)):
                break
            records = seg.size - self._header_size
            if size and size + records > limit:
                break
            size += records
            rows += 1
        cap = max(64, rows, size // 256)
        return Framed(index, buf=host_buffer(DIRECT_HEADROOM + size), start=DIRECT_HEADROOM,
                      end=DIRECT_HEADROOM, off=np.empty(cap, np.int64),
                      length=np.empty(cap, np.int64), seq=np.empty(cap, np.uint64),
                      row_segment=np.empty(cap, np.int64),
                      row_file_offset=np.empty(cap, np.int64), torn_tails=[])

    def _frame_into(self, item: Framed, pos: int, end: int) -> int:
        """Frame ``item.buf[pos:end]`` onto the item's rows; where framing stopped."""
        rows = [item.off, item.length, item.seq, item.row_segment, item.row_file_offset]
        item.n, stop = _frame_rows(self._frame, item.buf, pos, end, rows, item.n)
        item.off, item.length, item.seq, item.row_segment, item.row_file_offset = rows
        return stop

    def _end_merge(self) -> bool:
        """Emit the item of small segments being filled, if any."""
        item, self._small_item = self._small_item, None
        if item is None or not item.bytes_read:
            return True
        return self._emit(item)

    def _head(self, seg) -> tuple[bytes | OSError, int | None]:
        """The segment's header, or why it cannot be read (a bad header, as SPEC
        section 2 has it), and the descriptor it was read with (the caller closes it),
        for a small segment's records to be read in the same open."""
        try:
            fd = os.open(seg.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            return err, None
        head = b""
        try:
            while len(head) < self._header_size:
                more = os.pread(fd, self._header_size - len(head), len(head))
                if not more:
                    break
                head += more
        except OSError as err:
            os.close(fd)
            return err, None
        return head, fd

    def _small(self, fd: int, index: int, seg, start: int) -> Piece:
        """A small segment's records, from ``start`` to its listed end, as one piece in
        a buffer of its own: plain memory, not the caller's (page-locked on a GPU:
        costly to allocate), as a restore packs small pieces into buffers of its own."""
        headroom = min(DIRECT_HEADROOM, self._reader.headroom)
        length = seg.size - start
        piece = Piece(index, start, host_buffer(headroom + length), headroom, length,
                      last=True, own=True)
        return _fill(piece, fd, seg.path, seg.size)

    def _segment(self, index: int, pieces, header_len: int, start_offset: int) -> bool:
        carry = np.zeros(0, np.uint8)  # carry[:c]: the bytes not framed yet
        c = 0
        carry_file = start_offset
        file_size = self._segments[index].size
        gathered = 0  # bytes read into carry by pieces that had no item of their own
        while True:
            piece = next(pieces)
            if piece.error is not None:  # (a piece read ahead raises in the iteration)
                raise piece.error
            t = time.perf_counter()
            read = piece.length + (header_len if piece.file_offset == self._header_size else 0)
            need = declared_size(carry, 0, c)
            if not piece.last and need > c + piece.length:
                # A record that this piece does not complete either: its bytes go into
                # one buffer of its declared size (within the file: checked when its
                # header was framed), not into a carry framed and copied again at
                # every piece, which is quadratic in the record.
                if len(carry) < need:
                    grown = np.empty(need, np.uint8)
                    grown[:c] = carry[:c]
                    carry = grown
                carry[c:c + piece.length] = piece.buf[piece.data:piece.data + piece.length]
                c += piece.length
                gathered += read
                self._release(piece)
                self.frame_seconds += time.perf_counter() - t
                continue
            if c <= piece.data:
                buf, ring, start = piece.buf, None if piece.own else piece, piece.data - c
                buf[start:piece.data] = carry[:c]
            else:
                # A record longer than the headroom: a buffer of its own, with the
                # same headroom in front for what the consumer carries.
                buf = self._alloc(self._reader.headroom + c + piece.length)
                start = self._reader.headroom
                buf[start:start + c] = carry[:c]
                buf[start + c:start + c + piece.length] = piece.buf[
                    piece.data:piece.data + piece.length]
                self._release(piece)
                ring = None
            end = start + c + piece.length
            n, off, length, seq, stop = self._frame_all(buf, start, end)
            item = Framed(index, buf=buf, ring=ring, start=start, end=end,
                          file_start=carry_file, n=n, off=off, length=length, seq=seq,
                          bytes_read=read + gathered)
            gathered = 0
            carry_file += stop - start
            if not piece.last and carry_file + declared_size(buf, stop, end) > file_size:
                # The record's length runs past the end of its file: a torn tail now,
                # not after reading the rest of the file towards it.
                self._reader.skip(index)
                item.torn = (carry_file, file_size - carry_file)
                # The rest of the file, not read, counts as a read of it whole would
                # (the report's bytes_read is the same whatever the piece size).
                item.bytes_read += file_size - (piece.file_offset + piece.length)
                self.frame_seconds += time.perf_counter() - t
                return self._emit(item)
            carry = buf[stop:end].copy()
            c = len(carry)
            if piece.last and c:
                item.torn = (carry_file, c)
            self.frame_seconds += time.perf_counter() - t
            if not self._emit(item):
                return False
            if piece.last:
                return True

    def _release(self, piece: Piece) -> None:
        if not piece.own:
            self._reader.release(piece)

    def _frame_all(self, buf, start: int, end: int):
        """Every whole record of ``buf[start:end]``, growing the row arrays as needed."""
        cap = max(64, (end - start) // 256)
        rows = [np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.uint64)]
        n, stop = _frame_rows(self._frame, buf, start, end, rows, 0)
        return n, *rows, stop

    def close(self) -> None:
        """Stop the framing thread and wait for it; a stop landing here comes after it,
        as in ``Readahead.close``."""
        with interrupts.holding():
            self._stop.set()
            self._reader.stop()  # a read it may wait on could wait for a buffer forever
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()


def host_buffer(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


def scan_chunk_bytes(segments, chunk_bytes: int) -> int:
    """The piece size of a read-only scan: a piece never spans segments, so a small
    log needs no full-size buffers."""
    return max(64, min(int(chunk_bytes), max((s.size for s in segments), default=0)))


def framed_pieces(segments, chunk_bytes: int, header_check: Callable[[bytes], object],
                  merge_small: str | None = None) -> Iterator[Framed]:
    """Read and frame every segment's records, piece by piece, for a scan that only
    looks (verify, inspect): the ``FrameAhead`` items, in log order (with
    ``merge_small``, small segments framed together: see ``FrameAhead``).

    A piece's buffer goes back to the ring when the next item is asked for, so
    the caller must be done with ``item.buf`` by then. The threads stop when the
    loop ends, however it ends.
    """
    ranges = [(i, seg.path, HEADER_SIZE, seg.size) for i, seg in enumerate(segments)
              if seg.size > HEADER_SIZE]
    reader = Readahead(ranges, chunk_bytes, HEADROOM, host_buffer, threads=READ_THREADS,
                       map_files=True, direct_bytes=DIRECT_BYTES)
    try:
        framer = FrameAhead(segments, reader, host_buffer, frame_records, header_check,
                            HEADER_SIZE, merge_small=merge_small)
    except BaseException:
        reader.close()
        raise
    try:
        for item in framer:
            yield item
            if item.problem is None and item.ring is not None:
                reader.release(item.ring)
            interrupts.check()  # a stop whose exception a callback swallowed
    finally:
        with interrupts.holding():  # (between the two closes too)
            framer.close()
            reader.close()
