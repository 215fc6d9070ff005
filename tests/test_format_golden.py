"""Golden bytes of the payload codec and the framing, written by hand from SPEC section 1."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu_pitr.format import layout
from gpu_pitr.format.codec import (
    PayloadError,
    decode_entry,
    decode_varint,
    encode_entry,
    encode_varint,
)
from gpu_pitr.format.entries import (
    ENTRY_TYPES,
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    Delete,
    Insert,
    Update,
)
from gpu_pitr.format.writer import encode_header, encode_record

SPEC_EXAMPLE = bytes.fromhex("00 02 76 31 01 00 00 80 3f 00 fb e8 03")


def f32(*bits: int) -> np.ndarray:
    """A float32 vector from raw bit patterns."""
    return np.array(bits, dtype="<u4").view("<f4").astype(np.float32)


def roundtrip(entry, payload: bytes) -> None:
    assert encode_entry(entry) == payload
    decoded, consumed = decode_entry(payload)
    assert consumed == len(payload)
    assert decoded == entry


# -------------------------------------------------------------------- entries


def test_variant_numbers_match_layout():
    for index, cls in enumerate(ENTRY_TYPES):
        assert cls.variant == index
        assert cls.__name__ == layout.VARIANT_NAMES[index]


def test_vector_equality_is_bitwise():
    nan_a, nan_b = f32(0x7FC00000), f32(0x7FC00001)
    assert Insert("a", nan_a, None, 0) == Insert("a", nan_a.copy(), None, 0)
    assert Insert("a", nan_a, None, 0) != Insert("a", nan_b, None, 0)
    assert Insert("a", [0.0], None, 0) != Insert("a", [-0.0], None, 0)
    assert Insert("a", [1.0], None, 0) != Update("a", [1.0], None, 0)
    assert Insert("a", [1.0], None, 0).vector.dtype == np.float32


def test_vector_from_list_or_tuple():
    assert Update("a", (1.0, 2.0), None, 0) == Update("a", np.array([1, 2], np.float32), None, 0)
    with pytest.raises(ValueError):
        Insert("a", [[1.0]], None, 0)


# -------------------------------------------------------------------- golden payloads


def test_spec_example_payload_and_record():
    roundtrip(Insert("v1", [1.0], None, 1000), SPEC_EXAMPLE)
    framed = encode_record(7, SPEC_EXAMPLE)
    assert framed == bytes.fromhex("07 00 00 00 00 00 00 00 0d 00 00 00") + SPEC_EXAMPLE


@pytest.mark.parametrize(
    ("entry", "hex_bytes"),
    [
        (Update("v1", [1.0], None, 1000), "01 02 76 31 01 00 00 80 3f 00 fb e8 03"),
        (Delete("v1", 1000), "02 02 76 31 fb e8 03"),
        (Delete("", 0), "02 00 00"),
        (Batch([], 7), "03 00 07"),
        (Batch([Delete("a", 5)], 7), "03 01 02 01 61 05 07"),
        (Checkpoint(10, 1000), "04 0a fb e8 03"),
        (BeginTransaction(1, 2), "05 01 02"),
        (CommitTransaction(1, 2), "06 01 02"),
        (AbortTransaction(300, 2), "07 fb 2c 01 02"),
        (Insert("a", [], None, 0), "00 01 61 00 00 00"),
        (
            Insert("a", [1.0, -2.0], None, 0),
            "00 01 61 02 00 00 80 3f 00 00 00 c0 00 00",
        ),
    ],
)
def test_every_variant(entry, hex_bytes):
    roundtrip(entry, bytes.fromhex(hex_bytes))


def test_metadata():
    roundtrip(Insert("a", [], {}, 0), bytes.fromhex("00 01 61 00 01 00 00"))
    roundtrip(Insert("a", [], {"k": "v"}, 0), bytes.fromhex("00 01 61 00 01 01 01 6b 01 76 00"))
    # Pairs go out in the dict's order.
    payload = bytes.fromhex("01 01 61 00 01 02 01 62 00 01 61 01 78 09")
    roundtrip(Update("a", [], {"b": "", "a": "x"}, 9), payload)
    # Non-ASCII: lengths count UTF-8 bytes.
    roundtrip(Delete("é", 1), bytes.fromhex("02 02 c3 a9 01"))


def test_metadata_duplicate_key_later_wins():
    payload = bytes.fromhex("00 01 61 00 01 02 01 6b 01 31 01 6b 01 32 00")
    entry, consumed = decode_entry(payload)
    assert consumed == len(payload)
    assert entry.metadata == {"k": "2"}


def test_nested_batches():
    inner = Batch([Insert("x", [0.5], {"m": "n"}, 3), Batch([], 4)], 5)
    entry = Batch([Delete("a", 1), inner, Checkpoint(2, 2)], 6)
    parts = [
        "03 03",  # Batch of 3
        "02 01 61 01",  # Delete("a", 1)
        "03 02",  # Batch of 2
        "00 01 78 01 00 00 00 3f 01 01 01 6d 01 6e 03",  # Insert("x", [0.5], {"m": "n"}, 3)
        "03 00 04",  # Batch([], 4)
        "05",  # inner batch's timestamp
        "04 02 02",  # Checkpoint(2, 2)
        "06",  # outer batch's timestamp
    ]
    payload = bytes.fromhex(" ".join(parts))
    roundtrip(entry, payload)


def test_deep_nesting_has_no_recursion_limit():
    depth = 20_000
    payload = b"\x03\x01" * depth + bytes.fromhex("02 00 00") + b"\x07" * depth
    entry, consumed = decode_entry(payload)
    assert consumed == len(payload)
    assert encode_entry(entry) == payload
    for _ in range(depth):
        assert isinstance(entry, Batch) and entry.timestamp == 7
        (entry,) = entry.entries
    assert entry == Delete("", 0)


# -------------------------------------------------------------------- varints


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        (0, "00"),
        (250, "fa"),
        (251, "fb fb 00"),
        (65535, "fb ff ff"),
        (65536, "fc 00 00 01 00"),
        (2**32 - 1, "fc ff ff ff ff"),
        (2**32, "fd 00 00 00 00 01 00 00 00"),
        (2**64 - 1, "fd ff ff ff ff ff ff ff ff"),
    ],
)
def test_varint_boundaries(value, hex_bytes):
    raw = bytes.fromhex(hex_bytes)
    assert encode_varint(value) == raw
    assert decode_varint(raw, 0, 64) == (value, len(raw))
    # As a timestamp.
    roundtrip(Delete("", value), b"\x02\x00" + raw)
    # As a Checkpoint's sequence number.
    roundtrip(Checkpoint(value, 1), b"\x04" + raw + b"\x01")
    # The compiled writer (snapshot seeding, synth, the Arrow re-encoding) and the
    # widths buffers are sized by: the same bytes.
    import numpy as np

    from gpu_pitr.format.payload import varint_widths, write_varint

    out = np.zeros(len(raw) + 3, np.uint8)
    assert write_varint(out, 1, value) == 1 + len(raw)
    assert out[1:1 + len(raw)].tobytes() == raw and out[0] == out[-2] == out[-1] == 0
    assert varint_widths(np.array([value], np.uint64)).tolist() == [len(raw)]


def test_varint_out_of_range():
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(ValueError):
        encode_entry(Delete("a", 2**64))


@pytest.mark.parametrize("length", [250, 251, 65535, 65536])
def test_length_boundaries(length):
    text = "x" * length
    roundtrip(Delete(text, 1), b"\x02" + encode_varint(length) + text.encode() + b"\x01")
    vector = np.arange(length, dtype=np.float32)
    payload = b"\x00\x00" + encode_varint(length) + vector.astype("<f4").tobytes() + b"\x00\x01"
    roundtrip(Insert("", vector, None, 1), payload)


@pytest.mark.parametrize("count", [2**32 - 1, 2**32, 2**64 - 1])
def test_huge_counts_are_rejected_before_allocating(count):
    count_bytes = encode_varint(count)
    for payload in (
        b"\x02" + count_bytes + b"abc\x01",  # string length
        b"\x00\x00" + count_bytes + b"\x00" * 16,  # vector count
        b"\x00\x00\x00\x01" + count_bytes + b"\x00" * 16,  # metadata pair count
        b"\x03" + count_bytes + b"\x02\x00\x00",  # batch entry count
    ):
        with pytest.raises(PayloadError, match="count"):
            decode_entry(payload)


@pytest.mark.parametrize(
    ("hex_bytes", "expected"),
    [
        ("fb 00 00 02 76 31 01 00 00 80 3f 00 fb e8 03", Insert("v1", [1.0], None, 1000)),
        ("fc 02 00 00 00 00 fb 05 00", Delete("", 5)),
        ("02 fb 01 00 61 fd 05 00 00 00 00 00 00 00", Delete("a", 5)),
        ("02 fc 01 00 00 00 61 fc 05 00 00 00", Delete("a", 5)),
        ("02 fd 01 00 00 00 00 00 00 00 61 00", Delete("a", 0)),
        ("04 fb e8 03 fc e8 03 00 00", Checkpoint(1000, 1000)),
        ("03 fb 01 00 02 00 00 fd 07 00 00 00 00 00 00 00", Batch([Delete("", 0)], 7)),
        ("00 00 fb 01 00 00 00 80 3f 00 00", Insert("", [1.0], None, 0)),
        ("00 00 00 01 fc 01 00 00 00 00 00 00", Insert("", [], {"": ""}, 0)),
    ],
)
def test_non_minimal_varints_accepted(hex_bytes, expected):
    payload = bytes.fromhex(hex_bytes)
    assert decode_entry(payload) == (expected, len(payload))


@pytest.mark.parametrize(
    ("hex_bytes", "offset", "match"),
    [
        ("fd 00 00 00 00 00 00 00 00 00 00", 0, "marker 253"),  # variant is a u32
        ("fe 00", 0, "marker 254"),
        ("ff 00", 0, "marker 255"),
        ("08 00 00", 0, "unknown variant 8"),
        ("fb 08 00 00 00", 0, "unknown variant 8"),
        ("02 00 fe 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00", 2, "marker 254"),
        ("02 ff 00", 1, "marker 255"),
        ("02 01 ff 00", 2, "UTF-8"),
        ("02 03 61 ed a0 80 00", 3, "UTF-8"),  # an encoded surrogate
        ("02 02 c0 af 00", 2, "UTF-8"),  # overlong
        ("00 00 00 02", 3, "option tag 2"),
        ("00 00 00 ff", 3, "option tag 255"),
        # One raw byte, not a varint (oxicode's serde deserialize_option reads
        # u8::decode): a varint reader would take fb 01 00 as Some.
        ("00 00 00 fb 01 00 00 00", 3, "option tag 251"),
        ("00 00 02 00 00 80 3f 00", 2, "count 2"),
        ("02 05 61 62 63", 1, "count 5"),
        ("", 0, "truncated"),
        ("fb 00", 0, "truncated"),
        ("04 fd 00 00", 1, "truncated"),
        ("00 00 00", 3, "truncated option tag"),
    ],
)
def test_invalid_payloads(hex_bytes, offset, match):
    with pytest.raises(PayloadError, match=match) as info:
        decode_entry(bytes.fromhex(hex_bytes))
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


def test_every_truncation_is_an_error():
    entry = Batch([Insert("id", [1.5, -0.0], {"k": "v"}, 2**40), Delete("d", 300)], 70000)
    payload = encode_entry(entry)
    for cut in range(len(payload)):
        with pytest.raises(PayloadError):
            decode_entry(payload[:cut])


def test_trailing_bytes_are_left_alone():
    entry, consumed = decode_entry(SPEC_EXAMPLE + b"\xff\xff")
    assert entry == Insert("v1", [1.0], None, 1000)
    assert consumed == len(SPEC_EXAMPLE)


def test_decode_accepts_any_bytes_like():
    for payload in (bytearray(SPEC_EXAMPLE), memoryview(SPEC_EXAMPLE)):
        assert decode_entry(payload) == (Insert("v1", [1.0], None, 1000), 13)


def test_encode_rejects_foreign_objects():
    with pytest.raises(TypeError):
        encode_entry(Batch([None], 0))
    with pytest.raises(TypeError):
        encode_entry(Delete(b"bytes", 0))
    with pytest.raises(ValueError):
        encode_entry(Delete("\ud800", 0))  # a lone surrogate is not UTF-8


# -------------------------------------------------------------------- framing


def test_header_bytes():
    assert encode_header(1000) == b"WALV" + bytes.fromhex("01 00 00 00 e8 03 00 00 00 00 00 00")
    assert len(encode_header(0)) == layout.HEADER_SIZE
    assert encode_header(2**64 - 1)[8:] == b"\xff" * 8
    with pytest.raises(ValueError):
        encode_header(-1)


def test_record_bytes():
    assert encode_record(2**64 - 1, b"") == b"\xff" * 8 + b"\x00" * 4
    assert encode_record(0x0102, b"ab") == struct.pack("<QI", 0x0102, 2) + b"ab"
    with pytest.raises(ValueError):
        encode_record(-1, b"")


# -------------------------------------------------------------------- bit-exact vectors


SPECIAL_BITS = [
    0x7F800001,  # signalling NaN
    0xFFBFFFFF,  # negative signalling NaN, full payload
    0x7FC00000,  # quiet NaN
    0x7FFFFFFF,
    0x80000000,  # -0.0
    0x7F800000,  # inf
    0xFF800000,  # -inf
    0x00000001,  # smallest subnormal
]


def test_special_floats_bit_exact():
    vector = f32(*SPECIAL_BITS)
    entry = Update("s", vector, None, 1)
    payload = encode_entry(entry)
    assert payload[:4] == bytes.fromhex("01 01 73 08")
    assert payload[4:36] == struct.pack("<8I", *SPECIAL_BITS)
    decoded, _ = decode_entry(payload)
    assert decoded.vector.view("<u4").tolist() == SPECIAL_BITS
    assert decoded == entry


u64s = st.integers(0, 2**64 - 1)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
vectors = (
    st.binary(max_size=32)
    .map(lambda b: b[: len(b) // 4 * 4])
    .map(lambda b: np.frombuffer(b, dtype="<f4").astype(np.float32))
)
metadata = st.none() | st.dictionaries(texts, texts, max_size=4)
leaves = st.one_of(
    st.builds(Insert, texts, vectors, metadata, u64s),
    st.builds(Update, texts, vectors, metadata, u64s),
    st.builds(Delete, texts, u64s),
    st.builds(Checkpoint, u64s, u64s),
    st.builds(BeginTransaction, u64s, u64s),
    st.builds(CommitTransaction, u64s, u64s),
    st.builds(AbortTransaction, u64s, u64s),
)
entries = st.recursive(
    leaves, lambda inner: st.builds(Batch, st.lists(inner, max_size=4), u64s), max_leaves=12
)


@given(entries, st.binary(max_size=4))
def test_roundtrip(entry, trailing):
    payload = encode_entry(entry)
    decoded, consumed = decode_entry(payload + trailing)
    assert consumed == len(payload)
    assert decoded == entry
    assert encode_entry(decoded) == payload


@given(st.integers(0, 2**64 - 1))
def test_varint_roundtrip_and_minimal(value):
    raw = encode_varint(value)
    assert decode_varint(raw, 0, 64) == (value, len(raw))
    assert len(raw) == (1 if value < 251 else 3 if value < 2**16 else 5 if value < 2**32 else 9)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_payload_error(payload):
    try:
        entry, consumed = decode_entry(payload)
    except PayloadError as err:
        assert 0 <= err.offset <= len(payload)
    else:
        assert 0 < consumed <= len(payload)
        assert decode_entry(payload[:consumed]) == (entry, consumed)


def test_batch_entries_become_a_list():
    assert Batch((Delete("a", 1),), 2) == Batch([Delete("a", 1)], 2)


def test_the_utf8_check_is_pythons_at_every_boundary_byte():
    """``utf8_valid`` as the CUDA kernels run it (its Python source: the simulator runs
    it so, and a GPU compiles the same) and as the cpu executor does (compiled): both
    say what Python's decoder says, for every string of up to three bytes drawn from the
    bytes at the edges of RFC 3629's ranges (a sequence cut at the end of the string,
    a second or third byte out of its range, overlongs, surrogates, past U+10FFFF), and
    for whole four-byte sequences."""
    import itertools

    from numba import njit

    from gpu_pitr.format.payload import utf8_valid

    compiled = njit(lambda buf, pos, n: utf8_valid(buf, pos, n))
    edges = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
             0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
    strings = [bytes(s) for n in (1, 2, 3) for s in itertools.product(edges, repeat=n)]
    strings += [bytes([a, b, c, d]) for a in (0xF0, 0xF3, 0xF4) for b in (0x8F, 0x90, 0xBF)
                for c in (0x7F, 0x80) for d in (0x80, 0xC0)]
    strings += [b"abcdefgh" + s for s in (b"\xc3", b"\xe2\x82", b"\xc3\xa9")]  # after 8 ASCII
    for s in strings:
        try:
            s.decode("utf-8")
            want = True
        except UnicodeDecodeError:
            want = False
        # Inside a larger buffer: the check must stop at n, not at the buffer's end.
        buf = np.frombuffer(b"\xff" + s + b"\x80\x80\x80", np.uint8)
        assert (bool(utf8_valid(buf, 1, len(s))), bool(compiled(buf, 1, len(s)))) == (
            want, want), s
