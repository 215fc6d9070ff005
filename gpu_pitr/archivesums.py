"""The archive's checksums: what ``gpu-pitr archive`` copied, so that ``verify`` can
check a copy long after the writer deleted the segment it was copied from.

The log's records carry no checksum of their own (SPEC section 1): a flipped bit in an
archived vector decodes as well as the original did. pgBackRest keeps a checksum of
every WAL file it archives for this reason; here, ``.gpu-pitr-archive.sums`` in the
archive holds, per segment file, its size and the CRC-32 of each 1 MiB block of it
(the last block as long as the file makes it), so that ``verify`` names the first
block that changed, not only the file. ``archive`` records a segment's sums from the
copy it has just written (read back before the rename), or, for a copy made before
there were sums, from the copy's bytes once they are found equal to WAL_DIR's
segment. ``expire`` drops the sums of the segments it deletes. The file is written
atomically, once a run, and carries a CRC-32 of its own contents (damage to the file
itself is told apart from damage to a copy).

Format (JSON)::

    {"format": "gpu-pitr archive sums", "version": 1, "block": 1048576,
     "segments": {"wal-0000000065a1b2c3.log": {"size": 1234, "crc32": "89abcdef..."}},
     "check": <CRC-32 of the segments object, dumped with sorted keys and no spaces>}

``crc32`` is 8 lowercase hex digits per block, in block order. A file of this format
with a later ``version`` is refused by its version (a newer gpu-pitr wrote it), not
called another program's: moved aside, the sums of copies whose segments WAL_DIR no
longer holds would be lost for good.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gpu_pitr import interrupts
from gpu_pitr.crc import crc32
from gpu_pitr.errors import WalError, os_reason
from gpu_pitr.format.layout import SEGMENT_NAME_RE
from gpu_pitr.format.segments import read_into

SUMS_NAME = ".gpu-pitr-archive.sums"
SUMS_FORMAT = "gpu-pitr archive sums"
BLOCK = 1 << 20
_READ = 8 << 20  # bytes read at a time: a whole number of blocks
_HEX = re.compile(r"(?:[0-9a-f]{8})*")


@dataclass(frozen=True)
class SegmentSums:
    """A segment file's size and the CRC-32 of each ``BLOCK`` of it."""

    size: int
    crcs: tuple[int, ...]

    def block_range(self, k: int) -> tuple[int, int]:
        """The bytes block ``k`` covers: ``[start, end)``."""
        return k * BLOCK, min((k + 1) * BLOCK, self.size)

    def first_difference(self, other: SegmentSums) -> int | None:
        """The first block whose CRC-32 differs from ``other``'s, among those from the
        start that cover the same bytes in both (a block one of them ends inside is
        covered by no CRC of the other: it and the rest are not compared); None when
        they all agree."""
        for k, (mine, theirs) in enumerate(zip(self.crcs, other.crcs, strict=False)):
            if self.block_range(k) != other.block_range(k):
                return None
            if mine != theirs:
                return k
        return None


def blocks(size: int) -> int:
    """Blocks of a file of ``size`` bytes."""
    return -(-size // BLOCK)


class BlockSums:
    """The block CRC-32s of bytes fed in order (``feed``), from offset 0."""

    def __init__(self) -> None:
        self.crcs: list[int] = []
        self.size = 0
        self._partial = 0  # CRC of the bytes of the last, unfinished block

    def feed(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            room = BLOCK - self.size % BLOCK
            piece = view[:room]
            self._partial = crc32(piece, self._partial)
            self.size += len(piece)
            view = view[len(piece):]
            if self.size % BLOCK == 0:
                self.crcs.append(self._partial)
                self._partial = 0

    def result(self) -> SegmentSums:
        crcs = list(self.crcs)
        if self.size % BLOCK:
            crcs.append(self._partial)
        return SegmentSums(self.size, tuple(crcs))


def file_sums(fd: int, size: int) -> SegmentSums:
    """The sums of the first ``size`` bytes of the open file ``fd`` (``OSError`` if it
    cannot be read, ``EOFError`` if it holds fewer)."""
    sums = BlockSums()
    buf = bytearray(min(_READ, max(size, 1)))
    view = memoryview(buf)
    pos = 0
    while pos < size:
        interrupts.check()  # verify reads copies on threads, which a Ctrl-C does not stop
        n = read_into(fd, view[: min(len(buf), size - pos)], pos)
        if not n:
            raise EOFError(pos)
        sums.feed(view[:n])
        pos += n
    return sums.result()


def first_changed(fd: int, sums: SegmentSums, size: int) -> int | None:
    """The start of the first block of the open file ``fd`` (``size`` bytes now) whose
    CRC-32 is not the one recorded, over the bytes both cover; None when all agree."""
    # A file cut short inside a block: the caller reports the size; the bytes that
    # remain of that block are covered by no CRC alone.
    k = sums.first_difference(file_sums(fd, min(size, sums.size)))
    return None if k is None else k * BLOCK


class SumsError(WalError):
    """The archive's checksum file cannot be read, or is not one ``archive`` wrote."""


def _check(segments: dict) -> int:
    return crc32(json.dumps(segments, sort_keys=True, separators=(",", ":")).encode())


def read(archive_dir: str | os.PathLike) -> dict[str, SegmentSums] | None:
    """The sums recorded in ``archive_dir`` (None: there is no checksum file).

    Raises ``SumsError`` naming the file when it cannot be read or is not one
    ``archive`` wrote (cut short, changed, another program's)."""
    from gpu_pitr.format.segments import NotARegularFile, file_kind, read_regular

    path = Path(archive_dir) / SUMS_NAME
    try:
        # A link is not followed (archive never makes one, and replacing the file would
        # replace the link, not its target); a FIFO or a device is not read.
        raw = read_regular(path, follow=False)
    except NotARegularFile as err:
        raise SumsError(f"not a checksum file gpu-pitr archive wrote: {file_kind(err.mode)}",
                        file=str(path)) from err
    except OSError as err:
        raise SumsError(f"cannot read: {os_reason(err)}", file=str(path)) from err
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and doc.get("format") == SUMS_FORMAT:
        version = doc.get("version")
        if type(version) is int and version > 1:
            # A later gpu-pitr's: moved aside, its sums of segments WAL_DIR no longer
            # holds would be lost for good (the copies could never be checked again).
            raise SumsError(f"version {version} of the archive's checksum file, written by a "
                            "newer gpu-pitr: this one reads version 1 (use that version "
                            "or a later one on this archive; leave the file as it is)",
                            file=str(path))
    try:
        segments = doc["segments"]
        if (doc.get("format") != SUMS_FORMAT or doc.get("version") != 1
                or doc.get("block") != BLOCK or not isinstance(segments, dict)):
            raise ValueError("not ours")
        if doc.get("check") != _check(segments):
            raise ValueError("check")
        out = {}
        for name, entry in segments.items():
            size, hexes = entry["size"], entry["crc32"]
            if (not SEGMENT_NAME_RE.fullmatch(name) or type(size) is not int or size < 0
                    or not isinstance(hexes, str) or not _HEX.fullmatch(hexes)
                    or len(hexes) != 8 * blocks(size)):
                raise ValueError(name)
            out[name] = SegmentSums(size, tuple(int(hexes[i:i + 8], 16)
                                                for i in range(0, len(hexes), 8)))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        why = ("its own CRC-32 does not match its contents: it was changed or damaged"
               if str(err) == "check" else "not a checksum file gpu-pitr archive wrote")
        raise SumsError(f"{why} (move it aside to go on: the next archive run records the "
                        "sums of the segments WAL_DIR still holds)", file=str(path)) from err
    return out


def write(archive_dir: str | os.PathLike, sums: dict[str, SegmentSums]) -> None:
    """Write ``sums`` as the archive's checksum file, atomically (an ``OutputError``
    naming it if that fails)."""
    from gpu_pitr.outputs import write_json

    segments = {name: {"size": s.size, "crc32": "".join(f"{c:08x}" for c in s.crcs)}
                for name, s in sorted(sums.items())}
    write_json(Path(archive_dir) / SUMS_NAME,
               {"format": SUMS_FORMAT, "version": 1, "block": BLOCK, "segments": segments,
                "check": _check(segments)})
