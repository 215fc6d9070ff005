"""Pure-Python bincode 2 "standard" codec of one ``WalEntry`` payload (SPEC section 1).

The reference against which the Numba/CUDA payload parser is tested: simple,
strict about every length, and exact about float bits.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping

import numpy as np

from gpu_pitr.format.entries import (
    ENTRY_TYPES,
    Batch,
    Checkpoint,
    Delete,
    Insert,
    Update,
    WalEntry,
    as_vector,
)
from gpu_pitr.format.layout import (
    BATCH,
    CHECKPOINT,
    DELETE,
    INSERT,
    N_VARIANTS,
    OPTION_NONE,
    OPTION_SOME,
    UPDATE,
    VARINT_MAX_SINGLE,
    VARINT_U16,
    VARINT_U32,
    VARINT_U64,
    VARINT_U128,
)

_U64_LIMIT = 1 << 64
_END = object()
_F32_LE = np.dtype("<f4")
# Marker byte -> width in bits of the little-endian value that follows it.
_MARKER_BITS = {VARINT_U16: 16, VARINT_U32: 32, VARINT_U64: 64, VARINT_U128: 128}


class PayloadError(ValueError):
    """A payload that does not decode; ``offset`` is the byte in the payload at fault."""

    def __init__(self, offset: int, what: str) -> None:
        self.offset = offset
        self.what = what
        super().__init__(f"payload offset {offset}: {what}")


def encode_varint(value: int) -> bytes:
    """Minimal bincode varint of an unsigned integer below 2**64 (a Python or NumPy
    integer; ``TypeError`` for anything else, a float included)."""
    value = operator.index(value)
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(f"varint out of range: {value}")
    if value <= VARINT_MAX_SINGLE:
        return bytes((value,))
    if value < 1 << 16:
        return bytes((VARINT_U16,)) + value.to_bytes(2, "little")
    if value < 1 << 32:
        return bytes((VARINT_U32,)) + value.to_bytes(4, "little")
    return bytes((VARINT_U64,)) + value.to_bytes(8, "little")


def decode_varint(buf: bytes, pos: int, max_bits: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos]`` for an integer type of ``max_bits`` bits.

    Non-minimal forms are accepted (bincode 2 does); a marker wider than the type
    (253 for a u32, 254 for a u64) and marker 255 are not.

    Returns:
        ``(value, position after the varint)``.

    Raises:
        PayloadError: truncated or invalid varint.
    """
    if pos >= len(buf):
        raise PayloadError(pos, "truncated varint")
    first = buf[pos]
    if first <= VARINT_MAX_SINGLE:
        return first, pos + 1
    bits = _MARKER_BITS.get(first)
    if bits is None or bits > max_bits:
        raise PayloadError(pos, f"invalid varint marker {first} for a u{max_bits}")
    end = pos + 1 + bits // 8
    if end > len(buf):
        raise PayloadError(pos, "truncated varint")
    return int.from_bytes(buf[pos + 1 : end], "little"), end


def encode_entry(entry: WalEntry) -> bytes:
    """The bincode payload of ``entry``: minimal varints, metadata in dict order.

    Nested batches are walked with an explicit stack, so depth is unbounded.

    Raises:
        TypeError: an object that is not a WAL entry.
        ValueError: an integer outside u64, or a string that is not encodable UTF-8.
    """
    out = bytearray()
    # Each frame: the entries still to write at one nesting level, and the
    # timestamp of the batch that closes the level (None for the top level).
    stack: list[tuple[Iterator, int | None]] = [(iter((entry,)), None)]
    while stack:
        pending, closing_ts = stack[-1]
        item = next(pending, _END)
        if item is _END:
            stack.pop()
            if closing_ts is not None:
                out += _field_varint(closing_ts, "timestamp")
            continue
        if type(item) not in ENTRY_TYPES:
            raise TypeError(f"not a WAL entry: {type(item).__name__}")
        out += encode_varint(item.variant)
        if isinstance(item, Batch):
            out += encode_varint(len(item.entries))
            stack.append((iter(item.entries), item.timestamp))
        else:
            _encode_fields(item, out)
    return bytes(out)


def _encode_fields(entry: WalEntry, out: bytearray) -> None:
    if isinstance(entry, (Insert, Update)):
        _encode_str(entry.id, out, "id")
        # Checked again here: the field may have been replaced since the entry was made,
        # and a 2-d array would write its row count then every element.
        vector = as_vector(entry.vector).astype(_F32_LE, copy=False)
        out += encode_varint(len(vector))
        out += vector.tobytes()
        if entry.metadata is None:
            out.append(OPTION_NONE)
        elif type(entry.metadata) is not dict and not isinstance(entry.metadata, Mapping):
            raise TypeError(f"metadata: expected a dict of str to str or None, "
                            f"got {type(entry.metadata).__name__}")
        else:
            out.append(OPTION_SOME)
            out += encode_varint(len(entry.metadata))
            for key, value in entry.metadata.items():
                _encode_str(key, out, "metadata key")
                _encode_str(value, out, f"metadata[{key!r}]")
    elif isinstance(entry, Delete):
        _encode_str(entry.id, out, "id")
    elif isinstance(entry, Checkpoint):
        out += _field_varint(entry.sequence_number, "sequence_number")
    else:
        out += _field_varint(entry.transaction_id, "transaction_id")
    out += _field_varint(entry.timestamp, "timestamp")


def _field_varint(value: int, field: str) -> bytes:
    """``encode_varint``, its error naming the field (a float from ``time.time()``)."""
    try:
        return encode_varint(value)
    except TypeError:
        raise TypeError(f"{field}: expected an integer (u64), got "
                        f"{type(value).__name__}") from None
    except ValueError:
        raise ValueError(f"{field}: {value} is outside u64") from None


def _encode_str(text: str, out: bytearray, field: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{field}: expected str, got {type(text).__name__}")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate
        raise ValueError(f"{field}: not encodable as UTF-8: {err.reason} at "
                         f"character {err.start}") from None
    out += encode_varint(len(raw))
    out += raw


def decode_entry(payload: bytes) -> tuple[WalEntry, int]:
    """Decode the ``WalEntry`` at the start of ``payload``.

    Bytes after the entry are left alone (the count consumed is returned).
    Every count is checked against the bytes that remain before anything is read,
    and lists grow only as elements decode, so no allocation follows an untrusted
    length. Nested batches of any depth decode with an explicit stack, not Python
    recursion. Duplicate metadata keys: the later pair wins, as with serde.

    Returns:
        ``(entry, bytes consumed)``.

    Raises:
        PayloadError: unknown variant, bad varint, bad option tag, invalid UTF-8,
            a count larger than the payload, or a payload that ends too early.
    """
    buf = bytes(payload)
    pos = 0
    # Open batches, outermost first: (entries decoded so far, entry count).
    stack: list[tuple[list, int]] = []
    while True:
        variant_at = pos
        variant, pos = decode_varint(buf, pos, 32)
        if variant >= N_VARIANTS:
            raise PayloadError(variant_at, f"unknown variant {variant}")
        if variant == BATCH:
            count, pos = _decode_count(buf, pos, 1)
            if count:
                stack.append(([], count))
                continue
            timestamp, pos = decode_varint(buf, pos, 64)
            done: WalEntry | None = Batch([], timestamp)
        else:
            done, pos = _decode_fields(variant, buf, pos)
        # Hand the finished entry to its batch; a batch that is now full is
        # finished in turn (its timestamp follows its last entry).
        while stack and done is not None:
            items, count = stack[-1]
            items.append(done)
            done = None
            if len(items) == count:
                stack.pop()
                timestamp, pos = decode_varint(buf, pos, 64)
                done = Batch(items, timestamp)
        if done is not None:
            return done, pos


def _decode_fields(variant: int, buf: bytes, pos: int) -> tuple[WalEntry, int]:
    if variant in (INSERT, UPDATE):
        entry_id, pos = _decode_str(buf, pos)
        vector, pos = _decode_vector(buf, pos)
        metadata, pos = _decode_metadata(buf, pos)
        timestamp, pos = decode_varint(buf, pos, 64)
        return ENTRY_TYPES[variant](entry_id, vector, metadata, timestamp), pos
    if variant == DELETE:
        entry_id, pos = _decode_str(buf, pos)
        timestamp, pos = decode_varint(buf, pos, 64)
        return Delete(entry_id, timestamp), pos
    # Checkpoint and the three transaction markers: two u64 fields.
    first, pos = decode_varint(buf, pos, 64)
    timestamp, pos = decode_varint(buf, pos, 64)
    if variant == CHECKPOINT:
        return Checkpoint(first, timestamp), pos
    return ENTRY_TYPES[variant](first, timestamp), pos


def _decode_count(buf: bytes, pos: int, item_size: int) -> tuple[int, int]:
    """A length prefix, rejected if ``count * item_size`` exceeds the bytes left.

    ``item_size`` is the exact or least size in bytes of one element.
    """
    count_at = pos
    count, pos = decode_varint(buf, pos, 64)
    if count * item_size > len(buf) - pos:
        raise PayloadError(count_at, f"count {count} larger than the {len(buf) - pos} bytes left")
    return count, pos


def _decode_str(buf: bytes, pos: int) -> tuple[str, int]:
    length, pos = _decode_count(buf, pos, 1)
    try:
        text = buf[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError(pos + err.start, "invalid UTF-8") from None
    return text, pos + length


def _decode_vector(buf: bytes, pos: int) -> tuple[np.ndarray, int]:
    count, pos = _decode_count(buf, pos, _F32_LE.itemsize)
    # astype copies into a native float32 array; a byte swap never alters NaN bits.
    vector = np.frombuffer(buf, dtype=_F32_LE, count=count, offset=pos).astype(np.float32)
    return vector, pos + count * _F32_LE.itemsize


def _decode_metadata(buf: bytes, pos: int) -> tuple[dict[str, str] | None, int]:
    if pos >= len(buf):
        raise PayloadError(pos, "truncated option tag")
    tag = buf[pos]
    if tag == OPTION_NONE:
        return None, pos + 1
    if tag != OPTION_SOME:
        raise PayloadError(pos, f"invalid option tag {tag}")
    # A pair is at least two bytes: two empty strings.
    count, pos = _decode_count(buf, pos + 1, 2)
    metadata: dict[str, str] = {}
    for _ in range(count):
        key, pos = _decode_str(buf, pos)
        value, pos = _decode_str(buf, pos)
        metadata[key] = value
    return metadata, pos
