"""Sizes on the command line (``256M``) and the chunk size that keeps a restore within
a memory budget (``--memory-budget``).

A restore's working memory, beyond the interpreter and the index it builds, is a
fixed part plus a part proportional to the chunk size: the read-ahead ring of five
buffers of ``chunk + 1 MiB`` headroom (5 x chunk), and per record in a chunk its
rows in the record and entry columns, the framer's arrays and the plan's (~360
bytes a record). Measured with ``scripts/bounded_memory.py --calibrate`` (peak RSS
above a tiny restore's, fitted against the chunk size): 5.6 x chunk + 13 MiB with
585-byte records (dim 128), 8.8 x chunk + 27 MiB with 98-byte ones (dim 8), about
9 x chunk + 38 MiB with 63-byte ones (dim 1). The model below takes records of 64
bytes; a log of smaller records on average (mostly deletes of short ids) can pass it.
The fixed part also holds, on a log of many small segments, up to three batches of
their pieces on their way from the framing thread, each within ``readahead.BATCH_BYTES``
(1 MiB of buffers and row arrays): about 3 MiB at most.

Not modelled, and not within a budget: the records of open transactions, held until
their commit or abort (2.4x their bytes above the baseline with 600-byte records,
about 10x with 40-byte ones).
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)

# Peak working memory of a restore is at most about PER_CHUNK_BYTE * chunk + FIXED bytes.
PER_CHUNK_BYTE = 10.0
FIXED = 24 << 20
# Smaller chunks work but cost a pass over the ring and the columns each: no gain.
MIN_CHUNK = 1 << 20
# What the budget may ask for at most: the executors' own defaults are tuned for speed.
MAX_CHUNK = 128 << 20


def parse_size(text: str) -> int:
    """``text`` as bytes: digits with an optional K, M, G or T (powers of 1024) and B/iB.

    Raises:
        ValueError: anything else, or zero.
    """
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    value = int(float(m[1]) * _UNITS[m[2].upper()])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def working_bytes(chunk_bytes: int) -> int:
    """The modelled peak working memory of a restore with chunks of ``chunk_bytes``."""
    return int(PER_CHUNK_BYTE * chunk_bytes) + FIXED


def min_budget() -> int:
    """The smallest budget a restore can keep to (chunks of ``MIN_CHUNK``)."""
    return working_bytes(MIN_CHUNK)


def size_text(n: int) -> str:
    """``n`` bytes for a person: MiB with one decimal, or bytes below 1 MiB."""
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"  # 0.5K: not 0.0 MiB


def chunk_bytes_for_budget(budget: int) -> int:
    """The chunk size whose working memory fits ``budget`` bytes (a whole MiB, at most
    ``MAX_CHUNK``). The index being restored comes on top of the budget.

    Raises:
        ValueError: a budget below ``min_budget()``.
    """
    if budget < min_budget():
        raise ValueError(
            f"a memory budget of {size_text(budget)} is too small: a restore needs "
            f"at least {min_budget() / (1 << 20):.0f} MiB besides the index")
    chunk = int((budget - FIXED) / PER_CHUNK_BYTE) >> 20 << 20
    return max(MIN_CHUNK, min(chunk, MAX_CHUNK))
