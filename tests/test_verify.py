"""``gpu-pitr verify``: every kind of problem, where it is, its severity, the exit codes.

Each damage test builds one problem with tests/workloads.py (LogBuilder) or by editing
bytes and asserts the exact (kind, file, offset, seq) verify reports. Random damaged
logs are checked against two independent readers: ``inspect`` (the pure-Python reader
and codec, tests/inspect_reference.py) and the restore's own report. Each log is also
given to the compiled ``inspect``, which must equal the pure-Python one exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import inspect_reference
import pytest
import workloads as w
from hypothesis import HealthCheck, given, settings
from workloads import Abort, Batch, Begin, Commit, Del, Ins, LogBuilder, Upd, dir_state

import gpu_pitr.verify as verify_module
from gpu_pitr.errors import DimensionMismatchError, WalError
from gpu_pitr.expire import MARKER_NAME
from gpu_pitr.format.payload import ERR_VARIANT, STATUS_TEXT
from gpu_pitr.pipeline import restore
from gpu_pitr.synth import write_synthetic_wal
from gpu_pitr.verify import DAMAGE, KINDS, NOTICE, verify_wal

SEG2 = 0x6000000  # a second segment's creation second (sorts after LogBuilder's default)
REC = 12  # record header bytes: a payload starts 12 bytes after its record


def found(wal_dir, **kw) -> list[tuple]:
    """(kind, file, offset, seq) of every problem, in the order verify lists them (and the
    compiled ``inspect`` of the same log equals the pure-Python one)."""
    inspect_reference.assert_same_stats(wal_dir)
    return [(p.kind, p.file, p.offset, p.seq) for p in verify_wal(wal_dir, **kw).problems]


def clean_log() -> tuple[LogBuilder, list]:
    """Every record type, two segments, a mid-file header of the same second (a rotation
    within one second: seq runs on), nested batches: nothing to report."""
    b = LogBuilder()
    recs = [
        b.add(Ins("a", [1, 2], {"k": "v"}, 10)),
        b.add(Upd("a", [3, 4], None, 11)),
        b.add(Batch([Ins("b", [5, 6]), Batch([Del("a"), Ins("c", [7, 8])], 12)], 12)),
        b.add(Begin(1, 13)),
        b.add(Ins("d", [9, 9], None, 14)),
        b.add(Commit(1, 15)),
        b.add(Begin(2, 16)),
        b.add(Del("d", 17)),
        b.add(Abort(2, 18)),
        b.add(w.Ckpt(8, 19)),
    ]
    b.raw(w.encode_header(0x5F5E100))  # same second as the file name
    recs.append(b.add(Ins("e", [0, 0], None, 20)))
    b.new_segment(SEG2)
    recs.append(b.add(Del("e", 21)))
    return b, recs


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


# ----------------------------------------------------------------------------- clean logs
def test_clean_log_has_no_problems(tmp_path):
    b, recs = clean_log()
    result = verify_wal(b.write(tmp_path / "wal"))
    assert result.problems == []
    assert result.clean
    assert (result.segments, result.records) == (2, len(recs))


def test_clean_synthetic_wal_has_no_problems(tmp_path):
    stats = write_synthetic_wal(tmp_path / "wal", total_bytes=400_000, dim=8, segments=3)
    result = verify_wal(tmp_path / "wal", chunk_bytes=4096)
    assert result.problems == []
    assert result.records == stats.records
    assert result.bytes == stats.bytes


def test_cli_clean_exits_0_with_only_the_summary_line(tmp_path):
    b, _ = clean_log()
    wal = b.write(tmp_path / "wal")
    proc = cli("verify", wal)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{wal}: clean: 0 damage, 0 notices; 2 segments")


# ----------------------------------------------------------------------------- headers
@pytest.mark.parametrize(
    "head, what",
    [
        (b"WALX\x01\x00\x00\x00" + bytes(8), "wrong magic b'WALX'"),
        (b"WALV\x02\x00\x00\x00" + bytes(8), "unsupported version 2"),
        (b"WALX\x01", "wrong magic b'WALX' in a file shorter than its header"),
    ],
    ids=["magic", "version", "short_not_a_prefix"],
)
def test_bad_header(tmp_path, head, what):
    b, _ = clean_log()
    name = w.segment_name(SEG2 - 1)
    b.put_file(name, head + w.encode_record(0, w.encode_entry(Ins("x", [1, 1], None, 1))))
    if len(head) < 16:
        b.put_file(name, head)
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("bad_header", name, 0, None)]
    assert result.problems[0].what.startswith(what)
    assert result.problems[0].severity == DAMAGE and not result.clean


@pytest.mark.parametrize("n", [0, 1, 4, 8, 15])
def test_file_shorter_than_header_with_header_prefix_is_a_notice(tmp_path, n):
    b, _ = clean_log()
    name = w.segment_name(SEG2 - 1)
    b.put_file(name, w.encode_header(SEG2 - 1)[:n])
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("torn_header", name, 0, None)]
    assert result.problems[0].extra["bytes"] == n
    assert result.clean


def test_first_header_whose_second_differs_from_the_file_name(tmp_path):
    b, _ = clean_log()
    name = w.segment_name(SEG2)
    b.files[name][8:16] = (SEG2 + 1).to_bytes(8, "little")  # a copy under another name
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("header_mismatch", name, 0, None)]
    assert result.problems[0].extra["created"] == SEG2 + 1


@pytest.mark.parametrize("records_after", [True, False], ids=["mid_file", "at_the_end"])
def test_second_header_whose_second_differs_from_the_file_name(tmp_path, records_after):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    at = b.raw(w.encode_header(0x5F5E101))
    if records_after:
        b.add(Ins("b", [1], None, 2))
    assert found(b.write(tmp_path / "wal")) == [("header_mismatch", b.cur, at, None)]


def test_a_header_second_too_large_for_a_date_is_shown_once(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    b.raw(w.encode_header(2**64 - 1))
    [p] = verify_wal(b.write(tmp_path / "wal")).problems
    assert p.what == ("segment header says created 18446744073709551615 but the file name "
                      "says 100000000 (1973-03-03T09:46:40Z): renamed or spliced")


def test_header_checks_hold_at_every_chunk_size(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    bad = b.raw(w.encode_header(7) + w.encode_header(0x5F5E100) + w.encode_header(8))
    b.add(Ins("b", [1], None, 2))
    wal = b.write(tmp_path / "wal")
    want = [("header_mismatch", b.cur, bad, None), ("header_mismatch", b.cur, bad + 32, None)]
    for chunk in (64, 65, 70, 77, 90, 1 << 20):
        assert found(wal, chunk_bytes=chunk) == want, chunk


@pytest.mark.parametrize("records_after", [True, False], ids=["mid_file", "at_the_end"])
def test_a_long_run_of_headers_is_checked_to_its_end(tmp_path, records_after):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    good, bad = w.encode_header(0x5F5E100), w.encode_header(5)
    n = 70_000  # more than one read block of headers
    at = b.raw(good * (n - 2) + bad + good)
    if records_after:
        b.add(Ins("b", [1], None, 2))
    assert found(b.write(tmp_path / "wal")) == [
        ("header_mismatch", b.cur, at + (n - 2) * 16, None)]


# ----------------------------------------------------------------------------- torn tails
def test_torn_tail_names_the_record_and_the_bytes_lost(tmp_path):
    b, recs = clean_log()
    r = b.add(Ins("z", [1, 2], None, 30))
    b.truncate(r.file, r.end - 3)
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("torn_tail", r.file, r.offset, None)]
    assert result.problems[0].extra["bytes"] == r.end - 3 - r.offset
    assert not result.clean


def test_torn_tail_in_an_earlier_file_also_shows_the_missing_seq(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    torn = b.add(Ins("b", [1], None, 2))
    b.truncate(torn.file, torn.offset + 5)
    b.new_segment(SEG2)
    nxt = b.add(Ins("c", [1], None, 3))
    assert found(b.write(tmp_path / "wal")) == [
        ("torn_tail", torn.file, torn.offset, None),
        ("seq_gap", nxt.file, nxt.offset, 2),
    ]


def test_payload_length_past_the_end_of_the_file_is_a_torn_tail(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    at = b.raw(w.encode_record(1, b"\x02\x01a\x00")[:8] + b"\xff\xff\xff\xff" + b"x" * 20)
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("torn_tail", b.cur, at, None)]
    assert result.problems[0].extra["bytes"] == 32


def _crashed_then_reopened_in_the_same_second(cut: int | None) -> tuple[LogBuilder, list]:
    """A writer's log cut at byte ``cut`` of its file (a crash mid-write), then the writer
    reopened within the same second: a header and records from seq 0 appended."""
    b = LogBuilder()
    recs = [b.add(Ins(f"id{i}", [1, 2, 3], {"k": "v" * 20}, i)) for i in range(3)]
    recs.append(b.add(Batch([Upd("id0", [4, 5, 6]), Del("id1")], 4)))
    if cut is not None:
        b.truncate(b.cur, cut)
    b.reopen()
    b.add(Ins("after", [7, 7, 7], None, 9))
    b.add(Del("id2", 10))
    return b, recs


def test_header_swallowed_by_a_torn_record_is_named(tmp_path):
    """Every cut inside the last two records: the reopened writer's header lies inside
    the torn record's length, where a restore does not see it (SPEC §1 knows a header
    only at a record boundary; tests/test_crash_consistency.py has the restore's side).
    verify names that header's offset, whatever else the swallowed bytes look like."""
    _, recs = _crashed_then_reopened_in_the_same_second(None)
    cuts = [c for r in recs[-2:] for c in range(r.offset + 1, r.end)]
    for cut in cuts:
        b, _ = _crashed_then_reopened_in_the_same_second(cut)
        wal = b.write(tmp_path / f"c{cut}")
        for chunk in (None, 64):
            kw = {} if chunk is None else {"chunk_bytes": chunk}
            result = verify_wal(wal, **kw)
            swallowed = [p for p in result.problems if p.kind == "swallowed_header"]
            assert [(p.file, p.offset) for p in swallowed] == [(b.cur, cut)], (cut, chunk)
            assert not result.clean


def test_a_header_at_a_record_boundary_is_not_swallowed(tmp_path):
    b, _ = _crashed_then_reopened_in_the_same_second(None)
    restart = b.files[b.cur].rfind(w.MAGIC_V1)
    problems = found(b.write(tmp_path / "wal"))
    assert problems == [("seq_restart", b.cur, restart + 16, 0)]


# ----------------------------------------------------------------------------- payloads
VALID = w.encode_entry(Ins("abc", [1, 2], None, 7))
# name: (payload, offset of the failing byte inside the payload, status text)
UNDECODABLE = {
    "unknown_variant": (b"\x09\x00", 0, "unknown variant"),
    "bad_varint_marker": (b"\xff\x00", 0, "invalid varint"),
    "u64_marker_on_variant": (b"\xfd" + bytes(8) + b"\x02\x01a\x00", 0, "invalid varint"),
    "u128_timestamp": (b"\x02\x01a\xfe" + bytes(16), 3, "invalid varint"),
    "truncated": (VALID[:-1], len(VALID) - 2, "payload truncated"),
    "empty": (b"", -1, "payload truncated"),
    "invalid_utf8": (b"\x00\x02\xff\xfe\x00\x00\x00", 1, "invalid UTF-8 in a string"),
    "invalid_utf8_in_metadata": (b"\x00\x01a\x00\x01\x01\x01\xc0\x01v\x00", 4,
                                 "invalid UTF-8 in a string"),
    "batch_count_larger_than_payload": (b"\x03\xfc\xff\xff\xff\x7f\x00", 1,
                                        "count larger than the payload"),
    "vector_count_larger_than_payload": (b"\x00\x01a\xfd" + b"\xff" * 7 + b"\x1f\x00\x00", 3,
                                         "count larger than the payload"),
    "bad_option_tag": (b"\x00\x01a\x00\x02\x00", 4, "invalid option tag"),
    "nested_batch_truncated": (b"\x03\x01" * 300 + b"\x02\x01a", -1, "payload truncated"),
}


@pytest.mark.parametrize("name", list(UNDECODABLE))
def test_undecodable_payload(tmp_path, name):
    payload, fail, text = UNDECODABLE[name]
    b, _ = clean_log()
    bad = b.add_payload(payload)
    b.add(Del("a", 30))
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("undecodable", bad.file, bad.offset, bad.seq)]
    problem = result.problems[0]
    at = bad.offset + REC + fail if fail >= 0 else bad.end - 1  # kept inside the record
    assert problem.extra["at"] == at
    assert problem.what.startswith(f"{text} at file offset {at} (byte {at - bad.offset - REC} "
                                   "of a ")
    assert problem.severity == DAMAGE


def test_deeply_nested_valid_batch_is_clean(tmp_path):
    b = LogBuilder()
    depth = 2000  # far deeper than the decoder's first-pass stack
    inner = w.encode_entry(Ins("deep", [1], None, 1))
    b.add_payload(b"\x03\x01" * depth + inner + b"\x01" * depth)  # batches of one, ts 1
    assert found(b.write(tmp_path / "wal")) == []


def test_trailing_bytes_after_a_payload(tmp_path):
    b, _ = clean_log()
    r = b.add(Ins("z", [1, 2], None, 30), trailing=b"\x00\x01\x02")
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("trailing_bytes", r.file, r.offset, r.seq)]
    assert result.problems[0].extra["bytes"] == 3
    assert not result.clean


# ----------------------------------------------------------------------------- sequence numbers
def test_seq_gap_is_damage(tmp_path):
    b, _ = clean_log()
    r = b.add(Del("a", 30), seq=50)
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("seq_gap", r.file, r.offset, 50)]
    assert result.problems[0].extra["previous"] == 11
    assert "seq jumps from 11 to 50: 38 records missing" in result.problems[0].what
    assert not result.clean


@pytest.mark.parametrize("seq", [5, 0], ids=["back", "zero_without_a_header"])
def test_seq_going_back_without_a_writer_reopen_is_damage(tmp_path, seq):
    b, _ = clean_log()
    r = b.add(Del("a", 30), seq=seq)
    nxt = b.add(Del("a", 31))  # the writer's own count goes on: a jump forward again
    assert found(b.write(tmp_path / "wal")) == [
        ("seq_out_of_order", r.file, r.offset, seq),
        ("seq_gap", nxt.file, nxt.offset, nxt.seq),
    ]


@pytest.mark.parametrize("same_second", [True, False])
def test_seq_restart_at_a_writer_reopen_is_a_notice(tmp_path, same_second):
    b, _ = clean_log()
    b.add(Del("e", 30))
    b.reopen(None if same_second else SEG2 + 5)
    r = b.add(Ins("f", [1, 2], None, 31))
    b.add(Del("f", 32))
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("seq_restart", r.file, r.offset, 0)]
    assert result.problems[0].severity == NOTICE and result.clean


def test_log_not_starting_at_seq_zero_is_a_notice(tmp_path):
    b = LogBuilder(first_seq=7)
    r = b.add(Ins("a", [1], None, 1))
    b.add(Ins("b", [1], None, 2))
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("incomplete_history", r.file, r.offset, 7)]
    assert result.clean


def test_undecodable_records_still_count_for_sequence_numbers(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    bad = b.add_payload(b"\x09", seq=9)
    assert found(b.write(tmp_path / "wal")) == [
        ("undecodable", bad.file, bad.offset, 9),
        ("seq_gap", bad.file, bad.offset, 9),
    ]


# ----------------------------------------------------------------------------- transactions
def test_transaction_anomalies_and_open_transactions_are_notices(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    open1 = b.add(Begin(1, 2))
    again = b.add(Begin(1, 3))  # already open
    commit = b.add(Commit(2, 4))  # never begun
    b.add(Begin(3, 5))
    b.add(Abort(3, 6))
    abort = b.add(Abort(3, 7))  # no longer open
    open4 = b.add(Begin(2**64 - 1, 8))
    b.add(Batch([Begin(9, 9), Commit(8, 9)], 9))  # markers inside a batch carry nothing
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [
        ("txn_open_at_end", open1.file, open1.offset, open1.seq),
        ("txn_begin_open", again.file, again.offset, again.seq),
        ("txn_end_not_open", commit.file, commit.offset, commit.seq),
        ("txn_end_not_open", abort.file, abort.offset, abort.seq),
        ("txn_open_at_end", open4.file, open4.offset, open4.seq),
    ]
    ids = [p.extra["transaction_id"] for p in result.problems]
    assert ids == [1, 1, 2, 3, 2**64 - 1]
    assert "CommitTransaction" in result.problems[2].what
    assert "AbortTransaction" in result.problems[3].what
    assert result.clean


def test_transactions_span_chunks_and_files(tmp_path):
    b = LogBuilder()
    b.add(Begin(5, 1))
    for i in range(20):
        b.add(Ins(f"id{i}", [1, 2, 3], None, 2))
    b.new_segment(SEG2)
    b.add(Commit(5, 3))
    b.add(Begin(5, 4))
    last = b.add(Commit(6, 5))
    wal = b.write(tmp_path / "wal")
    for chunk in (64, 100, 1 << 20):
        assert found(wal, chunk_bytes=chunk) == [
            ("txn_open_at_end", b.cur, 16 + 15, 22),
            ("txn_end_not_open", last.file, last.offset, last.seq),
        ]


# ----------------------------------------------------------------------------- vectors
def test_vector_length_changes_are_notices(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1, 2], None, 1))
    b.add(Del("a", 2))  # no vector: does not count
    three = b.add(Upd("b", [1, 2, 3], None, 3))
    batch = b.add(Batch([Ins("c", [1, 2, 3]), Ins("d", [1]), Ins("e", [1, 2])], 4))
    b.add(Ins("f", [5, 5], None, 5))
    empty = b.add(Ins("g", [], None, 6))
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [
        ("dim_change", three.file, three.offset, three.seq),
        ("dim_change", batch.file, batch.offset, batch.seq),  # once per record
        ("dim_change", empty.file, empty.offset, empty.seq),
    ]
    assert [(p.extra["previous_dim"], p.extra["dim"]) for p in result.problems] == [
        (2, 3), (3, 1), (2, 0)]
    assert result.clean


# ----------------------------------------------------------------------------- the CLI
def test_cli_lists_one_line_per_problem_in_log_order_and_exits_1(tmp_path):
    b, _ = clean_log()
    trail = b.add(Ins("z", [1, 2], None, 30), trailing=b"!")
    bad = b.add_payload(b"\x09")
    gap = b.add(Del("z", 31), seq=99)
    b.put_file(w.segment_name(SEG2 + 1), b"WALX")
    wal = b.write(tmp_path / "wal")
    before = dir_state(wal)
    proc = cli("verify", wal)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:-1] == [
        f"{trail.file}: offset {trail.offset}: seq {trail.seq}: damage: trailing_bytes: "
        "1 bytes left after the payload decodes (a restore accepts the entry)",
        f"{bad.file}: offset {bad.offset}: seq {bad.seq}: damage: undecodable: unknown variant"
        f" at file offset {bad.offset + REC} (byte 0 of a 1-byte payload)",
        f"{gap.file}: offset {gap.offset}: seq 99: damage: seq_gap: seq jumps from {bad.seq}"
        f" to 99: {98 - bad.seq} records missing",
        f"{w.segment_name(SEG2 + 1)}: offset 0: damage: bad_header: wrong magic b'WALX' in a "
        "file shorter than its header: none of its records can be read",
    ]
    assert lines[-1].startswith(f"{wal}: DAMAGED: 4 damage, 0 notices; 3 segments, ")
    assert proc.stderr == ""
    assert dir_state(wal) == before


def test_cli_json_is_one_document_and_notices_exit_0(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    begin = b.add(Begin(4, 2))
    wal = b.write(tmp_path / "wal")
    proc = cli("verify", wal, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["clean"] is True
    assert (doc["damage"], doc["notices"], doc["segments"], doc["records"]) == (0, 1, 1, 2)
    assert doc["problems"] == [{
        "severity": "notice", "kind": "txn_open_at_end", "file": begin.file,
        "offset": begin.offset, "seq": begin.seq, "transaction_id": 4,
        "what": "transaction 4 begun here is still open at the end of the log "
                "(a restore discards it)",
    }]


def test_cli_json_with_damage_exits_1(tmp_path):
    b = LogBuilder()
    r = b.add(Ins("a", [1], None, 1))
    b.truncate(r.file, r.end - 1)
    proc = cli("verify", "--json", b.write(tmp_path / "wal"))
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["clean"] is False and doc["damage"] == 1
    assert [(p["severity"], p["kind"], p["offset"], p["bytes"]) for p in doc["problems"]] == [
        ("damage", "torn_tail", 16, r.end - 1 - 16)]


def test_cli_usage_errors_exit_2(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    for args in (["verify"], ["verify", tmp_path / "missing"], ["verify", tmp_path / "file"],
                 ["verify", tmp_path, "--bogus"]):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) >= 1


def test_empty_directory_is_clean(tmp_path):
    result = verify_wal(tmp_path)
    assert (result.problems, result.segments, result.records) == ([], 0, 0)


def test_one_log_with_every_kind_of_problem_and_the_documented_severities(tmp_path,
                                                                         monkeypatch):
    b = LogBuilder(first_seq=1)  # incomplete_history
    b.add(Ins("a", [1, 2], None, 1))
    b.add(Ins("b", [1, 2, 3], None, 2))  # dim_change
    b.add(Begin(1, 3))  # txn_open_at_end
    b.add(Begin(1, 4))  # txn_begin_open
    b.add(Abort(2, 5))  # txn_end_not_open
    b.add(Del("a", 6), trailing=b"!")  # trailing_bytes
    b.add_payload(b"\x09")  # undecodable
    b.raw(bytes(36))  # zero_filled: three records of 12 zero bytes, one problem
    b.add(Del("a", 7), seq=100)  # seq_gap
    b.add(Del("a", 8), seq=3)  # seq_out_of_order
    b.raw(w.encode_header(1))  # header_mismatch
    b.reopen(SEG2)
    b.add(Del("a", 9))  # seq_restart
    r = b.add(Del("a", 10))
    b.truncate(r.file, r.end - 1)
    b.raw(w.encode_header(SEG2))  # swallowed_header (by the record cut); torn_tail
    b.put_file(w.segment_name(SEG2 + 1), b"WAL")  # torn_header
    b.put_file(w.segment_name(SEG2 + 2), b"WALX" + bytes(12))  # bad_header
    b.put_file(w.segment_name(SEG2 + 5).upper(), b"")  # segment_name_case
    b.new_segment(SEG2 + 3)
    live = b.add(Ins("c", [1, 2], None, 11), seq=0)  # write_in_progress: listed cut
    w.listed_at(monkeypatch, verify_module, live.file, live.offset + 5)
    os.mkdir(b.write(tmp_path / "wal") + "/" + w.segment_name(SEG2 + 4))  # not_a_file
    w.listed_gone(monkeypatch, verify_module, w.segment_name(1))  # deleted: listed, gone
    b.put_file(MARKER_NAME, json.dumps({  # expired_history (bad_expire_marker: below)
        "format": "gpu-pitr expire", "version": 1, "first_kept": w.segment_name(SEG2)}).encode())
    result = verify_wal(b.write(tmp_path / "wal"))
    inspect_reference.assert_same_stats(tmp_path / "wal")
    # The archive's own kinds need an archive: tests/test_archive_sums.py has them.
    archive_kinds = {k for k in KINDS if "archive" in k}
    assert archive_kinds == {"archive_changed", "archive_cut", "archive_missing",
                             "bad_archive_sums", "archive_unchecked"}
    assert {p.kind for p in result.problems} == set(KINDS) - {"bad_expire_marker"} - archive_kinds
    assert len(result.problems) == len(KINDS) - 1 - len(archive_kinds)
    severities = {p.kind: p.severity for p in result.problems}
    assert severities == {  # as docs/damage.md says
        "bad_header": DAMAGE, "header_mismatch": DAMAGE, "torn_tail": DAMAGE,
        "undecodable": DAMAGE, "zero_filled": DAMAGE, "trailing_bytes": DAMAGE,
        "seq_gap": DAMAGE,
        "seq_out_of_order": DAMAGE, "swallowed_header": DAMAGE, "torn_header": NOTICE,
        "seq_restart": NOTICE,
        "incomplete_history": NOTICE, "txn_begin_open": NOTICE, "txn_end_not_open": NOTICE,
        "txn_open_at_end": NOTICE, "dim_change": NOTICE, "expired_history": NOTICE,
        "write_in_progress": NOTICE, "not_a_file": NOTICE, "deleted": NOTICE,
        "segment_name_case": NOTICE,
    }
    assert (result.damage, result.notices) == (9, 12)
    assert all(p.what and "\n" not in p.what for p in result.problems)
    assert any(p.what.startswith(STATUS_TEXT[ERR_VARIANT]) for p in result.problems)


@pytest.mark.parametrize("marker", [b"{", b"[" * 200_000, b'{"format": "x"}', b"{}" * 3000,
                                    b'{"format": "gpu-pitr expire", "first_kept": "wal-1.log"}'])
def test_a_bad_expire_marker_is_damage_and_stops_restores(tmp_path, marker):
    b = LogBuilder()
    b.add(Ins("a", [1, 2], None, 1))
    b.put_file(MARKER_NAME, marker)
    wal = b.write(tmp_path / "wal")
    result = verify_wal(wal)
    assert not result.clean and [p.kind for p in result.problems] == ["bad_expire_marker"]
    assert result.problems[0].severity == DAMAGE
    assert result.problems[0].what.startswith("not a marker gpu-pitr expire wrote")
    with pytest.raises(WalError, match=f"{MARKER_NAME}: not a marker gpu-pitr expire wrote"):
        restore(wal, backend="cpu")


# ----------------------------------------------------------------------------- cross-checks
_SEQ_KINDS = {"seq_restart", "seq_gap", "seq_out_of_order"}


def _inspect_view(wal_dir) -> dict:
    stats = inspect_reference.assert_same_stats(wal_dir)  # the pure-Python document
    damage = set()
    for d in stats["damage"]:
        if d["kind"] == "bad_header":
            damage.add(("bad_header", d["file"], 0, None))
        elif d["kind"] == "torn_tail" and d["offset"] == 0:
            damage.add(("torn_header", d["file"], 0, None))
        else:
            damage.add((d["kind"], d["file"], d["offset"], d["seq"]))
    txns = stats["transactions"]
    return {
        "damage": damage,
        "seq": {(r["file"], r["offset"], r["to"]) for r in stats["seq_restarts"]},
        "anomalies": {(a["file"], a["offset"], a["seq"]) for a in txns["anomalies"]},
        "open": txns["open_at_end"],
    }


def _verify_view(problems) -> dict:
    damage_kinds = {"bad_header", "torn_header", "torn_tail", "undecodable", "zero_filled",
                    "trailing_bytes"}
    return {
        "damage": {(p.kind, p.file, p.offset, p.seq) for p in problems
                   if p.kind in damage_kinds},
        "seq": {(p.file, p.offset, p.seq) for p in problems if p.kind in _SEQ_KINDS},
        "anomalies": {(p.file, p.offset, p.seq) for p in problems
                      if p.kind in ("txn_begin_open", "txn_end_not_open")},
        "open": [p.extra["transaction_id"] for p in problems if p.kind == "txn_open_at_end"],
    }


def _restore_view(report: dict) -> dict:
    def name(entry):
        return Path(entry["file"]).name

    return {
        "torn": {(name(t), t["offset"], t["bytes_lost"]) for t in report["torn_tails"]},
        "skipped": {(name(s), s["offset"], s["seq"], s.get("records")) for s in report["skipped"]},
        "trailing": {(name(t), t["offset"], t["seq"], t["count"])
                     for t in report["trailing_bytes"]},
        "anomalies": {(name(a), a["offset"], a["seq"]) for a in report["anomalies"]},
    }


def _verify_as_restore(problems) -> dict:
    return {
        "torn": {(p.file, p.offset, p.extra["bytes"]) for p in problems
                 if p.kind in ("torn_tail", "torn_header")},
        "skipped": {(p.file, p.extra["at"], p.seq, None) for p in problems
                    if p.kind == "undecodable"}
        | {(p.file, p.extra["at"], p.seq, p.extra["records"]) for p in problems
           if p.kind == "zero_filled"}
        | {(p.file, 0, None, None) for p in problems if p.kind == "bad_header"},
        "trailing": {(p.file, p.offset, p.seq, p.extra["bytes"]) for p in problems
                     if p.kind == "trailing_bytes"},
        "anomalies": {(p.file, p.offset, p.seq) for p in problems
                      if p.kind in ("txn_begin_open", "txn_end_not_open")},
    }


def test_zero_filled_runs_a_header_apart_are_two_problems(tmp_path):
    """Zero-filled records, a header appended after them (a writer reopened within the
    same second), zero-filled records again: two runs, as the restore skips them, not
    one run of four from the first (the second run continues no run listed)."""
    created = 0x5F5E100
    b = w.LogBuilder(created=created)
    b.add(w.Ins("a", [1.0, 2.0], None, 1))
    first = b.raw(bytes(24))  # two zero-filled records
    b.raw(w.encode_header(created))
    second = b.raw(bytes(24))
    wal = b.write(tmp_path / "wal")
    for chunk in (None, 64):
        problems = verify_wal(wal, **({} if chunk is None else {"chunk_bytes": chunk})).problems
        assert [(p.offset, p.extra["records"]) for p in problems
                if p.kind == "zero_filled"] == [(first, 2), (second, 2)]
        got = restore(wal, backend="cpu", skip_corrupt=True)
        assert _verify_as_restore(problems)["skipped"] == _restore_view(
            got.report.to_dict())["skipped"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=w.workloads(max_steps=25))
def test_random_logs_agree_with_inspect_restore_and_every_chunk_size(tmp_path_factory, workload):
    wal = workload.write(tmp_path_factory.mktemp("wal"))
    problems = verify_wal(wal).problems
    # Log order, and the same problems whatever the chunk size.
    assert verify_wal(wal, chunk_bytes=64).problems == problems
    assert verify_wal(wal, chunk_bytes=97).problems == problems
    # inspect: an independent pure-Python reader and codec.
    assert _verify_view(problems) == _inspect_view(wal)
    # The restore itself, asked to skip what it cannot read and to say what it saw.
    try:
        index = restore(wal, backend="cpu", skip_corrupt=True, allow_incomplete_history=True)
    except DimensionMismatchError as err:
        # verify has already said the vector length changes, at that record or earlier.
        where = (Path(err.file).name, err.offset)
        assert any(p.kind == "dim_change" and (p.file, p.offset) <= where for p in problems)
    else:
        assert _verify_as_restore(problems) == _restore_view(index.report.to_dict())


def test_partial_second_header_at_the_end_is_a_torn_tail(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    at = b.raw(w.encode_header(0x5F5E100)[:12])
    result = verify_wal(b.write(tmp_path / "wal"))
    assert found(tmp_path / "wal") == [("torn_tail", b.cur, at, None)]
    assert result.problems[0].extra["bytes"] == 12


def test_non_minimal_varints_are_clean(tmp_path):
    b = LogBuilder()
    # Insert "a" [1.0] None, every integer in a wider form than needed: u16 variant index,
    # u32 id length, u64 vector count, u16 timestamp 5.
    b.add_payload(b"\xfb\x00\x00" + b"\xfc\x01\x00\x00\x00a" + b"\xfd" + (1).to_bytes(8, "little")
                  + w.f32(1.0) + b"\x00" + b"\xfb\x05\x00")
    b.add(Del("a", 6))
    assert found(b.write(tmp_path / "wal")) == []


def test_files_that_are_not_segments_are_ignored(tmp_path):
    b, _ = clean_log()
    for name in ("wal-1.log", "WAL-0000000000000001.log", "wal-000000000000000G.log",
                 "wal-0000000000000001.log.bak", "notes.txt"):
        b.put_file(name, b"garbage")
    wal = b.write(tmp_path / "wal")
    (tmp_path / "wal" / w.segment_name(SEG2 + 9)).mkdir()  # a directory with a segment name
    result = verify_wal(wal)
    assert [(p.kind, p.file, p.severity) for p in result.problems] == [
        ("segment_name_case", "WAL-0000000000000001.log", NOTICE),  # named, not read
        ("not_a_file", w.segment_name(SEG2 + 9), NOTICE)]
    assert result.segments == 2 and result.clean


# ----------------------------------------------------------------------------- fuzz classes
def _small_log() -> LogBuilder:
    """Two segments, two or more records each, a mid-file header: every framing field."""
    b = LogBuilder()
    b.add(Ins("a", [1, 2], {"k": "v"}, 1))
    b.add(Begin(3, 2))
    b.raw(w.encode_header(0x5F5E100))
    b.add(Upd("a", [3, 4], None, 3))
    b.add(Commit(3, 4))
    b.new_segment(SEG2)
    b.add(Batch([Ins("b", [5, 6]), Del("a")], 5))
    b.add(Del("b", 6))
    return b


def _framing_bytes(files: dict) -> list[tuple[str, int]]:
    """(file, offset) of every header byte and every record's seq and length byte."""
    spots = []
    for name, data in files.items():
        pos = 0
        while pos < len(data):
            if data[pos:pos + 8] == w.MAGIC_V1:
                spots += [(name, pos + k) for k in range(16)]
                pos += 16
                continue
            spots += [(name, pos + k) for k in range(12)]
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
    return spots


def _flipped(files: dict, name: str, offset: int, bit: int) -> dict:
    out = {n: bytearray(d) for n, d in files.items()}
    out[name][offset] ^= 1 << bit
    return out


def _write(files: dict, wal_dir: Path) -> Path:
    wal_dir.mkdir()
    for name, data in files.items():
        (wal_dir / name).write_bytes(bytes(data))
    return wal_dir


def test_bit_flips_in_headers_seqs_and_lengths_are_damage(tmp_path):
    """A flip in any framing field is damage: wrong magic or version, a creation second
    that is not the file name's, a seq out of line (the next record in the segment gives
    away a first seq flipped to 0), a length that no longer frames the records."""
    files = _small_log().files
    assert verify_wal(_write(files, tmp_path / "clean")).problems == []
    spots = _framing_bytes(files)
    assert len(spots) == 3 * 16 + 6 * 12
    for k, (name, offset) in enumerate(spots):
        bit = (k * 3) % 8  # every byte, a different bit each (8 runs would cover them all)
        result = verify_wal(_write(_flipped(files, name, offset, bit), tmp_path / f"f{k}"))
        assert not result.clean, (name, offset, bit, result.lines())


def test_bit_flips_in_payloads_agree_with_inspect(tmp_path):
    """A flip inside a payload is found exactly where the pure-Python reader finds it
    (a flip that leaves a valid entry, e.g. inside a float, cannot be found by anyone)."""
    files = _small_log().files
    framing = set(_framing_bytes(files))
    spots = [(n, o) for n, d in files.items() for o in range(len(d)) if (n, o) not in framing]
    for k, (name, offset) in enumerate(spots):
        wal = _write(_flipped(files, name, offset, (k * 5) % 8), tmp_path / f"f{k}")
        assert _verify_view(verify_wal(wal).problems) == _inspect_view(wal), (name, offset)


def test_truncation_at_every_offset(tmp_path):
    """Cut at a record boundary: clean; anywhere else: a torn tail at the record cut."""
    b = LogBuilder()
    b.add(Ins("a", [1, 2], None, 1))
    second = b.new_segment(SEG2)
    recs = [b.add(Ins("b", [1, 2], {"k": "v"}, 2)), b.add(Del("a", 3)), b.add(w.Ckpt(1, 4)),
            b.add(Upd("b", [3, 4], None, 5))]
    data = bytes(b.files[second])
    for cut in range(len(data)):
        b.files[second] = bytearray(data[:cut])
        problems = found(b.write(tmp_path / f"c{cut}"))
        if cut < 16:
            assert problems == [("torn_header", second, 0, None)], cut
        elif cut in (16, *(r.end for r in recs)):
            assert problems == [], cut
        else:
            torn = next(r for r in recs if r.offset <= cut < r.end)
            assert problems == [("torn_tail", second, torn.offset, None)], cut


def test_duplicated_segment_is_damage(tmp_path):
    """A segment copied under a later name: its header names another second."""
    b = _small_log()
    first = min(b.files)
    copy = w.segment_name(SEG2 + 100)
    b.put_file(copy, bytes(b.files[first]))
    problems = found(b.write(tmp_path / "wal"))
    assert ("header_mismatch", copy, 0, None) in problems
    assert ("seq_restart", copy, 16, 0) in problems  # its records count from 0 again
    assert not verify_wal(tmp_path / "wal").clean


def test_records_spliced_into_another_file_are_damage(tmp_path):
    """Records of one file appended to the end of another: their seqs go back."""
    b = _small_log()
    first, second = sorted(b.files)
    b.files[second] += b.files[first][16:]
    problems = found(b.write(tmp_path / "wal"))
    assert problems[0] == ("seq_out_of_order", second, len(b.files[second])
                           - (len(b.files[first]) - 16), 0)


def test_verify_never_writes(tmp_path):
    b, _ = clean_log()
    b.add_payload(b"\x09")
    wal = b.write(tmp_path / "wal")
    before = dir_state(tmp_path)
    assert not verify_wal(wal).clean
    assert dir_state(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["wal"]


def test_no_seq_follows_the_largest_in_line(tmp_path):
    # 2^64-1 + 1 wrapped to 0 in the walk's uint64 check: a 0 with no header before it
    # after 2^64-1 passed as in line.
    top = 2**64 - 1
    b = LogBuilder(first_seq=top - 1)
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [1.0], None, 2))
    r = b.add(Ins("c", [1.0], None, 3), seq=0)
    d = b.write(tmp_path / "wal")
    kinds = [(p.kind, p.offset, p.seq, p.severity) for p in verify_wal(d).problems]
    assert kinds[1:] == [("seq_out_of_order", r.offset, 0, DAMAGE)]
    assert kinds[0][0] == "incomplete_history"


@pytest.mark.parametrize(("notices_only", "rc"), [(True, 0), (False, 1)])
def test_a_reader_that_goes_away_does_not_change_the_exit_status(tmp_path, notices_only, rc):
    # verify ... | head -1: the status is what verify found (1 only for damage), and
    # inspect's 0, not 1 for the closed pipe.
    b = LogBuilder()
    for i in range(4000):  # each open at the end: a notice line (over a pipe's 64 KiB)
        b.add(w.Begin(i, 1000) if notices_only else Ins("a", [1.0], None, 1000),
              seq=i if notices_only else 2 * i)  # (seq gaps: damage)
    d = b.write(tmp_path / "wal")
    for args, want in ((("verify", d), rc), (("verify", "--json", d), rc),
                       (("inspect", d), 0), (("inspect", "--json", d), 0)):
        proc = subprocess.Popen([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.read(1)
        proc.stdout.close()  # as head does once it has its line
        assert proc.wait(timeout=120) == want, (args, proc.stderr.read())
        proc.stderr.close()


def test_the_summary_counts_in_words(tmp_path):
    """'1 segment', '1 record', '1 notice': the summary of a small log reads right."""
    from workloads import Begin, Ins, LogBuilder

    b = LogBuilder()
    b.add(Begin(1, 5))  # open at the end: a notice
    b.add(Ins("a", [1.0], None, 5))
    got = verify_wal(b.write(tmp_path / "wal"))
    assert got.summary().startswith(f"{tmp_path / 'wal'}: clean: 0 damage, 1 notice; "
                                    "1 segment, ")
    assert ", 2 records (" in got.summary()


def _torn_then_more(wal_dir) -> str:
    """A first segment ending inside a record (verify looks at its bytes again, for a
    swallowed header), then a second segment; returns the first's name."""
    b = LogBuilder()
    b.add(Ins("a", w.f32(1.0), None, 1))
    b.add(Ins("b", w.f32(2.0), None, 2))
    first = b.cur
    b.truncate(first, len(b.files[first]) - 5)
    b.new_segment(SEG2)
    b.add(Ins("c", w.f32(3.0), None, 3))
    b.write(wal_dir)
    return first


def test_a_segment_deleted_before_its_bytes_are_looked_at_again(tmp_path, monkeypatch):
    """The writer's retention (or expire of an archive) deleting a segment after verify's
    pass read it, before the look at its damaged bytes: its records were checked, so it
    is not an error (it was a raw ``[Errno 2] No such file or directory`` line, exit 2)."""
    first = _torn_then_more(tmp_path)
    real = verify_module._Verify._swallowed_near

    def deleted_first(run, segment, start, end):
        (tmp_path / first).unlink(missing_ok=True)
        return real(run, segment, start, end)

    monkeypatch.setattr(verify_module._Verify, "_swallowed_near", deleted_first)
    result = verify_wal(tmp_path)
    assert [p.kind for p in result.problems if p.file == first] == ["torn_tail"]


def test_a_read_error_looking_at_bytes_again_is_one_line(tmp_path, monkeypatch):
    first = _torn_then_more(tmp_path)

    class FailingPread:  # verify's own os.pread only (the log's pass reads headers too)
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def pread(fd, n, pos):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(verify_module, "os", FailingPread())
    with pytest.raises(OSError) as err:
        verify_wal(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / first}: offset ")
    assert str(err.value).endswith(": cannot read: Input/output error")


def test_the_summary_names_the_notices_a_restore_refuses(tmp_path):
    """``clean`` (exit 0) is no damage, not a promise that a restore succeeds: a log
    whose vector length changes, or whose history does not start at seq 0, is refused
    by a default restore. The summary line says which notices those are."""
    from workloads import Ins, LogBuilder

    import gpu_pitr

    b = LogBuilder(first_seq=5)
    b.add(Ins("a", [1.0], None, 1))
    b.add(Ins("b", [1.0, 2.0], None, 2))
    d = b.write(tmp_path / "wal")
    got = verify_wal(d)
    assert got.clean
    assert got.summary().endswith(
        "; a restore may still refuse this log, as these notices say: "
        "1 incomplete_history, 1 dim_change")
    with pytest.raises(gpu_pitr.errors.WalError):
        gpu_pitr.restore(d)
    b = LogBuilder()
    b.add(Ins("a", [1.0], None, 1))
    assert "refuse" not in verify_wal(b.write(tmp_path / "ok")).summary()
