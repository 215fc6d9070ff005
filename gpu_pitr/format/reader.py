"""Pure-Python reading of segment files into raw records, with the damage found.

Simple and slow on purpose: the reference for the framing pass, and the reader
behind ``inspect`` and the tests. Payloads are returned undecoded.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpu_pitr.format.layout import HEADER_ID, HEADER_SIZE, MAGIC, RECORD_HEADER_SIZE, VERSION
from gpu_pitr.format.segments import list_segments, unreadable


@dataclass(frozen=True)
class RawRecord:
    """One framed record; ``offset`` is where its sequence number starts in the file."""

    seq: int
    offset: int
    payload: bytes


@dataclass(frozen=True)
class TornTail:
    """The file ends inside a record (or header) starting at ``offset``; ``lost`` bytes follow."""

    offset: int
    lost: int


@dataclass(frozen=True)
class BadHeader:
    """The file's header is not a WALV version 1 header; nothing in it was read."""

    offset: int
    what: str


@dataclass
class SegmentScan:
    """What one segment file holds: its records and any damage."""

    path: Path
    size: int
    created: int | None = None
    records: list[RawRecord] = field(default_factory=list)
    extra_headers: list[int] = field(default_factory=list)
    torn_tail: TornTail | None = None
    bad_header: BadHeader | None = None


def scan_segment(path: str | os.PathLike) -> SegmentScan:
    """Read one segment file whole and frame its records.

    A short file whose bytes are a prefix of a valid header (an empty file
    included) is a torn tail at 0; any other bad header, or a file that cannot be
    read, is ``bad_header``. A second
    header at a record boundary (magic and version 1) is skipped and its offset
    listed in ``extra_headers``. Lengths are checked against the bytes present
    before anything is sliced.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:  # a link to nothing, no permission: a bad header (SPEC section 2)
        return SegmentScan(path=path, size=0, bad_header=BadHeader(0, unreadable(err)))
    scan = SegmentScan(path=path, size=len(data))
    if len(data) < HEADER_SIZE:
        if data[: len(HEADER_ID)] == HEADER_ID[: len(data)]:
            scan.torn_tail = TornTail(0, len(data))
        else:
            scan.bad_header = BadHeader(0, "wrong magic")
        return scan
    if data[:4] != MAGIC:
        scan.bad_header = BadHeader(0, f"wrong magic {data[:4]!r}")
        return scan
    (version,) = struct.unpack_from("<I", data, 4)
    if version != VERSION:
        # At the header's offset, as restore and verify put it (not the field's, 4).
        scan.bad_header = BadHeader(0, f"unsupported version {version}")
        return scan
    (scan.created,) = struct.unpack_from("<Q", data, 8)

    pos = HEADER_SIZE
    while pos < len(data):
        left = len(data) - pos
        if data[pos : pos + len(HEADER_ID)] == HEADER_ID:
            # A writer reopened within the same second appended a fresh header.
            if left < HEADER_SIZE:
                scan.torn_tail = TornTail(pos, left)
                break
            scan.extra_headers.append(pos)
            pos += HEADER_SIZE
            continue
        if left < RECORD_HEADER_SIZE:
            scan.torn_tail = TornTail(pos, left)
            break
        seq, length = struct.unpack_from("<QI", data, pos)
        if length > left - RECORD_HEADER_SIZE:
            scan.torn_tail = TornTail(pos, left)
            break
        start = pos + RECORD_HEADER_SIZE
        scan.records.append(RawRecord(seq, pos, data[start : start + length]))
        pos = start + length
    return scan


def iter_segment(path: str | os.PathLike) -> Iterator[RawRecord]:
    """The records of one segment, in file order (damage: use ``scan_segment``)."""
    return iter(scan_segment(path).records)


def scan_wal(wal_dir: str | os.PathLike) -> list[SegmentScan]:
    """``scan_segment`` of every segment of ``wal_dir``, in log order."""
    return [scan_segment(segment.path) for segment in list_segments(wal_dir)]
