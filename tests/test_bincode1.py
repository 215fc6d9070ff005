"""Logs of an oxirs-vec before bincode 2 (bincode 1.3, fixed-width integers): recognised.

Early oxirs-vec releases wrote each entry with bincode 1.3's ``bincode::serialize``
under the same ``WALV`` version-1 header (cool-japan/oxirs, engine/oxirs-vec/src/wal.rs
at 57d0a06, Cargo.toml ``bincode = "1.3"``). Read as SPEC section 1's bincode 2, most
such records decode to an entry with an empty id and vector and bytes left over, which
SPEC section 2 accepts: the restore was an index of nothing, exit 0, without a word.
The encoder here is written from bincode 1.3's layout (u32 variant, u64 lengths and
u64 fields, a one-byte Option tag), not from the detector's code.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr.errors import CorruptRecordError, DimensionMismatchError, TargetNotReachedError
from gpu_pitr.format import bincode1
from gpu_pitr.format.entries import Insert
from gpu_pitr.format.writer import WalWriter, encode_header, encode_record
from gpu_pitr.verify import verify_wal
from tests.workloads import (
    _VARIANT,
    Batch,
    Begin,
    Ckpt,
    Commit,
    Del,
    Ins,
    Upd,
    encode_entry,
    ids_st,
    meta_st,
    segment_name,
)


def _s1(text: str) -> bytes:
    b = text.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encode_bincode1(e: tuple) -> bytes:
    """``e`` (tests/workloads.py's tuples) as bincode 1.3's ``serialize`` writes it."""
    out = struct.pack("<I", _VARIANT[e[0]])
    if e[0] in ("insert", "update"):
        _, ident, vec, meta, ts = e
        out += _s1(ident) + struct.pack("<Q", len(vec) // 4) + bytes(vec)
        if meta is None:
            out += b"\x00"
        else:
            out += b"\x01" + struct.pack("<Q", len(meta))
            for k, v in meta.items():
                out += _s1(k) + _s1(v)
        return out + struct.pack("<Q", ts)
    if e[0] == "delete":
        return out + _s1(e[1]) + struct.pack("<Q", e[2])
    if e[0] == "batch":
        out += struct.pack("<Q", len(e[1]))
        for sub in e[1]:
            out += encode_bincode1(sub)
        return out + struct.pack("<Q", e[2])
    return out + struct.pack("<QQ", e[1], e[2])


def _write_log(tmp_path, payloads: list[bytes], created: int = 1000):
    wal = tmp_path / "wal"
    wal.mkdir(parents=True)
    data = encode_header(created) + b"".join(
        encode_record(seq, p) for seq, p in enumerate(payloads))
    (wal / segment_name(created)).write_bytes(data)
    return wal


OLD_LOG = [Ins("v1", [1.0, 2.0], None, 1000), Ins("v2", [3.0, 4.0], {"k": "v"}, 2000),
           Del("v1", 3000), Batch([Upd("v2", [5.0, 6.0], None, 3001)], 3001),
           Begin(7, 3002), Ins("v3", [7.0, 8.0], None, 3002), Commit(7, 3003),
           Ckpt(8, 3004)]


def test_every_variant_is_recognised_and_spec_payloads_are_not():
    for e in OLD_LOG:
        assert bincode1.is_bincode1(encode_bincode1(e)), e
        # SPEC section 1's bincode 2 payload of the same entry is not one.
        assert not bincode1.is_bincode1(encode_entry(e)), e
    nested = encode_bincode1(Batch([Batch([Ins("a", [1.0], {"": "x"}, 5)], 5)], 5))
    assert bincode1.is_bincode1(nested)
    assert not bincode1.is_bincode1(nested[:-1])  # one byte short
    assert not bincode1.is_bincode1(nested + b"\x00")  # one byte over
    bad_utf8 = encode_bincode1(Del("ab", 1)).replace(b"ab", b"\xff\xfe")
    assert not bincode1.is_bincode1(bad_utf8)
    assert not bincode1.is_bincode1(struct.pack("<I", 8) + bytes(16))  # no variant 8
    # The SPEC's own example (section 1).
    assert not bincode1.is_bincode1(bytes.fromhex("00027631010000803f00fbe803"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ident=ids_st, meta=meta_st, dim=st.integers(0, 4), ts=st.integers(0, 2**64 - 1),
       tail=st.binary(max_size=40))
def test_bincode2_payloads_with_bytes_left_over_are_taken_for_bincode1_only_if_degenerate(
        ident, meta, dim, ts, tail):
    for e in (Ins(ident, [0.5] * dim, meta, ts), Upd(ident, [0.5] * dim, meta, ts),
              Del(ident, ts), Batch([Del(ident, ts)], ts), Begin(ts, ts)):
        payload = encode_entry(e) + tail
        assert bincode1.is_bincode1(encode_bincode1(e))
        # A bincode 2 entry with bytes left over (SPEC section 2's accepted damage) can
        # pass for one only where its first fields are all zero bytes (an empty id and
        # vector, a zero stamp): bincode 1.3's variant is four bytes, three of them 0.
        if bincode1.is_bincode1(payload):
            assert payload[1:4] == b"\0\0\0", (e, tail)


def test_restore_of_a_bincode1_log_warns_and_strict_refuses(tmp_path):
    wal = _write_log(tmp_path, [encode_bincode1(e) for e in OLD_LOG])
    got = gpu_pitr.restore(wal, backend="cpu")
    # The wrong state it restores (SPEC section 2 accepts bytes left over) is named.
    assert got.report.trailing_bytes
    older = [w for w in got.report.warnings if "bincode 1.3" in w]
    assert len(older) == 1, got.report.warnings
    assert f"all {len(got.report.trailing_bytes)} are whole entries" in older[0]
    assert "wal-00000000000003e8.log offset 16 (seq 0)" in older[0]
    with pytest.raises(TargetNotReachedError, match="bincode 1.3") as err:
        gpu_pitr.restore(wal, backend="cpu", strict=True)
    assert err.value.offset == 16


def test_the_warning_of_one_record_says_it_in_the_singular(tmp_path):
    # (review diff43) "1 record left bytes over ..., and it is whole entries of".
    wal = _write_log(tmp_path, [encode_bincode1(OLD_LOG[0])])
    (older,) = [w for w in gpu_pitr.restore(wal, backend="cpu").report.warnings
                if "bincode 1.3" in w]
    assert "(seq 0), and it is a whole entry of bincode 1.3 (" in older, older


def test_a_good_log_with_bytes_left_over_is_not_warned_of(tmp_path):
    wal = _write_log(tmp_path, [encode_entry(e) + b"\x00\x01\x02" for e in OLD_LOG])
    got = gpu_pitr.restore(wal, backend="cpu")
    assert len(got.report.trailing_bytes) == len(OLD_LOG)
    assert sorted(got.ids) == ["v2", "v3"]
    assert not [w for w in got.report.warnings if "bincode 1.3" in w]
    gpu_pitr.restore(wal, backend="cpu", strict=True)  # nothing to refuse


def test_a_bincode1_record_that_does_not_decode_says_what_it_is(tmp_path):
    # An id of 255 bytes: bincode 2 reads the length's low byte as a varint marker
    # (255: never valid), so the record is undecodable, not accepted with bytes over.
    entry = Ins("x" * 255, [1.0], None, 1000)
    wal = _write_log(tmp_path, [encode_bincode1(entry)])
    with pytest.raises(CorruptRecordError, match="it is a whole entry of bincode 1.3") as err:
        gpu_pitr.restore(wal, backend="cpu")
    assert err.value.file.endswith(segment_name(1000))
    # A record of the same length that is no bincode 1.3 entry says nothing of it.
    junk = bytearray(encode_bincode1(entry))
    junk[-9] = 0xFF  # the Option tag: neither 0 nor 1
    wal2 = _write_log(tmp_path / "b", [bytes(junk)])
    with pytest.raises(CorruptRecordError) as err2:
        gpu_pitr.restore(wal2, backend="cpu")
    assert "bincode 1.3" not in str(err2.value)


def test_verify_names_the_older_format(tmp_path):
    wal = _write_log(tmp_path, [encode_bincode1(e) for e in OLD_LOG])
    result = verify_wal(wal)
    texts = [p.what for p in result.problems]
    assert texts and all("whole entry of bincode 1.3" in t for t in texts), texts


def test_inspect_names_the_older_format_as_the_reference_does(tmp_path):
    from tests.inspect_reference import assert_same_stats

    # Undecodable (an id of 255 bytes) and accepted with bytes over, both kinds.
    wal = _write_log(tmp_path, [encode_bincode1(Ins("x" * 255, [1.0], None, 9))]
                     + [encode_bincode1(e) for e in OLD_LOG])
    stats = assert_same_stats(wal)
    assert [d["kind"] for d in stats["damage"]] == ["undecodable"] + ["trailing_bytes"] * 8
    # Only the first 8 such records are looked at.
    assert all("whole entry of bincode 1.3" in d["what"] for d in stats["damage"][:8])
    assert stats["damage"][8]["what"] is None
    # A good log's records with bytes over: not one.
    good = _write_log(tmp_path / "good", [encode_entry(e) + b"\x07" for e in OLD_LOG])
    assert all(d["what"] is None for d in assert_same_stats(good)["damage"])


def test_inspect_records_names_each_older_record(tmp_path):
    # Listed as bincode 2, an older record reads as an empty Insert with bytes over:
    # the listing says what it is (every such record: it walks them in Python anyway).
    from gpu_pitr.format.dump import record_lines, wal_records

    wal = _write_log(tmp_path, [encode_bincode1(Ins("x" * 255, [1.0], None, 9))]
                     + [encode_bincode1(e) for e in OLD_LOG * 2])
    docs = list(wal_records(wal))
    assert docs[0]["damage"] == "undecodable"
    assert docs[0]["what"].endswith(bincode1.WHOLE_ENTRY)
    assert len(docs) == 1 + 2 * len(OLD_LOG)
    assert all(d["trailing_bytes"] and d["bincode1"] for d in docs[1:])
    (line,) = record_lines(docs[1])
    assert line.endswith("(+34 trailing bytes: a whole bincode 1.3 entry, an older "
                         "oxirs-vec's format)"), line
    # A good log's records with bytes over are not one; one without has no such key.
    good = _write_log(tmp_path / "good", [encode_entry(e) + b"\x07" for e in OLD_LOG]
                      + [encode_entry(OLD_LOG[0])])
    docs = list(wal_records(good))
    assert [d.get("bincode1") for d in docs] == [False] * len(OLD_LOG) + [None]
    assert record_lines(docs[0])[0].endswith("(+1 trailing bytes)")


@pytest.mark.parametrize("strict", [False, True])
def test_a_log_upgraded_to_bincode2_names_the_older_records_in_its_dimension_error(
        tmp_path, strict):
    # (review walk43) Old segments, then the upgraded writer's: the old records set the
    # index's dimension to 0 (empty vectors), and the first new insert failed with
    # "vector of length 2 differs from the index dimension 0" and not a word of why,
    # with or without --strict (which refuses such a log: it never got the chance).
    wal = _write_log(tmp_path, [encode_bincode1(e) for e in OLD_LOG])
    with WalWriter(wal, created=5000, next_seq=len(OLD_LOG), clock=lambda: 5000) as w:
        w.append(Insert("n1", [9.0, 9.0], None, 5000))
    with pytest.raises(DimensionMismatchError) as err:
        gpu_pitr.restore(wal, backend="cpu", strict=strict)
    text = str(err.value)
    assert "differs from the index dimension 0" in text
    assert "whole entries of bincode 1.3" in text, text
    assert "wal-00000000000003e8.log offset 16 (seq 0)" in text, text
    assert err.value.file.endswith(segment_name(5000))


def test_a_dimension_error_of_a_good_log_says_nothing_of_bincode1(tmp_path):
    wal = _write_log(tmp_path, [encode_entry(Ins("a", [], None, 1)) + b"\x00",
                                encode_entry(Ins("b", [1.0], None, 2))])
    with pytest.raises(DimensionMismatchError) as err:
        gpu_pitr.restore(wal, backend="cpu")
    assert "bincode 1.3" not in str(err.value)
