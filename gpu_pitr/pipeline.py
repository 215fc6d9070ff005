"""Restore a WAL directory to a point in time: the streaming driver.

discover segments -> read a chunk -> frame -> decode (executor) -> plan (host)
-> apply (executor) -> ... -> finish. One pass over the bytes in log order;
memory is the index plus one chunk (and the records of transactions still open
at a chunk's end, which move to the front of the next chunk).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from gpu_pitr.errors import (
    BadSegmentError,
    CorruptRecordError,
    DimensionMismatchError,
    IncompleteHistoryError,
    TargetNotFoundError,
    WalError,
)
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.frame import frame_records, header_problem
from gpu_pitr.format.layout import HEADER_SIZE, RECORD_HEADER_SIZE, VARIANT_NAMES
from gpu_pitr.format.payload import OK, STATUS_TEXT
from gpu_pitr.format.segments import list_segments
from gpu_pitr.index import RestoredIndex
from gpu_pitr.plan.commit import (
    C_ABORTED,
    C_COMMIT_POINTS,
    C_COMMITTED,
    EV_BEGIN_ALREADY_OPEN,
    EV_DAMAGE_AFTER_STOP,
    EV_END_NOT_OPEN,
    EV_SKIPPED,
    WALK_FATAL,
    PlanState,
)
from gpu_pitr.report import RestoreReport

DEFAULT_CHUNK_BYTES = 64 << 20
_MIN_CHUNK_BYTES = 64
# One row of the record table per this many bytes of chunk; framing resumes
# within the same bytes when a chunk of tiny records fills the table.
_BYTES_PER_ROW = 128


def parse_time(value) -> int:
    """A time target as Unix seconds: an int, or ISO-8601 text with a zone."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"time target {value!r} has no time zone")
        return _floor_seconds(value.timestamp())
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float):
        return _floor_seconds(value)
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"time target {text!r} is neither Unix seconds nor ISO-8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"time target {text!r} has no time zone (add Z or +HH:MM)")
    return _floor_seconds(dt.timestamp())


def _floor_seconds(t: float) -> int:
    # Timestamps are whole seconds: T = 10:02:00.5 includes everything at 10:02:00.
    import math

    return math.floor(t)


def make_executor(backend: str, total_bytes: int):
    """The executor for ``backend`` ("cpu", "cuda" or "auto")."""
    if backend not in ("cpu", "cuda", "auto"):
        raise ValueError(f"unknown backend {backend!r} (cpu, cuda or auto)")
    if backend in ("cuda", "auto"):
        from gpu_pitr.executors.device import cuda_unavailable_reason

        reason = cuda_unavailable_reason(allow_simulator=backend == "cuda")
        if reason is None:
            from gpu_pitr.executors.cuda import CudaExecutor

            return CudaExecutor(total_bytes)
        if backend == "cuda":
            from gpu_pitr.errors import BackendUnavailableError

            raise BackendUnavailableError(f"--backend cuda: {reason}")
    from gpu_pitr.executors.cpu import CpuExecutor

    return CpuExecutor(total_bytes)


class _Restore:
    """One restore in progress: the loop over segments and chunks."""

    def __init__(self, wal_dir, target, exclusive, skip_corrupt, allow_incomplete_history,
                 executor, chunk_bytes, report):
        self.wal_dir = Path(wal_dir)
        self.plan = PlanState(exclusive=exclusive, skip_corrupt=skip_corrupt, **target)
        self.to_seq = target.get("to_seq")
        self.skip_corrupt = skip_corrupt
        self.allow_incomplete = allow_incomplete_history
        self.ex = executor
        self.report = report
        self.timings = dict.fromkeys(
            ("discover", "read", "frame", "decode", "plan", "apply", "finish"), 0.0)
        self.chunk_bytes = max(_MIN_CHUNK_BYTES, int(chunk_bytes))
        self.buf = self._alloc(self.chunk_bytes)
        self.cols = ChunkColumns(self.chunk_bytes // _BYTES_PER_ROW + 64)
        self.names: list[str] = []
        self.n_carried = 0  # rows 0..n_carried-1: records of open transactions
        self.carried_bytes = 0  # their bytes, at the front of buf
        self.seen_first = False
        self.stop_index = None

    def _alloc(self, nbytes: int) -> np.ndarray:
        # The executor may want special host memory (page-locked on a GPU).
        return getattr(self.ex, "host_buffer", lambda n: np.empty(n, np.uint8))(nbytes)

    def _where(self, i: int) -> dict:
        c = self.cols
        return {"file": self.names[int(c.seg[i])], "offset": int(c.foff[i]), "seq": int(c.seq[i])}

    def run(self) -> None:
        t = time.perf_counter()
        segments = list_segments(self.wal_dir)
        self.report.segments = len(segments)
        self.timings["discover"] += time.perf_counter() - t
        for index, seg in enumerate(segments):
            self.names.append(str(seg.path))
            self._segment(index, seg)
        self._end_of_log()

    def _segment(self, index, seg) -> None:
        t = time.perf_counter()
        with open(seg.path, "rb") as f:
            head = f.read(HEADER_SIZE)
            self.report.bytes_read += len(head)
            self.timings["read"] += time.perf_counter() - t
            problem = header_problem(head)
            if problem == "torn":
                self.report.torn_tails.append(
                    {"file": str(seg.path), "offset": 0, "bytes_lost": len(head)})
                return
            if problem is not None:
                entry = {"file": str(seg.path), "offset": 0, "seq": None, "what": problem}
                if self.plan.stopped:
                    self.report.damage_after_stop.append(entry)
                elif self.skip_corrupt:
                    self.report.skipped.append(entry)
                else:
                    raise BadSegmentError(problem, file=str(seg.path), offset=0)
                return
            self._stream(index, seg, f)

    def _stream(self, index, seg, f) -> None:
        file_pos = HEADER_SIZE  # file offset of buf[carried_bytes]
        pending = 0  # bytes after the carried ones not framed yet
        eof = False
        while True:
            start = self.carried_bytes
            if not eof:
                t = time.perf_counter()
                want = len(self.buf) - start - pending
                got = f.readinto(memoryview(self.buf)[start + pending:]) if want else 0
                eof = got < want
                self.report.bytes_read += got
                self.timings["read"] += time.perf_counter() - t
                pending += got
            end = start + pending
            t = time.perf_counter()
            c = self.cols
            first = self.n_carried
            max_rows = c.record_capacity - first
            n, stop, _ = frame_records(self.buf, start, end, c.off[first:], c.length[first:],
                                       c.seq[first:], max_rows)
            self.timings["frame"] += time.perf_counter() - t
            if n == 0 and stop > start:
                # Only mid-file segment headers: step over them.
                self.buf[start:start + end - stop] = self.buf[stop:end]
                file_pos += stop - start
                pending = end - stop
                if eof and pending == 0:
                    return
                continue
            if n == 0:
                if eof:
                    if pending:
                        self.report.torn_tails.append(
                            {"file": str(seg.path), "offset": file_pos, "bytes_lost": pending})
                    return
                self._grow_buffer(seg.size)
                continue
            rows = slice(first, first + n)
            c.seg[rows] = index
            c.foff[rows] = c.off[rows] - start + file_pos
            self._chunk(first, first + n)
            file_pos += stop - start
            pending = end - stop
            self._carry(first + n, stop, end)
            if eof and pending == 0:
                return

    def _grow_buffer(self, file_size: int) -> None:
        # A record larger than the buffer: grow, but never past what the file holds.
        new = min(2 * len(self.buf), max(len(self.buf) + 1, file_size + self.carried_bytes))
        if new <= len(self.buf):
            new = len(self.buf) + RECORD_HEADER_SIZE
        grown = self._alloc(new)
        grown[: len(self.buf)] = self.buf
        self.buf = grown

    def _chunk(self, first: int, n: int) -> None:
        c = self.cols
        if not self.seen_first and n > first:
            self.seen_first = True
            self.report.first_seq = int(c.seq[first])
            if c.seq[first] != 0 and not self.allow_incomplete:
                w = self._where(first)
                raise IncompleteHistoryError(
                    "the log does not start at sequence number 0: earlier history is missing"
                    " (allow it explicitly to restore anyway)", **w)
        t = time.perf_counter()
        # Carried rows are decoded again: their bytes moved to the front of buf.
        self.ex.decode(self.buf, c, 0, n)
        self.timings["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        result, order, events, stop_index = self.plan.walk(c, first, n)
        self._events(events)
        if result != WALK_FATAL and stop_index >= 0:
            self._record_stop(stop_index)
        self._trailing(first, n)
        self.report.records_read += n - first
        self.timings["plan"] += time.perf_counter() - t
        t = time.perf_counter()
        if len(order):
            # Before a fatal record, the commit points ahead of it still apply: an
            # error among them (a dimension mismatch) comes first in log order.
            self.ex.apply(self.buf, c, order, self._dim_mismatch)
        self.timings["apply"] += time.perf_counter() - t
        if result == WALK_FATAL:
            self._fatal(stop_index)

    def _carry(self, n: int, stop: int, end: int) -> None:
        """Move open transactions' records, then the unframed bytes, to the front."""
        keep = self.plan.carry_open(n)
        c = self.cols
        offs = c.off[keep]
        sizes = c.length[keep] + RECORD_HEADER_SIZE
        parts = [self.buf[o:o + s] for o, s in zip(offs.tolist(), sizes.tolist(), strict=True)]
        held = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        tail = self.buf[stop:end].copy()
        m = len(keep)
        for name in ("length", "seq", "seg", "foff"):
            col = getattr(c, name)
            col[:m] = col[keep]
        c.off[:m] = np.concatenate(([0], np.cumsum(sizes)[:-1])) if m else offs
        self.n_carried = m
        self.carried_bytes = len(held)
        need = len(held) + len(tail) + self.chunk_bytes // 2
        if need > len(self.buf):
            self.buf = self._alloc(max(need, 2 * len(self.buf)))
        self.buf[: len(held)] = held
        self.buf[len(held):len(held) + len(tail)] = tail
        c.ensure_records(m + self.chunk_bytes // _BYTES_PER_ROW + 64)

    def _events(self, events) -> None:
        what = {
            EV_BEGIN_ALREADY_OPEN: "BeginTransaction for a transaction already open",
            EV_END_NOT_OPEN: "Commit/Abort for a transaction not open",
        }
        for ev, i in events.tolist():
            entry = self._where(i)
            if ev in what:
                entry["what"] = what[ev]
                entry["transaction_id"] = int(self.cols.aux[i])
                self.report.anomalies.append(entry)
            else:
                entry["offset"] = self._bad_offset(i)
                entry["what"] = self._status_text(i)
                if ev == EV_SKIPPED:
                    self.report.skipped.append(entry)
                elif ev == EV_DAMAGE_AFTER_STOP:
                    self.report.damage_after_stop.append(entry)

    def _bad_offset(self, i: int) -> int:
        # The file offset of the byte where decoding failed, kept inside the record
        # (a truncated payload fails at its end).
        c = self.cols
        last = c.foff[i] + RECORD_HEADER_SIZE + c.length[i] - 1
        return int(min(c.foff[i] + (c.stop[i] - c.off[i]), last))

    def _status_text(self, i: int) -> str:
        return STATUS_TEXT.get(int(self.cols.status[i]), "undecodable payload")

    def _fatal(self, i: int) -> None:
        w = self._where(i)
        w["offset"] = self._bad_offset(i)
        raise CorruptRecordError(
            f"{self._status_text(i)} (record at offset {int(self.cols.foff[i])})", **w)

    def _record_stop(self, i: int) -> None:
        w = self._where(i)
        c = self.cols
        kind = int(c.kind[i])
        self.report.stop = {
            "reason": "target",
            **w,
            "timestamp": int(c.ts[i]) if c.status[i] == OK else None,
            "record": VARIANT_NAMES[kind] if 0 <= kind < len(VARIANT_NAMES) else None,
        }

    def _trailing(self, first: int, n: int) -> None:
        c = self.cols
        sl = slice(first, n)
        ends = c.off[sl] + RECORD_HEADER_SIZE + c.length[sl]
        bad = np.flatnonzero((c.status[sl] == OK) & (c.stop[sl] < ends)) + first
        for i in bad.tolist():
            entry = self._where(i)
            entry["count"] = int(c.off[i] + RECORD_HEADER_SIZE + c.length[i] - c.stop[i])
            self.report.trailing_bytes.append(entry)

    def _dim_mismatch(self, record: int, entry: int, dim: int) -> None:
        w = self._where(record)
        raise DimensionMismatchError(
            f"vector of length {int(self.cols.e_dim[entry])} differs from the index"
            f" dimension {dim}", **w)

    def _end_of_log(self) -> None:
        self.report.transactions["in_flight_discarded"] = (
            self.plan.open_at_stop if self.plan.stopped else self.plan.open_transactions)
        if self.to_seq is not None and not self.plan.stopped:
            raise TargetNotFoundError(
                f"no record has sequence number {self.to_seq}", file=str(self.wal_dir))
        cnt = self.plan.counters
        self.report.commit_points_applied = int(cnt[C_COMMIT_POINTS])
        self.report.transactions["committed"] = int(cnt[C_COMMITTED])
        self.report.transactions["aborted"] = int(cnt[C_ABORTED])


def _key_collision():
    try:
        from gpu_pitr.executors.cuda import KeyCollision
    except ImportError:  # no numba.cuda at all: the cuda executor never ran
        return ()
    return KeyCollision


def _run(args, executor, chunk_bytes, target_doc):
    report = RestoreReport(target=target_doc, backend=executor.name,
                           incomplete_history_allowed=bool(args[4]))
    run = _Restore(*args, executor, chunk_bytes or DEFAULT_CHUNK_BYTES, report)
    run.run()
    del run.buf, run.cols
    t = time.perf_counter()
    index = executor.finish(report)
    run.timings["finish"] += time.perf_counter() - t
    return index, run


def restore(
    wal_dir: str | os.PathLike,
    *,
    to_time=None,
    to_seq: int | None = None,
    exclusive: bool = False,
    backend: str = "auto",
    skip_corrupt: bool = False,
    allow_incomplete_history: bool = False,
    chunk_bytes: int | None = None,
) -> RestoredIndex:
    """Restore the index in ``wal_dir`` as it was at a point in time (SPEC section 3).

    Args:
        wal_dir: directory of ``wal-*.log`` segments; only ever read.
        to_time: Unix seconds or ISO-8601 text with a zone; stop before the first
            commit point later than it (``exclusive``: at or later).
        to_seq: a log position: the first record with this sequence number.
        exclusive: see ``to_time``.
        backend: "cpu", "cuda" or "auto" (the GPU when CuPy sees one).
        skip_corrupt: skip undecodable records and unreadable segments, listing
            each in the report, instead of failing.
        allow_incomplete_history: restore even if the log does not start at
            sequence number 0.
        chunk_bytes: bytes read per chunk (default 64 MiB).

    Returns:
        RestoredIndex with ids sorted by UTF-8 bytes, vectors, metadata, report.

    Raises:
        WalError: a subclass naming file, byte offset and sequence number.
    """
    if to_time is not None and to_seq is not None:
        raise ValueError("give at most one of to_time and to_seq")
    started = time.perf_counter()
    if to_time is not None:
        target = {"to_time": parse_time(to_time)}
        target_doc = {"kind": "time", "value": target["to_time"], "exclusive": bool(exclusive)}
    elif to_seq is not None:
        if int(to_seq) < 0 or int(to_seq) >= 2**64:
            raise ValueError(f"sequence number {to_seq} is outside 0..2^64-1")
        target = {"to_seq": int(to_seq)}
        target_doc = {"kind": "seq", "value": int(to_seq), "exclusive": False}
    else:
        target = {}
        target_doc = {"kind": "latest", "value": None, "exclusive": False}
    wal_path = Path(wal_dir)
    if not wal_path.is_dir():
        raise WalError("WAL directory not found or not a directory", file=str(wal_path))
    total = sum(s.size for s in list_segments(wal_path))
    executor = make_executor(backend, total)
    args = (wal_path, target, exclusive, skip_corrupt, allow_incomplete_history)
    try:
        index, run = _run(args, executor, chunk_bytes, target_doc)
    except _key_collision() as err:
        # Exactness over speed: the host map compares every id byte for byte.
        from gpu_pitr.executors.cpu import CpuExecutor

        index, run = _run(args, CpuExecutor(total), chunk_bytes, target_doc)
        index.report.message = f"cuda executor: {err}; restored on the cpu executor instead"
    report = index.report
    run.timings["total"] = time.perf_counter() - started
    report.timings = {k: round(v, 6) for k, v in run.timings.items()}
    for k, v in getattr(run.ex, "timings", {}).items() if getattr(run.ex, "profile", False) else ():
        report.timings[f"device_{k}"] = round(v, 6)
    if report.message:
        pass
    elif report.records_read == 0:
        report.message = "nothing to restore: no records in the log"
    elif len(index) == 0:
        report.message = "the index is empty at the stop point"
    return index
