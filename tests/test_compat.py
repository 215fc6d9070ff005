"""The seed's PointInTimeRestore: its Rust tests ported, then its quirks pinned down.

Ported from cool-japan/oxirs ``engine/oxirs-vec/src/persistence/point_in_time.rs``,
``persistence/restore.rs`` (``restore_to_timestamp`` reduced to the entries it
replays), the crate's point-in-time integration tests and the snapshot-during-load
scenario of its production_deployment tests (without threads).
"""

from __future__ import annotations

import logging
import os
import struct

import numpy as np
import pytest

from gpu_pitr.compat import SEED_MAX_ENTRY_LEN, CheckpointRef, PointInTimeRestore
from gpu_pitr.errors import WalError
from gpu_pitr.format.codec import encode_entry
from gpu_pitr.format.entries import (
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    Delete,
    Insert,
    Update,
)
from gpu_pitr.format.layout import segment_name
from gpu_pitr.format.reader import scan_segment
from gpu_pitr.format.writer import WalWriter, encode_header, encode_record

CREATED = 1_700_000_000  # a realistic creation second


def write_test_wal(wal_dir, entries, created=CREATED) -> None:
    """The Rust tests' helper: a WalManager with sync_on_write and no checkpoints."""
    with WalWriter(wal_dir, created=created, sync_on_write=True) as wal:
        for entry in entries:
            wal.append(entry)


def restore_to_timestamp(target, wal_dir) -> tuple[int, CheckpointRef | None]:
    """restore.rs without the VectorStore: (entries_replayed, base_checkpoint)."""
    pit = PointInTimeRestore(target, wal_dir)
    base = pit.find_base_checkpoint()
    return len(pit.replay_wal_to_timestamp(base)), base


def ins(id_: str, ts: int, vector=(1.0,)) -> Insert:
    return Insert(id_, list(vector), None, ts)


def ids(entries) -> list[str]:
    return [e.id for e in entries]


# -------------------------------------------------------------------- point_in_time.rs


def test_find_base_checkpoint_no_checkpoint(tmp_path):
    write_test_wal(tmp_path, [ins("v1", 1000), ins("v2", 2000, [2.0])])
    assert PointInTimeRestore(5000, tmp_path).find_base_checkpoint() is None


def test_find_base_checkpoint_selects_latest_before_target(tmp_path):
    write_test_wal(tmp_path, [Checkpoint(0, 1000), Checkpoint(1, 3000), Checkpoint(2, 6000)])
    base = PointInTimeRestore(4000, tmp_path).find_base_checkpoint()
    assert base is not None and base.timestamp == 3000


def test_replay_wal_to_timestamp_filters_correctly(tmp_path):
    write_test_wal(tmp_path, [ins("v1", 1000), ins("v2", 2000, [2.0]), ins("v3", 4000, [3.0])])
    replayed = PointInTimeRestore(2500, tmp_path).replay_wal_to_timestamp(None)
    assert len(replayed) == 2
    assert "v1" in ids(replayed) and "v2" in ids(replayed) and "v3" not in ids(replayed)


def test_checkpoint_discovery_ordered(tmp_path):
    write_test_wal(
        tmp_path, [Checkpoint(i, ts) for i, ts in enumerate([500, 1500, 2500, 3500, 4500])]
    )
    base = PointInTimeRestore(3000, tmp_path).find_base_checkpoint()
    assert base == CheckpointRef(sequence_number=2, timestamp=2500)


# -------------------------------------------------------------------- restore.rs


def test_restore_basic_inserts(tmp_path):
    write_test_wal(
        tmp_path, [ins("http://ex.org/a", 100, [1.0, 0.0]), ins("http://ex.org/b", 200, [0.0, 1.0])]
    )
    assert restore_to_timestamp(300, tmp_path) == (2, None)
    assert PointInTimeRestore(300, tmp_path).target_timestamp == 300


def test_restore_excludes_entries_after_target(tmp_path):
    write_test_wal(
        tmp_path, [ins("http://ex.org/early", 100), ins("http://ex.org/late", 900, [2.0])]
    )
    assert restore_to_timestamp(500, tmp_path)[0] == 1


def test_restore_no_wal_entries(tmp_path):
    WalWriter(tmp_path, created=CREATED, sync_on_write=True).close()
    assert restore_to_timestamp(9999, tmp_path) == (0, None)


def test_restore_batch_entries_counted_individually(tmp_path):
    batch = Batch([ins("http://ex.org/x", 50), ins("http://ex.org/y", 50, [2.0])], 50)
    write_test_wal(tmp_path, [batch])
    # The Batch is one WAL entry; replay returns it whole.
    assert restore_to_timestamp(200, tmp_path) == (1, None)
    assert PointInTimeRestore(200, tmp_path).replay_wal_to_timestamp() == [batch]


# -------------------------------------------------------------------- integration tests


def test_snapshot_pit_restore_basic(tmp_path):
    write_test_wal(
        tmp_path,
        [
            ins("http://ex.org/t1", 1000, [1.0, 0.0, 0.0]),
            ins("http://ex.org/t2", 2000, [0.0, 1.0, 0.0]),
        ],
    )
    assert restore_to_timestamp(3000, tmp_path) == (2, None)
    assert PointInTimeRestore(3000, tmp_path).target_timestamp == 3000


def test_snapshot_pit_restore_cuts_off_at_target(tmp_path):
    write_test_wal(
        tmp_path, [ins("http://ex.org/early", 500), ins("http://ex.org/late", 8000, [2.0])]
    )
    assert restore_to_timestamp(4000, tmp_path)[0] == 1


def test_snapshot_pit_no_earlier_checkpoint_uses_empty_base(tmp_path):
    write_test_wal(tmp_path, [ins("http://ex.org/only", 100, [0.5])])
    assert restore_to_timestamp(50, tmp_path) == (0, None)


def test_snapshot_checkpoint_discovery_ordered(tmp_path):
    write_test_wal(tmp_path, [Checkpoint(i, (i + 1) * 1000) for i in range(5)])
    base = PointInTimeRestore(3500, tmp_path).find_base_checkpoint()
    assert base == CheckpointRef(sequence_number=2, timestamp=3000)


def test_snapshot_pit_checkpoint_at_exact_target(tmp_path):
    write_test_wal(tmp_path, [Checkpoint(0, 5000), ins("http://ex.org/after", 6000, [9.0])])
    base = PointInTimeRestore(5000, tmp_path).find_base_checkpoint()
    assert base is not None and base.timestamp == 5000


def test_checkpoint_ref_default_is_zeroed():
    assert CheckpointRef() == CheckpointRef(sequence_number=0, timestamp=0)


# -------------------------------------------------------------------- quirks: what is returned


def test_transactions_are_not_honoured(tmp_path):
    write_test_wal(
        tmp_path,
        [
            BeginTransaction(1, 10),
            ins("aborted", 11),
            AbortTransaction(1, 12),
            BeginTransaction(2, 13),
            ins("committed", 14),
            CommitTransaction(2, 15),
            BeginTransaction(3, 16),
            ins("in-flight", 17),
        ],
    )
    replayed = PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()
    assert ids(replayed) == ["aborted", "committed", "in-flight"]


def test_entries_are_filtered_not_cut_at_the_target(tmp_path):
    write_test_wal(tmp_path, [ins("a", 100), ins("late", 300), ins("b", 200), Delete("a", 250)])
    replayed = PointInTimeRestore(220, tmp_path).replay_wal_to_timestamp()
    assert replayed == [ins("a", 100), ins("b", 200)]


def test_batches_are_judged_by_their_own_timestamp_and_returned_whole(tmp_path):
    early = Batch([ins("future-inside", 10_000), Checkpoint(0, 1), BeginTransaction(9, 1)], 10)
    late = Batch([ins("past-inside", 1)], 500)
    write_test_wal(tmp_path, [early, late])
    pit = PointInTimeRestore(100, tmp_path)
    assert pit.replay_wal_to_timestamp() == [early]
    # A checkpoint inside a batch is not a base.
    assert pit.find_base_checkpoint() is None


def test_every_data_variant_is_returned_and_markers_dropped(tmp_path):
    entries = [
        ins("a", 1),
        Update("a", [2.0], {"k": "v"}, 2),
        Delete("a", 3),
        Batch([], 4),
        Checkpoint(0, 5),
        BeginTransaction(1, 6),
        CommitTransaction(1, 7),
        AbortTransaction(2, 8),
    ]
    write_test_wal(tmp_path, entries)
    assert PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp() == entries[:4]


def test_base_filter_uses_the_checkpoint_field_against_record_numbers(tmp_path):
    # Checkpoint record seq 2 carries sequence_number 0: only record 0 is skipped.
    write_test_wal(tmp_path, [ins("a", 10), ins("b", 20), Checkpoint(0, 25), ins("c", 30)])
    pit = PointInTimeRestore(100, tmp_path)
    base = pit.find_base_checkpoint()
    assert base == CheckpointRef(0, 25)
    assert ids(pit.replay_wal_to_timestamp(base)) == ["b", "c"]
    assert ids(pit.replay_wal_to_timestamp(None)) == ["a", "b", "c"]
    # A base with sequence number 0 still skips record 0 (the seed tests base.is_some()).
    assert ids(pit.replay_wal_to_timestamp(CheckpointRef())) == ["b", "c"]


def test_base_filter_drops_records_after_a_seq_restart(tmp_path):
    write_test_wal(tmp_path, [ins("a", 10), ins("b", 20), Checkpoint(1, 25)], created=CREATED)
    # Reopened without recovery: numbering restarts at 0 in the next segment.
    write_test_wal(tmp_path, [ins("c", 30), ins("d", 40), ins("e", 50)], created=CREATED + 1)
    pit = PointInTimeRestore(100, tmp_path)
    base = pit.find_base_checkpoint()
    assert base == CheckpointRef(1, 25)
    assert ids(pit.replay_wal_to_timestamp(base)) == ["e"]


def test_checkpoint_ties_first_wins_and_later_ones_ignored(tmp_path):
    write_test_wal(tmp_path, [Checkpoint(7, 300), Checkpoint(8, 300), Checkpoint(9, 301)])
    assert PointInTimeRestore(300, tmp_path).find_base_checkpoint() == CheckpointRef(7, 300)
    assert PointInTimeRestore(299, tmp_path).find_base_checkpoint() is None


def test_vectors_come_back_bit_exact(tmp_path):
    bits = np.array([0x7F800001, 0x80000000, 0xFF800000], dtype="<u4")
    entry = Insert("nan", bits.view("<f4").astype(np.float32), None, 1)
    write_test_wal(tmp_path, [entry])
    (replayed,) = PointInTimeRestore(1, tmp_path).replay_wal_to_timestamp()
    assert replayed.vector.view("<u4").tolist() == bits.tolist()


# -------------------------------------------------------------------- quirks: damage and files


def put_segment(wal_dir, name: str, *chunks: bytes) -> None:
    (wal_dir / name).write_bytes(b"".join(chunks))


def rec(seq: int, entry) -> bytes:
    return encode_record(seq, encode_entry(entry))


def test_undecodable_records_are_skipped(tmp_path, caplog):
    put_segment(
        tmp_path,
        segment_name(1),
        encode_header(1),
        rec(0, ins("a", 1)),
        encode_record(1, b"\x08"),  # unknown variant
        encode_record(2, b""),  # truncated
        rec(3, ins("b", 2)),
    )
    with caplog.at_level(logging.WARNING, logger="gpu_pitr.compat"):
        replayed = PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()
    assert ids(replayed) == ["a", "b"]
    assert "seq 1" in caplog.text and "seq 2" in caplog.text


def test_torn_tail_ends_the_file_silently(tmp_path):
    torn = rec(1, ins("torn", 2))
    put_segment(tmp_path, segment_name(1), encode_header(1), rec(0, ins("a", 1)), torn[:-1])
    put_segment(tmp_path, segment_name(2), encode_header(2), rec(0, ins("b", 3)))
    assert ids(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()) == ["a", "b"]


def test_length_over_the_seed_limit_ends_the_file(tmp_path):
    put_segment(
        tmp_path,
        segment_name(1),
        encode_header(1),
        rec(0, ins("a", 1)),
        struct.pack("<QI", 1, SEED_MAX_ENTRY_LEN + 1),
        rec(2, ins("lost", 1)),
    )
    put_segment(tmp_path, segment_name(2), encode_header(2), rec(0, ins("b", 1)))
    assert ids(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()) == ["a", "b"]


def test_header_checks(tmp_path):
    good = rec(0, ins("x", 1))
    put_segment(tmp_path, "wal-0000000000000001.log", b"WALX" + encode_header(1)[4:], good)
    put_segment(tmp_path, "wal-0000000000000002.log", b"WALV\x07\x00\x00\x00" + bytes(8), good)
    put_segment(tmp_path, "wal-0000000000000003.log", b"WALV\x01\x00")
    put_segment(tmp_path, "wal-0000000000000004.log", b"WA")
    put_segment(tmp_path, "wal-0000000000000005.log")
    # Wrong magic: skipped. Wrong version: read anyway. Short files: skipped.
    replayed = PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()
    assert replayed == [ins("x", 1)]


def test_second_header_is_misread_and_ends_the_file(tmp_path):
    with WalWriter(tmp_path, created=CREATED) as wal:
        wal.append(ins("before", 1))
    with WalWriter(tmp_path, created=CREATED) as wal:
        wal.append(ins("after", 2))
    # The spec reader sees both records ...
    assert len(scan_segment(tmp_path / segment_name(CREATED)).records) == 2
    # ... the seed reads "WALV\x01\0\0\0" as a seq and the low half of the
    # creation second as a length over 100,000,000, and stops there.
    assert CREATED & 0xFFFFFFFF > SEED_MAX_ENTRY_LEN
    assert ids(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()) == ["before"]


def test_file_names_the_seed_reads(tmp_path):
    for name, id_ in [
        ("wal-b.log", "b"),
        ("wal-A.log", "A"),
        (segment_name(5), "hex"),
        ("wal-0000000000000001.txt", "txt"),
        ("xwal-0000000000000001.log", "prefix"),
        ("wal-0000000000000001.log.bak", "bak"),
    ]:
        put_segment(tmp_path, name, encode_header(1), rec(0, ins(id_, 1)))
    (tmp_path / "wal-dir.log").mkdir()
    replayed = PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()
    # Sorted by bytes: digits < upper case < lower case.
    assert ids(replayed) == ["hex", "A", "b"]


def test_missing_directory_reads_as_empty(tmp_path):
    pit = PointInTimeRestore(100, tmp_path / "nope")
    assert pit.find_base_checkpoint() is None
    assert pit.replay_wal_to_timestamp() == []
    assert not (tmp_path / "nope").exists()


def test_a_file_instead_of_a_directory_is_an_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WalError, match="not a directory"):
        PointInTimeRestore(100, tmp_path / "file").replay_wal_to_timestamp()


def test_the_directory_is_only_read(tmp_path):
    write_test_wal(tmp_path, [ins("a", 1), Checkpoint(0, 2)])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    pit = PointInTimeRestore(100, tmp_path)
    pit.find_base_checkpoint()
    pit.replay_wal_to_timestamp(None)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_target_must_be_a_u64(tmp_path):
    with pytest.raises(ValueError):
        PointInTimeRestore(-1, tmp_path)
    with pytest.raises(ValueError):
        PointInTimeRestore(2**64, tmp_path)
    PointInTimeRestore(2**64 - 1, os.fspath(tmp_path))
    # A u64 in the seed: floats and bools are refused, not compared as they are.
    for bad in (10.5, 1e19, np.float64(10.0), True):
        with pytest.raises(TypeError):
            PointInTimeRestore(bad, tmp_path)
    assert PointInTimeRestore(np.uint64(10), tmp_path).target_timestamp == 10


def test_a_fifo_named_like_a_segment_does_not_block(tmp_path):
    import threading

    write_test_wal(tmp_path, [ins("a", 1)])
    fifo = tmp_path / "wal-zzzz.log"
    os.mkfifo(fifo)
    out = []
    reader = threading.Thread(
        target=lambda: out.append(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()),
        daemon=True,
    )
    reader.start()
    reader.join(10)
    if reader.is_alive():  # release the blocked open before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("a FIFO named wal-*.log blocked the scan")
    assert ids(out[0]) == ["a"]


def test_a_link_to_a_device_is_not_read_to_its_end(tmp_path):
    # The seed reads 4 bytes of /dev/zero, sees a wrong magic and goes on. Run in a
    # child with its address space capped, so a regression fails instead of eating RAM.
    import subprocess
    import sys

    write_test_wal(tmp_path, [ins("a", 1)])
    (tmp_path / "wal-zzzz.log").symlink_to("/dev/zero")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from gpu_pitr.compat import PointInTimeRestore\n"
        "print([e.id for e in PointInTimeRestore(100, sys.argv[1]).replay_wal_to_timestamp()])\n"
    )
    # One thread a pool: a machine with many cores reserves address space per thread.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
        timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['a']"


def test_a_name_that_is_not_utf8_is_not_read(tmp_path):
    """The seed lists its directory with Rust's ``to_str()``, which fails on a name that
    is not UTF-8, and skips it: its records are not returned (a copy of a segment under
    such a name returned every entry twice)."""
    write_test_wal(tmp_path, [ins("a", 100), ins("b", 200)])
    (name,) = os.listdir(tmp_path)
    (tmp_path / os.fsdecode(b"wal-\xff" + name[4:].encode())).write_bytes(
        (tmp_path / name).read_bytes())
    assert restore_to_timestamp(300, tmp_path) == (2, None)


def test_a_directory_that_cannot_be_looked_up_reads_as_empty(tmp_path):
    """The seed asks ``Path::exists()``, false for any error looking the path up, and
    then returns nothing; pathlib's ``exists()`` raised for a name too long."""
    pit = PointInTimeRestore(100, tmp_path / ("x" * 300))  # ENAMETOOLONG
    assert pit.find_base_checkpoint() is None
    assert pit.replay_wal_to_timestamp() == []
    # (review diff43) A NUL byte in it: the seed's lookup fails (InvalidInput), so it
    # reads as empty, as pathlib's exists() said before; os.stat raised ValueError.
    pit = PointInTimeRestore(100, f"{tmp_path}/a\0b")
    assert pit.find_base_checkpoint() is None
    assert pit.replay_wal_to_timestamp() == []


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_a_read_error_in_a_header_passes_the_file_over(tmp_path, caplog):
    """A read error (EIO) in the first 16 bytes: the seed's ``read_exact(..).is_err()``
    passes the file over without a word and goes on; it raised here. /proc/self/mem
    is a regular file whose offset 0 is unmapped: its first read fails with EIO."""
    write_test_wal(tmp_path, [ins("a", 1)])
    (tmp_path / "wal-zzzz.log").symlink_to("/proc/self/mem")
    with caplog.at_level(logging.WARNING, logger="gpu_pitr.compat"):
        assert ids(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()) == ["a"]
    assert "wal-zzzz.log" not in caplog.text


def test_a_read_error_after_the_header_ends_that_file(tmp_path, monkeypatch, caplog):
    """A read error past the header: the seed warns, keeps the records read before it,
    drops the rest of that file and reads the next one; it raised here."""
    import errno
    import io

    from gpu_pitr import compat

    first = [encode_header(1), rec(0, ins("a", 1)), rec(1, ins("b", 2)), rec(2, ins("c", 3))]
    put_segment(tmp_path, segment_name(1), *first)
    put_segment(tmp_path, segment_name(2), encode_header(2), rec(0, ins("d", 4)))
    bad_at = sum(map(len, first[:3])) + 5  # inside record 2

    class FailsAt(io.BytesIO):
        def read(self, size=-1):
            if self.tell() + size > bad_at:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(size)

    opened = []

    def open_failing_first(fd, mode):
        with open(fd, mode) as real:
            data = real.read()
        opened.append(fd)
        return FailsAt(data) if len(opened) == 1 else io.BytesIO(data)

    monkeypatch.setattr(compat, "open", open_failing_first, raising=False)
    with caplog.at_level(logging.WARNING, logger="gpu_pitr.compat"):
        replayed = PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()
    assert ids(replayed) == ["a", "b", "d"]
    assert "read error" in caplog.text and segment_name(1) in caplog.text


def test_base_is_the_greatest_timestamp_not_the_last_in_log_order(tmp_path):
    """Across segments too: a later segment's checkpoint with an earlier timestamp (a
    clock stepped back) is not the base; the seed compares timestamps only."""
    write_test_wal(tmp_path, [ins("a", 10), Checkpoint(5, 400)], created=CREATED)
    write_test_wal(tmp_path, [Checkpoint(0, 300), ins("b", 350)], created=CREATED + 1)
    pit = PointInTimeRestore(500, tmp_path)
    assert pit.find_base_checkpoint() == CheckpointRef(5, 400)
    assert PointInTimeRestore(399, tmp_path).find_base_checkpoint() == CheckpointRef(0, 300)


def test_records_come_in_file_order_not_sorted_by_sequence_number(tmp_path):
    """The seed's doc comment says "(file name, sequence number)"; its code keeps each
    file's order, whatever the numbers say."""
    put_segment(
        tmp_path, segment_name(1), encode_header(1), rec(5, ins("five", 1)), rec(3, ins("three", 1))
    )
    put_segment(tmp_path, segment_name(2), encode_header(2), rec(0, ins("zero", 1)))
    assert ids(PointInTimeRestore(100, tmp_path).replay_wal_to_timestamp()) == [
        "five", "three", "zero"]


def test_snapshot_during_load_restores_what_was_written_by_the_target(tmp_path):
    """The crate's production_deployment ``snapshot_during_load_and_restore_on_fresh_node``
    without its threads: a restore while the writer (sync_on_write) is still appending
    replays every entry up to the target, and none after it, then and once it is done."""
    with WalWriter(tmp_path, created=CREATED, sync_on_write=True) as wal:
        for i in range(1, 51):
            wal.append(ins(f"v_{i}", i, [i, 2 * i]))
        target = 50
        during = restore_to_timestamp(target, tmp_path)
        for i in range(51, 301):
            wal.append(ins(f"v_{i}", i, [i, 2 * i]))
    assert during == (50, None)
    replayed = PointInTimeRestore(target, tmp_path).replay_wal_to_timestamp(None)
    assert ids(replayed) == [f"v_{i}" for i in range(1, 51)]
    assert max(e.timestamp for e in replayed) == target
