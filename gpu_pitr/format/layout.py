"""Byte layout of the oxirs-vec write-ahead log (format "WALV" version 1).

One source of truth for every constant of the format (SPEC section 1).

Segment file ``wal-<16 lowercase hex>.log`` (hex = creation time, Unix seconds)::

    offset  size  field
    0       4     magic  b"WALV"
    4       4     version, u32 LE, must be 1
    8       8     segment creation time, u64 LE, Unix seconds
    16      ...   records, back to back; a second 16-byte header may appear
                  at any record boundary (a writer reopened within the same second)

Record::

    0       8     sequence number, u64 LE
    8       4     payload length ``len``, u32 LE
    12      len   payload: one WalEntry, bincode 2 "standard" (varint) encoding

Payload: varint variant index (a u32), then the variant's fields::

    0 Insert            id: String, vector: Vec<f32>, metadata: Option<Map>, timestamp: u64
    1 Update            id: String, vector: Vec<f32>, metadata: Option<Map>, timestamp: u64
    2 Delete            id: String, timestamp: u64
    3 Batch             entries: Vec<WalEntry>, timestamp: u64
    4 Checkpoint        sequence_number: u64, timestamp: u64
    5 BeginTransaction  transaction_id: u64, timestamp: u64
    6 CommitTransaction transaction_id: u64, timestamp: u64
    7 AbortTransaction  transaction_id: u64, timestamp: u64

Varint: a value < 251 is one byte; else a marker then the value LE:
251 -> u16, 252 -> u32, 253 -> u64 (254 -> u128 is never valid here).
"""

import re

MAGIC = b"WALV"
VERSION = 1
HEADER_SIZE = 16
RECORD_HEADER_SIZE = 12  # u64 sequence number + u32 payload length
# Magic and version, the first 8 bytes of a segment header: the part that identifies
# one (the creation second after it can be anything), as at a record boundary.
HEADER_ID = MAGIC + VERSION.to_bytes(4, "little")

SEGMENT_PREFIX = "wal-"
SEGMENT_SUFFIX = ".log"
# Whole names only (``fullmatch``): ``$`` would also take a name ending in a newline.
SEGMENT_NAME_RE = re.compile(r"wal-[0-9a-f]{16}\.log")

VARINT_MAX_SINGLE = 250
VARINT_U16 = 251
VARINT_U32 = 252
VARINT_U64 = 253
VARINT_U128 = 254

INSERT = 0
UPDATE = 1
DELETE = 2
BATCH = 3
CHECKPOINT = 4
BEGIN_TRANSACTION = 5
COMMIT_TRANSACTION = 6
ABORT_TRANSACTION = 7
N_VARIANTS = 8

VARIANT_NAMES = (
    "Insert",
    "Update",
    "Delete",
    "Batch",
    "Checkpoint",
    "BeginTransaction",
    "CommitTransaction",
    "AbortTransaction",
)

OPTION_NONE = 0
OPTION_SOME = 1


def segment_name(created: int) -> str:
    """File name of the segment created at Unix second ``created``."""
    return f"{SEGMENT_PREFIX}{created:016x}{SEGMENT_SUFFIX}"
