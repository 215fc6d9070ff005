"""WalWriter against WalManager's behaviour (oxirs-vec wal.rs), and the pure-Python reader."""

from __future__ import annotations

import itertools
import os

import pytest

from gpu_pitr import restore
from gpu_pitr.format.codec import decode_entry, encode_entry
from gpu_pitr.format.entries import (
    Batch,
    BeginTransaction,
    Checkpoint,
    Delete,
    Insert,
    Update,
)
from gpu_pitr.format.layout import HEADER_SIZE, RECORD_HEADER_SIZE, segment_name
from gpu_pitr.format.reader import (
    BadHeader,
    RawRecord,
    TornTail,
    iter_segment,
    scan_segment,
    scan_wal,
)
from gpu_pitr.format.writer import WalWriter, encode_header, encode_record

SPEC_ENTRY = Insert("v1", [1.0], None, 1000)
SPEC_PAYLOAD = bytes.fromhex("00 02 76 31 01 00 00 80 3f 00 fb e8 03")
SPEC_RECORD_SIZE = RECORD_HEADER_SIZE + len(SPEC_PAYLOAD)  # 25


def wal_files(wal_dir) -> list[str]:
    return sorted(os.listdir(wal_dir))


def frozen_clock(second: int):
    return lambda: second


def ticking_clock(first: int):
    counter = itertools.count(first)
    return lambda: next(counter)


# -------------------------------------------------------------------- writer


def test_first_segment_name_and_header(tmp_path):
    wal_dir = tmp_path / "wal"  # created on open, like create_dir_all
    with WalWriter(wal_dir, created=1000) as wal:
        assert wal.path == wal_dir / "wal-00000000000003e8.log"
    assert wal_files(wal_dir) == ["wal-00000000000003e8.log"]
    assert (wal_dir / segment_name(1000)).read_bytes() == encode_header(1000)


def test_created_defaults_to_the_clock_truncated(tmp_path):
    with WalWriter(tmp_path, clock=lambda: 1234.99) as wal:
        assert wal.path.name == segment_name(1234)
    assert (tmp_path / segment_name(1234)).read_bytes() == encode_header(1234)


def test_records_bytes(tmp_path):
    entries = [SPEC_ENTRY, Delete("v1", 1001), Batch([Update("v2", [2.0], {"k": "v"}, 5)], 1002)]
    with WalWriter(tmp_path, created=7) as wal:
        assert [wal.append(e) for e in entries] == [0, 1, 2]
        assert wal.next_seq == 3
    expected = encode_header(7) + b"".join(
        encode_record(seq, encode_entry(e)) for seq, e in enumerate(entries)
    )
    assert (tmp_path / segment_name(7)).read_bytes() == expected
    assert expected[16:41] == bytes.fromhex("00" * 8 + "0d 00 00 00") + SPEC_PAYLOAD


def test_writes_are_buffered_until_flush(tmp_path):
    # WalConfig's default: sync_on_write false, a 64 KiB BufWriter.
    wal = WalWriter(tmp_path, created=1)
    wal.append(SPEC_ENTRY)
    assert os.path.getsize(wal.path) == 0
    wal.flush()
    assert os.path.getsize(wal.path) == HEADER_SIZE + SPEC_RECORD_SIZE
    wal.close()
    wal.close()  # harmless
    with pytest.raises(ValueError):
        wal.append(SPEC_ENTRY)


def test_sync_on_write_reaches_disk_at_once(tmp_path):
    wal = WalWriter(tmp_path, created=1, sync_on_write=True)
    assert os.path.getsize(wal.path) == HEADER_SIZE
    wal.append(SPEC_ENTRY)
    assert os.path.getsize(wal.path) == HEADER_SIZE + SPEC_RECORD_SIZE
    wal.close()


@pytest.mark.parametrize(
    ("buffer_size", "sizes"),
    [
        # Header 4+4+8 buffered; then seq 8 flushes the header, payload 13 flushes seq+len.
        (20, [28, 53]),
        # Payload 13 >= capacity 10: the buffer is flushed, then the payload written direct.
        (10, [41, 66]),
        # Capacity 0: everything goes straight to the file.
        (0, [41, 66]),
    ],
)
def test_bufwriter_policy(tmp_path, buffer_size, sizes):
    wal = WalWriter(tmp_path, created=1, buffer_size=buffer_size)
    seen = []
    for _ in sizes:
        wal.append(SPEC_ENTRY)
        seen.append(os.path.getsize(wal.path))
    wal.close()
    assert seen == sizes
    assert os.path.getsize(tmp_path / segment_name(1)) == HEADER_SIZE + 2 * SPEC_RECORD_SIZE


def test_reopen_in_same_second_appends_a_header_and_restarts_seq(tmp_path):
    with WalWriter(tmp_path, created=50) as wal:
        assert wal.append(SPEC_ENTRY) == 0
        assert wal.append(SPEC_ENTRY) == 1
    with WalWriter(tmp_path, created=50) as wal:
        assert wal.append(Delete("v1", 2000)) == 0
    data = (tmp_path / segment_name(50)).read_bytes()
    assert data == (
        encode_header(50)
        + encode_record(0, SPEC_PAYLOAD)
        + encode_record(1, SPEC_PAYLOAD)
        + encode_header(50)
        + encode_record(0, encode_entry(Delete("v1", 2000)))
    )
    scan = scan_segment(tmp_path / segment_name(50))
    assert [r.seq for r in scan.records] == [0, 1, 0]
    assert scan.extra_headers == [HEADER_SIZE + 2 * SPEC_RECORD_SIZE]
    assert scan.torn_tail is None and scan.bad_header is None


def test_reopen_in_a_later_second_starts_a_new_file(tmp_path):
    with WalWriter(tmp_path, clock=frozen_clock(50)) as wal:
        wal.append(SPEC_ENTRY)
    with WalWriter(tmp_path, clock=frozen_clock(51)) as wal:
        assert wal.append(SPEC_ENTRY) == 0
    assert wal_files(tmp_path) == [segment_name(50), segment_name(51)]
    expected = encode_header(51) + encode_record(0, SPEC_PAYLOAD)
    assert (tmp_path / segment_name(51)).read_bytes() == expected


def test_manual_rotate_keeps_numbering(tmp_path):
    with WalWriter(tmp_path, created=10) as wal:
        wal.append(SPEC_ENTRY)
        assert wal.rotate(created=11) == tmp_path / segment_name(11)
        assert wal.append(SPEC_ENTRY) == 1
    assert (tmp_path / segment_name(10)).read_bytes() == encode_header(10) + encode_record(
        0, SPEC_PAYLOAD
    )
    assert (tmp_path / segment_name(11)).read_bytes() == encode_header(11) + encode_record(
        1, SPEC_PAYLOAD
    )


def test_size_rotation(tmp_path):
    # 16 + 25 = 41 < 60, then 66 >= 60: rotate after the second record.
    clock = ticking_clock(101)
    with WalWriter(
        tmp_path, created=100, clock=clock, max_segment_bytes=60, sync_on_write=True
    ) as wal:
        seqs = [wal.append(SPEC_ENTRY) for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert wal_files(tmp_path) == [segment_name(100), segment_name(101), segment_name(102)]
    per_file = [[r.seq for r in s.records] for s in scan_wal(tmp_path)]
    assert per_file == [[0, 1], [2, 3], [4]]


def test_size_rotation_within_the_same_second_appends_headers(tmp_path):
    # Once the file is over the limit, every append "rotates" to the same file.
    with WalWriter(
        tmp_path, clock=frozen_clock(9), max_segment_bytes=30, sync_on_write=True
    ) as wal:
        wal.append(SPEC_ENTRY)
        wal.append(SPEC_ENTRY)
    record = encode_record(0, SPEC_PAYLOAD), encode_record(1, SPEC_PAYLOAD)
    header = encode_header(9)
    data = (tmp_path / segment_name(9)).read_bytes()
    assert data == header + record[0] + header + record[1] + header
    assert scan_segment(tmp_path / segment_name(9)).extra_headers == [41, 82]


def test_buffered_writes_do_not_count_toward_rotation(tmp_path):
    # WalManager checks the on-disk size; a 64 KiB buffer hides small records.
    with WalWriter(tmp_path, created=1, clock=ticking_clock(2), max_segment_bytes=60) as wal:
        for _ in range(5):
            wal.append(SPEC_ENTRY)
    assert wal_files(tmp_path) == [segment_name(1)]


def test_automatic_checkpoints(tmp_path):
    with WalWriter(tmp_path, created=1, clock=frozen_clock(5000), checkpoint_interval=3) as wal:
        seqs = [wal.append(Delete(str(i), i)) for i in range(6)]
    assert seqs == [0, 1, 2, 3, 5, 6]
    records = list(iter_segment(tmp_path / segment_name(1)))
    decoded = {r.seq: decode_entry(r.payload)[0] for r in records}
    assert [r.seq for r in records] == list(range(8))
    assert decoded[4] == Checkpoint(3, 5000)
    assert decoded[7] == Checkpoint(6, 5000)


def test_manual_checkpoint(tmp_path):
    with WalWriter(tmp_path, created=1, clock=frozen_clock(77)) as wal:
        wal.append(SPEC_ENTRY)
        assert wal.checkpoint(0) == 1
        assert wal.checkpoint(0, timestamp=5) == 2
    payloads = [r.payload for r in iter_segment(tmp_path / segment_name(1))]
    assert payloads[1:] == [encode_entry(Checkpoint(0, 77)), encode_entry(Checkpoint(0, 5))]


def test_next_seq(tmp_path):
    with WalWriter(tmp_path, created=1, next_seq=41) as wal:
        assert wal.append(SPEC_ENTRY) == 41


# -------------------------------------------------------------------- reader


def write_segment(tmp_path, created=3, count=3) -> tuple[bytes, list[int]]:
    """A segment with ``count`` records; returns its bytes and the record offsets."""
    with WalWriter(tmp_path, created=created) as wal:
        for i in range(count):
            wal.append(Insert(f"id{i}", [float(i)] * (i + 1), {"i": str(i)}, i))
    data = (tmp_path / segment_name(created)).read_bytes()
    offsets = [r.offset for r in scan_segment(tmp_path / segment_name(created)).records]
    return data, offsets


def test_reader_reads_back_the_writer(tmp_path):
    data, offsets = write_segment(tmp_path)
    scan = scan_segment(tmp_path / segment_name(3))
    assert scan.created == 3 and scan.size == len(data)
    assert scan.torn_tail is None and scan.bad_header is None and scan.extra_headers == []
    assert offsets[0] == HEADER_SIZE
    for i, record in enumerate(scan.records):
        assert isinstance(record, RawRecord) and record.seq == i
        entry, consumed = decode_entry(record.payload)
        assert consumed == len(record.payload)
        assert entry == Insert(f"id{i}", [float(i)] * (i + 1), {"i": str(i)}, i)


def test_every_truncation_is_a_torn_tail(tmp_path):
    data, offsets = write_segment(tmp_path)
    boundaries = [*offsets, len(data)]
    cut_file = tmp_path / "cut" / segment_name(3)
    cut_file.parent.mkdir()
    for cut in range(len(data) + 1):
        cut_file.write_bytes(data[:cut])
        scan = scan_segment(cut_file)
        assert scan.bad_header is None
        if cut < HEADER_SIZE:
            assert scan.torn_tail == TornTail(0, cut)
            assert scan.records == []
            continue
        complete = [off for off, end in itertools.pairwise(boundaries) if end <= cut]
        assert [r.offset for r in scan.records] == complete
        start = boundaries[len(complete)]
        if cut == start:
            assert scan.torn_tail is None
        else:
            assert scan.torn_tail == TornTail(start, cut - start)


@pytest.mark.parametrize(
    ("content", "bad"),
    [
        (b"X", BadHeader(0, "wrong magic")),
        (b"WALX", BadHeader(0, "wrong magic")),
        (b"WALV\x02", BadHeader(0, "wrong magic")),  # not a prefix of a version-1 header
        (b"WALX" + encode_header(1)[4:], BadHeader(0, "wrong magic b'WALX'")),
        (b"WALV\x02\x00\x00\x00" + bytes(8), BadHeader(0, "unsupported version 2")),
    ],
)
def test_bad_headers(tmp_path, content, bad):
    path = tmp_path / segment_name(1)
    # A full bad header is followed by a record that must not be read.
    tail = encode_record(0, SPEC_PAYLOAD) if len(content) >= HEADER_SIZE else b""
    path.write_bytes(content + tail)
    scan = scan_segment(path)
    assert scan.bad_header == bad
    assert scan.records == [] and scan.torn_tail is None


def test_empty_file_is_a_torn_tail_at_zero(tmp_path):
    path = tmp_path / segment_name(1)
    path.write_bytes(b"")
    assert scan_segment(path).torn_tail == TornTail(0, 0)


def test_torn_second_header(tmp_path):
    path = tmp_path / segment_name(1)
    head = encode_header(1) + encode_record(0, SPEC_PAYLOAD)
    path.write_bytes(head + encode_header(1)[:14])
    scan = scan_segment(path)
    assert [r.seq for r in scan.records] == [0]
    assert scan.torn_tail == TornTail(len(head), 14)
    assert scan.extra_headers == []


def test_record_with_empty_payload(tmp_path):
    path = tmp_path / segment_name(1)
    path.write_bytes(encode_header(1) + encode_record(5, b""))
    assert scan_segment(path).records == [RawRecord(5, HEADER_SIZE, b"")]


def test_scan_wal_in_log_order_ignores_other_names(tmp_path):
    for created in (0x20, 0x3, 0x100):
        with WalWriter(tmp_path, created=created) as wal:
            wal.append(Delete(str(created), created))
    (tmp_path / "wal-0000000000000001.log.bak").write_bytes(b"junk")
    (tmp_path / "wal-XYZ.log").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_bytes(b"junk")
    scans = scan_wal(tmp_path)
    assert [s.path.name for s in scans] == [segment_name(c) for c in (0x3, 0x20, 0x100)]
    assert [s.created for s in scans] == [0x3, 0x20, 0x100]


def test_numpy_integers_encode_like_python_ones_at_every_width(tmp_path):
    import numpy as np

    for value in (250, 251, 65535, 65536, 2**32 - 1, 2**32, 2**63):
        want = encode_entry(Delete("a", value))
        assert encode_entry(Delete("a", np.uint64(value))) == want
        if value < 2**63:
            assert encode_entry(Delete("a", np.int64(value))) == want
        assert encode_entry(Checkpoint(np.uint64(value), np.int32(7))) == encode_entry(
            Checkpoint(value, 7))
    with WalWriter(tmp_path, created=1000) as w:
        assert w.append(Delete("a", np.int64(1_700_000_000))) == 0
    for bad in (2.0, "7", None):
        with pytest.raises(TypeError):
            encode_entry(Delete("a", bad))


def test_a_vector_replaced_after_the_entry_was_made_is_checked_when_written(tmp_path):
    # A 2-d array in the field wrote its row count and then every element: another,
    # shorter vector followed by bytes of no field.
    import numpy as np

    entry = Insert("a", [1.0, 2.0, 3.0], None, 1000)
    entry.vector = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(ValueError, match="a vector must be 1-d, got shape"):
        encode_entry(entry)
    entry.vector = [[1.0], [2.0]]
    with WalWriter(tmp_path, created=1000) as w, pytest.raises(ValueError, match="1-d"):
        w.append(entry)
    entry.vector = [1, 2.5]  # a list again, as the constructor takes: cast to float32
    assert decode_entry(encode_entry(entry))[0].vector.tolist() == [1.0, 2.5]


# -------------------------------------------------------------------- a Python store's use


def test_an_entry_that_does_not_encode_takes_no_seq(tmp_path):
    # WalManager numbered an entry before encoding it: every rejected append left a
    # seq gap, which verify called damage and a restore warned of as records lost.
    bad = [
        (Insert(5, [1.0], None, 1), TypeError, "id: expected str, got int"),
        (Insert("a", [1.0], {"k": 1}, 1), TypeError, r"metadata\['k'\]: expected str"),
        (Insert("a", [1.0], [("k", "v")], 1), TypeError, "metadata: expected a dict"),
        (Delete("a", 1.5), TypeError, r"timestamp: expected an integer \(u64\), got float"),
        (Batch([], -1), ValueError, "timestamp: -1 is outside u64"),
        (BeginTransaction("7", 1), TypeError, "transaction_id: expected an integer"),
        (Delete("\ud800", 1), ValueError, "id: not encodable as UTF-8"),
        (Batch([("x",)], 1), TypeError, "not a WAL entry"),
    ]
    with WalWriter(tmp_path, created=1) as wal:
        assert wal.append(SPEC_ENTRY) == 0
        for entry, error, match in bad:
            with pytest.raises(error, match=match):
                wal.append(entry)
            assert wal.next_seq == 1
        assert wal.append(SPEC_ENTRY) == 1
        assert wal.checkpoint(1) == 2
    assert [r.seq for r in iter_segment(tmp_path / segment_name(1))] == [0, 1, 2]


def test_a_writer_never_closed_is_flushed_when_dropped(tmp_path):
    # Rust's Drop flushes and syncs; the buffer of a writer garbage-collected or left
    # open at exit was lost (a 64 KiB buffer: every record of a small store).
    import gc
    import subprocess
    import sys

    def log_one(wal_dir):
        wal = WalWriter(wal_dir, created=1)
        wal.append(SPEC_ENTRY)

    log_one(tmp_path / "gc")
    gc.collect()
    want = encode_header(1) + encode_record(0, SPEC_PAYLOAD)
    assert (tmp_path / "gc" / segment_name(1)).read_bytes() == want
    script = ("import sys; from gpu_pitr.format.writer import WalWriter;"
              "from gpu_pitr.format.entries import Insert;"
              "w = WalWriter(sys.argv[1], created=1);"
              "w.append(Insert('v1', [1.0], None, 1000))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "exit")], check=True)
    assert (tmp_path / "exit" / segment_name(1)).read_bytes() == want


def test_a_writer_dropped_unclosed_writes_its_records_before_its_lock_goes(
        tmp_path, monkeypatch):
    # Collected unclosed, the writer released its directory lock first and wrote its
    # buffer after: a writer opened in another thread in between (os.close lets it run)
    # appended ahead of the dropped writer's last records.
    import gc

    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    seen = []
    real_close = os.close

    def close(fd):
        st = os.fstat(fd)
        if (st.st_ino, st.st_dev) == (os.stat(wal_dir).st_ino, os.stat(wal_dir).st_dev):
            seen.append((wal_dir / segment_name(1)).stat().st_size)  # the lock goes
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    wal = WalWriter(wal_dir, created=1)
    wal.append(SPEC_ENTRY)
    del wal
    gc.collect()
    want = len(encode_header(1) + encode_record(0, SPEC_PAYLOAD))
    assert seen == [want]  # every record on disk when the lock was released


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path):
    # Two writers interleaved pieces of their buffers in one file: an unreadable log.
    from gpu_pitr.errors import WalDirectoryInUseError

    first = WalWriter(tmp_path, created=1)
    with pytest.raises(WalDirectoryInUseError) as err:
        WalWriter(tmp_path, created=1)
    assert str(err.value).startswith(f"{tmp_path}: another WalWriter") and "\n" not in str(err)
    first.append(SPEC_ENTRY)
    first.close()
    with WalWriter(tmp_path, created=1) as second:  # free once closed
        assert second.append(SPEC_ENTRY) == 0
    assert wal_files(tmp_path) == [segment_name(1)]  # no lock file left behind


def test_a_writer_that_failed_to_open_does_not_hold_the_directory(tmp_path):
    """A WalWriter whose open failed after it locked the directory (its segment's name
    taken by a directory) lets go of the lock at once, not when the traceback that holds
    the half-made writer goes (a notebook keeps the last one in ``sys.last_value``): the
    open tried again once the cause is gone works, rather than being refused as "another
    WalWriter has this WAL directory open"."""
    (tmp_path / segment_name(1000)).mkdir()
    with pytest.raises(OSError) as failed:
        WalWriter(tmp_path, created=1000)
    (tmp_path / segment_name(1000)).rmdir()
    with WalWriter(tmp_path, created=1000) as wal:
        assert wal.append(Delete("a", 1000)) == 0
    assert failed.value is not None  # (the traceback, and the writer in it, still held)


def test_a_clock_stepped_back_never_names_a_segment_before_the_newest(tmp_path):
    # A segment named after a clock stepped back sorted first: its records came
    # first in log order, and a restore of "latest" gave an old state.
    seconds = iter([100, 101, 95, 96, 90])
    with WalWriter(tmp_path, clock=lambda: next(seconds), max_segment_bytes=1,
                   sync_on_write=True) as wal:
        for i in range(3):
            wal.append(Delete(str(i), i))
    with WalWriter(tmp_path, clock=lambda: 50) as wal:  # reopened, the clock still behind
        wal.append(Delete("3", 3))
    assert wal_files(tmp_path) == [segment_name(s) for s in (100, 101, 102, 103, 104)]
    ids = [decode_entry(r.payload)[0].id for s in scan_wal(tmp_path) for r in s.records]
    assert ids == ["0", "1", "2", "3"]


def test_reopened_in_the_same_second_after_a_torn_write_goes_to_a_new_file(tmp_path):
    # The header appended after the torn bytes was swallowed by the torn record: the
    # records written after the restart were lost to every restore, or it failed.
    with WalWriter(tmp_path, created=7) as wal:
        wal.append(SPEC_ENTRY)
        wal.append(Delete("v1", 1001))
    path = tmp_path / segment_name(7)
    good = HEADER_SIZE + SPEC_RECORD_SIZE
    os.truncate(path, path.stat().st_size - 3)  # a crash in the second record
    torn = path.read_bytes()
    with WalWriter(tmp_path, created=7, next_seq=1) as wal:
        assert wal.torn_tail_found == (path, good, len(torn) - good)
        wal.append(Insert("v2", [2.0], None, 1002))
    assert path.read_bytes() == torn  # left as it is
    assert wal_files(tmp_path) == [segment_name(7), segment_name(8)]
    assert (tmp_path / segment_name(8)).read_bytes() == encode_header(8) + encode_record(
        1, encode_entry(Insert("v2", [2.0], None, 1002)))
    got = restore(tmp_path)
    assert got.id_list() == ["v1", "v2"]
    assert [t["offset"] for t in got.report.torn_tails] == [good]
    with WalWriter(tmp_path, created=8) as wal:  # a whole file is appended to, as WalManager
        assert wal.torn_tail_found is None
    assert wal_files(tmp_path) == [segment_name(7), segment_name(8)]


def test_dim_refuses_a_vector_of_another_length(tmp_path):
    # Without it the record was written, and every restore that applied it failed.
    with WalWriter(tmp_path, created=1, dim=1) as wal:
        assert wal.append(SPEC_ENTRY) == 0
        for entry in (Insert("v2", [1.0, 2.0], None, 1),
                      Batch([Delete("v1", 1), Batch([Update("v3", [], None, 1)], 1)], 1)):
            with pytest.raises(ValueError, match="has length [02], not 1"):
                wal.append(entry)
        assert wal.append(Batch([Update("v3", [3.0], None, 1)], 2)) == 1


def test_a_new_segment_s_name_is_synced_with_its_records(tmp_path, monkeypatch):
    # fsync of the file alone leaves its directory entry to a power cut.
    import stat

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    wal = WalWriter(tmp_path, created=1)
    wal.append(SPEC_ENTRY)
    wal.flush()
    assert synced == [False, True]
    wal.flush()
    assert synced == [False, True, False]  # once per new file
    wal.rotate(created=2)
    wal.close()
    assert synced[3:] == [False, True]
    synced.clear()
    with WalWriter(tmp_path, created=2, sync_on_write=True) as wal:  # an existing file
        wal.append(SPEC_ENTRY)
    assert True not in synced


def test_a_flush_that_failed_part_way_writes_only_the_rest_when_tried_again(tmp_path):
    # A disk full mid-flush: the bytes written stayed in the buffer, and the flush tried
    # again (or the writer's flush when dropped) wrote them a second time, in the
    # middle of the log: every record after them was lost to a restore, or it failed.
    # Rust's BufWriter drops the bytes written whatever the error.
    import errno

    entries = [Insert(f"id{i}", [float(i)] * 8, None, 1000 + i) for i in range(200)]
    with WalWriter(tmp_path / "good", created=1) as wal:
        for entry in entries:
            wal.append(entry)
    wal = WalWriter(tmp_path / "full", created=1)
    for entry in entries:
        wal.append(entry)

    class DiskFull:  # writes 1000 bytes, then the disk is full
        def __init__(self, file) -> None:
            self.file, self.left = file, 1000

        def write(self, data) -> int:
            if not self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = self.file.write(memoryview(data)[:self.left])
            self.left -= n
            return n

        def __getattr__(self, name):
            return getattr(self.file, name)

    real = wal._out._file
    wal._out._file = DiskFull(real)
    with pytest.raises(OSError, match="No space"):
        wal.flush()
    wal._out._file = real  # space again
    wal.close()
    name = segment_name(1)
    assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "good" / name).read_bytes()


def test_a_forked_child_does_not_hold_the_directory_lock(tmp_path):
    # The flock belongs to the open directory, which a forked child shares: while a
    # child lived (a multiprocessing pool), the parent's writer closed and opened
    # again was refused as "another WalWriter".
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    wal = WalWriter(tmp_path, created=1)
    wal.append(SPEC_ENTRY)
    read, write = os.pipe()
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.write(started_w, b"x")  # its at-fork hook has run (in the child, after fork)
        os.read(read, 1)  # until the parent is done
        os._exit(0)
    os.close(read)
    os.read(started_r, 1)
    os.close(started_r)
    os.close(started_w)
    try:
        wal.close()
        with WalWriter(tmp_path, created=1, next_seq=1) as again:
            assert again.append(SPEC_ENTRY) == 1
    finally:
        os.close(write)
        os.waitpid(pid, 0)


def test_a_directory_that_cannot_be_synced_or_listed_fails_no_write(tmp_path, monkeypatch):
    # Some file systems refuse to fsync a directory (EINVAL), and one may be writable
    # but not readable: PostgreSQL passes over both. The writer's flush and close
    # raised there, with the records already synced into their file.
    import errno
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    def scandir(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "scandir", scandir)
    with WalWriter(tmp_path, created=1, sync_on_write=True) as wal:
        wal.append(SPEC_ENTRY)
        wal.flush()
    monkeypatch.undo()
    assert [r.seq for r in iter_segment(tmp_path / segment_name(1))] == [0]


def test_a_rotate_that_failed_writes_nothing_later(tmp_path):
    """A rotate whose old segment's last flush failed (a disk full) left the writer on
    that segment, as it should, but the new segment's writer, its header buffered, was
    dropped to its finalizer: whenever it was collected (the traceback holding it gone),
    the header was written at the end of whatever that file then held, among the
    records a later rotate to it wrote (a second header: a writer reopened, to a
    restore; or, landing between the flushes of a long record, inside it). The failed
    segment writes nothing more; the empty file it made goes."""
    import errno
    import gc

    class DiskFull:
        def __init__(self, file) -> None:
            self.file = file

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    wal = WalWriter(tmp_path, created=1)
    wal.append(SPEC_ENTRY)
    real = wal._out._file
    wal._out._file = DiskFull(real)
    with pytest.raises(OSError, match="No space"):
        wal.rotate(created=2)
    wal._out._file = real  # space again
    assert wal.path == tmp_path / segment_name(1)
    assert wal_files(tmp_path) == [segment_name(1)]  # no empty file of second 2
    wal.append(SPEC_ENTRY)  # into segment 1, after its first record
    wal.rotate(created=2)
    wal.append(SPEC_ENTRY)
    wal.flush()
    gc.collect()  # the failed rotate's traceback is gone
    wal.close()
    record = encode_record(2, SPEC_PAYLOAD)
    assert (tmp_path / segment_name(2)).read_bytes() == encode_header(2) + record
    assert (tmp_path / segment_name(1)).read_bytes() == (
        encode_header(1) + encode_record(0, SPEC_PAYLOAD) + encode_record(1, SPEC_PAYLOAD))


def test_a_writer_whose_first_sync_failed_writes_nothing_after_its_lock_goes(
        tmp_path, monkeypatch):
    """``sync_on_write``, the first segment's header flush failing (a disk full): the
    open failed and released the directory lock, but the segment's writer, its header
    still buffered, was left to its finalizer, which wrote the header when the traceback
    went: into the file of the writer opened since, after (or inside) its records."""
    import errno
    import gc

    import gpu_pitr.format.writer as writer_module

    real_drain = writer_module._drain

    def full_once(file, buf):
        monkeypatch.setattr(writer_module, "_drain", real_drain)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_drain", full_once)
    with pytest.raises(OSError, match="No space"):
        WalWriter(tmp_path, created=1, sync_on_write=True)
    with WalWriter(tmp_path, created=1) as second:  # the lock is free
        second.append(SPEC_ENTRY)
        second.flush()
        gc.collect()  # the failed open's traceback is gone
    assert (tmp_path / segment_name(1)).read_bytes() == (
        encode_header(1) + encode_record(0, SPEC_PAYLOAD))


@pytest.mark.parametrize("existing", [False, True], ids=["new_file", "same_second"])
def test_a_rotate_whose_header_was_half_written_leaves_the_files_as_they_were(
        tmp_path, monkeypatch, existing):
    """``sync_on_write``, the new segment's header half written when the disk filled:
    the half header stayed, a torn start, and the next rotate to that second appended
    its header after it: a bad header to every restore, the records after it lost. The
    failed rotate takes back what it wrote (the file it made; the bytes it appended to
    a file of that second already there); the rotate tried again starts it whole."""
    import errno

    import gpu_pitr.format.writer as writer_module

    real_drain = writer_module._drain

    def half_then_full(file, buf):
        monkeypatch.setattr(writer_module, "_drain", real_drain)
        file.write(bytes(buf[:8]))
        del buf[:8]
        raise OSError(errno.ENOSPC, "No space left on device")

    wal = WalWriter(tmp_path, created=1, sync_on_write=True)
    wal.append(SPEC_ENTRY)
    second = 1 if existing else 2
    before = {name: (tmp_path / name).read_bytes() for name in wal_files(tmp_path)}
    monkeypatch.setattr(writer_module, "_drain", half_then_full)
    with pytest.raises(OSError, match="No space"):
        wal.rotate(created=second)
    assert {name: (tmp_path / name).read_bytes() for name in wal_files(tmp_path)} == before
    wal.append(SPEC_ENTRY)
    wal.rotate(created=second)  # space again
    wal.append(SPEC_ENTRY)
    wal.close()
    scans = scan_wal(tmp_path)
    assert [r.seq for s in scans for r in s.records] == [0, 1, 2]
    assert all(s.bad_header is None and s.torn_tail is None for s in scans)
