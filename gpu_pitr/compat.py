"""oxirs-vec's ``PointInTimeRestore`` (``persistence/point_in_time.rs``), quirks included.

For code ported from the seed (SPEC section 5). It returns the entries the seed
returns, in the same order; it does not build a state.

Where it differs from SPEC section 3, on purpose (the seed does it this way):

- entries are filtered one by one by their own timestamp (``<= target``), not
  cut at the first commit point past the target: a later entry with an earlier
  timestamp is still returned;
- a Batch is judged by the Batch's timestamp and returned whole;
- transactions are ignored: markers are dropped, entries of aborted and
  never-committed transactions are returned;
- with a base, records are kept when the record's sequence number is greater
  than the base Checkpoint's ``sequence_number`` field, although sequence
  numbers restart at 0 whenever the writer reopens;
- damage is never an error: an undecodable record is skipped, a torn tail or
  a length over 100,000,000 ends that file, a file with the wrong magic (or
  shorter than its header) is skipped, the version is not checked, and a
  second header is read as a record (with a real creation second its "length"
  exceeds the limit, so the rest of that file is dropped);
- nor is a file that cannot be read: one that does not open is skipped with a
  warning, a read error (EIO) in its header skips it without one and a read error
  after that ends it with one, the records before it kept;
- a directory that cannot be looked up reads as empty, as a missing one does (the
  seed asks ``Path::exists()``, false for any error: a name too long, a parent it
  may not search);
- every ``wal-*.log`` name is read, not only ``wal-<16 hex>.log``;
- nothing else in SPEC section 2 is checked either: vectors of different lengths
  are returned without a word, bytes left over after a payload are not counted,
  and a log whose first record is not sequence number 0 (history deleted by
  retention, SPEC section 4) is read as if complete.

Where it differs from the seed:

- the seed opens a ``WalManager`` on the directory before scanning, which creates
  (or appends a header to) ``wal-<now>.log``; here the directory is only read, as
  SPEC section 2 requires of every command. So a read-only directory, where the
  seed fails ("Cannot open WAL for PIT recovery"), is read here, and a live log is
  not cut: the header the seed appends lands after a writer's records of that
  second, and its own later reads stop there (the second-header quirk above);
- a ``wal-*.log`` name that is not a regular file (a FIFO, socket or device, or a
  link to one) is passed over with a warning; the seed blocks forever opening a
  FIFO and reads a device's first 4 bytes as a magic;
- the target must be an integer (a u64): a float or a bool is a ``TypeError``.
"""

from __future__ import annotations

import logging
import operator
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from gpu_pitr.errors import WalError
from gpu_pitr.format.codec import PayloadError, decode_entry
from gpu_pitr.format.entries import (
    AbortTransaction,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    WalEntry,
)
from gpu_pitr.format.layout import (
    HEADER_SIZE,
    MAGIC,
    RECORD_HEADER_SIZE,
    SEGMENT_PREFIX,
    SEGMENT_SUFFIX,
)
from gpu_pitr.format.segments import NotARegularFile, open_regular

log = logging.getLogger(__name__)

# The seed's "sanity guard" on a record length; not part of the format.
SEED_MAX_ENTRY_LEN = 100_000_000
_MARKERS = (Checkpoint, BeginTransaction, CommitTransaction, AbortTransaction)


@dataclass
class CheckpointRef:
    """A Checkpoint entry found by ``find_base_checkpoint`` (its fields, not its record's)."""

    sequence_number: int = 0
    timestamp: int = 0


class PointInTimeRestore:
    """The seed's point-in-time driver over a WAL directory.

    Args:
        target_timestamp: Unix seconds, a u64.
        wal_dir: the WAL directory; a missing directory (or one that cannot be
            looked up) reads as empty.
    """

    def __init__(self, target_timestamp: int, wal_dir: str | os.PathLike) -> None:
        if isinstance(target_timestamp, bool):
            raise TypeError("target timestamp must be an integer (a u64), got a bool")
        # A u64 in the seed: an integer, never a float (10.5 or 1e19 were taken as is).
        target_timestamp = operator.index(target_timestamp)
        if not 0 <= target_timestamp < 1 << 64:
            raise ValueError(f"target timestamp must be a u64, got {target_timestamp}")
        self.target_timestamp = target_timestamp
        self.wal_dir = Path(wal_dir)

    def find_base_checkpoint(self) -> CheckpointRef | None:
        """The top-level Checkpoint with the greatest timestamp ``<= target``.

        On a tie the first in log order wins; checkpoints inside batches are not
        seen. None when there is none.
        """
        best: CheckpointRef | None = None
        for _, entry in self._indexed_entries():
            if isinstance(entry, Checkpoint) and entry.timestamp <= self.target_timestamp:
                if best is None or entry.timestamp > best.timestamp:
                    best = CheckpointRef(entry.sequence_number, entry.timestamp)
        return best

    def replay_wal_to_timestamp(self, base: CheckpointRef | None = None) -> list[WalEntry]:
        """Every data entry with ``timestamp <= target``, in log order (see module doc).

        Args:
            base: when given, records whose sequence number is ``<=
                base.sequence_number`` are left out.
        """
        result = []
        for seq, entry in self._indexed_entries():
            if base is not None and seq <= base.sequence_number:
                continue
            if entry.timestamp > self.target_timestamp:
                continue
            if isinstance(entry, _MARKERS):
                continue
            result.append(entry)
        return result

    def _indexed_entries(self) -> list[tuple[int, WalEntry]]:
        """``(record sequence number, entry)`` of every record the seed can decode."""
        try:
            mode = os.stat(self.wal_dir).st_mode
        except (OSError, ValueError):
            # Path::exists() in the seed: any error looking it up (not only ENOENT,
            # where pathlib's exists() raises for ENAMETOOLONG or EACCES; a NUL byte in
            # the name, ValueError here) reads as empty.
            return []
        if not stat.S_ISDIR(mode):
            # The seed fails here too: WalManager::new cannot create the directory.
            raise WalError("not a directory", file=str(self.wal_dir))
        result: list[tuple[int, WalEntry]] = []
        for path in _seed_wal_files(self.wal_dir):
            result.extend(_seed_scan_file(path))
        return result


def _seed_wal_files(wal_dir: Path) -> list[Path]:
    """``wal-*.log`` names (valid UTF-8 only), sorted by their bytes, as the seed lists them."""
    names = []
    for entry in os.scandir(wal_dir):
        try:
            raw = entry.name.encode("utf-8")
        except UnicodeEncodeError:
            continue  # Rust's to_str() fails on such names and the seed skips them
        if entry.name.startswith(SEGMENT_PREFIX) and entry.name.endswith(SEGMENT_SUFFIX):
            names.append((raw, entry.name))
    return [wal_dir / name for _, name in sorted(names)]


def _seed_scan_file(path: Path) -> list[tuple[int, WalEntry]]:
    """The seed's ``scan_wal_files`` loop for one file, read as it reads: a record at a time.

    Unlike the seed, a name that is not a regular file (a FIFO, a socket, a device,
    or a link to one) is passed over unread: the seed blocks on a FIFO forever, and
    a link to ``/dev/zero`` must not be read to its (missing) end.
    """
    try:
        fd = open_regular(path)  # without blocking: a FIFO would wait for a writer
    except NotARegularFile as err:
        if not stat.S_ISDIR(err.mode):  # the seed skips a directory silently
            log.warning("PIT: not a regular file, skipped: %s", path)
        return []
    except OSError as err:
        log.warning("PIT: cannot open WAL file %s: %s", path, err)
        return []
    with open(fd, "rb") as file:
        try:
            magic = file.read(len(MAGIC))
            # The version and creation second are skipped unchecked.
            rest = file.read(HEADER_SIZE - len(MAGIC)) if magic == MAGIC else b""
        except OSError:
            return []  # the seed's read_exact(..).is_err(): passed over without a word
        if len(magic) < len(MAGIC):
            return []
        if magic != MAGIC:
            log.warning("PIT: invalid magic in %s", path)
            return []
        if len(rest) < HEADER_SIZE - len(MAGIC):
            return []
        result: list[tuple[int, WalEntry]] = []
        try:
            _seed_scan_records(file, path, result)
        except OSError as err:
            # A read error that is not an end of file: the seed warns and drops the
            # rest of this file, keeping what it read before, and goes on.
            log.warning("PIT: read error in %s: %s", path, err)
    return result


def _seed_scan_records(file, path: Path, result: list[tuple[int, WalEntry]]) -> None:
    """The records after the header, appended to ``result`` one by one (so an
    ``OSError`` raised part way leaves those already read)."""
    while True:
        head = file.read(RECORD_HEADER_SIZE)
        if len(head) < RECORD_HEADER_SIZE:
            return  # end of file, or a torn sequence number / length
        seq, length = struct.unpack("<QI", head)
        if length > SEED_MAX_ENTRY_LEN:
            log.warning("PIT: suspicious entry length %d at seq %d in %s", length, seq, path)
            return
        payload = file.read(length)
        if len(payload) < length:
            return  # torn payload
        try:
            entry, _ = decode_entry(payload)
        except PayloadError as err:
            log.warning("PIT: cannot deserialise entry at seq %d: %s", seq, err)
            continue
        result.append((seq, entry))
