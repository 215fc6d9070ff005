"""Payloads as oxirs-vec releases before bincode 2 wrote them, recognised, not read.

Early oxirs-vec releases encoded each ``WalEntry`` with bincode 1.3's
``bincode::serialize``: fixed-width little-endian integers (a u32 variant index, u64
lengths and u64 fields, a one-byte Option tag) under the same ``WALV`` version-1
segment header as SPEC section 1's bincode 2 payloads. Read as bincode 2, such a
payload either fails to decode or, worse, decodes to an entry with an empty id and
vector followed by trailing bytes, which SPEC section 2 accepts: the restore of such a
log was an index of nothing, without an error. Nothing in the header tells the two
apart, so a record is judged by its payload: one that is not a clean bincode 2 entry
(it left bytes over, or did not decode) and is, byte for byte, one whole bincode 1.3
entry, is one. The check is a plain Python walk: it runs on a few records only (the
first with trailing bytes, a fatal one), never in the restore's compiled pass.
"""

from __future__ import annotations

import os
import struct

from gpu_pitr.format.layout import RECORD_HEADER_SIZE

_VARIANTS = 8  # Insert .. AbortTransaction (SPEC section 1)
_MAX_DEPTH = 64  # batches nested deeper are not taken for a writer's


def _u32(buf: bytes, pos: int) -> int | None:
    return struct.unpack_from("<I", buf, pos)[0] if pos + 4 <= len(buf) else None


def _u64(buf: bytes, pos: int) -> int | None:
    return struct.unpack_from("<Q", buf, pos)[0] if pos + 8 <= len(buf) else None


def _string_end(buf: bytes, pos: int) -> int | None:
    n = _u64(buf, pos)
    if n is None or n > len(buf) - pos - 8:
        return None
    try:
        bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return pos + 8 + n


def _vector_end(buf: bytes, pos: int) -> int | None:
    n = _u64(buf, pos)
    if n is None or n > (len(buf) - pos - 8) // 4:
        return None
    return pos + 8 + 4 * n


def _metadata_end(buf: bytes, pos: int) -> int | None:
    if pos >= len(buf) or buf[pos] > 1:
        return None
    if buf[pos] == 0:
        return pos + 1
    pairs = _u64(buf, pos + 1)
    if pairs is None or pairs > (len(buf) - pos - 9) // 16:  # each pair: two u64 lengths
        return None
    pos += 9
    for _ in range(pairs):
        pos = _string_end(buf, pos)
        pos = None if pos is None else _string_end(buf, pos)
        if pos is None:
            return None
    return pos


def entry_end(buf: bytes, pos: int = 0, depth: int = 0) -> int | None:
    """Where the bincode 1.3 ``WalEntry`` starting at ``pos`` of ``buf`` ends, or None
    where the bytes are not one (every length checked against the bytes left)."""
    variant = _u32(buf, pos)
    if variant is None or variant >= _VARIANTS or depth > _MAX_DEPTH:
        return None
    pos += 4
    if variant in (0, 1):  # Insert, Update: id, vector, metadata, timestamp
        pos = _string_end(buf, pos)
        pos = None if pos is None else _vector_end(buf, pos)
        pos = None if pos is None else _metadata_end(buf, pos)
    elif variant == 2:  # Delete: id, timestamp
        pos = _string_end(buf, pos)
    elif variant == 3:  # Batch: entries, timestamp
        count = _u64(buf, pos)
        if count is None or count > (len(buf) - pos - 8) // 4:
            return None
        pos += 8
        for _ in range(count):
            pos = entry_end(buf, pos, depth + 1)
            if pos is None:
                return None
    else:  # Checkpoint (sequence_number), Begin/Commit/AbortTransaction (transaction_id)
        pos += 8
    if pos is None or pos + 8 > len(buf):  # the timestamp, a u64
        return None
    return pos + 8


def is_bincode1(payload: bytes) -> bool:
    """Whether ``payload`` is exactly one bincode 1.3 ``WalEntry``, nothing left over."""
    return entry_end(payload) == len(payload)


def record_is_bincode1(path: str | os.PathLike, offset: int) -> bool:
    """Whether the record at ``offset`` of the segment ``path`` (its header's offset)
    holds a bincode 1.3 payload; False where it cannot be read whole."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(RECORD_HEADER_SIZE)
            if len(head) < RECORD_HEADER_SIZE:
                return False
            length = struct.unpack_from("<I", head, 8)[0]
            payload = f.read(length)
    except OSError:
        return False
    return len(payload) == length and is_bincode1(payload)


OLDER_FORMAT = ("bincode 1.3 (fixed-width integers), the payload format of oxirs-vec "
                "releases before bincode 2: this log looks written by one, and gpu_pitr "
                "reads only SPEC section 1's bincode 2 payloads")
WHOLE_ENTRY = f"it is a whole entry of {OLDER_FORMAT}"  # what a record found so says
EXAMINED = 8  # records looked at, of those that are not clean bincode 2 entries


class Examiner:
    """The words of a damage item (``verify``'s, ``inspect``'s, the restore's warning)
    for each of the first ``EXAMINED`` records that are not clean bincode 2 entries
    that is a whole bincode 1.3 one: a Python walk of each, so a log of millions of
    such records costs eight, the rest of it as damaged as they are."""

    def __init__(self) -> None:
        self.left = EXAMINED

    def _looks(self) -> bool:
        self.left -= 1
        return self.left >= 0

    def of(self, payload) -> str | None:
        """``WHOLE_ENTRY`` where ``payload`` (bytes-like) is one, while any look is left."""
        return WHOLE_ENTRY if self._looks() and is_bincode1(bytes(payload)) else None

    def at(self, path: str | os.PathLike, offset: int) -> str | None:
        """``WHOLE_ENTRY`` where the record at ``offset`` of ``path`` holds one
        (``record_is_bincode1``), while any look is left."""
        return WHOLE_ENTRY if self._looks() and record_is_bincode1(path, offset) else None
