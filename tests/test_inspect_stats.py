"""``gpu-pitr inspect``: the compiled ``wal_stats`` equals the pure-Python reference
(tests/inspect_reference.py) exactly, document and printed text, on every corpus the
other tests build, on random and mutated WALs, and at every piece size.

The cross-checks of tests/test_verify.py (``found``, ``_inspect_view``) and
tests/fuzzing.py (``check_python_readers``) assert the same equality on each WAL
they build.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import fuzzing
import inspect_reference
import numpy as np
import pytest
import test_cli
import test_verify
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workloads import Abort, Batch, Begin, Ckpt, Commit, Del, Ins, LogBuilder, Upd, dir_state

from gpu_pitr.format import entries
from gpu_pitr.format.codec import encode_entry
from gpu_pitr.format.stats import stats_lines, wal_stats
from gpu_pitr.synth import write_synthetic_wal

CHUNKS = [None, 64, 97, 4096]  # None: the default (one piece per segment here)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_same_stats(wal_dir, chunks=CHUNKS) -> dict:
    """The compiled ``wal_stats`` at each piece size equals the reference, JSON text and
    printed table included; the WAL directory is left as it was. Returns the document."""
    before = dir_state(wal_dir)
    ref = inspect_reference.assert_same_stats(wal_dir, chunks)
    assert dir_state(wal_dir) == before
    return ref


def _write(files: dict, wal_dir: Path) -> Path:
    wal_dir.mkdir(parents=True)
    for name, data in files.items():
        (wal_dir / name).write_bytes(bytes(data))
    return wal_dir


# ----------------------------------------------------------------------------- the corpora
def test_cli_wals(tmp_path):
    """tests/test_cli.py's clean WAL and its WAL with every kind of thing inspect lists."""
    doc = assert_same_stats(test_cli.write_wal(tmp_path / "clean"))
    assert doc["totals"]["records"] == 16 and doc["transactions"]["open_at_end"] == [3]
    test_cli.write_damaged_wal(tmp_path / "damaged")
    doc = assert_same_stats(tmp_path / "damaged")
    kinds = [d["kind"] for d in doc["damage"]]
    assert kinds == ["undecodable", "trailing_bytes", "torn_tail", "bad_header", "torn_tail"]


def test_verify_logs(tmp_path):
    """tests/test_verify.py's clean logs: every record type, nested batches, a mid-file
    header (its damaged logs are checked by its own helpers)."""
    b, _ = test_verify.clean_log()
    doc = assert_same_stats(b.write(tmp_path / "clean"))
    assert doc["batch_entries_by_variant"]["Batch"] == 1
    assert doc["segments"][0]["extra_headers"] == 1
    assert_same_stats(test_verify._small_log().write(tmp_path / "small"))


def test_synthetic_wal(tmp_path):
    write_synthetic_wal(tmp_path / "synth", total_bytes=200_000, dim=4, segments=3, seed=3)
    doc = assert_same_stats(tmp_path / "synth", chunks=[None, 4096, 100_000])
    assert doc["totals"]["segments"] >= 3 and doc["records_by_variant"]["Batch"] > 0


@pytest.mark.parametrize("name", ["builder", "writer", "deep", "collide", "tiny", "flat"])
def test_fuzz_seed_wals(tmp_path, name):
    doc = assert_same_stats(_write(fuzzing.seed(name).files, tmp_path / "wal"))
    if name == "deep":  # batches nested past the parser's 64-level stack
        assert doc["batch_entries_by_variant"]["Batch"] == 63 + 64 + 65 + 130


def test_saved_fuzz_regressions(tmp_path):
    for k, case in enumerate(fuzzing.saved_cases()):
        files, _kw, _meta = fuzzing.load_case(case)
        assert_same_stats(_write(files, tmp_path / f"c{k}"), chunks=[None, 64])


@SETTINGS
@given(workload=w.workloads(max_steps=30))
def test_random_damaged_workloads(tmp_path_factory, workload):
    """tests/workloads.py: every operation, transactions and anomalies, nested batches,
    writer restarts, garbage payloads, trailing bytes, bad and short files, torn tails."""
    assert_same_stats(workload.write(tmp_path_factory.mktemp("wal")))


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), hostile=st.booleans())
def test_mutated_wals(tmp_path_factory, data, hostile):
    """tests/fuzzing.py's mutators: bit flips, overwrites, truncations, splices, copied
    segments, hostile lengths and payloads (huge counts, bad varints and UTF-8, nesting
    to 3000 levels)."""
    pick = fuzzing_picker(data)
    files, _kw, steps = fuzzing.fuzz_input(pick, kind=fuzzing.HOSTILE_PAYLOAD if hostile
                                           else None)
    assert_same_stats(_write(files, tmp_path_factory.mktemp("m") / "wal"), chunks=[None, 64])


def fuzzing_picker(data):
    def pick(n: int) -> int:
        return 0 if n <= 1 else data.draw(st.integers(0, n - 1))

    return pick


# ----------------------------------------------------------------------------- edge cases
def test_empty_and_missing_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    doc = assert_same_stats(tmp_path / "empty")
    assert doc["segments"] == [] and doc["totals"]["records"] == 0
    from gpu_pitr.errors import WalError

    (tmp_path / "file").write_bytes(b"")
    for stats in (wal_stats, inspect_reference.wal_stats):
        with pytest.raises(WalError, match="nope: no such directory"):
            stats(tmp_path / "nope")
        with pytest.raises(WalError, match="file: not a directory"):
            stats(tmp_path / "file")


def test_the_totals_line_says_one_in_the_singular(tmp_path):
    """A one-segment log was "1 segments" in the table's first line (the restore's
    summary already said "1 segment")."""
    from gpu_pitr.format.writer import WalWriter

    with WalWriter(tmp_path / "wal", created=1_795_687_200) as wal:
        wal.append(entries.Delete("", 1_795_687_200))  # 16 + 12 + 7 bytes
    doc = assert_same_stats(tmp_path / "wal")
    assert doc["totals"] == {"segments": 1, "bytes": 35, "records": 1}
    assert stats_lines(doc)[0] == f"WAL directory {tmp_path / 'wal'}: 1 segment, 35 bytes, 1 record"
    (tmp_path / "empty").mkdir()
    assert stats_lines(wal_stats(tmp_path / "empty"))[0].endswith(
        ": 0 segments, 0 bytes, 0 records")


@pytest.mark.parametrize("body", [
    b"", b"W", b"WALV", b"WALV\x01\x00\x00", b"WALV\x01\x00\x00\x00\x05",  # torn headers
    b"x", b"WALX", b"WALV\x02\x00\x00\x00\x05",  # short and wrong ("wrong magic")
    b"WALX\x01\x00\x00\x00" + bytes(8), b"NOPE" + bytes(40),  # wrong magic
    b"WALV\x07\x00\x00\x00" + bytes(30),  # unsupported version
    b"WALV\x01\x00\x00\x00" + bytes(8),  # a header and nothing else
], ids=repr)
def test_segment_headers(tmp_path, body):
    b = LogBuilder()
    b.add(Ins("a", [1], None, 5))
    b.put_file(w.segment_name(0x6000000), body)
    b.new_segment(0x7000000)
    b.add(Del("a", 6))
    assert_same_stats(b.write(tmp_path / "wal"))


def test_headers_anywhere_and_torn_ones(tmp_path):
    """Headers before the first record, between records, at the end, back to back, and
    one cut short at the end of the file (a torn tail)."""
    created = 0x5F5E100
    head = w.encode_header(created)
    for k, tail in enumerate([b"", head[:8], head[:12], head[:15], head[:3]]):
        b = LogBuilder(created=created)
        b.raw(head + head)
        b.add(Ins("a", [1, 2], None, 1))
        b.raw(head)
        b.add(Upd("a", [3, 4], {"k": "v"}, 2))
        b.raw(head * 3 + tail)
        doc = assert_same_stats(b.write(tmp_path / f"w{k}"))
        assert doc["segments"][0]["extra_headers"] == 6


def test_zero_filled_runs_a_header_apart_are_two_runs(tmp_path):
    """Zero-filled records, a header appended after them (the writer reopened within
    the same second), zero-filled records again: two runs, each at its own offset and
    with its own count, as the reference lists them (not one run of all four)."""
    created = 0x5F5E100
    b = LogBuilder(created=created)
    b.add(Ins("a", [1, 2], None, 1))
    b.raw(bytes(24))  # two zero-filled records
    b.raw(w.encode_header(created))
    b.raw(bytes(24))
    doc = assert_same_stats(b.write(tmp_path / "w"))
    runs = [d for d in doc["damage"] if d.get("records")]
    assert [d["records"] for d in runs] == [2, 2], doc["damage"]


def test_torn_records_at_every_cut(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", [1, 2], {"k": "v"}, 1))
    b.add(Batch([Ins("b", [1, 2]), Batch([Del("a")], 3)], 3))
    b.raw(w.encode_header(0x5F5E100))
    b.add(Ckpt(4, 4))
    data = bytes(b.files[b.cur])
    for cut in range(len(data) + 1):
        b.files[b.cur] = bytearray(data[:cut])
        assert_same_stats(b.write(tmp_path / f"c{cut}"), chunks=[None, 64])


def test_zero_filled_records_bound_no_segment_seqs(tmp_path):
    """A segment's first/last seq are the writer's: zero-filled records (seq 0, as a file
    extended but never written leaves) count as records, but at the start or the end of
    a segment they showed as seq 0 ("0..0" for records 0 and 1; "0..60" for a segment
    whose first record is seq 57)."""
    b = LogBuilder()
    b.add(Ins("a", [1], None, 5))
    b.add(Del("a", 6))
    b.raw(bytes(1200))  # extended, never written: the crash
    b.new_segment(0x6000000)
    b.raw(bytes(24))
    for seq in range(57, 61):
        b.add(Ins("b", [2], None, 7), seq=seq)
    b.new_segment(0x7000000)
    b.raw(bytes(36))
    doc = assert_same_stats(b.write(tmp_path / "wal"))
    assert [(s["records"], s["first_seq"], s["last_seq"]) for s in doc["segments"]] == [
        (102, 0, 1), (6, 57, 60), (3, None, None)]
    assert [d["kind"] for d in doc["damage"]] == ["zero_filled"] * 3


def test_sequence_numbers_at_the_u64_edge(tmp_path):
    """After seq 2**64 - 1 every seq is a restart (0 included), as with Python ints."""
    b = LogBuilder(first_seq=2**64 - 3)
    for k in range(3):
        b.add(Ins(f"a{k}", [1], None, k))
    b.add(Del("a0", 9), seq=0)
    b.add(Del("a1", 9), seq=2**64 - 1)
    b.add(Del("a2", 9), seq=2**64 - 1)
    doc = assert_same_stats(b.write(tmp_path / "wal"))
    assert [(r["from"], r["to"]) for r in doc["seq_restarts"]] == [
        (2**64 - 1, 0), (0, 2**64 - 1), (2**64 - 1, 2**64 - 1)]


def test_transactions_in_begin_order_and_markers_in_batches(tmp_path):
    """open_at_end keeps begin order through commits, re-begins and anomalies; markers and
    checkpoints nested in a batch are counted there and change no transaction."""
    b = LogBuilder()
    for entry in [Begin(7, 1), Begin(3, 2), Begin(2**64 - 1, 3), Commit(7, 4), Begin(7, 5),
                  Begin(3, 6), Abort(9, 7), Commit(9, 8),
                  Batch([Commit(3, 9), Begin(11, 9), Ckpt(5, 9), Batch([], 9), Abort(7, 9)], 9),
                  Batch([], 10), Abort(2**64 - 1, 11), Begin(0, 12)]:
        b.add(entry)
    b.add(Ckpt(2**64 - 1, 2**64 - 1), trailing=b"\x00\x01")
    b.add(Begin(5, 13), trailing=b"xyz")
    b.add(Begin(5, 14), trailing=b"!")
    doc = assert_same_stats(b.write(tmp_path / "wal"))
    txns = doc["transactions"]
    assert txns["open_at_end"] == [3, 7, 0, 5]
    assert (txns["committed"], txns["aborted"]) == (1, 1)
    assert len(txns["anomalies"]) == 4
    nested = doc["batch_entries_by_variant"]
    assert (nested["CommitTransaction"], nested["Batch"], nested["Checkpoint"]) == (1, 1, 1)


def test_more_events_than_the_walk_buffer_holds(tmp_path):
    """Thousands of restarts, checkpoints, anomalies and trailing bytes in one piece:
    the compiled walk resumes when its event buffer is full."""
    b = LogBuilder()
    for k in range(3000):
        b.add(Ckpt(k, k), seq=k % 2, trailing=b"\x00" if k % 3 == 0 else b"")
        b.add(Commit(k, k), seq=7)
        b.add_payload(b"\x09\x00", seq=k)
    doc = assert_same_stats(b.write(tmp_path / "wal"), chunks=[None, 1 << 20])
    assert len(doc["seq_restarts"]) > 4096 and len(doc["checkpoints"]) == 3000


def test_records_larger_than_a_piece_and_deep_nesting(tmp_path):
    """A record of several pieces (chunk 64 and 4096), a batch nested 3000 levels, and
    undecodable payloads: the messages are the codec's."""
    b = LogBuilder()
    b.add(Ins("big", [float(k) for k in range(3000)], {"m" * 500: "v" * 900}, 1))
    leaf = entries.Insert("deep", np.ones(1, np.float32), None, 2)
    for _ in range(3000):
        leaf = entries.Batch([leaf, entries.Delete("x", 2)], 2)
    b.add_payload(encode_entry(leaf))  # the codec's explicit stack: any depth
    b.add_payload(b"\x03\x01" * 70 + b"\x09")  # unknown variant 70 levels down
    b.add_payload(b"\x00\x02\xff\xfe\x00\x00\x00")  # invalid UTF-8 id
    b.add_payload(b"\x00\x01a\x00\x02\x00")  # bad option tag
    b.add_payload(b"\xfd" + bytes(8) + b"\x02\x01a\x00")  # a u64 marker for the variant
    b.add_payload(b"")
    doc = assert_same_stats(b.write(tmp_path / "wal"))
    assert doc["batch_entries_by_variant"]["Batch"] == 2999
    assert [d["kind"] for d in doc["damage"]] == ["undecodable"] * 5


def test_non_minimal_varints_and_odd_ids(tmp_path):
    b = LogBuilder()
    b.add_payload(b"\xfb\x00\x00" + b"\xfc\x01\x00\x00\x00a" + b"\xfd" + (1).to_bytes(8, "little")
                  + w.f32(1.0) + b"\x00" + b"\xfb\x05\x00")
    b.add_payload(b"\xfc\x05\x00\x00\x00" + b"\xfd" + (9).to_bytes(8, "little") + b"\x07")
    for ident in w.ID_POOL:
        b.add(Ins(ident, [1.0], {ident: ident}, 3))
    b.add_payload(b"\x02\x03\xed\xa0\x80\x05")  # a surrogate: not UTF-8
    b.add_payload(b"\x02\x04\xf4\x90\x80\x80\x05")  # above U+10FFFF
    b.add_payload(b"\x02\x02\xc0\xaf\x05")  # overlong
    assert_same_stats(b.write(tmp_path / "wal"))


def test_a_file_that_does_not_frame(tmp_path):
    """A length field that runs past the end of the file, in the first piece."""
    b = LogBuilder()
    b.add(Ins("a", [1], None, 1))
    at = b.raw(struct.pack("<QI", 1, 0xFFFFFFF0) + b"junk" * 40)
    doc = assert_same_stats(b.write(tmp_path / "wal"))
    assert doc["damage"][0]["offset"] == at


# ----------------------------------------------------------------------------- the command
def test_inspect_command_prints_what_the_reference_prints(tmp_path):
    wal_dir = tmp_path / "wal"
    test_cli.write_damaged_wal(wal_dir)
    ref = inspect_reference.wal_stats(wal_dir)
    for args, want in ((["--json"], json.dumps(ref, indent=2)),
                       ([], "\n".join(stats_lines(ref)))):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "inspect", str(wal_dir),
                               *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == want + "\n"


def test_memory_is_bounded_by_the_piece_not_the_segment(tmp_path):
    """One 32 MiB segment read in 1 MiB pieces: the compiled pass holds a few pieces
    (the read-ahead ring), the pure-Python reference the whole segment."""
    import tracemalloc

    write_synthetic_wal(tmp_path / "wal", total_bytes=32 << 20, dim=128, segments=1, seed=1)
    size = sum(f.stat().st_size for f in (tmp_path / "wal").glob("wal-*.log"))
    assert size >= 30 << 20
    small = LogBuilder()
    small.add(Ins("a", [1], None, 1))
    wal_stats(small.write(tmp_path / "small"))  # Numba's cache loads outside the measure
    peaks = []
    for stats in (lambda d: wal_stats(d, chunk_bytes=1 << 20), inspect_reference.wal_stats):
        tracemalloc.start()
        try:
            doc = stats(tmp_path / "wal")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert doc["totals"]["records"] > 40_000
    fast, ref = peaks
    assert ref >= size  # what tracemalloc sees: the reference's copy of the segment
    assert fast < 16 << 20, fast  # five buffers of 1 MiB + 1 MiB headroom, the columns
