"""The cuda executor's copies ahead: the next piece's bytes go to the device while this
chunk is applied (``CudaExecutor.stage``), and the result stays the cpu executor's, bit
for bit.

In CI the kernels run in Numba's simulator (tests/conftest.py), where a copy ahead is
written when it is issued and again, from the host bytes as they are then, when the
chunk is decoded: a device buffer still in use, or a host buffer handed back to the
reader too early, shows in the result. ``scripts/gpu_check`` runs this file on a GPU.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pytest
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cuda_executor import assert_same, outcome

from gpu_pitr import pipeline
from gpu_pitr.executors import cuda as cuda_executor
from gpu_pitr.executors.cpu import CpuExecutor
from gpu_pitr.format.readahead import FrameAhead
from gpu_pitr.report import RestoreReport
from gpu_pitr.synth import write_synthetic_wal


@pytest.fixture(autouse=True)
def overlap_on(monkeypatch):
    """On, whatever the shell says (the default is off until a GPU run verifies it)."""
    monkeypatch.setenv("GPU_PITR_CUDA_OVERLAP", "1")


@pytest.fixture
def made(monkeypatch):
    """Every CudaExecutor a restore makes, to read its counters afterwards."""
    seen = []
    init = cuda_executor.CudaExecutor.__init__

    def record(self, *args, **kw):
        init(self, *args, **kw)
        seen.append(self)

    monkeypatch.setattr(cuda_executor.CudaExecutor, "__init__", record)
    return seen


_peek = FrameAhead.peek


def patient_peek(self):
    """``peek`` that waits (briefly) for the framing thread: whether the next piece is
    framed before this one is applied is a race, and these tests want it won."""
    deadline = time.monotonic() + 5
    while not self._queue.qsize() and self._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    return _peek(self)


@pytest.fixture
def framed_in_time(monkeypatch):
    monkeypatch.setattr(FrameAhead, "peek", patient_peek)


@pytest.fixture
def decodes(monkeypatch):
    """For each decode: (first record offset, start of the copy ahead it can use or None)."""
    seen = []
    decode = cuda_executor.CudaExecutor.decode

    def spy(self, buf, cols, first, n):
        st = self._staged
        ahead = st[1] if st is not None and st[0] is buf else None
        seen.append((int(cols.off[:n].min()), ahead))
        return decode(self, buf, cols, first, n)

    monkeypatch.setattr(cuda_executor.CudaExecutor, "decode", spy)
    return seen


def spanning_transactions(d, records: int = 90, pad: int = 20) -> None:
    """Records of open transactions that stay open over many small chunks, between
    plain commit points, over two segments."""
    log = w.LogBuilder()
    for i in range(records):
        if i % 30 == 0:
            log.add(w.Begin(i // 30, i))
        ident = f"id{i % 17}-" + "x" * pad
        if i % 7 == 3:
            log.add(w.Del(ident, i))
        else:
            log.add(w.Ins(ident, [float(i), -float(i)], {"i": str(i)}, i))
        if i % 30 == 29:
            log.add((w.Commit if i % 60 == 29 else w.Abort)(i // 30, i))
        if i == records // 2:
            log.new_segment(0x5F5E200)
    log.add(w.Begin(99, records))  # still open at the end: discarded
    log.add(w.Ins("late", [9.0, 9.0], None, records))
    log.write(d)


def test_copies_ahead_are_used_and_match_cpu(tmp_path, made, framed_in_time, decodes,
                                            monkeypatch):
    # Pieces are not gathered here (at 256 bytes a chunk the carried records would be
    # many times a piece): a gathered piece is copied on the host, its copy ahead
    # dropped, as when carried records outgrow the headroom (the test below).
    monkeypatch.setattr(pipeline, "GATHER", 1 << 40)
    spanning_transactions(tmp_path)
    result = assert_same(tmp_path, chunk_bytes=256)
    assert result[0] == "ok" and result[1]
    (ex,) = made
    assert ex.overlap and ex.staged > 10
    # Every piece after the first was copied ahead, and every copy ahead was used.
    assert ex.adopted == ex.staged
    # Some chunks had carried records in front of the copied bytes: those, and only
    # those, were copied when the chunk was decoded.
    assert any(ahead is not None and lo < ahead for lo, ahead in decodes), decodes
    assert sum(ahead is not None for _, ahead in decodes) == ex.adopted


@pytest.mark.parametrize("chunk_bytes", [64, 300, 4096])
def test_small_chunks_match_cpu(tmp_path, made, chunk_bytes):
    """Without waiting for the framing thread: the race as it comes."""
    spanning_transactions(tmp_path)
    assert_same(tmp_path, chunk_bytes=chunk_bytes)
    assert made[0].adopted <= made[0].staged


@settings(max_examples=w.CUDA_EXAMPLES // 2,
          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
@given(data=st.data())
def test_random_workloads_with_copies_ahead(data):
    """Every kind of workload (damage, several segments, writer restarts, targets),
    with each piece copied ahead: still the cpu result."""
    wl = data.draw(w.workloads(max_steps=20), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    chunk = data.draw(st.sampled_from([64, 200]), label="chunk_bytes")
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPU_PITR_CUDA_OVERLAP", "1")
        mp.setattr(FrameAhead, "peek", patient_peek)
        wl.write(d)
        assert_same(d, chunk_bytes=chunk, **kw)


def test_time_target_and_synthetic_corpus(tmp_path, made, framed_in_time):
    stats = write_synthetic_wal(tmp_path, total_bytes=48 << 10, dim=4, segments=2, seed=3)
    mid = assert_same(tmp_path, to_time=stats.mid_timestamp, chunk_bytes=4096)
    assert len(mid[1]) == stats.live_ids_mid
    assert made[0].adopted > 3 and made[0].adopted == made[0].staged


def test_carried_records_too_big_for_the_headroom(tmp_path, monkeypatch, made, framed_in_time):
    """Open transactions carry more than the headroom holds: the chunk gets a buffer of
    its own, the copy ahead is dropped (after it finished reading the reader's buffer)
    and everything is copied when decoded. A record longer than the headroom also
    comes in a buffer of its own from the framing thread."""
    monkeypatch.setattr(pipeline, "HEADROOM", 256)
    log = w.LogBuilder()
    for i in range(20):
        log.add(w.Ins(f"q{i}", [1.0], None, 0))
    log.add(w.Begin(1, 0))
    for i in range(40):
        log.add(w.Ins(f"t{i}", [float(i)], {"k": "v" * 10}, i))
        log.add(w.Ins(f"p{i % 5}", [float(-i)], None, i))  # commit points of their own
        if i == 20:
            log.add(w.Ins("big", [1.0], {"m": "z" * 700}, i))  # longer than the headroom
    log.add(w.Commit(1, 50))
    log.add(w.Ins("after", [2.0], None, 51))
    log.write(tmp_path)
    got = assert_same(tmp_path, chunk_bytes=512)
    assert got[0] == "ok" and len(got[1]) == 20 + 40 + 5 + 2
    ex = made[0]
    assert ex.adopted > 0 and ex.staged > ex.adopted  # some used, some dropped
    assert ex._staged is None


def test_switch_off_is_the_synchronous_path(tmp_path, monkeypatch, made):
    monkeypatch.setenv("GPU_PITR_CUDA_OVERLAP", "0")
    spanning_transactions(tmp_path)
    assert_same(tmp_path, chunk_bytes=256)
    (ex,) = made
    assert not ex.overlap and ex.staged == 0 and ex.adopted == 0
    assert len(ex._spare) == 0  # no second device buffer
    monkeypatch.setenv("GPU_PITR_CUDA_OVERLAP", "1")
    assert cuda_executor.CudaExecutor(0).overlap


def test_copying_ahead_is_off_unless_asked_for(monkeypatch):
    """Stream-ordering code is only proven on a GPU (scripts/gpu_check runs it there):
    until then the synchronous path is the default."""
    monkeypatch.delenv("GPU_PITR_CUDA_OVERLAP")
    assert not cuda_executor.CudaExecutor(0).overlap
    for on in ("1", "on", "yes", "true"):
        monkeypatch.setenv("GPU_PITR_CUDA_OVERLAP", on)
        assert cuda_executor.CudaExecutor(0).overlap, on


def test_cpu_executor_has_no_copies_ahead(tmp_path):
    assert not hasattr(CpuExecutor, "stage")
    spanning_transactions(tmp_path, records=20)
    run = pipeline._Restore(tmp_path, {}, False, False, False, CpuExecutor(1 << 20), 256,
                            RestoreReport(target={}, backend="cpu"),
                            segments=pipeline.list_segments(tmp_path))
    assert run._stage is None


def test_damage_and_errors_leave_no_copy_ahead(tmp_path, made, framed_in_time):
    """A fatal record stops the restore with a copy ahead in flight: it is dropped."""
    log = w.LogBuilder()
    for i in range(30):
        log.add(w.Ins(f"a{i}", [float(i)], None, i))
    log.add_payload(b"\xff\x00\x01")  # undecodable
    for i in range(30):
        log.add(w.Ins(f"b{i}", [float(i)], None, 40 + i))
    log.write(tmp_path)
    got = assert_same(tmp_path, chunk_bytes=128)
    assert got[:2] == ("error", "CorruptRecordError")
    assert all(ex._staged is None for ex in made) and made[0].staged > 0
    skipped = outcome(tmp_path, "cuda", chunk_bytes=128, skip_corrupt=True)
    assert skipped == outcome(tmp_path, "cpu", chunk_bytes=128, skip_corrupt=True)
    assert len(skipped[1]) == 60


def test_peek_is_what_comes_next(tmp_path):
    """FrameAhead.peek never waits and returns the very item iterated next."""
    spanning_transactions(tmp_path, records=40)
    from gpu_pitr.format.frame import frame_records, header_problem
    from gpu_pitr.format.layout import HEADER_SIZE
    from gpu_pitr.format.readahead import Readahead
    from gpu_pitr.format.segments import list_segments

    segs = list_segments(tmp_path)
    ranges = [(i, s.path, HEADER_SIZE, s.size) for i, s in enumerate(segs)]
    alloc = lambda n: np.empty(n, np.uint8)  # noqa: E731
    reader = Readahead(ranges, 200, 64, alloc)
    framer = FrameAhead(segs, reader, alloc, frame_records, header_problem, HEADER_SIZE)
    try:
        items = iter(framer)
        seen = 0
        while True:
            deadline = time.monotonic() + 5
            ahead = framer.peek()
            while ahead is None and framer._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.001)
                ahead = framer.peek()
            got = next(items, None)
            if got is None:
                assert ahead is None
                break
            assert ahead is got and framer.peek() is not got
            if got.ring is not None:
                reader.release(got.ring)
            seen += 1
        assert seen > 5
    finally:
        framer.close()
        reader.close()
