"""Small segments are packed into one chunk (pipeline ``_pack``): the result, the
report and the errors stay those of tests/reference.py, and the chunks are few.

Every chunk costs a decode, a plan and an apply call whatever its size, so 5,000
one-record segments were 5,000 chunks (2 s against the reference's 0.1 s).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile

import pytest
import reference
import workloads as w
from test_restore_properties import _long_log, assert_matches, run_case

from gpu_pitr import errors
from gpu_pitr import pipeline as pl
from gpu_pitr.format.layout import HEADER_SIZE


class _Chunks:
    """Counts the chunks a restore processes."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        chunk = pl._Restore._chunk

        def counted(run, first, n):
            self.count += 1
            return chunk(run, first, n)

        monkeypatch.setattr(pl._Restore, "_chunk", counted)


def test_one_record_segments_are_packed_into_few_chunks(monkeypatch, tmp_path):
    wl = _long_log(seed=1, n=600, per=(1, 1))
    wl.write(tmp_path)
    chunks = _Chunks(monkeypatch)
    got = w.restore_fast(tmp_path)
    ref = reference.restore(tmp_path)
    assert got.ids == ref.ids and got.vectors == ref.vectors
    assert len(wl.files) == 600
    # 600 segments of ~40 bytes: one chunk for all (the old loop: one a segment)
    assert chunks.count <= 2, chunks.count
    # with a small chunk size, packing stops at it: more chunks, each under the size
    chunks.count = 0
    small = w.restore_fast(tmp_path, chunk_bytes=2048)
    assert small.ids == ref.ids and small.vectors == ref.vectors
    framed = sum(len(data) - HEADER_SIZE for data in wl.files.values())
    assert framed // 2048 <= chunks.count <= framed // (2048 - 64) + 1


@pytest.mark.parametrize("chunk_bytes", [None, 1000, 4096])
@pytest.mark.parametrize("seed", range(4))
def test_small_segments_equal_the_reference_at_every_target(seed, chunk_bytes):
    """Packed chunks end at every kind of place: a stop point inside them, a big
    segment after small ones (flushed first), transactions carried across."""
    wl = _long_log(seed=seed, n=1500, per=(1, 6), big_every=7)
    rnd = random.Random(seed)
    targets = [{}, {"to_seq": rnd.randrange(400)}, {"to_time": 1000 + rnd.randrange(600)},
               {"to_time": 1000 + rnd.randrange(600), "exclusive": True}]
    for kw in targets:
        run_case(wl, {"allow_incomplete_history": True, **kw}, chunk_bytes)


@pytest.mark.parametrize("damage", ["torn", "bad_header", "bad_record"])
def test_damage_among_small_segments_equals_the_reference(damage):
    """Damage in a segment packed with its neighbours: named where the reference names
    it, with and without skip_corrupt."""
    wl = _long_log(seed=9, n=400, per=(2, 4))
    names = sorted(wl.files)
    victim = names[len(names) // 2]
    data = bytearray(wl.files[victim])
    if damage == "torn":
        data = data[:-3]  # a torn tail in a segment that is not the last
    elif damage == "bad_header":
        data[0] ^= 0xFF
    else:
        data[HEADER_SIZE + 12] = 255  # the first record's payload: a bad marker
    files = {**wl.files, victim: bytes(data)}
    for skip in (False, True):
        for chunk_bytes in (None, 512):
            with tempfile.TemporaryDirectory() as d:
                w.Workload(files=files).write(d)
                ref = reference.restore(d, skip_corrupt=skip, allow_incomplete_history=True)
                got, err = None, None
                try:
                    got = w.restore_impl(d, chunk_bytes=chunk_bytes, skip_corrupt=skip,
                                         allow_incomplete_history=True)
                except errors.WalError as e:
                    err = e
                assert_matches(ref, got, err)


def test_small_segments_are_read_with_their_header_and_handed_over_in_batches(
        monkeypatch, tmp_path):
    """A small segment's records are read in the open that reads its header, on the
    framing thread (no read-ahead task), and its items reach the restore in batches:
    a task and two thread wake-ups a segment made 5,000 one-record segments 10x
    slower than the reference. A segment larger than DIRECT_BYTES is still read ahead."""
    from gpu_pitr.format import readahead

    b = w.LogBuilder(created=0x5F5E100)
    for k in range(600):
        if k:
            b.new_segment(0x5F5E100 + k)
        if k == 300:  # a big segment: 300 records of ~260 bytes
            for i in range(300):
                b.add(w.Ins(f"big{i}", [float(i), 2.0], {"pad": "x" * 200}, 500))
        b.add([w.Ins, w.Upd, w.Del][k % 3](f"id{k % 50}", *([[float(k), 1.0]] if k % 3 < 2
                                                              else []), ts=1000 + k))
    b.write(tmp_path)
    assert len(b.files[sorted(b.files)[300]]) > readahead.DIRECT_BYTES
    read_ahead, handed = [], []
    real_read, real_put = readahead.Readahead._read, readahead.FrameAhead._put
    monkeypatch.setattr(readahead.Readahead, "_read",
                        lambda self, task: read_ahead.append(task[0]) or real_read(self, task))
    monkeypatch.setattr(readahead.FrameAhead, "_put",
                        lambda self, item: handed.append(item) or real_put(self, item))
    got = w.restore_fast(tmp_path)
    ref = reference.restore(tmp_path)
    assert_matches(ref, got, None)
    assert read_ahead == [300]  # the big segment only (one piece: under the chunk size)
    # Batches of up to BATCH_ITEMS items, the big segment's piece alone, then the end.
    assert len(handed) <= 600 // readahead.BATCH_ITEMS + 5, len(handed)
    # The small segments on either side of the big one are framed together: one item
    # each side (~12 KB of records), and every segment's records in one of them.
    items = [item for h in handed if isinstance(h, list) for item in h]
    assert len(items) == 3, [(item.segment, item.n) for item in items]
    covered = [item.row_segment[:item.n].tolist() if item.row_segment is not None
               else [item.segment] * item.n for item in items]
    assert sorted(set(sum(covered, []))) == list(range(600))
    # The scans (verify, inspect) read the same way.
    read_ahead.clear()
    handed.clear()
    from gpu_pitr.verify import verify_wal

    assert verify_wal(tmp_path).problems == []
    assert read_ahead == [300] and len(handed) <= 600 // readahead.BATCH_ITEMS + 5


def test_a_bad_header_among_small_segments_after_the_stop_point_is_not_fatal(tmp_path):
    """A segment with a wrong header and records behind it, among small segments read
    together: it comes after the segments before it (their records reach the stop point
    first), so it is damage after the stop, not a BadSegmentError."""
    from pathlib import Path

    b = w.LogBuilder(created=0x5F5E100)
    for k in range(6):
        if k:
            b.new_segment(0x5F5E100 + k)
        b.add(w.Ins(f"id{k}", [float(k), 1.0], None, 1000 + k))  # seq 2k
        b.add(w.Ins(f"x{k}", [float(k), 2.0], None, 1000 + k))   # seq 2k + 1
    names = sorted(b.files)
    b.files[names[3]][0] ^= 0xFF  # wrong magic: its two records are not read
    b.write(tmp_path)
    for kw in ({"to_seq": 3}, {"to_time": 1001}, {"to_seq": 4, "exclusive": True}):
        got = w.restore_fast(tmp_path, **kw)
        assert_matches(reference.restore(tmp_path, **kw), got, None)
        assert [Path(x["file"]).name for x in got.report["damage_after_stop"]] == [names[3]]
    with pytest.raises(errors.BadSegmentError):
        w.restore_fast(tmp_path, to_seq=6)


@pytest.mark.parametrize("chunk_bytes", [None, 1000])
def test_damage_in_packed_pieces_comes_before_a_later_read_error(monkeypatch, tmp_path,
                                                                 chunk_bytes):
    """A segment cut since it was listed (FileShrankError, raised by the read-ahead)
    after a small segment with a bad record: the bad record is what is raised, as
    before packing (log order); the packed piece was never processed."""
    from gpu_pitr import pipeline

    b = w.LogBuilder(created=0x5F5E100)
    for i in range(3):
        b.add(w.Ins(f"a{i}", [1.0, 2.0], None, 1000 + i))
    b.new_segment(0x5F5E101)
    for i in range(3):
        b.add(w.Ins(f"b{i}", [1.0, 2.0], None, 1010 + i))
    first, second = sorted(b.files)
    b.files[first][HEADER_SIZE + 12] = 255  # the first record's payload: a bad marker
    b.write(tmp_path)
    w.listed_at(monkeypatch, pipeline, second, len(b.files[second]) + 100)
    for _ in range(3):  # (whether the next piece is framed in time is a race)
        with pytest.raises(errors.CorruptRecordError) as info:
            w.restore_fast(tmp_path, chunk_bytes=chunk_bytes)
        assert info.value.file.endswith(first) and info.value.seq == 0


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("seed", range(4))
def test_packing_with_the_next_piece_framed_in_time_equals_the_reference(
        monkeypatch, tmp_path, seed, backend):
    """Whether the next piece is framed when one is packed is a race (``_pack`` reads
    it with ``peek``): here it always is, so a small piece before a large one or a bad
    header is processed at once. Pack limits below, at and above the chunk size;
    the cuda executor (the simulator in CI) with its copies ahead; damage of each kind;
    restores from a snapshot taken inside a packed chunk."""
    import shutil
    import time

    from test_snapshot_restore import check_base_equals_full

    from gpu_pitr.format.readahead import FrameAhead

    peek = FrameAhead.peek

    def patient_peek(framer):
        # (not test_cuda_overlap's 5 s: the reader may wait for a buffer held here)
        deadline = time.monotonic() + 0.1
        while (not framer._queue.qsize() and framer._thread.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.0005)
        return peek(framer)

    monkeypatch.setattr(FrameAhead, "peek", patient_peek)
    monkeypatch.setattr(pl, "PACK_BYTES", [300, 3000, 1 << 20, 700][seed])
    monkeypatch.setenv("GPU_PITR_CUDA_OVERLAP", "1")
    monkeypatch.setenv("GPU_PITR_TESTS_BACKEND", backend)
    rnd = random.Random(seed)
    wl = _long_log(seed=seed, n=400, per=(1, 5), big_every=4)
    names = sorted(wl.files)
    files = dict(wl.files)
    for kind in ("torn", "bad_header", "flip"):
        victim = rnd.choice(names[1:-1])
        data = bytearray(files[victim])
        if kind == "torn":
            data = data[:-3]
        elif kind == "bad_header":
            data[0] ^= 0xFF
        else:
            data[rnd.randrange(HEADER_SIZE, len(data))] ^= 0x10
        files[victim] = bytes(data)
    for damaged in (w.Workload(files=files), wl):
        for chunk_bytes in (64, 1000, None) if backend == "cpu" else (1000,):
            for kw in ({}, {"to_seq": rnd.randrange(300)},
                       {"to_time": 1000 + rnd.randrange(500), "exclusive": True}):
                run_case(damaged, {"allow_incomplete_history": True, "skip_corrupt": True,
                                   **kw}, chunk_bytes)
    wal = tmp_path / "wal"
    wl.write(wal)
    for chunk_bytes in (1000, None) if backend == "cpu" else (1000,):
        a = {"to_seq": rnd.randrange(100, 300), "allow_incomplete_history": True}
        for b in ({}, {"to_seq": a["to_seq"] + rnd.randrange(1, 100)}):
            assert check_base_equals_full(wal, tmp_path / "snap", a, b, backend=backend,
                                          chunk_bytes=chunk_bytes) == "equal"
            shutil.rmtree(tmp_path / "snap", ignore_errors=True)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_consumer_that_stops_while_batches_are_held_leaves_no_thread_or_descriptor(
        tmp_path):
    """A scan or restore that ends early (an error, Ctrl-C in a callback) while items
    of small segments wait in batches (the framing thread's, the queue's, the
    consumer's) ends the framing and reading threads and closes every descriptor."""
    import threading

    from gpu_pitr.format import readahead
    from gpu_pitr.format.segments import list_segments

    _long_log(seed=3, n=3000, per=(1, 3), big_every=300).write(tmp_path)  # 901 segments
    segments = list_segments(tmp_path)

    def ours():
        return ({t for t in threading.enumerate() if t.name.startswith("gpu_pitr")},
                len(os.listdir("/proc/self/fd")))

    before = ours()
    for stop_at in (0, 1, 300, 700):
        with pytest.raises(KeyboardInterrupt):
            for n, _item in enumerate(readahead.framed_pieces(segments, 1 << 20,
                                                              lambda head: None)):
                if n >= stop_at:
                    raise KeyboardInterrupt
        assert ours() == before, stop_at
    for stop_at in (1, 5):
        calls = []

        def progress(*args, stop_at=stop_at, calls=calls):
            calls.append(args)
            if len(calls) >= stop_at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # (small items: a progress call each)
            w.restore_fast(tmp_path, progress=progress, allow_incomplete_history=True,
                           chunk_bytes=4096)
        assert ours() == before, stop_at


def test_a_batch_of_small_segments_holds_at_most_batch_bytes(monkeypatch, tmp_path):
    """The batches' bound is on what their items hold (each item's buffer, its 4 KiB
    of headroom included, and its row arrays), not only on their records' bytes: 256
    items of 4 KiB records held 2.5 MiB in a batch counted as 1 MiB, and three batches
    can be alive at once (the framing thread's, the queue's, the consumer's)."""
    from gpu_pitr.format import readahead
    from gpu_pitr.format.segments import list_segments

    b = w.LogBuilder(created=0x5F5E100)
    for k in range(300):
        if k:
            b.new_segment(0x5F5E100 + k)
        b.add(w.Ins(f"id{k}", [float(k)] * 1000, None, 1000 + k))  # ~4 KiB records
    b.write(tmp_path)

    def held(item):
        return sum(a.nbytes for a in (item.buf, item.off, item.length, item.seq)
                   if a is not None)

    batches = []
    real_put = readahead.FrameAhead._put
    monkeypatch.setattr(readahead.FrameAhead, "_put", lambda self, item: batches.append(
        [held(i) for i in item] if isinstance(item, list) else []) or real_put(self, item))
    for _item in readahead.framed_pieces(list_segments(tmp_path), 1 << 20, lambda h: None):
        pass
    assert sum(len(h) for h in batches) == 300
    assert max(sum(h) - h[-1] for h in batches if h) < readahead.BATCH_BYTES, batches
    got = w.restore_fast(tmp_path)
    assert_matches(reference.restore(tmp_path), got, None)


def test_a_restore_that_fails_after_applying_leaves_no_thread(tmp_path):
    """A restore that raises after chunks were applied (a bad record late in the log)
    ends the map's apply threads before the error reaches the caller: they lived on
    for as long as the traceback held the executor."""
    import threading

    wl = _long_log(seed=3, n=3000, per=(1, 3), big_every=300)
    last = sorted(wl.files)[-1]
    data = bytearray(wl.files[last])
    data[HEADER_SIZE + 12] = 255  # its first record's payload: a bad marker
    wl.files[last] = bytes(data)
    wl.write(tmp_path)
    with pytest.raises(errors.CorruptRecordError) as info:
        w.restore_fast(tmp_path, chunk_bytes=4096, allow_incomplete_history=True)
    assert last in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("gpu_pitr")]


def _small_segments_with_every_damage() -> tuple[dict, list]:
    """Small segments (one to three records) with a torn tail, a bad header, a bad record,
    zero-filled records and a header swallowed by a torn record among them."""
    wl = _long_log(seed=5, n=600, per=(1, 3))
    names = sorted(wl.files)
    files = dict(wl.files)
    torn = bytearray(files[names[40]])
    files[names[40]] = bytes(torn[:-3])
    bad = bytearray(files[names[80]])
    bad[0] ^= 0xFF
    files[names[80]] = bytes(bad)
    rec = bytearray(files[names[120]])
    rec[HEADER_SIZE + 12] = 255
    files[names[120]] = bytes(rec)
    files[names[160]] = files[names[160]] + bytes(24)  # two zero-filled records
    # Zero-filled records at the end of one segment and the start of the next: two runs.
    files[names[300]] = files[names[300]] + bytes(24)
    files[names[301]] = (files[names[301]][:HEADER_SIZE] + bytes(12)
                         + files[names[301]][HEADER_SIZE:])
    # A torn write, then the header of a writer reopened in the same second after it.
    cut = files[names[200]][:-2]
    files[names[200]] = cut + files[names[200]][:HEADER_SIZE] + files[names[201]][HEADER_SIZE:]
    return files, names


@contextlib.contextmanager
def _framed_with(monkeypatch, module, merge):
    """``module.framed_pieces`` framing with ``merge_small=merge``; yields the list of
    the items it framed."""
    from gpu_pitr.format import readahead

    real = readahead.framed_pieces
    counted = []

    def framed(*args, **kw):
        kw["merge_small"] = merge
        for item in real(*args, **kw):
            counted.append(item)
            yield item

    with monkeypatch.context() as m:
        m.setattr(module, "framed_pieces", framed)
        yield counted


def test_inspect_of_small_segments_framed_together_equals_one_item_a_segment(monkeypatch):
    """``inspect`` frames runs of small segments into one item too: every figure it gives
    (per segment: records, seqs, times, extra headers; damage in log order, restarts,
    transactions, the history) is the one it gave walking an item a segment."""
    from gpu_pitr.format import statwalk

    files, names = _small_segments_with_every_damage()

    def stats(merge):
        with _framed_with(monkeypatch, statwalk, merge) as counted, \
                tempfile.TemporaryDirectory() as d:
            w.Workload(files=files).write(d)
            result = statwalk.scan_stats(d)
            result.pop("wal_dir")
        return result, len(counted)

    merged, items = stats("batch")
    alone, items_alone = stats(None)
    assert merged == alone
    kinds = {d["kind"] for d in merged["damage"]}
    assert {"torn_tail", "bad_header", "undecodable", "zero_filled"} <= kinds, kinds
    assert merged["seq_restarts"] and merged["totals"]["segments"] == len(names)
    assert items_alone >= len(names) - 1 and items <= 10, (items, items_alone)


def test_verify_of_small_segments_framed_together_equals_one_item_a_segment(monkeypatch):
    """``verify`` frames runs of small segments into one item (``merge_small="batch"``):
    its problems (torn tails, bad headers and records, zero fills, restarts, a header
    swallowed by a torn record, transactions open at the end) are those of the item a
    segment it had before, and the items are few."""
    from gpu_pitr import verify as verify_module
    from gpu_pitr.verify import verify_wal

    files, names = _small_segments_with_every_damage()

    def problems(merge):
        with _framed_with(monkeypatch, verify_module, merge) as counted, \
                tempfile.TemporaryDirectory() as d:
            w.Workload(files=files).write(d)
            result = verify_wal(d)
        return [(p.kind, p.file, p.offset, p.seq, p.what, p.extra)
                for p in result.problems], result.records, len(counted)

    merged, records, items = problems("batch")
    alone, records_alone, items_alone = problems(None)
    assert merged == alone and records == records_alone
    kinds = {p[0] for p in merged}
    assert {"torn_tail", "bad_header", "undecodable", "zero_filled", "seq_restart",
            "swallowed_header"} <= kinds, kinds
    assert items_alone >= len(names) - 1 and items <= 10, (items, items_alone)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("where", ["frame thread", "read"])
def test_ctrl_c_while_the_threads_start_leaves_no_thread_or_descriptor(
        monkeypatch, tmp_path, where):
    """Ctrl-C in a notebook that lands while the framing thread starts, or while a read
    is handed to the pool (``Thread.start`` waits for the thread; the handler raises
    there): the restore or scan raises KeyboardInterrupt, and no thread or descriptor
    lives on in the process. The framing thread waited forever to hand over its first
    item, holding the read buffers, the reading threads and a segment's descriptor."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gpu_pitr.format import readahead
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path, total_bytes=600_000, dim=16, segments=2, seed=1)
    whole = w.restore_fast(tmp_path)

    def ours():
        fds = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return ({t for t in threading.enumerate() if t.name.startswith("gpu_pitr")},
                {f for f in fds if f.startswith(str(tmp_path))})

    def interrupted(real):
        def once(*args, **kwargs):
            real(*args, **kwargs)  # started all the same: then the stop lands
            monkeypatch.undo()
            raise KeyboardInterrupt
        return once

    def arm():
        if where == "frame thread":
            real = threading.Thread.start
            monkeypatch.setattr(threading.Thread, "start", lambda self: (
                interrupted(real) if self.name == "gpu_pitr-frame" else real)(self))
        else:
            monkeypatch.setattr(ThreadPoolExecutor, "submit",
                                interrupted(ThreadPoolExecutor.submit))

    before = ours()
    scans = [lambda: w.restore_fast(tmp_path, chunk_bytes=64 << 10),
             lambda: list(readahead.framed_pieces(list_segments(tmp_path), 64 << 10,
                                                  lambda head: None))]
    for scan in scans:
        arm()
        with pytest.raises(KeyboardInterrupt):
            scan()
        monkeypatch.undo()
        for _ in range(100):  # a thread that started late sees the stop within 50 ms
            if ours() == before:
                break
            time.sleep(0.02)
        assert ours() == before
    again = w.restore_fast(tmp_path)
    assert (again.ids, again.vectors, again.metadata) == (whole.ids, whole.vectors,
                                                          whole.metadata)
