"""A WAL writer whose files are byte-identical to those of oxirs-vec's ``WalManager``.

It follows ``engine/oxirs-vec/src/wal.rs`` step by step, buffering included, so
rotation happens at the same record; used to build test and benchmark WALs, and by
Python stores. It departs from it only where WalManager's log would not restore as
written (``WalWriter`` lists where).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from gpu_pitr.errors import WalDirectoryInUseError
from gpu_pitr.format.codec import encode_entry
from gpu_pitr.format.entries import Batch, Checkpoint, Insert, Update, WalEntry, as_vector
from gpu_pitr.format.layout import MAGIC, SEGMENT_NAME_RE, VERSION, segment_name
from gpu_pitr.format.reader import scan_segment

_U64_LIMIT = 1 << 64
_U32_LIMIT = 1 << 32


def encode_header(created: int) -> bytes:
    """The 16-byte segment header: magic, version 1, creation second."""
    if not 0 <= created < _U64_LIMIT:
        raise ValueError(f"creation time out of range: {created}")
    return MAGIC + struct.pack("<IQ", VERSION, created)


def encode_record(seq: int, payload: bytes) -> bytes:
    """One record: sequence number (u64 LE), payload length (u32 LE), payload."""
    if not 0 <= seq < _U64_LIMIT:
        raise ValueError(f"sequence number out of range: {seq}")
    if len(payload) >= _U32_LIMIT:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a u32 length")
    return struct.pack("<QI", seq, len(payload)) + bytes(payload)


class _BufWriter:
    """Rust's ``std::io::BufWriter`` write policy over an append-mode file.

    WalManager decides rotation from the size of the file on disk, which lags
    behind what was written by whatever sits in this buffer; copying the policy
    makes rotation happen at the same record as in Rust.
    """

    def __init__(self, path: Path, capacity: int) -> None:
        self._file = open(path, "ab", buffering=0)
        self._capacity = capacity
        self._buf = bytearray()
        # Rust's Drop writes the buffer out; without this a writer never closed (an
        # exception, a forgotten close) lost every record still buffered at exit.
        self.write_out = weakref.finalize(self, _write_out, self._file, self._buf, os.getpid())

    def write_all(self, data: bytes) -> None:
        # Same branches as BufWriter::write_all / write_all_cold.
        spare = self._capacity - len(self._buf)
        if len(data) < spare:
            self._buf += data
            return
        if len(data) > spare:
            self.flush_buf()
        if len(data) >= self._capacity:
            self._write_raw(data)
        else:
            self._buf += data

    def flush_buf(self) -> None:
        _drain(self._file, self._buf)

    def sync(self) -> None:
        """``flush()`` then ``sync_all()``, as WalManager does after each write when asked."""
        self.flush_buf()
        os.fsync(self._file.fileno())

    def disk_size(self) -> int:
        """``File::metadata().len()``: bytes on disk, the buffer not included."""
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        self.flush_buf()
        self.write_out.detach()
        self._file.close()

    def discard(self) -> None:
        """Close without writing what is buffered: a segment whose start failed
        (``WalWriter.rotate``). Left to its finalizer, the buffer was written whenever
        the writer was collected (the traceback holding it gone): after the directory
        lock went, or into the file a later rotate had opened, after its records."""
        self.write_out.detach()
        self._buf.clear()
        self._file.close()

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            written = self._file.write(view)
            view = view[written:]


def _write_out(file, buf: bytearray, pid: int) -> None:
    """Flush, fsync and close a writer dropped unclosed, as WalManager's ``Drop`` does
    (not in a forked child exiting: the parent writes its own buffer)."""
    if os.getpid() != pid:
        return
    _drain(file, buf)
    os.fsync(file.fileno())
    file.close()


def _unlock(lock: int, writes_out: list) -> None:
    """Release a writer's directory lock, its last buffered records written out first."""
    try:
        if writes_out[0] is not None:
            writes_out[0]()  # (a no-op once the segment was closed)
    finally:
        os.close(lock)


def _drain(file, buf: bytearray) -> None:
    """Write ``buf`` to ``file``, removing from it what was written, an error or not
    (BufWriter::flush_buf's guard): a flush that failed part way (a disk full) and is
    tried again writes only the rest, not the part written twice."""
    view, done = memoryview(bytes(buf)), 0  # (a view of buf itself would pin its size)
    try:
        while done < len(view):
            done += file.write(view[done:])
    finally:
        del buf[:done]


# The WalWriters of this process that hold a directory lock.
_LOCKED: weakref.WeakSet = weakref.WeakSet()


def _forget_locks() -> None:
    """In a forked child: close its copies of the parent's directory locks. A flock
    belongs to the open file, which the child shares: while any child lived, the
    parent's writer, closed and opened again, was refused as in use."""
    for writer in list(_LOCKED):
        held = writer._unlock.detach()
        if held is not None:
            os.close(held[2][0])
    _LOCKED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks)


def _lock_directory(wal_dir: Path) -> int | None:
    """An exclusive ``flock`` on ``wal_dir`` itself (no file is made in it), refused at
    once if another WalWriter holds it: two writers would interleave their buffers'
    pieces in one file. Best effort where a directory cannot be locked (NFS)."""
    try:
        import fcntl
    except ImportError:  # (Windows)
        return None
    try:
        fd = os.open(wal_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WalDirectoryInUseError(wal_dir, err) from None
        return None
    return fd


def _sync_directory(wal_dir: Path) -> None:
    """fsync ``wal_dir`` as every output's directory is (``tempfiles.fsync_dir``: a file
    system that refuses to sync a directory, EINVAL or EBADF, is taken at its word), and
    pass over a directory this process may not open for reading (EACCES), as PostgreSQL's
    ``fsync_fname_ext`` does: a flush of records already synced into their file must not
    fail for it."""
    from gpu_pitr.tempfiles import fsync_dir

    try:
        fsync_dir(wal_dir)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EISDIR):
            raise


def _check_dim(entry: WalEntry, dim: int) -> None:
    pending = [entry]
    while pending:
        item = pending.pop()
        if isinstance(item, Batch):
            pending.extend(item.entries)
        elif isinstance(item, (Insert, Update)):
            length = len(as_vector(item.vector))
            if length != dim:
                raise ValueError(f"vector of {item.id!r} has length {length}, not {dim}")


def _newest_segment(wal_dir: Path) -> int | None:
    """The creation second in the newest segment name in ``wal_dir``, if any."""
    try:
        names = [e.name for e in os.scandir(wal_dir) if SEGMENT_NAME_RE.fullmatch(e.name)]
    except PermissionError:  # a directory this process may write in but not list
        return None
    return int(max(names)[4:20], 16) if names else None


class WalWriter:
    """Appends entries to a WAL directory exactly as ``WalManager`` would.

    Followed from WalManager:

    - opening creates the directory and starts a segment named after the current
      second, opened in append mode: reopening within the same second appends a
      second header to the same file;
    - sequence numbers start at 0 on every open (``next_seq`` stands in for what
      ``WalManager::recover`` would set) and run on across rotations;
    - after each append, if the file's size on disk (buffered bytes excluded)
      is at least ``max_segment_bytes``, a new segment is started (same second:
      same file, one more header);
    - with ``checkpoint_interval``, once ``seq - last checkpoint >= interval`` a
      ``Checkpoint{sequence_number: seq}`` record is written with the next
      sequence number and the clock's timestamp.

    Deliberate differences: ``max_segment_bytes`` and ``checkpoint_interval`` default
    to off (WalConfig's defaults are 100 MiB and 10000), and old segments are never
    deleted (WalManager's ``checkpoint_retention`` cleanup). Four more, each where
    WalManager's log would not restore as written:

    - an entry that does not encode raises and takes no sequence number (WalManager
      numbers it first; in Rust only an entry of the wrong type fails, which Python
      does not prevent, and the gap would read as records lost);
    - only one WalWriter at a time may have a directory open (an ``flock`` on the
      directory; a second one raises ``WalDirectoryInUseError``);
    - a segment named after the clock is never named before the newest segment in the
      directory (a clock stepped back would put its records first in log order): it is
      named one second after it instead;
    - reopened within the same second onto a file whose last record is torn (a crash
      mid-write), it starts a file of the next second rather than append its header
      inside that record, where a reader would lose every record after it; the torn
      file is left as it is (``torn_tail_found`` names it);

    and a writer dropped without ``close`` is flushed and synced, as Rust's ``Drop``;
    a sync after a segment was created syncs the directory too, so its name survives a
    power cut with the records synced into it.

    Args:
        wal_dir: directory of the WAL; created if missing.
        created: creation second of the first segment (default: ``clock()``).
        clock: Unix time in seconds, used for later segments and checkpoints.
        max_segment_bytes: rotate once a segment's on-disk size reaches this.
        checkpoint_interval: write automatic checkpoints, as WalManager does.
        sync_on_write: flush and fsync after every write (WalConfig.sync_on_write).
        buffer_size: write buffer capacity (WalConfig.buffer_size).
        next_seq: the first sequence number to use.
        dim: if given, an Insert or Update (in a batch too) whose vector has another
            length raises ``ValueError`` and is not written: a restore that applied it
            would fail (SPEC section 2).
    """

    def __init__(
        self,
        wal_dir: str | os.PathLike,
        *,
        created: int | None = None,
        clock: Callable[[], float] = time.time,
        max_segment_bytes: int | None = None,
        checkpoint_interval: int | None = None,
        sync_on_write: bool = False,
        buffer_size: int = 64 * 1024,
        next_seq: int = 0,
        dim: int | None = None,
    ) -> None:
        self.wal_dir = Path(wal_dir)
        self._dim = dim
        self._clock = clock
        self._max_segment_bytes = max_segment_bytes
        self._checkpoint_interval = checkpoint_interval
        self._sync_on_write = sync_on_write
        self._buffer_size = buffer_size
        self._next_seq = next_seq
        self._last_checkpoint = 0
        self._out: _BufWriter | None = None
        self.path: Path | None = None
        # Reopened onto a file whose last record is torn: (its path, the torn record's
        # offset, the bytes it has), a tail left as it is (see _past_torn_tail).
        self.torn_tail_found: tuple[Path, int, int] | None = None
        self._entry_unsynced = False
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_directory(self.wal_dir)
        # The open segment's write-out (its _BufWriter's finalizer), run before the lock
        # goes when the writer is collected unclosed: another writer may lock the
        # directory the moment it is released, so no buffered record may follow.
        self._writes_out: list = [None]
        self._unlock = (weakref.finalize(self, _unlock, lock, self._writes_out)
                        if lock is not None else None)
        if self._unlock is not None:
            _LOCKED.add(self)
        try:
            self._newest = _newest_segment(self.wal_dir)
            self.rotate(self._past_torn_tail(self._segment_second(created)))
        except BaseException:
            # Not opened: the lock goes now, not with this half-made writer, which the
            # traceback holds (a notebook keeps the last one): an open tried again once
            # the cause is gone would be refused as "in use".
            self.close()
            raise

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        return self._next_seq

    def rotate(self, created: int | None = None) -> Path:
        """Start the segment of second ``created`` (default: ``clock()``); return its path.

        As in ``rotate_wal_file``, the new file's header is written before the old
        file is flushed and closed.
        """
        created = self._segment_second(created)
        header = encode_header(created)
        path = self.wal_dir / segment_name(created)
        new_entry = not path.exists()
        new = _BufWriter(path, self._buffer_size)
        before, closing = None, False
        try:
            before = new.disk_size()
            new.write_all(header[:4])
            new.write_all(header[4:8])
            new.write_all(header[8:])
            self._entry_unsynced = self._entry_unsynced or new_entry
            if self._sync_on_write:
                self._sync(new)
            closing = True  # (what the old segment writes now is its own: kept)
            if self._out is not None:
                self._out.close()
        except BaseException:
            # Not started (a sync or the old segment's last flush failed): the writer
            # stays on its segment, if it has one, and this one writes nothing more. What
            # it wrote goes: a file it made, the bytes it appended to one there (part of
            # a header, a disk full, was a torn start that the header of the next rotate
            # to that second followed: a bad header, every record after it lost).
            new.discard()
            with contextlib.suppress(OSError):  # best effort: the error that came counts
                if new_entry:
                    path.unlink()
                elif not closing and before is not None and path.stat().st_size > before:
                    os.truncate(path, before)
            raise
        self._out = new
        self._writes_out[0] = new.write_out
        self.path = path
        self._newest = created if self._newest is None else max(self._newest, created)
        return path

    def append(self, entry: WalEntry) -> int:
        """Write ``entry`` as the next record; return the sequence number it got."""
        out = self._open_file()
        if self._dim is not None:
            _check_dim(entry, self._dim)
        record = encode_record(self._next_seq, encode_entry(entry))
        seq = self._take_seq()
        self._write_record(out, record)
        if self._max_segment_bytes is not None and out.disk_size() >= self._max_segment_bytes:
            self.rotate()
        if (
            self._checkpoint_interval is not None
            and seq - self._last_checkpoint >= self._checkpoint_interval
        ):
            self.checkpoint(seq)
        return seq

    def checkpoint(self, sequence_number: int, timestamp: int | None = None) -> int:
        """Write ``Checkpoint{sequence_number, timestamp}`` as WalManager::checkpoint does.

        No rotation check follows it and no old segment is deleted.

        Returns:
            The sequence number of the checkpoint record itself.
        """
        out = self._open_file()
        if timestamp is None:
            timestamp = int(self._clock())
        record = encode_record(self._next_seq, encode_entry(Checkpoint(sequence_number, timestamp)))
        seq = self._take_seq()
        self._write_record(out, record)
        self._last_checkpoint = sequence_number
        return seq

    def flush(self) -> None:
        """Flush the buffer and fsync, like ``WalManager::flush``."""
        self._sync(self._open_file())

    def close(self) -> None:
        """Flush and close (WalManager's ``Drop``); closing twice is harmless."""
        if self._out is not None:
            self._sync(self._out)
            self._out.close()
            self._out = None
        if self._unlock is not None:
            self._unlock()  # closing the directory releases the lock

    def __enter__(self) -> WalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_file(self) -> _BufWriter:
        if self._out is None:
            raise ValueError("WAL writer is closed")
        return self._out

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _segment_second(self, created: int | None) -> int:
        """``created``, or the clock's second, moved past the newest segment if behind it."""
        if created is not None:
            return created
        second = int(self._clock())
        if self._newest is not None and second < self._newest:
            second = self._newest + 1
        return second

    def _past_torn_tail(self, created: int) -> int:
        """``created``, or a later second when the file of ``created``, which this open
        would append to, ends inside a record (a crash mid-write): the header appended
        there would be inside that record's length, and a reader (SPEC section 1 knows a
        header only at a record boundary) would lose every record after it. The torn
        file is left as it is (its tail is a torn tail to every restore)."""
        path = self.wal_dir / segment_name(created)
        if not path.is_file() or path.stat().st_size == 0:
            return created
        torn = scan_segment(path).torn_tail
        if torn is None or not torn.lost:
            return created
        self.torn_tail_found = (path, torn.offset, torn.lost)
        return max(created, self._newest or created) + 1

    def _write_record(self, out: _BufWriter, record: bytes) -> None:
        # Three writes, as in Rust: each can flush the buffer at a different point.
        out.write_all(record[:8])
        out.write_all(record[8:12])
        out.write_all(record[12:])
        if self._sync_on_write:
            self._sync(out)

    def _sync(self, out: _BufWriter) -> None:
        """``out.sync()``, then the directory if a segment was created since it was last
        synced: WalManager never syncs it, so a power cut could lose a new segment's
        name, with every record synced into it (PostgreSQL syncs pg_wal after making
        a segment)."""
        out.sync()
        if self._entry_unsynced:
            _sync_directory(self.wal_dir)
            self._entry_unsynced = False
