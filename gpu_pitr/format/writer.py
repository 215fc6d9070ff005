"""A WAL writer whose files are byte-identical to those of oxirs-vec's ``WalManager``.

It follows ``engine/oxirs-vec/src/wal.rs`` step by step, buffering included, so
rotation happens at the same record; used to build test and benchmark WALs.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from gpu_pitr.format.codec import encode_entry
from gpu_pitr.format.entries import Checkpoint, WalEntry
from gpu_pitr.format.layout import MAGIC, VERSION, segment_name

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
        self._write_raw(self._buf)
        self._buf.clear()

    def sync(self) -> None:
        """``flush()`` then ``sync_all()``, as WalManager does after each write when asked."""
        self.flush_buf()
        os.fsync(self._file.fileno())

    def disk_size(self) -> int:
        """``File::metadata().len()``: bytes on disk, the buffer not included."""
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        self.flush_buf()
        self._file.close()

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            written = self._file.write(view)
            view = view[written:]


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
    deleted (WalManager's ``checkpoint_retention`` cleanup).

    Args:
        wal_dir: directory of the WAL; created if missing.
        created: creation second of the first segment (default: ``clock()``).
        clock: Unix time in seconds, used for later segments and checkpoints.
        max_segment_bytes: rotate once a segment's on-disk size reaches this.
        checkpoint_interval: write automatic checkpoints, as WalManager does.
        sync_on_write: flush and fsync after every write (WalConfig.sync_on_write).
        buffer_size: write buffer capacity (WalConfig.buffer_size).
        next_seq: the first sequence number to use.
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
    ) -> None:
        self.wal_dir = Path(wal_dir)
        self._clock = clock
        self._max_segment_bytes = max_segment_bytes
        self._checkpoint_interval = checkpoint_interval
        self._sync_on_write = sync_on_write
        self._buffer_size = buffer_size
        self._next_seq = next_seq
        self._last_checkpoint = 0
        self._out: _BufWriter | None = None
        self.path: Path | None = None
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.rotate(created)

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        return self._next_seq

    def rotate(self, created: int | None = None) -> Path:
        """Start the segment of second ``created`` (default: ``clock()``); return its path.

        As in ``rotate_wal_file``, the new file's header is written before the old
        file is flushed and closed.
        """
        if created is None:
            created = int(self._clock())
        header = encode_header(created)
        path = self.wal_dir / segment_name(created)
        new = _BufWriter(path, self._buffer_size)
        new.write_all(header[:4])
        new.write_all(header[4:8])
        new.write_all(header[8:])
        if self._sync_on_write:
            new.sync()
        if self._out is not None:
            self._out.close()
        self._out = new
        self.path = path
        return path

    def append(self, entry: WalEntry) -> int:
        """Write ``entry`` as the next record; return the sequence number it got."""
        out = self._open_file()
        # WalManager takes the number before encoding: a failed encode leaves a gap.
        seq = self._take_seq()
        self._write_record(out, seq, encode_entry(entry))
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
        seq = self._take_seq()
        self._write_record(out, seq, encode_entry(Checkpoint(sequence_number, timestamp)))
        self._last_checkpoint = sequence_number
        return seq

    def flush(self) -> None:
        """Flush the buffer and fsync, like ``WalManager::flush``."""
        self._open_file().sync()

    def close(self) -> None:
        """Flush and close (WalManager's ``Drop``); closing twice is harmless."""
        if self._out is not None:
            self._out.sync()
            self._out.close()
            self._out = None

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

    def _write_record(self, out: _BufWriter, seq: int, payload: bytes) -> None:
        record = encode_record(seq, payload)
        # Three writes, as in Rust: each can flush the buffer at a different point.
        out.write_all(record[:8])
        out.write_all(record[8:12])
        out.write_all(record[12:])
        if self._sync_on_write:
            out.sync()
