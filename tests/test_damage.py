"""SPEC §2 (damage) and §4 (incomplete history): one test per rule, real behaviour.

Each test runs against both executors of the package (cuda under the simulator) when
it is installed, and against tests/reference.py.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
from pathlib import Path

import pytest
import workloads as w
from workloads import Abort, Batch, Begin, Commit, Ins, LogBuilder, encode_entry, f32

import gpu_pitr
from gpu_pitr.errors import (
    BadSegmentError,
    CorruptRecordError,
    DimensionMismatchError,
    IncompleteHistoryError,
    TargetNotFoundError,
)

SEG2 = 0x6000000  # creation second of a second segment (sorts after LogBuilder's default)


@pytest.fixture(params=w.IMPLS)
def restore(request):
    return w.impl_restore(request.param)


def base(path) -> str:
    return os.path.basename(str(path))


def torn(view) -> list[tuple]:
    return [(base(t["file"]), t["offset"], t["bytes_lost"]) for t in view.report["torn_tails"]]


def assert_listed(entries: list[dict], recs: list) -> None:
    """The damage list names exactly these records (file, seq, an offset inside each)."""
    assert len(entries) == len(recs), entries
    for e, r in zip(entries, recs, strict=True):
        assert (base(e["file"]), e.get("seq")) == (r.file, r.seq), (e, r)
        assert r.offset <= e["offset"] < r.end, (e, r)


def assert_fails_naming(cls, rec, restore, *args, **kwargs):
    """``restore(*args, **kwargs)`` raises ``cls`` naming ``rec``'s file and seq and an
    offset inside it."""
    with pytest.raises(cls) as info:
        restore(*args, **kwargs)
    err = info.value
    assert type(err) is cls, repr(err)
    assert base(err.file) == rec.file
    assert err.offset is not None and rec.offset <= err.offset < rec.end, (err.offset, rec)
    assert err.seq == rec.seq
    line = str(err)
    assert "\n" not in line and rec.file in line and f"offset {err.offset}" in line


def two_segments():
    """Segment 1: a, b; segment 2: c. Returns (builder, recs)."""
    b = LogBuilder()
    ra = b.add(Ins("a", [1.0], None, 1))
    rb = b.add(Ins("b", [2.0], None, 2))
    b.new_segment(SEG2)
    rc = b.add(Ins("c", [3.0], None, 3))
    return b, (ra, rb, rc)


# ----------------------------------------------------------------------------- torn tails
@pytest.mark.parametrize("cut", [1, 5, 11], ids=lambda c: f"header+{c}")
def test_torn_tail_inside_record_header_stops_that_file_only(restore, tmp_path, cut):
    b, (ra, rb, rc) = two_segments()
    b.truncate(rb.file, rb.offset + cut)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "c"]
    assert torn(v) == [(rb.file, rb.offset, cut)]


@pytest.mark.parametrize("cut", [12, 13, -1], ids=["no-payload", "payload+1", "last-byte-missing"])
def test_torn_tail_inside_payload(restore, tmp_path, cut):
    b, (ra, rb, rc) = two_segments()
    size = rb.end - 1 if cut == -1 else rb.offset + cut
    b.truncate(rb.file, size)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "c"]
    assert torn(v) == [(rb.file, rb.offset, size - rb.offset)]


def test_torn_tail_in_last_file(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    b.truncate(rc.file, rc.end - 3)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b"]
    assert torn(v) == [(rc.file, rc.offset, rc.end - 3 - rc.offset)]
    assert v.report["stop"]["reason"] == "end_of_log"


def test_payload_length_past_end_of_file_is_a_torn_tail(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    off = b.raw(struct.pack("<QI", 3, 0xFFFFFFFF) + b"\x00" * 7, file=rb.file)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b", "c"]
    assert torn(v) == [(rb.file, off, 19)]


@pytest.mark.parametrize("n", [1, 4, 8, 12, 15])
def test_torn_second_header(restore, tmp_path, n):
    b, (ra, rb, rc) = two_segments()
    off = b.raw(w.encode_header(0x5F5E100)[:n], file=rb.file)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b", "c"]
    assert torn(v) == [(rb.file, off, n)]


def test_torn_record_is_not_a_record_for_a_seq_target(restore, tmp_path):
    # the record header (seq 1) is complete but its payload is not: no record has seq 1
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    r = b.add(Ins("b", [2.0], None, 2))
    b.truncate(r.file, r.end - 1)
    with pytest.raises(TargetNotFoundError):
        restore(b.write(tmp_path / "wal"), to_seq=1)


# ----------------------------------------------------------------------------- short files
def test_empty_segment_file_is_a_torn_tail_at_offset_zero(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    b.put_file(w.segment_name(SEG2 - 1), b"")
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b", "c"]
    assert torn(v) == [(w.segment_name(SEG2 - 1), 0, 0)]


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 9, 15])
def test_file_shorter_than_header_with_header_prefix_is_torn_at_zero(restore, tmp_path, n):
    b, (ra, rb, rc) = two_segments()
    name = w.segment_name(SEG2 - 1)
    b.put_file(name, w.encode_header(SEG2 - 1)[:n])
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b", "c"]
    assert torn(v) == [(name, 0, n)]


@pytest.mark.parametrize(
    "data", [b"X", b"WALX", b"WALV\x02", b"WALV\x01\x00\x00\x01", b"\x00" * 15], ids=repr
)
def test_file_shorter_than_header_without_header_prefix_is_wrong_magic(restore, tmp_path, data):
    b, (ra, rb, rc) = two_segments()
    name = w.segment_name(SEG2 - 1)
    b.put_file(name, data)
    d = b.write(tmp_path / "wal")
    with pytest.raises(BadSegmentError) as ei:
        restore(d)
    assert base(ei.value.file) == name
    # not needed: the stop point is in the first file
    v = restore(d, to_time=1)
    assert v.ids == ["a"]
    assert [base(x["file"]) for x in v.report["damage_after_stop"]] == [name]


# ----------------------------------------------------------------------------- undecodable
def _valid_insert() -> bytes:
    return encode_entry(Ins("id", [1.0, 2.0], {"k": "v"}, 300))


GARBAGE = {
    "unknown_variant_8": b"\x08\x00",
    "unknown_variant_250": b"\xfa\x00",
    "unknown_variant_u16": b"\xfb\x09\x00",
    "variant_u64_marker": b"\xfd" + b"\x00" * 8 + b"\x01a\x00",
    "variant_marker_255": b"\xff\x00\x00",
    "timestamp_u128_marker": b"\x02\x01a\xfe" + b"\x00" * 16,
    "timestamp_marker_255": b"\x02\x01a\xff",
    "varint_truncated": b"\x02\x01a\xfc\x01\x00",
    "empty_payload": b"",
    "truncated_in_id": _valid_insert()[:3],
    "truncated_in_vector": _valid_insert()[:8],
    "truncated_in_metadata": _valid_insert()[:15],
    "truncated_before_timestamp": _valid_insert()[:-3],
    "truncated_nested_batch": encode_entry(Batch([Ins("a", [1.0], None, 1)], 2))[:-2],
    "invalid_utf8_id": b"\x00\x02\xff\xfe\x00\x00\x05",
    "surrogate_utf8_id": b"\x02\x03\xed\xa0\x80\x05",
    "overlong_utf8_id": b"\x02\x02\xc0\xaf\x05",
    # RFC 3629's other ranges: a 3- and a 4-byte overlong form, a code point past
    # U+10FFFF, and lead bytes F5-F7 (a decoder that checks only the lead byte's
    # pattern takes each of them)
    "overlong_3_byte_utf8_id": b"\x02\x03\xe0\x80\x80\x05",
    "overlong_4_byte_utf8_id": b"\x02\x04\xf0\x80\x80\x80\x05",
    "utf8_past_u10ffff_id": b"\x02\x04\xf4\x90\x80\x80\x05",
    "utf8_lead_f5_id": b"\x02\x04\xf5\x80\x80\x80\x05",
    "invalid_utf8_metadata_key": b"\x00\x01a\x00\x01\x01\x01\x80\x01v\x05",
    "invalid_utf8_metadata_value": b"\x00\x01a\x00\x01\x01\x01k\x01\xc3\x05",
    "string_length_larger_than_payload": b"\x02\xfd" + b"\xff" * 8 + b"\x05",
    "vector_count_larger_than_payload": b"\x00\x01a\xfd" + b"\xff" * 7 + b"\x1f" + b"\x00" * 8,
    "vector_count_off_by_one": b"\x00\x01a\x02" + f32(1.0) + b"\x00\x05",
    "map_count_larger_than_payload": b"\x00\x01a\x00\x01\xfd" + b"\xff" * 8 + b"\x05",
    # 3 pairs in 4 bytes: each pair takes 2 at least (two lengths), so the count is
    # refused before the pairs are read (read as 1 byte each, it was "truncated")
    "map_count_over_half_the_payload": b"\x00\x01a\x00\x01\x03" + b"\x00" * 4,
    "batch_count_larger_than_payload": b"\x03\xfd" + b"\xff" * 8 + b"\x00",
    "bad_option_tag": b"\x00\x01a\x00\x02\x05",
    # The option tag is one raw byte (oxicode/bincode 2 `u8::decode`), not a varint:
    # read as one, fb 01 00 would be Some and this an Insert with an empty map.
    "option_tag_in_varint_form": b"\x00\x01a\x00\xfb\x01\x00\x00\x05",
    "unknown_variant_in_batch": b"\x03\x01\x09\x00\x05",
    # variant 8 with a byte after it: not "truncated" (which 08 00 alone would be too)
    "unknown_variant_8_long": b"\x08\x00\x01",
    # a 2-byte character cut by the id's end, a continuation byte right after it
    "utf8_cut_by_the_string_end": b"\x00\x01\xc3\xa9" + b"\x00" * 4,
    # 5 floats need 20 bytes, 10 are left: the count, not the bytes, is too large
    "vector_count_of_floats_larger_than_payload": b"\x00\x01a\x05" + b"\x00" * 10,
}

# Why each of GARBAGE does not decode, as the fast restore says it (the start of the
# error's text): a parser that fails for another reason has another bug.
REASONS = {
    "unknown variant": ["unknown_variant_8", "unknown_variant_250", "unknown_variant_u16",
                        "unknown_variant_in_batch", "unknown_variant_8_long"],
    "invalid varint": ["variant_u64_marker", "variant_marker_255", "timestamp_u128_marker",
                       "timestamp_marker_255"],
    "payload truncated": ["varint_truncated", "empty_payload", "truncated_before_timestamp",
                          "truncated_nested_batch"],
    "count larger than the payload": [
        "truncated_in_id", "truncated_in_vector", "truncated_in_metadata",
        "string_length_larger_than_payload", "vector_count_larger_than_payload",
        "vector_count_off_by_one", "map_count_larger_than_payload",
        "map_count_over_half_the_payload",
        "batch_count_larger_than_payload", "vector_count_of_floats_larger_than_payload"],
    "invalid UTF-8 in a string": ["invalid_utf8_id", "surrogate_utf8_id", "overlong_utf8_id",
                                  "overlong_3_byte_utf8_id", "overlong_4_byte_utf8_id",
                                  "utf8_past_u10ffff_id", "utf8_lead_f5_id",
                                  "invalid_utf8_metadata_key", "invalid_utf8_metadata_value",
                                  "utf8_cut_by_the_string_end"],
    "invalid option tag": ["bad_option_tag", "option_tag_in_varint_form"],
}


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_undecodable_payload_is_an_error_naming_file_offset_seq(restore, tmp_path, payload):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(payload)
    b.add(Ins("b", [2.0], None, 2))
    assert_fails_naming(CorruptRecordError, bad, restore, b.write(tmp_path / "wal"))


def test_every_garbage_payload_has_a_reason_and_the_fast_restore_names_it(tmp_path):
    by_name = {name: why for why, names in REASONS.items() for name in names}
    assert sorted(by_name) == sorted(GARBAGE)
    import gpu_pitr

    for k, (name, payload) in enumerate(GARBAGE.items()):
        b = LogBuilder()
        b.add(Ins("a", [1.0], None, 1))
        b.add_payload(payload)
        with pytest.raises(CorruptRecordError) as info:
            gpu_pitr.restore(b.write(tmp_path / f"w{k}"), backend="cpu")
        assert info.value.what.startswith(by_name[name] + " ("), (name, info.value.what)


def test_undecodable_payload_after_stop_point_is_reported_not_fatal(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [2.0], None, 10))
    bad = b.add_payload(b"\xff\xff")
    v = restore(b.write(tmp_path / "wal"), to_time=5)
    assert v.ids == ["a"]
    assert_listed(v.report["damage_after_stop"], [bad])


def test_undecodable_payload_in_a_later_file_after_stop_point(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    bad = b.add_payload(b"\x08")
    v = restore(b.write(tmp_path / "wal"), to_seq=1)
    assert v.ids == ["a", "b"]
    assert_listed(v.report["damage_after_stop"], [bad])


def test_reached_is_strict_time_target_damage_after_last_applied_commit_is_fatal(restore, tmp_path):
    # T=5 applies a; the stop point is b (first commit point past T) and must be read,
    # so the damaged record between them is fatal
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(b"\xff")
    b.add(Ins("b", [2.0], None, 10))
    d = b.write(tmp_path / "wal")
    assert_fails_naming(CorruptRecordError, bad, restore, d, to_time=5)


def test_reached_is_strict_time_target_past_the_end_reads_everything(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(b"\x09")
    assert_fails_naming(CorruptRecordError, bad, restore, b.write(tmp_path / "wal"), to_time=100)


def test_reached_is_strict_damage_inside_a_transaction_before_the_stop(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Begin(1, 2))
    bad = b.add_payload(b"\x00\x01")
    b.add(Abort(1, 3))
    b.add(Ins("b", [2.0], None, 10))
    d = b.write(tmp_path / "wal")
    assert_fails_naming(CorruptRecordError, bad, restore, d, to_time=5)


def test_reached_is_strict_seq_target_record_must_decode(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(b"\x00\x05ab")  # seq 1
    b.add(Ins("b", [2.0], None, 2))
    d = b.write(tmp_path / "wal")
    assert_fails_naming(CorruptRecordError, bad, restore, d, to_seq=1)
    v = restore(d, to_seq=0)  # damage after the stop point
    assert v.ids == ["a"]
    assert_listed(v.report["damage_after_stop"], [bad])


# ----------------------------------------------------------------------------- trailing bytes
def test_bytes_left_after_a_payload_are_accepted_and_counted(restore, tmp_path):
    b = LogBuilder()
    r1 = b.add(Ins("a", [1.0], None, 1), trailing=b"\x00\x01\x02")
    r2 = b.add(Batch([Ins("b", [2.0], None, 1)], 2), trailing=b"\xff")
    b.add(Ins("c", [3.0], None, 3))
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a", "b", "c"]
    tb = v.report["trailing_bytes"]
    assert [(base(t["file"]), t["offset"]) for t in tb] == [
        (r1.file, r1.offset),
        (r2.file, r2.offset),
    ]
    counts = [[x for k, x in t.items() if k not in ("file", "offset", "seq", "what")] for t in tb]
    assert counts == [[3], [1]]


# ----------------------------------------------------------------------------- wrong magic
@pytest.mark.parametrize(
    "head",
    [
        b"WALX\x01\x00\x00\x00",
        b"walv\x01\x00\x00\x00",
        b"WALV\x02\x00\x00\x00",
        b"WALV\x00\x00\x00\x00",
        b"WALV\x01\x00\x00\x01",
    ],
    ids=["magic", "magic-case", "version-2", "version-0", "version-2**24"],
)
def test_segment_with_wrong_magic_or_version_is_an_error(restore, tmp_path, head):
    b, (ra, rb, rc) = two_segments()
    name = w.segment_name(SEG2 - 1)
    b.put_file(name, head + struct.pack("<Q", SEG2 - 1) + w.encode_record(2, _valid_insert()))
    d = b.write(tmp_path / "wal")
    with pytest.raises(BadSegmentError) as ei:
        restore(d)
    assert base(ei.value.file) == name
    assert ei.value.offset is None or 0 <= ei.value.offset < 16
    assert name in str(ei.value)


def test_history_skipped_as_damage_is_not_said_to_be_deleted(tmp_path):
    # The first segment unreadable and --skip-corrupt given: the log then starts at seq 2,
    # and the error said only "start from a snapshot taken before it was deleted".
    b, _ = two_segments()
    first = sorted(b.files)[0]
    b.files[first][:4] = b"NOPE"
    d = b.write(tmp_path / "wal")
    with pytest.raises(IncompleteHistoryError) as ei:
        gpu_pitr.restore(d, skip_corrupt=True, backend="cpu")
    assert (f"it is in what --skip-corrupt skipped: {os.path.join(d, first)} offset 0, "
            "wrong magic") in str(ei.value)
    with pytest.raises(BadSegmentError):  # without it, the file itself is the error
        gpu_pitr.restore(d, backend="cpu")


def test_wrong_magic_file_after_the_stop_point_is_reported_not_fatal(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    name = w.segment_name(SEG2 + 1)
    b.put_file(name, b"WALX" + b"\x01\x00\x00\x00" + b"\x00" * 8)
    d = b.write(tmp_path / "wal")
    v = restore(d, to_time=2)
    assert v.ids == ["a", "b"]
    assert [base(x["file"]) for x in v.report["damage_after_stop"]] == [name]
    # --skip-corrupt skips what the restore must read past; a file after the stop point
    # is damage after it still, as an undecodable record there is
    v = restore(d, to_time=2, skip_corrupt=True)
    assert v.ids == ["a", "b"]
    assert [base(x["file"]) for x in v.report["damage_after_stop"]] == [name]
    assert v.report["skipped"] == []
    v = restore(d, to_seq=0)
    assert v.ids == ["a"]
    with pytest.raises(BadSegmentError):
        restore(d, to_time=3)  # the stop point is not reached before the bad file


def test_wrong_magic_file_before_a_seq_target_is_fatal(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    b.put_file(w.segment_name(SEG2 - 1), b"WALV\x07\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(BadSegmentError):
        restore(b.write(tmp_path / "wal"), to_seq=2)


# ----------------------------------------------------------------------------- dimensions
def test_dimension_mismatch_names_the_first_applied_record_that_differs(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0, 2.0], None, 1))
    b.add(Ins("b", [1.0, 2.0], None, 2))
    bad = b.add(w.Upd("c", [1.0, 2.0, 3.0], None, 3))
    b.add(Ins("d", [1.0], None, 4))
    assert_fails_naming(DimensionMismatchError, bad, restore, b.write(tmp_path / "wal"))


def test_dimension_mismatch_inside_batch_names_the_batch_record(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0, 2.0], None, 1))
    bad = b.add(Batch([Ins("b", [1.0, 2.0], None, 2), Batch([Ins("c", [1.0], None, 2)], 2)], 2))
    assert_fails_naming(DimensionMismatchError, bad, restore, b.write(tmp_path / "wal"))


def test_dimension_mismatch_ignores_discarded_records(restore, tmp_path):
    b = LogBuilder()
    b.add(Begin(1, 1))
    b.add(Ins("x", [1.0, 2.0, 3.0], None, 1))  # aborted
    b.add(Abort(1, 1))
    b.add(Ins("a", [1.0], None, 2))
    b.add(Begin(2, 3))
    b.add(Ins("y", [1.0, 2.0], None, 3))  # in flight at the end
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["a"] and v.dim == 1


def test_dimension_mismatch_ignores_records_beyond_the_stop_point(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [1.0, 2.0], None, 10))
    b.add(Ins("c", [1.0, 2.0, 3.0], None, 2))  # beyond the stop, though ts <= T
    d = b.write(tmp_path / "wal")
    assert restore(d, to_time=5).ids == ["a"]
    assert restore(d, to_seq=0).ids == ["a"]
    with pytest.raises(DimensionMismatchError):
        restore(d, to_seq=1)


def test_dimension_is_set_by_the_first_applied_record_not_the_first_written(restore, tmp_path):
    b = LogBuilder()
    b.add(Begin(1, 1))
    first_written = b.add(Ins("a", [1.0, 2.0, 3.0], None, 1))  # -> 1
    b.add(Begin(2, 1))
    b.add(Ins("b", [1.0, 2.0], None, 1))  # -> 2
    b.add(Commit(2, 2))  # applies b first: dimension 2
    b.add(Commit(1, 3))  # a differs
    assert_fails_naming(DimensionMismatchError, first_written, restore, b.write(tmp_path / "wal"))


def test_deleted_record_still_counts_for_dimension(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(w.Del("a", 2))
    bad = b.add(Ins("b", [1.0, 2.0], None, 3))
    assert_fails_naming(DimensionMismatchError, bad, restore, b.write(tmp_path / "wal"))


# ----------------------------------------------------------------------------- nothing
def _assert_empty(v):
    assert v.ids == [] and v.vectors == [] and v.metadata == []
    assert v.report["stop"]["reason"] == "end_of_log"
    assert v.report["records_read"] == 0
    assert v.report["commit_points_applied"] == 0


def test_no_files_gives_an_empty_index(restore, tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    _assert_empty(restore(str(d)))
    _assert_empty(restore(str(d), to_time=100))


def test_only_headers_gives_an_empty_index(restore, tmp_path):
    b = LogBuilder()
    b.reopen()
    b.new_segment(SEG2)
    wal = b.write(tmp_path / "wal")
    v = restore(wal)
    _assert_empty(v)
    assert v.report["torn_tails"] == []
    # The headers were read and checked: their bytes count (they once did not).
    files = sum(p.stat().st_size for p in Path(wal).iterdir())
    assert gpu_pitr.restore(wal, backend="cpu").report.bytes_read == files == 48


def test_a_mid_file_header_of_another_version_is_not_a_header(restore, tmp_path):
    """A writer reopened in the same second appends a header (magic and version 1) to
    its file; the same magic with version 2 is no header: read as a record, its length
    (the creation second) is impossible, so the file is torn there and what follows is
    not applied. (Recognising the magic alone let the next records through.)"""
    for version, ids in ((1, ["a", "b"]), (2, ["a"])):
        b = LogBuilder()
        rec = b.add(Ins("a", [1.0], None, 1))
        header = bytearray(w.encode_header(0x5F5E100))
        header[4] = version
        b.raw(bytes(header))
        b.seq = 0
        b.add(Ins("b", [2.0], None, 2))
        v = restore(b.write(tmp_path / f"v{version}"))
        assert v.ids == ids
        name = w.segment_name(0x5F5E100)
        size = len(b.files[name])
        assert torn(v) == ([] if version == 1 else [(name, rec.end, size - rec.end)])


def test_only_ignored_and_empty_files_gives_an_empty_index(restore, tmp_path):
    b = LogBuilder(header=False)
    b.put_file("notes.txt", b"hello")
    v = restore(b.write(tmp_path / "wal"))
    _assert_empty(v)
    assert torn(v) == [(w.segment_name(0x5F5E100), 0, 0)]


def test_seq_target_on_an_empty_log_is_not_found(restore, tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    with pytest.raises(TargetNotFoundError):
        restore(str(d), to_seq=0)


# ----------------------------------------------------------------------------- skip corrupt
def test_skip_corrupt_skips_undecodable_records_and_lists_them(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad1 = b.add_payload(b"\xff")
    b.add(Begin(1, 2))
    b.add(Ins("b", [2.0], None, 2))
    bad2 = b.add_payload(b"\x00\x01")  # inside the transaction
    b.add(Commit(1, 3))
    d = b.write(tmp_path / "wal")
    v = restore(d, skip_corrupt=True)
    assert v.ids == ["a", "b"]
    assert_listed(v.report["skipped"], [bad1, bad2])
    with pytest.raises(CorruptRecordError):
        restore(d)


def test_a_skip_names_the_byte_the_error_names(tmp_path):
    """A skipped record (and one past the stop) is listed at the byte where its decoding
    failed, the offset the restore's error names without --skip-corrupt: inside the
    payload, not the record's first byte."""
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    bad = b.add_payload(b"\x00\x01")  # an Insert whose id is cut short
    b.add(Ins("b", [2.0], None, 10))
    after = b.add_payload(b"\x00\x05ab")
    d = b.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError) as err:
        w.restore_fast(d, to_time=5)
    assert err.value.offset > bad.offset + 12  # in the payload
    # The id's length byte (after the 12-byte header and the variant) runs past the
    # payload: that byte is the one named.
    assert err.value.offset == bad.offset + 13
    v = w.restore_fast(d, to_time=5, skip_corrupt=True)
    assert [e["offset"] for e in v.report["skipped"]] == [err.value.offset]
    assert [e["offset"] for e in v.report["damage_after_stop"]] == [after.offset + 13]


def test_skip_corrupt_skips_unreadable_segment_files(restore, tmp_path):
    b, (ra, rb, rc) = two_segments()
    bad_a = w.segment_name(SEG2 - 2)
    bad_b = w.segment_name(SEG2 - 1)
    b.put_file(bad_a, b"WALX" + b"\x00" * 40)
    b.put_file(bad_b, b"junk")
    v = restore(b.write(tmp_path / "wal"), skip_corrupt=True)
    assert v.ids == ["a", "b", "c"]
    assert sorted(base(s["file"]) for s in v.report["skipped"]) == [bad_a, bad_b]


def test_a_segment_that_cannot_be_read_is_a_bad_header(restore, tmp_path):
    """A segment name whose file cannot be opened (here a symbolic link to a file that
    is gone: an archive volume not mounted) is not silently left out of the log: like
    a bad header it is fatal when the restore needs it, skipped with skip_corrupt,
    listed after the stop point; verify and inspect list it."""
    from gpu_pitr.cli import main

    b, _ = two_segments()
    d = Path(b.write(tmp_path / "wal"))
    gone = w.segment_name(SEG2 + 1)
    os.symlink(tmp_path / "archive" / gone, d / gone)
    with pytest.raises(BadSegmentError) as err:
        restore(d)
    assert base(err.value.file) == gone and err.value.offset == 0
    if restore is not w.restore_ref:  # the reference's errors carry no text
        assert str(err.value).endswith(
            f"offset 0: cannot read the file: a symbolic link to "
            f"'{tmp_path / 'archive' / gone}', which is missing")
    v = restore(d, skip_corrupt=True)
    assert v.ids == ["a", "b", "c"]
    assert [base(s["file"]) for s in v.report["skipped"]] == [gone]
    v = restore(d, to_time=1)
    assert v.ids == ["a"]
    assert [base(s["file"]) for s in v.report["damage_after_stop"]] == [gone]
    assert main(["verify", str(d)]) == 1
    assert main(["inspect", str(d)]) == 0
    import inspect_reference  # the compiled inspect equals the pure-Python one here too

    stats = inspect_reference.assert_same_stats(d)
    assert [(x["kind"], x["file"]) for x in stats["damage"]] == [("bad_header", gone)]
    # A loop of links: the same, with the reason.
    loop = [w.segment_name(SEG2 + 2), w.segment_name(SEG2 + 3)]
    os.symlink(loop[1], d / loop[0])
    os.symlink(loop[0], d / loop[1])
    v = restore(d, skip_corrupt=True)
    assert [base(s["file"]) for s in v.report["skipped"]] == [gone, *loop]
    if restore is not w.restore_ref:
        assert [s["what"] for s in v.report["skipped"][1:]] == [
            "cannot read the file: Too many levels of symbolic links"] * 2
    for name in loop:
        (d / name).unlink()
    # The file comes back: it is read like any other.
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / gone).write_bytes(b"")
    assert restore(d).ids == ["a", "b", "c"]


@pytest.mark.parametrize("mapping", [True, False, None], ids=["mapped", "read", "direct"])
def test_an_io_error_inside_a_segment_is_one_line_naming_file_and_offset(tmp_path,
                                                                           monkeypatch,
                                                                           mapping):
    # A page that cannot be read: mapped, its fault fails (a SIGBUS if touched, so the
    # pages are faulted in first, where it is an error), and the piece is read instead.
    # direct: a small segment's records, read by the framing thread after its header.
    import errno

    import gpu_pitr
    from gpu_pitr.errors import FileReadError
    from gpu_pitr.format import mapped, readahead

    b, _ = two_segments()
    d = b.write(tmp_path / "wal")

    def failing(fd, buffers, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(readahead.os, "preadv", failing)
    if mapping is not None:  # read ahead, not with the header
        monkeypatch.setattr(readahead, "DIRECT_BYTES", 0)
    if mapping:
        monkeypatch.setattr(mapped, "MIN_PIECE", 0)
        monkeypatch.setattr(mapped, "_libc", w.FailingLibc("madvise", errno.EFAULT))
    else:
        monkeypatch.setenv("GPU_PITR_MAP_READS", "0")
    with pytest.raises(FileReadError) as err:
        gpu_pitr.restore(d, backend="cpu")
    assert str(err.value) == (f"{Path(d) / w.segment_name(0x5F5E100)}: offset 16: cannot read: "
                              "Input/output error")
    assert isinstance(err.value, OSError) and err.value.errno == errno.EIO


def test_an_io_error_inside_a_small_segment_names_the_byte_it_stopped_at(tmp_path,
                                                                       monkeypatch):
    # A small segment read whole (its header and records in one read, beside its
    # neighbours): the first read returns the header and 10 bytes of records, the next
    # fails. The offset is where the read failed (26), not where the records start.
    import errno

    import gpu_pitr
    from gpu_pitr.errors import FileReadError
    from gpu_pitr.format import readahead

    b, _ = two_segments()
    d = b.write(tmp_path / "wal")
    real = os.preadv
    calls = []

    def short_then_failing(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 1:
            return real(fd, [buffers[0], buffers[1][:10]], offset)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(readahead.os, "preadv", short_then_failing)
    with pytest.raises(FileReadError) as err:
        gpu_pitr.restore(d, backend="cpu")
    assert calls == [0, 26]
    assert str(err.value) == (f"{Path(d) / w.segment_name(0x5F5E100)}: offset 26: cannot read: "
                              "Input/output error")


@pytest.mark.parametrize("ahead", [False, True], ids=["small", "read-ahead"])
def test_a_segment_the_process_has_no_descriptor_for_is_not_skipped_as_damaged(
        tmp_path, monkeypatch, no_descriptor_for, ahead):
    # EMFILE (ulimit -n reached: a service manager's limit, a caller's own sockets)
    # opening a sound segment was judged a bad header: --skip-corrupt skipped the file
    # and restored without its records, verify and inspect called it damaged. It says
    # nothing about the file: one line naming it, as an I/O error in its records.
    # small: read whole beside its neighbours; read-ahead: its header read alone.
    import errno

    from gpu_pitr.errors import FileReadError
    from gpu_pitr.format import readahead
    from gpu_pitr.format.dump import wal_records
    from gpu_pitr.format.stats import wal_stats
    from gpu_pitr.verify import verify_wal

    b, _ = two_segments()
    d = b.write(tmp_path / "wal")
    second = os.path.join(d, w.segment_name(SEG2))
    no_descriptor_for(os, "open", second)
    if ahead:
        monkeypatch.setattr(readahead, "DIRECT_BYTES", 0)
    line = f"{second}: offset 0: cannot read: Too many open files"
    for call in (lambda: gpu_pitr.restore(d, backend="cpu", skip_corrupt=True),
                 lambda: gpu_pitr.restore(d, backend="cpu"),
                 lambda: verify_wal(d),
                 lambda: wal_stats(d),
                 lambda: list(wal_records(d))):
        with pytest.raises(FileReadError) as err:
            call()
        assert str(err.value) == line and err.value.errno == errno.EMFILE


def test_skip_corrupt_lists_damage_after_the_stop_as_such_not_as_skipped(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    before = b.add_payload(b"\x09")
    b.add(Ins("b", [2.0], None, 10))
    after = b.add_payload(b"\x0a")
    v = restore(b.write(tmp_path / "wal"), to_time=5, skip_corrupt=True)
    assert v.ids == ["a"]
    assert_listed(v.report["skipped"], [before])
    assert_listed(v.report["damage_after_stop"], [after])


def test_skip_corrupt_does_not_hide_dimension_mismatch(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [1.0, 2.0], None, 2))
    with pytest.raises(DimensionMismatchError):
        restore(b.write(tmp_path / "wal"), skip_corrupt=True)


# ----------------------------------------------------------------------------- read-only
def test_source_directory_is_never_modified(restore, tmp_path, monkeypatch):
    b, (ra, rb, rc) = two_segments()
    b.add_payload(b"\xff")
    b.add(Ins("d", [4.0], None, 9), trailing=b"\x00")
    b.put_file(w.segment_name(SEG2 + 5), b"WALX")
    b.put_file(w.segment_name(SEG2 + 6), w.encode_header(1)[:5])
    b.put_file("other.txt", b"x")
    d = b.write(tmp_path / "wal")
    before = w.dir_state(d)

    real_open, real_os_open = builtins.open, os.open
    writes = []

    def spy_open(file, mode="r", *a, **k):
        if isinstance(file, str | os.PathLike) and str(file).startswith(d):
            if any(c in mode for c in "wax+"):
                writes.append((file, mode))
        return real_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):
        if str(path).startswith(d) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append((path, flags))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    for kw in ({}, {"skip_corrupt": True}, {"to_time": 2}, {"to_seq": 0}, {"to_seq": 99}):
        try:
            restore(d, **kw)
        except (CorruptRecordError, BadSegmentError, TargetNotFoundError):
            pass
    monkeypatch.undo()
    assert writes == []
    assert w.dir_state(d) == before


# ----------------------------------------------------------------------------- §4 history
def test_first_record_not_seq_zero_is_incomplete_history(restore, tmp_path):
    b = LogBuilder(first_seq=7)
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [2.0], None, 2))
    d = b.write(tmp_path / "wal")
    with pytest.raises(IncompleteHistoryError):
        restore(d)
    with pytest.raises(IncompleteHistoryError):
        restore(d, to_time=1)
    v = restore(d, allow_incomplete_history=True)
    assert v.ids == ["a", "b"]
    assert restore(d, to_seq=7, allow_incomplete_history=True).ids == ["a"]


def test_incomplete_history_error_says_how_to_go_on(tmp_path):
    import gpu_pitr

    b = LogBuilder(first_seq=7)
    b.add(Ins("a", [1.0], None, 1))
    d = b.write(tmp_path / "wal")
    with pytest.raises(IncompleteHistoryError) as err:
        gpu_pitr.restore(d, backend="cpu")
    assert err.value.seq == 7 and base(err.value.file) == w.segment_name(0x5F5E100)
    assert "--base/--snapshots" in str(err.value)
    assert "--allow-incomplete-history" in str(err.value)


def test_inspect_and_verify_say_whether_history_is_complete(tmp_path, capsys):
    from gpu_pitr.cli import main

    b = LogBuilder(first_seq=7)
    b.add(Ins("a", [1.0], None, 1))
    d = b.write(tmp_path / "wal")
    name = w.segment_name(0x5F5E100)
    assert main(["inspect", "--json", str(d)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["history"] == {"complete": False,
                              "first_record": {"file": name, "offset": 16, "seq": 7},
                              "expired_before": None, "expire_marker_problem": None}
    assert main(["inspect", str(d)]) == 0
    second = capsys.readouterr().out.splitlines()[1]
    assert second.startswith(f"history: INCOMPLETE: the log starts at seq 7 ({name}: offset 16)")
    assert "--base/--snapshots" in second and "--allow-incomplete-history" in second
    assert main(["verify", str(d)]) == 0  # a notice, not damage
    assert "--base/--snapshots" in capsys.readouterr().out
    whole = LogBuilder()
    whole.add(Ins("a", [1.0], None, 1))
    assert main(["inspect", str(whole.write(tmp_path / "whole"))]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        f"history: complete: the log starts at seq 0 ({name}: offset 16)")
    (tmp_path / "empty").mkdir()
    assert main(["inspect", "--json", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["history"] == {"complete": True, "first_record": None,
                                          "expired_before": None,
                                          "expire_marker_problem": None}


def test_seq_not_found_says_which_seqs_the_log_holds(tmp_path):
    import gpu_pitr

    b = LogBuilder(first_seq=7)
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [1.0], None, 2))
    b.seq = 3  # a writer restart: the range covers both runs
    b.add(Ins("c", [1.0], None, 3))
    d = b.write(tmp_path / "wal")
    held = r"number 5 \(the records read carry seq 3 and 7 to 8\)"  # (not "3 to 8")
    with pytest.raises(TargetNotFoundError, match=held):
        gpu_pitr.restore(d, backend="cpu", to_seq=5, allow_incomplete_history=True)
    b = LogBuilder()
    for k in range(6):  # six runs of two: 0-1, 10-11, ... 50-51
        b.seq = 10 * k
        b.add(Ins("a", [1.0], None, 2 * k))
        b.add(Ins("b", [1.0], None, 2 * k + 1))
    held = (r"number 5 \(the records read carry seq 0 to 1, 10 to 11, 20 to 21, 30 to 31 "
            r"and 2 more runs \(`gpu-pitr inspect --records` lists them\)\)")
    with pytest.raises(TargetNotFoundError, match=held):
        gpu_pitr.restore(b.write(tmp_path / "six"), backend="cpu", to_seq=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetNotFoundError, match=r"number 5 \(no records were read\)"):
        gpu_pitr.restore(tmp_path / "empty", backend="cpu", to_seq=5)
    # From a base at the end of the log no record is read after it, but the base's are
    # still the seqs there are: not "no records were read" (a WAL_DIR given wrong?).
    from gpu_pitr import snapshot

    b = LogBuilder()
    for k in range(3):
        b.add(Ins("a", [1.0], None, k))
    d = b.write(tmp_path / "based")
    snapshot.save(gpu_pitr.restore(d, backend="cpu"), tmp_path / "snap")
    with pytest.raises(TargetNotFoundError, match=r"number 5 \(the base snapshot and the "
                       r"records read after it carry seq 0 to 2\)"):
        gpu_pitr.restore(d, backend="cpu", to_seq=5, base=tmp_path / "snap")


def test_seq_not_found_in_a_directory_without_segments_names_what_it_may_be(tmp_path):
    """An operator in an incident who gives the directory above the WAL's (or the
    snapshots) with ``--to-seq`` got only "no record has sequence number N (no records
    were read)", which sends them looking for the record; a time target or none warns
    with ``no_segments_note``, and so does this error now."""
    b = LogBuilder()
    for k in range(3):
        b.add(Ins("a", [1.0], None, k))
    wal_dir = b.write(tmp_path / "store" / "wal")
    with pytest.raises(TargetNotFoundError) as err:
        gpu_pitr.restore(tmp_path / "store", backend="cpu", to_seq=1)
    assert str(err.value) == (
        f"{tmp_path / 'store'}: no record has sequence number 1 (no records were read); "
        f"no wal-<16 hex digits>.log files in {tmp_path / 'store'}, but {wal_dir} has "
        "some: is that the WAL directory?")
    # A base given with the wrong WAL_DIR: the base's seqs are named, and the slip too.
    from gpu_pitr import snapshot

    snapshot.save(gpu_pitr.restore(wal_dir, backend="cpu"), tmp_path / "snaps" / "s")
    with pytest.raises(TargetNotFoundError, match=r"carry seq 0 to 2\); no wal-<16 hex digits>"
                       r"\.log files in .*, but .* has some: is that the WAL directory\?$"):
        gpu_pitr.restore(tmp_path / "store", backend="cpu", to_seq=5,
                         snapshots=tmp_path / "snaps")
    # A log that has segments is not given the note.
    with pytest.raises(TargetNotFoundError) as err:
        gpu_pitr.restore(wal_dir, backend="cpu", to_seq=7)
    assert "no wal-" not in str(err.value)


def test_history_missing_when_first_segment_has_no_records(restore, tmp_path):
    b = LogBuilder()  # a header-only first segment (records removed by retention)
    b.new_segment(SEG2)
    b.seq = 40
    b.add(Ins("a", [1.0], None, 1))
    d = b.write(tmp_path / "wal")
    with pytest.raises(IncompleteHistoryError):
        restore(d)
    assert restore(d, allow_incomplete_history=True).ids == ["a"]


def test_seq_restarting_at_zero_later_is_not_missing_history(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    b.seq = 1000  # a gap later on is not checked
    b.add(Ins("b", [1.0], None, 1))
    b.reopen(SEG2)
    b.add(Ins("c", [1.0], None, 1))
    assert restore(b.write(tmp_path / "wal")).ids == ["a", "b", "c"]


# ----------------------------------------------------------------------------- robustness
def test_deeply_nested_batch_decodes(restore, tmp_path):
    depth = 200
    payload = b"\x03\x01" * depth + encode_entry(Ins("deep", [1.0], None, 1)) + b"\x05" * depth
    b = LogBuilder()
    b.add_payload(payload)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["deep"] and v.report["inserts"] == 1


def test_very_deeply_nested_batch_does_not_crash(restore, tmp_path):
    depth = 100_000
    payload = b"\x03\x01" * depth + encode_entry(Ins("deep", [1.0], None, 1)) + b"\x05" * depth
    b = LogBuilder()
    b.add_payload(payload)
    v = restore(b.write(tmp_path / "wal"))
    assert v.ids == ["deep"]


def test_huge_counts_fail_fast_without_allocating(restore, tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    huge = b"\xfd" + b"\xff" * 8
    payloads = [
        b"\x00" + huge + b"a",  # id length 2**64-1
        b"\x00\x01a\xfd" + struct.pack("<Q", 2**62) + b"\x00",  # vector count
        b"\x03" + huge + b"\x02\x01a\x00",  # batch count
        b"\x00\x01a\x00\x01" + huge,  # map count
    ]
    for p in payloads:
        b.add_payload(p)
    d = b.write(tmp_path / "wal")
    v = restore(d, skip_corrupt=True)
    assert v.ids == ["a"]
    assert len(v.report["skipped"]) == len(payloads)


def test_many_varint_widths_roundtrip(restore, tmp_path):
    b = LogBuilder()
    for i, ts in enumerate([0, 250, 251, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]):
        b.add(Ins(f"id{i}", [float(i)], None, ts))
    d = b.write(tmp_path / "wal")
    assert len(restore(d).ids) == 8
    assert restore(d, to_time=65535).ids == ["id0", "id1", "id2", "id3"]
    assert restore(d, to_time=2**32, exclusive=True).ids == [
        "id0",
        "id1",
        "id2",
        "id3",
        "id4",
        "id5",
    ]


def _cut_after_listing(tmp_path, monkeypatch, cut_to: int):
    """Two segments, the first (20 records) cut to ``cut_to`` bytes once the restore or
    verify has listed the sizes (as it makes its read-ahead). Returns the WAL directory
    and that first file, whole until then."""
    from gpu_pitr.format.readahead import Readahead

    b = LogBuilder()
    for i in range(20):
        b.add(Ins(f"id-{i}", [float(i)] * 4, None, i))
    b.new_segment(SEG2)
    b.add(Ins("z", [1.0] * 4, None, 99))
    d = Path(b.write(tmp_path / "wal"))
    first = sorted(d.iterdir())[0]
    real = Readahead.__init__

    def listed_then_cut(self, *args, **kwargs):  # the sizes are taken: now the cut
        os.truncate(first, cut_to)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Readahead, "__init__", listed_then_cut)
    return d, first


@pytest.mark.parametrize("cut_to", [0, 8, 200])
def test_a_segment_cut_while_it_is_read_is_an_error_not_a_torn_tail(tmp_path, monkeypatch,
                                                                    cut_to):
    # Truncated (or replaced) after the listing: a torn tail of a few bytes was reported,
    # exit 0, and the later files applied over the hole; an emptied file was a torn
    # header, "0 bytes lost". A writer only appends: the run fails, naming the file.
    from gpu_pitr.errors import FileShrankError
    from gpu_pitr.verify import verify_wal

    d, first = _cut_after_listing(tmp_path, monkeypatch, cut_to)
    data = first.read_bytes()
    for run in (lambda: gpu_pitr.restore(d, backend="cpu", chunk_bytes=64),
                lambda: verify_wal(d)):
        first.write_bytes(data)
        with pytest.raises(FileShrankError) as err:
            run()
        text = str(err.value)
        assert text.startswith(f"{first}: offset ") and "\n" not in text
        assert text.endswith("bytes short of its size when listed: it was truncated or "
                             "replaced during the run")
        assert min(cut_to, 16) <= int(text.split("offset ")[1].split(":")[0]) <= len(data)


@pytest.mark.parametrize("cut_to", [0, 8, 200])
def test_a_small_segment_cut_while_it_is_read_with_its_neighbours_is_an_error(
        tmp_path, monkeypatch, cut_to):
    # The same, for small segments a restore reads whole, one after the other, into one
    # buffer (readahead.FrameAhead merge_small): the error names the byte where the file
    # ends now. Framed up to its listed size instead, the bytes past the cut were the
    # buffer's leftovers, restored as records (or a "zero-filled run" named there), and
    # an emptied file was a torn header.
    from gpu_pitr.errors import FileShrankError
    from gpu_pitr.format import readahead

    d, first = _cut_after_listing(tmp_path, monkeypatch, cut_to)
    assert len(first.read_bytes()) <= readahead.DIRECT_BYTES
    with pytest.raises(FileShrankError) as err:
        gpu_pitr.restore(d, backend="cpu")
    assert str(err.value).startswith(f"{first}: offset {cut_to}: the file ends there")


# ----------------------------------------------------------------------------- zero-filled
def _zero_filled(tmp_path, records: int, tail: int = 0):
    """a, then ``records`` records of 12 zero bytes (a file extended but never written),
    then c written on after them, then ``tail`` more zero bytes (a torn tail when less
    than a record)."""
    b = LogBuilder()
    a = b.add(Ins("a", [1.0], None, 1))
    start = b.raw(bytes(12 * records))
    c = b.add(Ins("c", [3.0], None, 5))
    b.raw(bytes(tail))
    return Path(b.write(tmp_path / "wal")), a, start, c


def test_zero_filled_records_are_fatal_and_the_error_says_they_are_zeros(tmp_path):
    d, a, start, _ = _zero_filled(tmp_path, 1000)
    with pytest.raises(CorruptRecordError) as err:
        w.restore_fast(d)
    e = err.value
    assert (base(e.file), e.offset, e.seq) == (a.file, start + 11, 0)
    assert "12 zero bytes" in str(e) and "\n" not in str(e)
    with pytest.raises(CorruptRecordError) as ref:
        w.restore_ref(d)
    assert start <= ref.value.offset < start + 12 and ref.value.seq == 0


@pytest.mark.parametrize(("backend", "chunk_bytes"), [
    ("cpu", None), ("cpu", 256), ("cpu", 1000), ("cpu", 1 << 16),
    ("cuda", 8192)])
def test_a_zero_filled_run_is_one_skip_whatever_the_chunks(tmp_path, chunk_bytes, backend):
    """87,381 records of zeros (1 MiB) are one entry of the report, however many chunks
    and pieces split them: what they are, where they start, how many and how long.
    (The cuda executor under the simulator: 2,000 records in four chunks.)"""
    n = (1 << 20) // 12 if backend == "cpu" else 2000
    d, a, start, c = _zero_filled(tmp_path, n, tail=7)
    v = w.restore_fast(d, skip_corrupt=True, chunk_bytes=chunk_bytes, backend=backend)
    assert v.ids == ["a", "c"]
    (entry,) = v.report["skipped"]
    assert (base(entry["file"]), entry["offset"], entry["seq"]) == (a.file, start + 11, 0)
    assert (entry["records"], entry["bytes"], entry["start"]) == (n, 12 * n, start)
    assert entry["what"].startswith(f"zero-filled: {n:,} records of 12 zero bytes")
    assert torn(v) == [(a.file, c.end, 7)]
    assert v.report["records_read"] == n + 2
    # Stopped before the zeros: the same run is one item after the stop point.
    v = w.restore_fast(d, to_seq=0, chunk_bytes=chunk_bytes, backend=backend)
    assert v.ids == ["a"] and v.report["skipped"] == []
    (after,) = v.report["damage_after_stop"]
    assert (after["records"], after["start"], after["offset"]) == (n, start, start + 11)


def test_zero_filled_runs_apart_are_listed_apart(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    first = b.raw(bytes(24))
    b.add(Ins("b", [2.0], None, 2))
    second = b.raw(bytes(12))
    b.add(Ins("c", [3.0], None, 3))
    v = w.restore_fast(b.write(tmp_path / "wal"), skip_corrupt=True, chunk_bytes=64)
    assert v.ids == ["a", "b", "c"]
    assert [(s["start"], s["records"]) for s in v.report["skipped"]] == [(first, 2), (second, 1)]


def test_zero_filled_run_in_verify_and_inspect(tmp_path):
    """verify and inspect list the run once, with no sequence-number break: zeros carry
    no seq the writer gave, and c goes on from a (seq 1 after seq 0)."""
    from gpu_pitr.format.dump import wal_records
    from gpu_pitr.format.stats import wal_stats
    from gpu_pitr.verify import verify_wal

    n = 5000
    d, a, start, c = _zero_filled(tmp_path, n, tail=5)
    for chunk in (64, 1000, None):
        kw = {} if chunk is None else {"chunk_bytes": chunk}
        problems = verify_wal(d, **kw).problems
        assert [(p.kind, p.offset, p.seq) for p in problems] == [
            ("zero_filled", start, 0), ("torn_tail", c.end, None)]
        z = problems[0]
        assert (z.extra["records"], z.extra["bytes"], z.extra["at"]) == (n, 12 * n, start + 11)
        stats = wal_stats(d, **kw)
        assert stats["seq_restarts"] == []
        assert [(x["kind"], x["offset"], x.get("records")) for x in stats["damage"]] == [
            ("zero_filled", start, n), ("torn_tail", c.end, None)]
        docs = list(wal_records(d, **kw))
        assert [(x.get("damage"), x["offset"], x.get("records")) for x in docs] == [
            (None, a.offset, None), ("zero_filled", start, n), (None, c.offset, None),
            ("torn_tail", c.end, None)]
    import inspect_reference  # the compiled inspect equals the pure-Python one

    inspect_reference.assert_same_stats(d)


def test_zero_filled_records_do_not_say_where_the_history_starts(restore, tmp_path):
    """Zeros before the first real record (seq 500: earlier history gone) do not make
    the history look complete with their seq 0: skipped, the first record after them
    is judged, as verify and inspect judge it. Without skip_corrupt the zeros are fatal
    first, as they come first."""
    from gpu_pitr.format.stats import wal_stats
    from gpu_pitr.verify import verify_wal

    b = LogBuilder(first_seq=500)
    start = b.raw(bytes(120))
    first = b.add(Ins("a", [1.0], None, 1))
    d = b.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError):
        restore(d)
    with pytest.raises(IncompleteHistoryError) as err:
        restore(d, skip_corrupt=True)
    assert (base(err.value.file), err.value.seq) == (first.file, 500)
    assert start < err.value.offset < first.end
    v = restore(d, skip_corrupt=True, allow_incomplete_history=True)
    assert v.ids == ["a"] and len(v.report["skipped"]) in (1, 10)  # (the reference: each)
    # A seq 0 target is a zero record itself: skipped, and the restore stops there.
    v = restore(d, skip_corrupt=True, to_seq=0)
    assert v.ids == [] and v.report["stop"]["offset"] == start
    kinds = [p.kind for p in verify_wal(d).problems]
    assert kinds == ["zero_filled", "incomplete_history"]
    assert wal_stats(d)["history"]["first_record"]["seq"] == 500
