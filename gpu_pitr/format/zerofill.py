"""Zero-filled records: the bytes of a file that was extended but never written.

A crash after a file grew but before its data reached the disk (a filesystem that
allocates first, a preallocated segment) leaves zeros where records should be. The
framing pass reads them as records of 12 zero bytes (seq 0, payload length 0), each
undecodable: 16 MiB of zeros is 1.4M of them. SPEC section 2 makes each one fatal to a
restore that needs it and, with ``--skip-corrupt``, a skip; what every command lists is
one item per run of them back to back in a file (its first record, how many, how many
bytes), not an item per 12 bytes: a report, ``verify`` and ``inspect`` stay the size of
the damage's description, not of the damage (16 MiB of zeros listed record by record
took 1.7-2.7 GB and 13-40 s).

A zero record takes no part in the sequence-number checks either (verify, inspect), nor
says where the history starts (SPEC section 4: the first record present; a restore that
skips them judges the first record after them): its seq 0 is not a number the writer
gave.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpu_pitr.format.columns import file_runs
from gpu_pitr.format.layout import RECORD_HEADER_SIZE

KIND = "zero_filled"


@register_jitable
def is_zero_record(length, seq):
    """Whether one record is 12 zero bytes (seq 0, payload length 0): for compiled
    loops; ``zero_records`` is the same test over columns."""
    return (length == 0) & (seq == 0)  # no branch: Numba's pedantic SSA check warned


def zero_records(length: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Which records are 12 zero bytes (seq 0, payload length 0)."""
    return (length == 0) & (seq == 0)


def leading(length: np.ndarray, seq: np.ndarray) -> int:
    """How many records at the front of these columns are zero-filled."""
    zero = zero_records(length, seq)
    return len(zero) if zero.all() else int(np.argmin(zero))


def runs(seg: np.ndarray, foff: np.ndarray, zero: np.ndarray, same=None):
    """Group items in log order into what is listed: each run of zero records back to
    back in one file is one group (``same``, where given, must also hold between its
    items: the same kind of event), every other item a group of its own.

    ``seg``, ``foff``: each item's segment and file offset; ``zero``: whether it is a
    zero record. Returns ``(firsts, counts)``: the index of each group's first item, and
    how many items it holds (``columns.file_runs``)."""
    return file_runs(seg, foff, RECORD_HEADER_SIZE, keep=zero, same=same)


def describe(start: int, records: int) -> str:
    """What a run of ``records`` zero records from file offset ``start`` is."""
    nbytes = records * RECORD_HEADER_SIZE
    many = f"{records:,} records" if records != 1 else "a record"
    return (f"{many} of 12 zero bytes (seq 0, payload length 0), {nbytes:,} bytes from "
            f"offset {start}: bytes the writer never wrote (a crash after the file was "
            "extended)")


REPORT_PREFIX = "zero-filled: "  # a report's entries have no kind of their own


def item(file: str, start: int, records: int, **where) -> dict:
    """A restore report's entry for a run: ``file``, ``where`` (offset, seq), then
    ``what``, ``records``, ``bytes`` and ``start`` (the file offset of its first byte)."""
    return {"file": file, **where, "what": REPORT_PREFIX + describe(start, records),
            "records": records, "bytes": records * RECORD_HEADER_SIZE, "start": start}


def skipped_item(file: str, start: int, records: int) -> dict:
    """The report's ``skipped`` entry of a run found before it is decoded (the first
    records ``--skip-corrupt`` skips, judged where the log starts): named at its first
    record's last header byte, where decoding fails, with seq 0."""
    return item(file, start, records, offset=start + RECORD_HEADER_SIZE - 1, seq=0)


def join(last: dict | None, file: str, start: int, records: int, start_key: str = "start",
         prefix: str = REPORT_PREFIX) -> bool:
    """Add a run of ``records`` zero records from ``start`` in ``file`` to the run that
    ``last`` lists (a dict with ``file``, ``records``, ``bytes``, ``what`` and its first
    byte under ``start_key``) when it goes on from where that one ends: a chunk or a
    piece boundary split them. False, changing nothing, when it does not."""
    if (last is None or last.get("records") is None or last["file"] != file
            or last[start_key] + last["bytes"] != start):
        return False
    last["records"] += records
    last["bytes"] += records * RECORD_HEADER_SIZE
    last["what"] = prefix + describe(last[start_key], last["records"])
    return True
