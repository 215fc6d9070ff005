"""Restore a WAL directory to a point in time: the streaming driver.

discover segments -> read a chunk -> frame -> decode (executor) -> plan (host)
-> apply (executor) -> ... -> finish. One pass over the bytes in log order;
memory is the index plus one chunk (and the records of transactions still open
at a chunk's end, which move to the front of the next chunk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import SupportsIndex

import numpy as np

from gpu_pitr import interrupts
from gpu_pitr.crc import crc32
from gpu_pitr.errors import (
    BadSegmentError,
    BaseMismatchError,
    CorruptRecordError,
    DimensionMismatchError,
    FileReadError,
    FileShrankError,
    IncompleteHistoryError,
    TargetBeforeBaseError,
    TargetNotFoundError,
    TargetNotReachedError,
    WalError,
)
from gpu_pitr.format import bincode1, readahead, zerofill
from gpu_pitr.format.columns import ChunkColumns, back_to_back, file_runs, move_records
from gpu_pitr.format.frame import frame_records, header_problem
from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    COMMIT_TRANSACTION,
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    VARIANT_NAMES,
)
from gpu_pitr.format.payload import OK, STATUS_TEXT
from gpu_pitr.format.readahead import (
    BYTES_PER_ROW,
    DEFAULT_CHUNK_BYTES,
    HEADROOM,
    READ_THREADS,
    FrameAhead,
    Readahead,
    host_buffer,
)
from gpu_pitr.format.segments import (
    last_with_records,
    list_segments,
    not_a_directory,
    not_segment_files,
    written_since,
)
from gpu_pitr.format.stats import plural, utc_text
from gpu_pitr.format.times import TimeTarget, parse_time
from gpu_pitr.hostmem import fill_once_pages
from gpu_pitr.index import RestoredIndex
from gpu_pitr.jit import compile_seconds
from gpu_pitr.plan.commit import (
    C_ABORTED,
    C_COMMIT_POINTS,
    C_COMMITTED,
    EV_BEGIN_ALREADY_OPEN,
    EV_DAMAGE_AFTER_STOP,
    EV_END_NOT_OPEN,
    EV_SKIPPED,
    UNKNOWN_BEGIN,
    WALK_FATAL,
    PlanState,
)
from gpu_pitr.plan.seqjumps import Restarts, SeqJumps
from gpu_pitr.report import EMPTY_INDEX_NOTE, RestoreReport
from gpu_pitr.resolve.idshard import id_shard as parse_id_shard
from gpu_pitr.snapshot.base import (
    SeqRuns,
    base_gap,
    base_mismatch,
    counted_bytes,
    find_segment,
    merge_runs,
    resume_at,
    stops_at_base,
    target_problem,
)
from gpu_pitr.snapshot.format import Snapshot

_MIN_CHUNK_BYTES = 64
#: Runs of seqs a seq target not found names, at most.
_RUNS_SHOWN = 4
#: Pieces are gathered (``_gather``) while the carried bytes exceed this many times
#: the bytes read since.
GATHER = 2
#: Pieces smaller than this (or than the chunk size) are packed into one chunk until
#: their bytes reach it (``_pack``): every chunk costs a decode, a plan and an apply
#: call, 0.2-0.4 ms even for one record, so 5,000 one-record segments took 2 s.
PACK_BYTES = 1 << 20
# A base restore on the cpu executor sorts in place, not by a merge, when at most one
# base row per this many of the executor's ids is left untouched (_Restore.move_in_rest).
MOVE_IN_RATIO = 4


def no_segments_note(wal_dir) -> str:
    """For a person: ``wal_dir`` holds no segment files, and what it may be instead.

    An empty log is not an error (SPEC section 2), but a snapshot directory, or the
    directory above the WAL's, given as WAL_DIR is a slip worth naming.
    """
    from gpu_pitr.snapshot.format import holds_snapshot_files

    wal_dir = Path(wal_dir)
    note = f"no wal-<16 hex digits>.log files in {wal_dir}"
    if holds_snapshot_files(wal_dir):
        return (f"{note}: it is a gpu-pitr snapshot; give it as --base (base= in the "
                "API), with the WAL directory as WAL_DIR")
    try:
        subdirs = sorted(e.path for e in os.scandir(wal_dir) if e.is_dir())
    except OSError:
        return note
    for sub in subdirs:
        try:
            if list_segments(sub):  # what a restore of it would read
                return f"{note}, but {sub} has some: is that the WAL directory?"
        except (OSError, WalError):
            continue
    from gpu_pitr.snapshot import snapshot_dirs

    if snapshot_dirs(wal_dir):  # what --snapshots would look at (hidden names left out)
        return (f"{note}: it holds gpu-pitr snapshots; give it as --snapshots (snapshots= "
                "in the API), with the WAL directory as WAL_DIR")
    return note


def make_executor(backend: str, total_bytes: int, notes: list | None = None):
    """The executor for ``backend`` ("cpu", "cuda" or "auto"). With ``auto`` on a machine
    that has CuPy but no usable GPU, why the cpu executor ran goes into ``notes`` (without
    CuPy, cpu is what was asked for: nothing to say)."""
    if backend in ("cuda", "auto"):
        from gpu_pitr.executors.device import cuda_unavailable_reason

        reason = cuda_unavailable_reason(allow_simulator=backend == "cuda")
        if reason is None:
            from gpu_pitr.executors.cuda import CudaExecutor

            return CudaExecutor(total_bytes)
        if backend == "cuda":
            from gpu_pitr.errors import BackendUnavailableError

            raise BackendUnavailableError(f"--backend cuda: {reason}")
        from gpu_pitr.executors.device import simulator_enabled

        if (notes is not None and not simulator_enabled()
                and not reason.startswith("CuPy is not installed")):
            notes.append(f"backend auto: the cpu executor ran, as {reason}")
    from gpu_pitr.executors.cpu import CpuExecutor

    return CpuExecutor(total_bytes)


def expired_before(wal_dir: Path, base, allow_incomplete: bool) -> str | None:
    """Is history an ``expire`` deleted (its marker) before where this restore starts
    (``base``'s position, or the start of the log)? It must start after it, even when the
    first segment left starts at seq 0 (a writer that restarted). Raises
    ``IncompleteHistoryError``, or with ``allow_incomplete`` returns the gap's words; None
    where nothing is missing."""
    from gpu_pitr.expire import MARKER_NAME, read_marker

    expiry = read_marker(wal_dir)
    pos = {} if base is None else base.position
    if expiry is None or expiry.kept_from(pos):
        return None
    first_kept = expiry.first_kept
    if allow_incomplete:
        return f"gpu-pitr expire deleted the segments before {first_kept}"
    since = "the start of the log" if base is None else \
        f"the base snapshot's position, {pos.get('segment') or 'the start of the log'}"
    raise IncompleteHistoryError(
        f"gpu-pitr expire deleted the segments before {first_kept}, and this restore "
        f"starts at {since}: earlier history is missing (start from a snapshot expire "
        "kept, at or before the target: --snapshots/--base, snapshots=/base=; a target "
        "before the oldest one kept is gone with what expire deleted; or restore only "
        "the log left, from its first segment: --allow-incomplete-history, "
        "allow_incomplete_history=True)",
        file=str(Path(wal_dir) / MARKER_NAME))


_FROM_A_SNAPSHOT = "start from a snapshot taken before it was deleted: --base/--snapshots, " \
    "base=/snapshots="
_BASE_HOLDS_NONE = "the base snapshot holds no record of the log (an empty log, or " \
    "zero-filled records only), so the log must start there"


def _skipped_file(file: str, problem: str) -> dict:
    """The report's entry (``skipped``, ``damage_after_stop``) of a segment whose header
    is damaged: none of it is read (the restore's, and ``plan_restore``'s)."""
    return {"file": file, "offset": 0, "seq": None, "what": problem}


def _skipped_fix(skipped: dict, fix: str) -> str:
    """What the error of a log not from seq 0 says to do where ``skip_corrupt`` skipped
    ``skipped`` (a report ``skipped`` entry) before its first record: the start may be
    in it, not deleted (``_Restore._check_first``, and ``plan_restore``'s judgement)."""
    return (f"it is in what --skip-corrupt skipped: {skipped['file']} offset "
            f"{skipped['offset']}, {skipped['what']}; or {fix}")


def not_from_seq_zero(fix: str, **where) -> IncompleteHistoryError:
    """The error of a log read from its start whose first record is not seq 0."""
    return IncompleteHistoryError(
        "the log does not start at sequence number 0: earlier history is missing"
        f" ({fix}; or restore anyway: --allow-incomplete-history,"
        " allow_incomplete_history=True)", **where)


class _Restore:
    """One restore in progress: the loop over segments and chunks."""

    def __init__(self, wal_dir, target, exclusive, skip_corrupt, allow_incomplete_history,
                 executor, chunk_bytes, report, progress=None, base=None, *, segments):
        self.wal_dir = Path(wal_dir)
        self._listed = segments  # the listing the caller checked the base against
        self.progress = progress
        self.base = base  # a loaded snapshot to start from, or None
        self.target = target
        self.seq_runs = SeqRuns()
        # Whether a record consumed is not zero-filled (seq_runs holds their seq 0 too:
        # a seq 0 target is one of them): a position after zeros alone holds no record.
        self.covers_records = False
        # (file, offset, length, crc32, {record, timestamp}) of the last record consumed
        self.last_record = None
        # The first gap in the history the caller allowed (--allow-incomplete-history),
        # for the restore's warning; see history_gap.
        self.gap_why: str | None = None
        self.gap_lacks = ""  # (with gap_why) what the state restored lacks
        # Sequence-number jumps forward (records missing) among the records read up to
        # the stop point: the first one's place, how many, how many records in all.
        self.seq_jumps = SeqJumps()
        self.restarts = Restarts()  # each record's epoch, for _joined_after_restart
        self.torn_at: dict[int, int] = {}  # segment index -> offset of its torn tail
        self.joined_after_restart: tuple | None = None  # see _joined_after_restart
        self.segments = []
        self.position: dict | None = None
        self.pending = b""
        self._resume_seq = None  # with a base: what the first record read must be
        self.lazy = None  # with a base on the cpu executor: its rows not moved in yet
        self._seed_cols = ChunkColumns(1024)
        self.total_bytes = 0
        self.plan = PlanState(exclusive=exclusive, skip_corrupt=skip_corrupt, **target)
        self.to_seq = target.get("to_seq")
        # Records read with seq to_seq: more than one where the writer numbered from 0
        # again (reopened without recovery); the target is the first (SPEC section 3).
        self.to_seq_hits = 0
        # A transaction target X, and where the log read shows it, for the error when no
        # record ends it: the first BeginTransaction(X), the first Commit/Abort(X) that
        # closed nothing (an anomaly), each as _where says (None: none read).
        self.to_transaction = target.get("to_transaction")
        self.txn_begun: dict | None = None
        self.txn_stray: dict | None = None
        # BeginTransaction(X) records read after the stop (a writer restarted uses ids
        # again), and where the first is: the target was X's first use, and a warning
        # names the later ones, as to_seq_hits does for a seq target.
        self.txn_later = 0
        self.txn_later_first: dict | None = None
        self._txn_open_after = False
        # A position target (segment name, offset of a record), and the index of its
        # segment among those read (-1: not among them; set by run).
        self.to_position = target.get("to_position")
        self._position_segment = -1
        # The stamp of the last record read that decodes (markers too), in log order:
        # with a time target and no stop, whether the log reached past it (else a
        # warning). The last, not the greatest: one record stamped ahead of its
        # neighbours (a clock stepped back after it) does not say where the log ends.
        self.last_stamp: int | None = None
        self.skip_corrupt = skip_corrupt
        self.allow_incomplete = allow_incomplete_history
        # False: reading ends at the stop record (``read_after_stop``); see _cut_at_stop.
        self.read_after_stop = report.read_after_stop
        # The stop record: (segment, where it ends, records read up to it).
        self.stop_at: tuple[int, int, int] | None = None
        self.bad_headers: dict[int, int] = {}  # segment -> its header's bytes, all read
        self.ex = executor
        self.report = report
        self.timings = dict.fromkeys(
            ("discover", "read", "frame", "decode", "plan", "apply", "finish"), 0.0)
        self.chunk_bytes = max(_MIN_CHUNK_BYTES, int(chunk_bytes))
        self.buf = np.zeros(0, np.uint8)
        self.cols = ChunkColumns(self.chunk_bytes // BYTES_PER_ROW + 64)
        self.names: list[str] = []
        self.n_carried = 0  # rows 0..n_carried-1: records of open transactions
        # Rows n_carried..n_gathered-1: pieces read while many carried bytes wait (see
        # _gather); their bytes end at self.buf[gathered_end], after the carried ones.
        self.n_gathered = 0
        self.gathered_end = 0
        self._packed = 0  # bytes of the small pieces gathered since the last chunk (_pack)
        # The most bytes a chunk that carried records of open transactions spanned (those
        # records and the ones read behind them), and where the first carried record was:
        # not within a memory budget (see _restore_warnings).
        self.held_peak: tuple[int, dict | None] = (0, None)
        self.seen_first = False
        self.seq_range: tuple[int, int] | None = None  # of the records read: for errors
        self._piece = None  # the read-ahead piece whose buffer is self.buf
        self._reader = None
        self._framer = None
        # An executor that copies the next piece to its device while it applies this
        # one (cuda) has stage(buf, start, end); the cpu executor has none.
        self._stage = getattr(executor, "stage", None) if getattr(
            executor, "overlap", False) else None
        if base is not None:
            pos = base.position
            self.seq_runs = SeqRuns(pos.get("seq_runs"), pos.get("last_seq"))
            self.covers_records = not _holds_no_record(pos)
            last = pos.get("last_record")
            if last:
                self.last_record = (str(self.wal_dir / last["segment"]), last["offset"],
                                    last.get("length"), last.get("crc32"),
                                    _stored_kind(last))
            if pos.get("history_complete") is False:
                self._gap(_restored_across_a_gap(base))
            if last and self.covers_records and target.get("to_time") is not None:
                # The last record that decodes where the log ends may be the base's own
                # (nothing, or nothing that decodes, after it): a time target its stamp
                # is past is not one the log ends before, as for a restore of the whole
                # log (its stamp as stored since 2026-12-07, else read from the log).
                stamp = _base_last_kind(self.wal_dir, last).get("timestamp")
                self.last_stamp = None if stamp is None else int(stamp)
            self.plan.seed_timestamps(pos.get("max_timestamp"), pos.get("timestamp"))

    def _alloc(self, nbytes: int) -> np.ndarray:
        # The executor may want special host memory (page-locked on a GPU).
        return getattr(self.ex, "host_buffer", host_buffer)(nbytes)

    def _where(self, i: int) -> dict:
        c = self.cols
        return {"file": self.names[int(c.seg[i])], "offset": int(c.foff[i]), "seq": int(c.seq[i])}

    def run(self) -> None:
        t = time.perf_counter()
        segments = self._listed
        self._check_expired()
        starts: dict[int, int] = {}
        if self.base is not None:
            segments, starts = self._resume_at(segments)
            self._jumps_from_base()
        self.segments = segments
        self.report.segments = len(segments)
        if self.to_position is not None:
            k = find_segment(segments, self.to_position[0])
            self._position_segment = -1 if k is None else k
        self.names = [str(seg.path) for seg in segments]
        self.total_bytes = sum(seg.size - starts.get(i, 0) for i, seg in enumerate(segments))
        self.timings["discover"] += time.perf_counter() - t
        if self.base is not None:
            t = time.perf_counter()
            self._seed_base()
            self.timings["base"] = time.perf_counter() - t
        self._tell("read")
        # The base is the stop, and the log after it is not to be read: no segment is
        # (the framer goes over every segment it is given, header and pieces alike).
        to_read = [] if self._read_no_more() else segments
        ranges = [(i, seg.path, starts.get(i, HEADER_SIZE), seg.size)
                  for i, seg in enumerate(to_read) if seg.size > starts.get(i, HEADER_SIZE)]
        # Mapped into host buffers; copied into the executor's own (page-locked) ones.
        reader = Readahead(ranges, self.chunk_bytes, HEADROOM, self._alloc,
                           threads=READ_THREADS,
                           map_files=not hasattr(self.ex, "host_buffer"),
                           direct_bytes=readahead.DIRECT_BYTES)
        try:
            framer = FrameAhead(to_read, reader, self._alloc, frame_records,
                                header_problem, HEADER_SIZE, starts=starts, merge_small="chunk")
        except BaseException:  # (Ctrl-C as its thread started) the reads end here too
            reader.close()
            raise
        self._reader = reader
        self._framer = framer
        try:
            t = time.perf_counter()
            for item in framer:
                self.timings["read"] += time.perf_counter() - t
                if item.problem is not None:
                    self._flush()
                    self._bad_header(item)
                else:
                    self._piece_framed(item)
                self._tell("read")
                interrupts.check()  # a stop whose exception a callback swallowed
                if self._read_no_more():
                    break
                t = time.perf_counter()
        except (FileReadError, FileShrankError):
            # A later piece could not be read: the pieces packed or gathered before it
            # (_pack, _gather) come first, so that damage in them is what is raised.
            self._flush()
            if not self._read_no_more():
                raise
            # (read_after_stop=False) They held the stop: the piece that failed lies
            # after it, and is not needed. Whether it was met at all depended on the
            # chunk size (how many pieces were packed or gathered before the stop).
        finally:
            with interrupts.holding():  # a stop comes after the clean-up, never inside it
                self._unstage()  # no copy may read a buffer the reader is done with
                framer.close()
                reader.close()
            self._framer = None  # it holds read buffers: they go before the sort
            self.timings["frame"] += framer.frame_seconds
            self.report.bytes_read += framer.header_only_bytes
        self._flush()
        self._end_of_log()
        if not self.plan.stopped:
            self._end_position()
        elif not self.read_after_stop:
            self._cut_at_stop(starts)

    def _read_no_more(self) -> bool:
        """Whether reading ends here: the stop point is reached, and the log after it is
        not to be read (``read_after_stop=False``)."""
        return self.plan.stopped and not self.read_after_stop

    def _cut_at_stop(self, starts: dict[int, int]) -> None:
        """The report of a restore that stopped reading at its stop record covers the
        log up to that record, and nothing after it, whatever the chunk size: the last
        chunk read goes on past the stop by however many bytes it held, and what was
        found there (damage, torn tails, anomalies, records and bytes read) would vary
        with it. A stop at the base snapshot's position read nothing."""
        r = self.report
        if self.stop_at is None:  # the base is the stop
            seg, end, r.records_read = -1, 0, 0
        else:
            seg, end, r.records_read = self.stop_at
        r.segments = seg + 1

        def start(k: int) -> int:  # where reading began (a base's resume point: past it)
            at = starts.get(k, 0)
            return 0 if at <= HEADER_SIZE else at

        def whole(k: int, size: int) -> int:
            """A segment before the stop's, as the read counts it: a bad header's bytes
            alone; one with no records from where reading began, its header (read to
            check it: a base at a segment's end too); else from where reading began."""
            return counted_bytes(size, starts.get(k, HEADER_SIZE), self.bad_headers.get(k))

        r.bytes_read = 0 if seg < 0 else end - start(seg) + sum(
            whole(k, s.size) for k, s in enumerate(self.segments[:seg]))
        # The progress's "finish" says the bytes the restore needed, all of them done
        # (against the whole log, it ended at a few percent).
        self.total_bytes = r.bytes_read
        # An entry is kept when its offset lies before the stop record's end: a skipped
        # record's entry names the byte where decoding failed, inside the record (a seq
        # target's record, skipped, is the stop). So is the damage of the record of an
        # exclusive seq target, which need not decode (after the stop point, but read):
        # its run of zero records, if it is one, cut back to the record.
        where = {name: k for k, name in enumerate(self.names[:len(self.segments)])}
        for entries in (r.anomalies, r.torn_tails, r.trailing_bytes, r.skipped,
                        r.damage_after_stop):
            entries[:] = [_run_up_to(e, end) if where.get(e["file"], -1) == seg else e
                          for e in entries
                          if (where.get(e["file"], -1), e["offset"]) < (seg, end)]

    def _tell(self, phase: str) -> None:
        if self.progress is not None:
            self.progress(phase, self.report.bytes_read, self.total_bytes,
                          self.report.records_read)

    def _bad_header(self, item) -> None:
        """A segment whose header is torn or wrong: its records are not read."""
        name = self.names[item.segment]
        self.report.bytes_read += item.header_len
        self.bad_headers[item.segment] = item.header_len
        if item.problem == "torn":
            self.report.torn_tails.append(
                {"file": name, "offset": 0, "bytes_lost": item.header_len})
            return
        entry = _skipped_file(name, item.problem)
        if self.plan.stopped:
            self.report.damage_after_stop.append(entry)
        elif self.skip_corrupt:
            self.report.skipped.append(entry)
        else:
            raise BadSegmentError(item.problem, file=name, offset=0)

    def _piece_framed(self, item) -> None:
        """Process the records framed in one piece.

        The records of transactions still open move from the previous buffer
        into the room before this piece's bytes (or, if they do not fit, the
        two go to a buffer of their own), so one buffer holds every record the
        chunk refers to. While those carried bytes outweigh what was read since,
        pieces are gathered behind them before the chunk is processed (``_gather``).
        """
        self.report.bytes_read += item.bytes_read
        span = item.end - item.start
        if self._packed and self._packed + span > self._pack_limit():
            self._flush()  # small pieces packed so far go first: this one would overfill
        c = self.cols
        m = self.n_carried
        g = self.n_gathered
        if g > m:  # gathering: this piece's bytes go after the others
            start = self.gathered_end
            buf = self._room(start + span)
            buf[start:start + span] = item.buf[item.start:item.end]
            shift = start - item.start
            self._unstage()
            if item.ring is not None:
                self._reader.release(item.ring)
        else:
            held = int(c.length[:m].sum()) + m * RECORD_HEADER_SIZE
            buf, start, shift = item.buf, item.start, 0
            if held > start or held > GATHER * span:
                # Into a buffer of their own: too many for the headroom, or so many that
                # pieces are gathered behind them (_gather). A copy of item.buf ahead
                # (stage) is of no use at other offsets, and the piece's buffer goes
                # back to the reader below.
                self._unstage()
                # Gathering ends near held + held / GATHER: room for it from the start.
                buf = self._alloc(held + span + (held // GATHER + span
                                                 if held > GATHER * span else 0))
                buf[held:held + span] = item.buf[item.start:item.end]
                shift = held - item.start
                start = held
            if m:
                move_records(self.buf, buf, c.off, c.length, m, start - held)
            if self._piece is not None:
                self._reader.release(self._piece)
            self._piece = item.ring if buf is item.buf else None
            if self._piece is None and item.ring is not None:
                self._reader.release(item.ring)
            self.buf = buf
        n = item.n
        c.ensure_records(g + n)
        rows = slice(g, g + n)
        # In place, with no temporary array of the chunk's rows (line_profiler, per
        # restore of the 1 GiB benchmark log: 29.7 -> 9.9 ms for this line).
        np.add(item.off[:n], shift, out=c.off[rows])
        c.length[rows] = item.length[:n]
        c.seq[rows] = item.seq[:n]
        if item.row_segment is None:
            c.seg[rows] = item.segment
            np.subtract(c.off[rows], start - item.file_start, out=c.foff[rows])
        else:  # small segments framed together
            c.seg[rows] = item.row_segment[:n]
            c.foff[rows] = item.row_file_offset[:n]
        if n:
            if self.to_seq is not None:
                self.to_seq_hits += int(np.count_nonzero(item.seq[:n] == np.uint64(self.to_seq)))
            lo, hi = int(item.seq[:n].min()), int(item.seq[:n].max())
            if self.seq_range is not None:
                lo, hi = min(lo, self.seq_range[0]), max(hi, self.seq_range[1])
            self.seq_range = (lo, hi)
        self.n_gathered = g + n
        self.gathered_end = start + span
        own = buf is not item.buf
        if not self._gather(own) and not self._pack(span, own):
            self._flush()
        for segment, at, lost in item.torn_list():
            self.torn_at[segment] = at
            self.report.torn_tails.append({"file": self.names[segment],
                                           "offset": at, "bytes_lost": lost})

    def _gather(self, own: bool) -> bool:
        """Whether to read on before processing the rows gathered so far.

        Carried records are copied and decoded again with every chunk: a transaction
        open across many pieces made that quadratic in its size (a 281 MB one took
        2.5 s at the default chunk). While the carried bytes exceed ``GATHER`` times
        the bytes read since, pieces are gathered behind them instead, in the buffer
        of their own they are in: each chunk then reads at least 1/GATHER as much as
        it carries, so the carried bytes grow geometrically, and are copied and decoded
        a bounded number of times each, for a buffer at most 1 + 1/GATHER times them.
        """
        m = self.n_carried
        if not own or not m:
            return False
        c = self.cols
        carried = int(c.off[m - 1] + RECORD_HEADER_SIZE + c.length[m - 1] - c.off[0])
        return carried > GATHER * (self.gathered_end - carried)

    def _pack_limit(self) -> int:
        return min(PACK_BYTES, self.chunk_bytes)

    def _pack(self, span: int, own: bool) -> bool:
        """Whether to read on, packing this small piece into one chunk with the next.

        Only while the pieces gathered since the last chunk stay under
        ``_pack_limit`` and the next piece, if framed already, is small too. A piece
        still in its read-ahead buffer is first copied into a buffer of its own, where
        the next pieces are gathered behind it (as ``_gather`` does).
        """
        limit = self._pack_limit()
        if self.n_gathered == self.n_carried or self._packed + span >= limit:
            return False
        nxt = self._framer.peek() if self._framer is not None else None
        if nxt is not None and (nxt.problem is not None or nxt.end - nxt.start >= limit):
            return False
        if not own:
            c = self.cols
            lo = int(c.off[0])  # carried rows first, then this piece's: offsets ascend
            size = self.gathered_end - lo
            buf = self._alloc(max(2 * limit, size + limit))
            buf[:size] = self.buf[lo:self.gathered_end]
            c.off[:self.n_gathered] -= lo
            self._unstage()  # a copy made ahead is of the buffer given back here
            if self._piece is not None:
                self._reader.release(self._piece)
                self._piece = None
            self.buf = buf
            self.gathered_end = size
        self._packed += span
        return True

    def _room(self, end: int) -> np.ndarray:
        """``self.buf``, grown (by half again at least) to hold ``end`` bytes."""
        if end > len(self.buf):
            new = self._alloc(max(end, len(self.buf) + len(self.buf) // 2))
            new[:self.gathered_end] = self.buf[:self.gathered_end]
            self.buf = new
        return self.buf

    def _flush(self) -> None:
        """Process the rows read since the last chunk, if any."""
        m, n = self.n_carried, self.n_gathered
        self._packed = 0
        if m and n > m:
            c = self.cols
            held = int(c.off[n - 1]) + RECORD_HEADER_SIZE + int(c.length[n - 1]) - int(c.off[0])
            if held > self.held_peak[0]:
                self.held_peak = (held, self._where(0))
        if n > m:
            self._chunk(m, n)
            self._keep_open(n)
        self.n_gathered = self.n_carried

    def _chunk(self, first: int, n: int) -> None:
        c = self.cols
        target_row = self._position_row(first, n)
        if not self.seen_first and n > first:
            head = first
            if self.skip_corrupt and self.to_seq != 0:
                # Zero-filled records carry no seq the writer gave: skipped, they do not
                # say where the history starts (a seq 0 target is one of them, though,
                # and so is a position target's record).
                head += zerofill.leading(c.length[first:n], c.seq[first:n])
                if target_row >= 0:
                    head = min(head, target_row)
            if head < n:
                self.seen_first = True
                self.report.first_seq = int(c.seq[head])
                self._check_first(head, self._first_skipped(first, head))
        t = time.perf_counter()
        was_stopped = self.plan.stopped
        check = getattr(self.ex, "check", None)
        if was_stopped and check is not None:
            # Past the stop point nothing is applied: a record's status and where its
            # entry ends are all the report needs (damage, trailing bytes).
            check(self.buf, c, 0, n)
        else:
            # Carried rows are decoded again: their bytes moved to the front of buf.
            self.ex.decode(self.buf, c, 0, n)
            if "to_time" in self.target and n > first:
                ok = np.flatnonzero(c.status[first:n] == OK)
                if len(ok):
                    self.last_stamp = int(c.ts[first + ok[-1]])
        self._stage_next()
        self.timings["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        if not was_stopped:  # (read by the walk at each BeginTransaction)
            self.restarts.epochs(c.seq[first:n], c.length[first:n], c.epoch[first:n])
        result, order, events, stop_index = self.plan.walk(c, first, n, target_row)
        self._events(events)
        if self.to_transaction is not None and result != WALK_FATAL and not was_stopped:
            self._txn_seen(first, n if stop_index < 0 else stop_index)
        if self.to_transaction is not None and result != WALK_FATAL and (
                was_stopped or stop_index >= 0):
            self._txn_again(first if was_stopped else stop_index + 1, n)
        if result != WALK_FATAL and not was_stopped:
            self._consumed(first, n, stop_index)
            end = n if stop_index < 0 else stop_index + 1  # the stop record's seq too
            at = self.seq_jumps.add(c.seq[first:end], c.length[first:end])
            if at is not None:
                self.seq_jumps.where = self._where(first + at)
        if result != WALK_FATAL and stop_index >= 0:
            self._record_stop(stop_index)
            self._stop_position(stop_index, n)
            self.stop_at = (int(c.seg[stop_index]),
                            int(c.foff[stop_index]) + RECORD_HEADER_SIZE
                            + int(c.length[stop_index]),
                            self.report.records_read + max(0, stop_index + 1 - first))
        self._trailing(first, n)
        self.report.records_read += n - first
        self.timings["plan"] += time.perf_counter() - t
        t = time.perf_counter()
        self._stage_next()  # the next piece may have been framed while this one planned
        if len(order) and self.lazy is not None:
            self._move_touched(n)
        if len(order):
            # Before a fatal record, the commit points ahead of it still apply: an
            # error among them (a dimension mismatch) comes first in log order.
            self.ex.apply(self.buf, c, order, self._dim_mismatch)
        self.timings["apply"] += time.perf_counter() - t
        if result == WALK_FATAL:
            self._fatal(stop_index)

    def _position_row(self, first: int, n: int) -> int:
        """The row among ``first..n-1`` of the record a position target names (-1: none
        of them, or no position target, or stopped already). The columns have each
        record's segment and file offset, and one record starts at a position."""
        if self._position_segment < 0 or self.plan.stopped or n <= first:
            return -1
        c = self.cols
        rows = np.flatnonzero((c.seg[first:n] == self._position_segment)
                              & (c.foff[first:n] == self.to_position[1]))
        return first + int(rows[0]) if len(rows) else -1

    def _txn_seen(self, first: int, end: int) -> None:
        """Note the first begin of the transaction target, and its first end that closed
        nothing, among records ``first..end-1`` (before the stop record): what the error
        says when no record ends it."""
        if self.txn_begun is not None and self.txn_stray is not None:
            return
        c = self.cols
        mine = (c.aux[first:end] == np.uint64(self.to_transaction)) & (
            c.status[first:end] == OK)
        kind = c.kind[first:end]
        for name, kinds in (("txn_begun", (BEGIN_TRANSACTION,)),
                            ("txn_stray", (COMMIT_TRANSACTION, ABORT_TRANSACTION))):
            if getattr(self, name) is None:
                rows = np.flatnonzero(mine & np.isin(kind, kinds))
                if len(rows):
                    w = self._where(first + int(rows[0]))
                    w["record"] = VARIANT_NAMES[int(kind[rows[0]])]
                    setattr(self, name, w)

    def _txn_again(self, first: int, end: int) -> None:
        """Count the uses of X begun among records ``first..end-1``, after the stop
        (their columns decoded or checked: variant and id are there): a Begin of X while
        X is closed opens a new one, as SPEC section 3's open set has it (the record
        that ended X's first use is the stop record, or before these rows). X used
        again, which the first-end rule does not reach."""
        c = self.cols
        x = np.uint64(self.to_transaction)
        rows = np.flatnonzero((c.aux[first:end] == x) & (c.status[first:end] == OK)
                              & np.isin(c.kind[first:end], (BEGIN_TRANSACTION,
                                                            COMMIT_TRANSACTION,
                                                            ABORT_TRANSACTION)))
        for i in (first + rows).tolist():
            if int(c.kind[i]) != BEGIN_TRANSACTION:
                self._txn_open_after = False
            elif not self._txn_open_after:
                self._txn_open_after = True
                self.txn_later += 1
                if self.txn_later_first is None:
                    self.txn_later_first = self._where(i)

    def _stage_next(self) -> None:
        """Start the copy of the next piece's bytes to the device, if it is framed."""
        if self._stage is None or self._framer is None:  # (the last rows, gathered)
            return
        item = self._framer.peek()
        # A small piece is packed (_pack): copied to a buffer of its own, not staged.
        if (item is not None and item.problem is None and item.n
                and item.end - item.start >= self._pack_limit()):
            self._stage(item.buf, item.start, item.end)

    def _unstage(self) -> None:
        if self._stage is not None:
            self.ex.unstage()

    def _keep_open(self, n: int) -> None:
        """Move the rows of records held by open transactions to the front."""
        keep = self.plan.carry_open(n)
        c = self.cols
        m = len(keep)
        for name in ("off", "length", "seq", "seg", "foff", "epoch"):
            col = getattr(c, name)
            col[:m] = col[keep]
        self.n_carried = m


    # -- the log position a restore reaches (what a snapshot of it resumes from) --

    def _consumed(self, first: int, n: int, stop_index: int) -> None:
        """Note the records ``first..`` this chunk took before its stop point."""
        c = self.cols
        end = n
        if stop_index >= 0:
            # A time target stops before its record; a sequence, position or transaction
            # target after it (an exclusive one before it).
            end = stop_index + 1 if self.plan.stops_after else stop_index
        if end > first:
            self.seq_runs.add(c.seq[first:end])
            if not self.covers_records:
                self.covers_records = not zerofill.zero_records(
                    c.length[first:end], c.seq[first:end]).all()
            i = end - 1
            o, n = int(c.off[i]), RECORD_HEADER_SIZE + int(c.length[i])
            ok = c.status[i] == OK  # (a skipped record's kind and stamp are unknown)
            self.last_record = (self.names[int(c.seg[i])], int(c.foff[i]), n,
                                crc32(self.buf[o:o + n]),
                                {"record": VARIANT_NAMES[int(c.kind[i])] if ok else None,
                                 "timestamp": int(c.ts[i]) if ok else None})

    def _position(self, segment: int | None, offset: int, seq: int | None,
                  torn: bool = False) -> dict:
        seg = self.segments[segment] if segment is not None else None
        last_file, last_offset, last_length, last_crc, kind = self.last_record or (None,) * 5
        return {
            "segment": seg.name if seg is not None else None,
            "offset": int(offset),
            "seq": seq,
            "timestamp": self.plan.last_timestamp,
            "max_timestamp": self.plan.max_timestamp,
            "at_segment_end": seg is not None and offset >= seg.size,
            "at_torn_tail": torn,
            "segment_size": seg.size if seg is not None else None,
            "last_seq": self.seq_runs.last,
            "last_record": None if last_file is None else
            {"segment": Path(last_file).name, "offset": last_offset, "length": last_length,
             "crc32": last_crc, **kind},
            "history_complete": not self.history_gap,
            "seq_runs": self.seq_runs.merged(),
            "covers_records": self.covers_records,
        }

    def _stop_position(self, i: int, n: int) -> None:
        """The position at the stop record ``i``, and the transactions open there."""
        c = self.cols
        if self.plan.stops_after:
            after = int(c.foff[i]) + RECORD_HEADER_SIZE + int(c.length[i])
            self.position = self._position(int(c.seg[i]), after, None)
        else:
            self.position = self._position(int(c.seg[i]), int(c.foff[i]), int(c.seq[i]))
        rows, txns, counts = self.plan.open_records(n)
        self._keep_pending(rows, txns, counts)

    def _end_position(self) -> None:
        """The position at the end of the log: after the last whole record, in the last
        segment that holds more than a header. Newer files of a header or less are not
        passed: a writer rotating creates the new file before it flushes the old one's
        buffer, so the records it had buffered may still reach the old file (a snapshot
        placed after them would skip them)."""
        if not self.segments:
            self.position = self._position(None, 0, None)
        else:
            last = last_with_records(self.segments)
            size = self.segments[last].size
            end = self.torn_at.get(last, size)
            # A file shorter than its header (torn at creation) is covered whole.
            self.position = self._position(last, min(max(end, HEADER_SIZE), size), None,
                                           torn=end < size)
        txns, counts = self.plan.open_slots()
        self._keep_pending(np.arange(self.n_carried), txns, counts)

    def _keep_pending(self, rows: np.ndarray, txns: np.ndarray, counts: np.ndarray) -> None:
        """The records of the transactions open at the position: their bytes back to
        back (``pending``), and where they were read, as runs of records that follow
        one another in a file (``record_runs``: [file, offset, records]). A bulk load
        open across the position is millions of records: one compiled copy and a
        few runs, not a Python object per record (4.5M of them: 30 s to write the
        snapshot, 22 s to restore from it, a manifest of 273 MB)."""
        c = self.cols
        rows = np.ascontiguousarray(rows, np.int64)
        length = c.length[rows]
        size = RECORD_HEADER_SIZE + length
        blob = np.empty(int(size.sum()), np.uint8)
        move_records(self.buf, blob, c.off[rows], length, len(rows), 0)
        self.pending = blob.tobytes()
        seg, foff = c.seg[rows], c.foff[rows]
        starts, records = file_runs(seg, foff, size)
        names = [os.path.basename(name) for name in self.names]
        self.position["pending"] = {
            "transactions": [[int(t), int(k)] for t, k in zip(txns.tolist(), counts.tolist(),
                                                                strict=True)],
            "record_runs": [[names[s], o, k] for s, o, k in zip(
                seg[starts].tolist(), foff[starts].tolist(), records.tolist(), strict=True)],
        }

    # -- starting from a base snapshot --

    def _resume_at(self, segments):
        """The segments to read after the base's position, and where to start in the first."""
        later, starts, self._resume_seq, gap = _resume_point(self.base.position, segments)
        if gap is not None and _gap_not_read(self.base, self.target, self.plan.exclusive,
                                             self.read_after_stop):
            self._resume_seq = None  # (nothing after the base is read, nor judged)
            return later, starts
        if gap is not None and not self.allow_incomplete:
            raise _no_history_after_base(gap, later, self.wal_dir)
        if gap is not None:
            self._gap(gap)
        return later, starts

    def _jumps_from_base(self) -> None:
        """Records missing right after the base's position are missing inside the log, as
        a restore of the whole log finds them: the base's last record is the one before
        the first read (its seq, unless a zero-filled record's, which has none). Where
        the log goes on in the base's own segment only: a later segment's first record
        is judged by ``_check_first`` (a gap, refused or allowed). Not where the base's
        own restore stopped just before the record at its position (a time target, an
        exclusive one): it judged that record's seq, and its stored count (carried in
        ``base.missing_seqs``) holds a jump onto it already.

        Writer restarts count from the base's position on (docs/semantics.md) in every
        case: the first record read against the base's last, in its segment or a later
        one (seq 0 there: a writer reopened), whatever its own restore stopped at. A
        snapshot stores no count of restarts, so one right at its position, left out
        with the jumps, went unseen: a transaction it carried in, joined after that
        restart, was discarded without the warning a restore of the whole log gives."""
        pos = self.base.position
        last, last_seq = pos.get("last_record"), pos.get("last_seq")
        if last is None or last_seq is None or self._base_holds_none() \
                or zerofill.is_zero_record(int(last.get("length", 0)) - RECORD_HEADER_SIZE,
                                           int(last_seq)):
            return
        self.restarts.prev = int(last_seq)
        if self._resume_seq is not None and self._resume_seq[0] == "at" \
                and not self._base_judged_next():
            self.seq_jumps.prev = int(last_seq)

    def _base_judged_next(self) -> bool:
        """Whether the base's stored report says its restore stopped at the record at its
        position (the stop record of a time or exclusive target, not covered by it)."""
        at, pos = _stored_stop_at(self.base), self.base.position
        return at is not None and at[:2] == (pos.get("segment"), pos.get("offset"))

    def _check_expired(self) -> None:
        """History an ``expire`` deleted (its marker): the restore must start after it,
        even when the first segment left starts at seq 0 (a writer that restarted)."""
        gap = expired_before(self.wal_dir, self.base, self.allow_incomplete)
        if gap is not None:
            self._gap(gap)

    def _first_skipped(self, lead: int, head: int) -> dict | None:
        """The report's first ``skipped`` entry as it stands once rows ``lead..head-1``
        of this chunk, zero-filled records skipped before the first record, are listed
        (``_events`` lists them after the first record is judged): the error of a log
        not from seq 0 names it, and named it only where a chunk boundary fell before
        the first record (a fuzzed log: 64-byte chunks said it, 16 MiB ones did not)."""
        skipped = self.report.skipped
        entry = dict(skipped[0]) if skipped else None
        if head <= lead or len(skipped) > 1:
            return entry
        c = self.cols
        _, counts = zerofill.runs(c.seg[lead:head], c.foff[lead:head],
                                  np.ones(head - lead, np.bool_))
        k = int(counts[0])  # (the first file's run: one entry a file)
        file, at = self.names[int(c.seg[lead])], int(c.foff[lead])
        if entry is None:
            return zerofill.skipped_item(file, at, k)  # (not decoded yet)
        zerofill.join(entry, file, at, k)  # (the run a chunk boundary split)
        return entry

    def _check_first(self, first: int, skipped: dict | None = None) -> None:
        """Is the first record read where the log must go on? (history complete)
        ``skipped``: the report's first ``skipped`` entry, with what this chunk skipped
        before ``first`` (``_first_skipped``)."""
        if self.base is not None and not _judges_after_base(
                self.base, self.target, self.plan.exclusive, self.read_after_stop):
            return
        c = self.cols
        seq = int(c.seq[first])
        w = self._where(first)
        if self.base is None or self._resume_seq == ("start", 0) or self._base_holds_none():
            if seq != 0 and self.allow_incomplete:
                self._gap(*_starts_past_zero(seq, Path(w["file"]).name, w["offset"]))
            elif seq != 0:
                fix = _BASE_HOLDS_NONE if self.base is not None else _FROM_A_SNAPSHOT
                if skipped:  # not deleted: skipped, before this record
                    fix = _skipped_fix(skipped, fix)
                raise not_from_seq_zero(fix, **w)
            return
        if self._resume_seq is None:
            return
        how, want = self._resume_seq
        pos = self.base.position
        if how == "at":
            # A record right at the position must be the one the snapshot stopped
            # before (a mid-file header, a torn tail may come between otherwise).
            at = int(c.seg[first]) == 0 and int(c.foff[first]) == int(pos["offset"])
            if at and want is not None and seq != want:
                raise IncompleteHistoryError(
                    f"the log does not go on from the base snapshot's position "
                    f"({pos['segment']} offset {pos['offset']}, seq {want})", **w)
        elif seq != want and not self.allow_incomplete:
            raise _resume_refused(pos, seq, want, w, zerofill.is_zero_record(
                int(c.length[first]), seq))
        elif seq != want:
            self._gap(*_resumes_elsewhere(pos, seq, want))

    def _base_holds_none(self) -> bool:
        """The base covers no record of the log: its position follows headers and
        zero-filled records only (a seq 0 target stops at a zero record: 12 zero bytes,
        no payload, which no real record has). The log after it is then judged as from
        the start, as a restore of the whole log judges it: the first record must be
        seq 0 (it was taken as going on from the zeros)."""
        return _holds_no_record(self.base.position)

    def _gap(self, why: str, lacks: str | None = None) -> None:
        """A gap in the history that this restore allows: noted, and warned of (the
        state restored lacks ``lacks``, by default what came before)."""
        if self.gap_why is None:
            self.gap_why = why
            self.gap_lacks = lacks or _LACKS_THE_PAST

    @property
    def history_gap(self) -> bool:
        """A gap in the history was crossed: a snapshot of this state does not hold the
        whole history (expire skips it)."""
        return self.gap_why is not None

    def _seed_base(self) -> None:
        """Load the snapshot into the executor: its dimension, rows, open transactions.

        On the cpu executor rows move in only when the log names their id (and
        the others join at the end, already sorted); the cuda executor gets them
        all now.
        """
        from gpu_pitr.snapshot.base import LazyBase

        snap = self.base
        if snap.dim is not None:
            self.ex.fix_dim(int(snap.dim))
        self.names.append(str(snap.path))
        self._base_name = len(self.names) - 1
        if self.ex.name == "cpu":
            self.lazy = LazyBase(snap, self.ex.id_shard)
        else:
            self._move_in_all()
        if _base_is_the_stop(snap, self.target, self.plan.exclusive):
            self._stop_at_base()
        else:
            self._seed_pending(snap)

    def _move_in_all(self) -> None:
        """Every base row into the (cuda) executor, as inserts that count nothing."""
        from gpu_pitr.snapshot.base import seed_chunks

        snap = self.base
        c = self._seed_cols
        for buf, off, length in seed_chunks(snap, self.chunk_bytes, self._alloc):
            n = len(off)
            c.ensure_records(n)
            c.off[:n], c.length[:n], c.seq[:n] = off, length, 0
            c.seg[:n], c.foff[:n] = self._base_name, 0
            self.ex.decode(buf, c, 0, n)
            if np.any(c.status[:n] != OK):
                from gpu_pitr.snapshot.format import SnapshotError

                raise SnapshotError("its rows do not encode as records", file=str(snap.path))
            self.ex.apply_uncounted(buf, c, np.arange(n, dtype=np.int64), self._dim_mismatch)

    def _move_touched(self, n: int) -> None:
        """Before a chunk applies: the base rows whose ids its entries name."""
        c = self.cols
        batches = (c.kind[:n] == BATCH) & (c.status[:n] == OK)
        used = n + int(c.nent[:n][batches].sum())
        # Every entry's key, records that are not data included: a superset is harmless.
        rows = self.lazy.take(c.e_key[:used])
        if len(rows):
            self.ex.seed(self.base, rows, self.lazy.keys)

    def move_in_rest(self) -> bool:
        """Before the finish: when few base rows are left untouched, move them in too.

        A merge writes every row of the result into new memory beside the executor's
        rows; the executor's own finish sorts its rows where they are. So when the log
        brought most of the ids (an old base), the few base rows left go into the
        executor instead, and the index is sorted in place: less to write, and the
        peak holds the index once, not twice. Returns whether it did."""
        if self.lazy.untouched() * MOVE_IN_RATIO > self.ex.live_ids():
            return False
        rest = self.lazy.take_rest()
        if len(rest):
            self.ex.seed(self.base, rest, self.lazy.keys)
        return True

    def _stop_at_base(self) -> None:
        """A sequence or position target met by the base's last record (or a transaction
        target its restore stopped at): the base is the answer."""
        from gpu_pitr.snapshot.format import pending_transactions

        pos = self.base.position
        last = pos.get("last_record") or {}
        self.plan.stopped = True
        self.plan.open_at_stop = len(pending_transactions(pos))
        if self.to_seq is not None:
            # Its last record is the first numbered N, not read again: one of the records
            # of that number, which a restore of the whole log counts too (a writer
            # reopened numbers from 0 again: the warning names how many there are).
            self.to_seq_hits = 1
        self.report.stop = {"reason": "target", "file": str(self.wal_dir / last["segment"]),
                            "offset": int(last["offset"]), "seq": int(pos["last_seq"]),
                            "timestamp": None, "record": None}
        # Its kind and stamp, where the base's own restore stopped at that same record
        # (a snapshot --to-transaction X, --to-seq N): as a restore of the whole log says.
        if _stored_stop_at(self.base) == (last["segment"], int(last["offset"]),
                                          int(pos["last_seq"])):
            was = _stored(self.base, "stop")
            self.report.stop["timestamp"] = was.get("timestamp")
            self.report.stop["record"] = was.get("record")
        else:
            # Its own restore stopped elsewhere (a snapshot taken just before the next
            # record, or at the end of the log): the record's, as the snapshot stored
            # them (since 2026-12-07: its segment may since have been expired), else read
            # again from the log.
            self.report.stop.update(_base_last_kind(self.wal_dir, last))
        self.position = dict(pos)
        self.pending = self.base.pending

    def _seed_pending(self, snap) -> None:
        """The base's open transactions become carried rows, as if read just now."""
        from gpu_pitr.snapshot.format import SnapshotError, pending_transactions

        info = snap.position.get("pending") or {}
        txns = pending_transactions(snap.position)
        # An open transaction with no records yet still owns what follows.
        self.plan.seed_open([t for t, _ in txns], [k for _, k in txns])
        runs = info.get("record_runs")
        if runs is None:  # written before runs: one [file, offset] a record
            runs = [[file, foff, 1] for file, foff in info.get("records") or []]
        blob = np.frombuffer(snap.pending, np.uint8)
        bad = SnapshotError("pending records do not match the manifest",
                            file=str(Path(snap.path) / "pending.wal"))
        if any(not isinstance(k, int) or k < 1 for _, _, k in runs):
            raise bad
        total = sum(k for _, _, k in runs)
        if not total:
            if len(blob):
                raise bad
            return
        if total > len(blob) // RECORD_HEADER_SIZE:  # before allocating by it
            raise bad
        c = self.cols
        c.ensure_records(total)
        got, end = back_to_back(blob, c.off[:total], c.length[:total], c.seq[:total])
        if got != total or end != len(blob):
            raise bad
        name_index: dict[str, int] = {}
        files = np.empty(len(runs), np.int64)
        offsets = np.empty(len(runs), np.int64)
        for r, (file, foff, _) in enumerate(runs):
            if file not in name_index:
                name_index[file] = len(self.names)
                self.names.append(str(self.wal_dir / file))
            files[r], offsets[r] = name_index[file], int(foff)
        records = np.array([k for _, _, k in runs], np.int64)
        # Within a run each record follows the one before it in its file.
        run_of = np.repeat(np.arange(len(runs)), records)
        at = c.off[:total] - c.off[:total][np.cumsum(records) - records][run_of]
        c.seg[:total] = files[run_of]
        c.foff[:total] = offsets[run_of] + at
        c.epoch[:total] = 0  # read before the base's position: no restart counted yet
        self.buf = self._alloc(len(blob))
        self.buf[:] = blob
        self.n_carried = self.n_gathered = total

    def _events(self, events) -> None:
        if not len(events):
            return
        what = {
            EV_BEGIN_ALREADY_OPEN: "BeginTransaction for a transaction already open",
            EV_END_NOT_OPEN: "Commit/Abort for a transaction not open",
        }
        lists = {EV_SKIPPED: self.report.skipped,
                 EV_DAMAGE_AFTER_STOP: self.report.damage_after_stop}
        # Columns of every event at once, and a run of zero-filled records (16 MiB of
        # zeros read with --skip-corrupt: 1.4M events) as one entry (format.zerofill).
        c = self.cols
        rows = events[:, 1]
        seg, foff = c.seg[rows], c.foff[rows]
        zero = (zerofill.zero_records(c.length[rows], c.seq[rows])
                & np.isin(events[:, 0], list(lists)))
        firsts, counts = zerofill.runs(seg, foff, zero, same=events[:, 0])
        events, rows, foff = events[firsts], rows[firsts], foff[firsts]
        files = [self.names[s] for s in seg[firsts].tolist()]
        bad = c.bad_offsets(rows)
        for (ev, i), file, at, damaged, seq, status, k, z in zip(
                events.tolist(), files, foff.tolist(), bad.tolist(), c.seq[rows].tolist(),
                c.status[rows].tolist(), counts.tolist(), zero[firsts].tolist(), strict=True):
            if ev in what:
                self.report.anomalies.append({
                    "file": file, "offset": at, "seq": seq, "what": what[ev],
                    "transaction_id": int(c.aux[i])})
                continue
            listed = lists.get(ev)
            if listed is None:
                continue
            if not z:
                listed.append({"file": file, "offset": damaged, "seq": seq,
                               "what": STATUS_TEXT.get(status, "undecodable payload")})
            elif not zerofill.join(listed[-1] if listed else None, file, at, k):
                listed.append(zerofill.item(file, at, k, offset=damaged, seq=seq))

    def _bad_offset(self, i: int) -> int:
        return int(self.cols.bad_offsets(np.array([i]))[0])

    def _status_text(self, i: int) -> str:
        return STATUS_TEXT.get(int(self.cols.status[i]), "undecodable payload")

    def _fatal(self, i: int) -> None:
        w = self._where(i)
        w["offset"] = self._bad_offset(i)
        c = self.cols
        zeros = (": 12 zero bytes, as a file extended but never written leaves; "
                 "--skip-corrupt skips a run of them as one item"
                 if zerofill.zero_records(c.length[i], c.seq[i]) else "")
        older = (f"; {bincode1.WHOLE_ENTRY}"
                 if bincode1.record_is_bincode1(w["file"], int(c.foff[i])) else "")
        raise CorruptRecordError(
            f"{self._status_text(i)} (record at offset {int(c.foff[i])}{zeros}){older}", **w)

    def _record_stop(self, i: int) -> None:
        w = self._where(i)
        c = self.cols
        kind = int(c.kind[i])
        self.report.stop = {
            "reason": "target",
            **w,
            # A skipped undecodable record has neither (its variant byte proves nothing).
            "timestamp": int(c.ts[i]) if c.status[i] == OK else None,
            "record": VARIANT_NAMES[kind] if c.status[i] == OK else None,
        }

    def _trailing(self, first: int, n: int) -> None:
        c = self.cols
        for i in c.trailing_rows(first, n).tolist():
            entry = self._where(i)
            entry["count"] = c.trailing_count(i)
            self.report.trailing_bytes.append(entry)

    def _dim_mismatch(self, record: int, entry: int, dim: int, length: int | None = None
                      ) -> None:
        """``length``: the vector's, where the host's entry columns do not hold it (the
        cuda executor's entries are on the device)."""
        w = self._where(record)
        if length is None:
            length = int(self.cols.e_dim[entry])
        # A log upgraded from an oxirs-vec before bincode 2: its older records read as
        # empty vectors set the dimension to 0, and the first new one fails here, before
        # the end of the log where the restore names the older format (``_older_format``).
        older = _older_format(self.report.trailing_bytes, tail="") if dim == 0 else None
        raise DimensionMismatchError(
            f"vector of length {length} differs from the index dimension {dim}"
            + (f", which records before it set: {older[0]}" if older else ""), **w)

    def _joined_after_restart(self) -> tuple | None:
        """The first transaction open at the end of the log whose records go on past a
        writer restart that followed its BeginTransaction, which SPEC section 3 discards
        with it: a writer that restarted without aborting it. ``(txn, its records, how
        many after the restart, where the first of those is)``.

        A restart is a record whose seq is not above the one before it in the log,
        whichever record that is (``Restarts``: each row's epoch against the begin's;
        the restarted writer's checkpoints or transactions may take the low seqs, and
        its first record joining the transaction come later, numbered past the
        transaction's own). For a transaction a base snapshot carried in, restarts are
        counted from the base's position, and among its records from the base its own
        seqs going back are the restart."""
        txns, counts = self.plan.open_slots()
        begins = self.plan.open_begin_epochs()
        seq, epoch = self.cols.seq, self.cols.epoch
        start = 0
        for txn, count, begin in zip(txns.tolist(), counts.tolist(), begins.tolist(),
                                     strict=True):
            carried = begin == int(UNKNOWN_BEGIN)  # (restarts counted from the base on)
            after = np.flatnonzero(epoch[start:start + count] > np.uint64(0 if carried
                                                                          else begin))
            first = start + int(after[0]) if len(after) else None
            if carried:
                rows = seq[start:start + count]
                back = np.flatnonzero(rows[1:] <= rows[:-1])
                if len(back) and (first is None or start + int(back[0]) + 1 < first):
                    first = start + int(back[0]) + 1
            if first is not None:
                return txn, count, start + count - first, self._where(first)
            start += count
        return None

    def _end_of_log(self) -> None:
        self.report.transactions["in_flight_discarded"] = (
            self.plan.open_at_stop if self.plan.stopped else self.plan.open_transactions)
        if not self.plan.stopped:
            self.joined_after_restart = self._joined_after_restart()
        if self.to_seq is not None and not self.plan.stopped:
            # A base's records count: one at the end of the log has none read after it.
            raise _seq_not_found(self.to_seq, self.seq_runs, self.seq_range is not None,
                                 self.base is not None, self._listed, self.wal_dir)
        if self.to_transaction is not None and not self.plan.stopped:
            raise TargetNotFoundError(self._txn_not_found(), file=str(self.wal_dir))
        if self.to_position is not None and not self.plan.stopped:
            # The record was found before the restore (check_position): not read now,
            # as its segment was skipped (--skip-corrupt), changed since, or lies before
            # the base's position.
            name, offset = self.to_position
            skipped = "" if not self.report.skipped else (
                f"; --skip-corrupt skipped {len(self.report.skipped)} damaged record or "
                "file: it may be among them")
            if find_segment(self._listed, name) is None:
                # Not checked: a snapshot's manifest said its last record is the target
                # (its segment gone), but that snapshot was not the base (passed over).
                raise TargetNotFoundError(
                    f"no segment {name} in the WAL directory, and no base snapshot whose "
                    "last record is the target was used", file=str(self.wal_dir / name),
                    offset=int(offset))
            raise TargetNotFoundError(
                f"the restore read no record at this position (the log changed since it "
                f"was checked, or it was not read){skipped}",
                file=str(self.wal_dir / name), offset=int(offset))
        cnt = self.plan.counters
        self.report.commit_points_applied = int(cnt[C_COMMIT_POINTS])
        self.report.transactions["committed"] = int(cnt[C_COMMITTED])
        self.report.transactions["aborted"] = int(cnt[C_ABORTED])


    def _txn_not_found(self) -> str:
        """Why no record ends the transaction target (``_txn_not_found``)."""
        return _txn_not_found(self.to_transaction, self.base, self._listed, self.wal_dir,
                              self.txn_begun, self.txn_stray, self.report.skipped)


def _seqs_held(seq_runs, based: bool) -> str:
    """The seqs there are, for a seq target none carries: the runs of consecutive
    numbers (a writer restart starts another), the first few of them; ``seq_runs`` the
    restore's ``SeqRuns``, ``based``: it started from a base snapshot."""
    last = seq_runs.last
    runs = merge_runs(seq_runs.runs + ([] if last is None else [[last, last]]))
    shown = [str(a) if a == b else f"{a} to {b}" for a, b in runs[:_RUNS_SHOWN]]
    text = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    if len(runs) > _RUNS_SHOWN:
        text = (f"{', '.join(shown)} and {len(runs) - _RUNS_SHOWN} more runs (`gpu-pitr "
                "inspect --records` lists them)")
    who = "the base snapshot and the records read after it carry" if based \
        else "the records read carry"
    return f"{who} seq {text}"


def _seq_not_found(seq: int, seq_runs, read_any: bool, based: bool, listed: list,
                   wal_dir: Path) -> TargetNotFoundError:
    """The error of a seq target no record carries, at the end of the log
    (``_Restore._end_of_log``; ``plan_restore`` where no log is read at all):
    ``read_any``, records were read; ``listed``, the segments listed."""
    held = "no records were read" if not read_any and seq_runs.last is None \
        else _seqs_held(seq_runs, based)
    # No segment file at all: most often a WAL_DIR given wrong (the directory above it,
    # the snapshots), which the note names; a bare "no record has seq N" sent the
    # operator looking for the record instead of the directory.
    wrong = "" if listed else f"; {no_segments_note(wal_dir)}"
    return TargetNotFoundError(f"no record has sequence number {seq} ({held}){wrong}",
                               file=str(wal_dir))


def _txn_not_found(x: int, base, listed: list, wal_dir: Path, begun: dict | None = None,
                   stray: dict | None = None, skipped: list = ()) -> str:
    """Why no record ends the transaction target X (``_Restore._end_of_log``;
    ``plan_restore`` where no log is read at all): begun but still open at the end of
    the log (``begun``: where it began), or never begun (``stray``: a stray end of it,
    if one was read); with a base, that only the log after its position was read.
    ``skipped``: the report's, what --skip-corrupt passed over."""
    from gpu_pitr.snapshot.format import pending_transactions

    def at(w: dict) -> str:
        return f"{Path(w['file']).name} offset {w['offset']} (seq {w['seq']})"

    def skipped_hint(record: str) -> str:
        # (What --skip-corrupt passed over may be the record that began or ended it.)
        return "" if not skipped else (
            f"; --skip-corrupt skipped {len(skipped)} damaged record"
            f"{'s or files' if len(skipped) > 1 else ' or file'} (the first at "
            f"{Path(skipped[0]['file']).name} offset {skipped[0]['offset']}): its "
            f"{record} may be among them")

    open_at_base = base is not None and any(
        t == x for t, _ in pending_transactions(base.position))
    if open_at_base or begun is not None:
        began = (f"it was open at the base snapshot's position ({base.path})"
                 if open_at_base else f"it begins at {at(begun)}")
        return (f"transaction {x} never ends: {began} and is still open at the end of "
                "the log (in flight: no CommitTransaction or AbortTransaction closes it)"
                + skipped_hint("end"))
    stray_text = ("" if stray is None else
                  f"; the {stray['record']} at {at(stray)} closes no open "
                  "transaction (an anomaly)")
    where = "the log"
    if base is not None and listed and getattr(base, "transaction_absent", None) != x:
        # (With --snapshots the log's records of X were found first: where none is,
        # no older snapshot serves either, and the whole log's words are the answer.
        # No segment at all: the directory is the answer, not an older snapshot.)
        where = (f"the log after the base snapshot's position ({base.path}; if "
                 f"transaction {x} ended in the log the base covers, the base is past "
                 "the target: restore from an older snapshot, --base, or from the log "
                 "alone)")
    # Where the log ends: an archive not brought up to date lacks X altogether.
    last = listed[-1] if listed else None
    wrong = (f"; {no_segments_note(wal_dir)}" if last is None else
             f"; the log ends with {last.name} ({last.size:,} bytes): an archive not "
             "brought up to date, or another store's log?")
    return (f"transaction {x} never begins in {where}: no BeginTransaction has its id"
            f"{stray_text}{wrong}{skipped_hint('begin')}")


def _resume_point(pos: dict, segments: list) -> tuple[list, dict, tuple | None, str | None]:
    """Where a restore from a base at ``pos`` resumes in the log of ``segments``: the
    segments it reads, where it starts in the first (``{0: offset}``), the seq the first
    record read must have (``("start", 0)``, ``("at", seq)``, ``("after", seq)``; None:
    not judged), and the gap ``base_gap`` finds there (None: none). The restore's and
    ``plan_restore``'s; ``snapshot.log_after`` counts the same segments (``resume_at``)."""
    name = pos.get("segment")
    later, start = resume_at(pos, segments)
    if name is None:  # a snapshot of an empty log: all of it comes after, from seq 0
        return later, {}, ("start", 0), None
    if find_segment(segments, name) is not None:
        # (base_mismatch checked this listing: the file reaches the position)
        return later, {0: start}, ("at", pos.get("seq")), None
    gap = base_gap(pos, segments)
    if gap is None:
        # The writer numbers on across a rotation: the next file must go on.
        return later, {}, ("after", int(pos["last_seq"]) + 1), None
    return later, {}, None, gap


def _resume_refused(pos: dict, seq: int, want: int, w: dict, zero: bool = False
                    ) -> IncompleteHistoryError:
    """The error of a restore from a base whose segment is gone where the log's first
    record read (at ``w``: file, offset, seq) is seq ``seq``, not ``want``, the base's
    last seq + 1 (``_Restore._check_first``; ``plan_restore`` reads that record too).
    ``zero``: that record is zero-filled, whose seq 0 is none the writer gave: not a
    writer reopened, and not a gap that --allow-incomplete-history should let through
    (the restore would then fail at it as damage): --skip-corrupt judges the record
    after it (review zeroaudit)."""
    if zero:
        return IncompleteHistoryError(
            f"the first record right after the base snapshot's position "
            f"({pos['segment']} offset {pos['offset']}), whose segment is gone, is "
            "zero-filled (12 zero bytes: no seq the writer gave, a crash after the file "
            f"was extended), so it does not show that the log goes on at seq {want}: "
            "--skip-corrupt (skip_corrupt=True) skips zero-filled records and judges "
            "the record after them", **w)
    where = (f"the log resumes at seq {seq}, not {want}, right after the base "
             f"snapshot's position ({pos['segment']} offset {pos['offset']})")
    if seq == 0:  # a writer reopened without recovery, or another log
        return IncompleteHistoryError(
            f"{where}, whose segment is gone: a writer reopened without recovery "
            "numbers from 0 again, so the log cannot show whether segments written "
            "between are missing (if the writer restarted right after that segment, "
            "none are: restore anyway with --allow-incomplete-history, "
            "allow_incomplete_history=True)", **w)
    return IncompleteHistoryError(
        f"{where}: history between is missing (restore anyway: "
        "--allow-incomplete-history, allow_incomplete_history=True)", **w)


#: What a state restored across a gap in the history lacks, unless said otherwise.
_LACKS_THE_PAST = "what came before and may never have existed"


def _gap_warning(why: str, lacks: str | None = None) -> str:
    """The warning of a gap in the history a restore crossed as allowed (and the
    dry run's of it, ``plan_restore``)."""
    return (f"incomplete history, restored as allowed: {why}; the state restored lacks "
            f"{lacks or _LACKS_THE_PAST}")


def _restored_across_a_gap(snap) -> str:
    """The gap of a base snapshot itself restored from an incomplete history."""
    return f"the base snapshot {snap.path} was itself restored from an incomplete history"


def _starts_past_zero(seq: int, name: str, offset: int) -> tuple[str, None]:
    """The gap (``_Restore._gap``'s arguments) of a log read from its start whose first
    record is seq ``seq``, not 0, in the segment ``name`` at ``offset``."""
    return f"the log starts at seq {seq} ({name} offset {offset}), not 0", None


def _zero_record_at(path, offset: int) -> bool:
    """Whether the record at ``offset`` of the segment at ``path`` is zero-filled (as
    ``first_log_record`` found it; unreadable now: not known to be)."""
    from gpu_pitr.snapshot import ZERO_RECORD

    try:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), RECORD_HEADER_SIZE, offset) == ZERO_RECORD
    except OSError:
        return False


def _resumes_elsewhere(pos: dict, seq: int, want: int) -> tuple[str, str | None]:
    """The gap (``_Restore._gap``'s arguments) of a log whose first record after a base
    at ``pos`` whose segment is gone is seq ``seq``, not ``want``."""
    return (f"the log resumes at seq {seq}, not {want}, right after the base snapshot's "
            f"position ({pos['segment']} offset {pos['offset']})",
            None if seq else "whatever segments written between did, if the writer wrote "
            "any before it restarted at seq 0")


def _base_is_the_stop(snap, target: dict, exclusive: bool) -> bool:
    """Whether the base ``snap`` is the answer to ``target`` itself: a sequence or position
    target met by its last record (``stops_at_base``), or an inclusive transaction target
    X that its own restore stopped at (``snapshot --to-transaction X``, its stored report
    says: its position is just after the record that ended X; read on, no record after
    it ends X). ``_Restore._seed_base``, and ``plan_restore``: with ``read_after_stop``
    False such a restore reads no log."""
    if stops_at_base(snap.position, target, exclusive):
        return True
    txn = target.get("to_transaction")
    return txn is not None and taken_at_transaction(getattr(snap, "manifest", None), txn,
                                                    exclusive)


def taken_at_transaction(manifest, txn: int, exclusive: bool) -> bool:
    """Whether a snapshot's ``manifest`` (its stored report) says its own restore stopped
    at the inclusive transaction target ``txn`` (``snapshot --to-transaction X``): the
    answer to that target itself (``_base_is_the_stop``; ``snapshot.choose``, before the
    snapshot is loaded)."""
    if exclusive:
        return False
    stop = _in_report(manifest, "stop")
    return (_in_report(manifest, "target") == {"kind": "transaction", "value": txn,
                                                "exclusive": False}
            and stop is not None and stop.get("reason") == "target")


def _gap_not_read(snap, target: dict, exclusive: bool, read_after_stop: bool) -> bool:
    """A gap in the log after the base ``snap`` that the restore never reaches: the base
    is itself the target and nothing after the stop is read (``read_after_stop``
    False), so the state is the base's whatever came after it (PostgreSQL's
    ``recovery_target = 'immediate'``; ``inspect SNAP`` prints that restore)."""
    return not read_after_stop and _base_is_the_stop(snap, target, exclusive)


def _judges_after_base(snap, target: dict, exclusive: bool, read_after_stop: bool) -> bool:
    """Whether a restore from the base ``snap`` judges the first record it reads after it
    (``_Restore._check_first``, ``plan_restore``'s ``_check_resume``). Not where the
    base is itself the stop and the log after it is not read; nor where the base is the
    stop and holds no record of the log: its own restore (a seq 0 target, or a position
    target, at a zero-filled record) took the zero record it stopped at as the log's
    first, seq 0, and judged the start there, and a restore of the whole log judges no
    record past its stop. Otherwise the log must go on from the base, even past the
    stop: a record there that does not says the base is not of this log."""
    if not _base_is_the_stop(snap, target, exclusive):
        return True
    return read_after_stop and not _holds_no_record(snap.position)


def _holds_no_record(pos: dict) -> bool:
    """A base at ``pos`` covers no record of the log (``_Restore._base_holds_none``):
    ``covers_records`` false. A position without it (snapshots of versions before
    2026-12-07) is judged by its seqs: none but the last, itself a zero-filled record's,
    which passed a base of two zero records or more as one that holds a record."""
    covers = pos.get("covers_records")
    if isinstance(covers, bool):
        return not covers
    last = pos.get("last_record")
    return ("seq_runs" in pos and not pos["seq_runs"]
            and (last is None or last.get("length") == RECORD_HEADER_SIZE))


def _no_history_after_base(gap: str, later: list, wal_dir: Path) -> IncompleteHistoryError:
    """The error of a restore from a base the log does not go on from (``base_gap``)."""
    return IncompleteHistoryError(f"{gap}: history after the snapshot is missing",
                                  file=str(later[0].path if later else wal_dir))


def _run_up_to(entry: dict, end: int) -> dict:
    """A report's entry in the stop record's file: a run of zero records
    (``format.zerofill``) cut back to end by file offset ``end`` where it goes on past
    it."""
    if entry.get("records") is None or entry["start"] + entry["bytes"] <= end:
        return entry
    records = (end - entry["start"]) // RECORD_HEADER_SIZE
    return zerofill.item(entry["file"], entry["start"], records,
                         **{k: entry[k] for k in ("offset", "seq")})


def _needs_host():
    try:
        from gpu_pitr.executors.cuda import NeedsHostExecutor
    except ImportError:  # no numba.cuda at all: the cuda executor never ran
        return ()
    return NeedsHostExecutor


def _base_for(base, snapshots, target: dict, exclusive: bool, allow_incomplete: bool = False,
              segments=()):
    """The snapshot a restore starts from (or None), notes for the report, and the
    warnings among them (``snapshot.choose``).

    A snapshot this restore loads has its vectors mapped, not read: the rows the
    result keeps are copied from the page cache once, into their places. A snapshot
    restored across a gap in the history (``history_complete`` false) is a base only
    when this restore allows an incomplete history too."""
    if base is None and snapshots is None:
        return None, [], []
    from gpu_pitr import snapshot

    if snapshots is not None:
        return snapshot.choose(snapshots, target, exclusive, allow_incomplete, mmap=True,
                               key_table=True, segments=segments)
    snap = base if hasattr(base, "position") else snapshot.load(base, mmap=True,
                                                                 key_table=True)
    mismatch = base_mismatch(snap.position, segments)
    if mismatch is not None:
        raise BaseMismatchError(f"the base snapshot is not of this log: {mismatch}",
                                file=str(snap.path))
    problem = target_problem(snap.position, target, exclusive)
    if problem is not None:
        raise TargetBeforeBaseError(f"the target is earlier than the base snapshot: {problem}",
                                    file=str(snap.path))
    if snap.position.get("history_complete") is False and not allow_incomplete:
        raise IncompleteHistoryError(
            "the base snapshot was restored from an incomplete history: a restore from it "
            "is too (allow it: --allow-incomplete-history, allow_incomplete_history=True)",
            file=str(snap.path))
    return snap, [], []


def _base_bytes(base, snapshots) -> int:
    """The vector bytes of the base snapshot a restore names (with ``snapshots``: of the
    largest there), as the manifests say (0: none, or none that reads yet: loading
    says why)."""
    from gpu_pitr.errors import WalError

    if hasattr(base, "vectors"):
        return int(base.vectors.nbytes)
    try:
        from gpu_pitr.snapshot import snapshot_dirs
        from gpu_pitr.snapshot.format import read_manifest

        paths = [base] if base is not None else snapshot_dirs(snapshots) if snapshots else []
        sizes = []
        for path in paths:
            with contextlib.suppress(WalError):
                manifest = read_manifest(path)
                sizes.append(4 * int(manifest.get("count") or 0) * int(manifest.get("dim") or 0))
        return max(sizes, default=0)
    except (OSError, ImportError, ValueError, TypeError):
        return 0


def _base_ends_at(base, snapshots, name: str, offset: int) -> bool:
    """Whether the base snapshot a restore names (with ``snapshots``: one there) covers
    the record at ``name`` offset ``offset`` as its last (its state is an inclusive
    position target's answer there), as the manifests say (one that does not read: no;
    loading says why)."""
    from gpu_pitr.errors import WalError
    from gpu_pitr.snapshot.base import stops_at_base

    target = {"to_position": (name, int(offset))}
    if hasattr(base, "position"):
        return stops_at_base(base.position, target)
    try:
        from gpu_pitr.snapshot import snapshot_dirs
        from gpu_pitr.snapshot.format import read_manifest

        paths = [base] if base is not None else snapshot_dirs(snapshots) if snapshots else []
        for path in paths:
            with contextlib.suppress(WalError):
                if stops_at_base(read_manifest(path)["position"], target):
                    return True
    except (OSError, ImportError, ValueError, TypeError, KeyError):
        pass
    return False


_PIECE_STEP = 1 << 20  # a chunk cut to its log's largest segment is rounded up to this


def _run(args, executor, chunk_bytes, target_doc, progress=None, base=None, segments=None,
         id_shard=None, read_after_stop=True):
    """One restore on ``executor``; ``segments``: the listing of ``args[0]`` the caller
    checked (None: listed here); ``id_shard``: the ``IdShard`` whose ids alone it keeps."""
    report = RestoreReport(target=target_doc, backend=executor.name,
                           incomplete_history_allowed=bool(args[4]),
                           read_after_stop=bool(read_after_stop))
    if id_shard is not None:
        executor.keep_id_shard(id_shard)
        report.id_shard = {"index": id_shard.index, "count": id_shard.count}
    if base is not None:
        pos = base.position
        report.base = {"path": str(base.path), "segment": pos.get("segment"),
                       "offset": pos.get("offset"), "seq": pos.get("seq"),
                       "timestamp": pos.get("timestamp"), "ids": int(base.count),
                       "dim": base.dim, "skipped": _skipped_before(base),
                       "missing_seqs": _missing_before(base)}
    default = getattr(executor, "chunk_bytes", DEFAULT_CHUNK_BYTES)
    if segments is None:
        segments = list_segments(args[0])
    largest = max((s.size for s in segments), default=0)
    # No piece is longer than its segment: buffers past that would be allocated unused
    # (--chunk-size 64G on a log of 20 MB asked for five of 64 GiB; and the cuda
    # executor page-locked five of its 128 MiB default for a log of a few KB). Whole
    # MiB, so that restores of similar logs reuse a pool's buffers of one size.
    fits = max(_PIECE_STEP, -(-largest // _PIECE_STEP) * _PIECE_STEP)
    chunk_bytes = min(int(chunk_bytes) if chunk_bytes else default, fits)
    run = _Restore(*args, executor, chunk_bytes, report, progress, base, segments=segments)
    try:
        run.run()
        del run.buf, run.cols, run._piece, run._reader  # the read buffers before the sort
        run._tell("finish")
        t = time.perf_counter()
        if run.lazy is not None and not run.move_in_rest():
            # The cpu executor: its rows are copied into the merge anyway.
            index = run.lazy.merge(*executor.finish_unmoved(report))
        else:
            index = executor.finish(report)
    except BaseException:
        # An error or a stop: the executor's threads end now, not when it is collected
        # (the traceback holds it).
        getattr(executor, "close", lambda: None)()
        raise
    run.timings["finish"] += time.perf_counter() - t
    index.position, index.pending = run.position, run.pending
    return index, run


def _as_listed(segments: list, log_end: dict, wal_path: Path) -> list:
    """``segments`` as ``log_end`` listed them: those it names, at its sizes (the log's
    later segments and bytes left out). A segment it names that is missing or shorter
    here is a WalError naming it: deleted since (a writer's checkpoint removes old
    segments), cut, or a copy of the log behind the one listed."""
    if not isinstance(log_end, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in log_end.items()):
        raise ValueError(f"log_end is {{segment name: bytes}}, not {log_end!r}")
    here = {seg.name: seg for seg in segments}
    out = []
    for name in sorted(log_end, key=str.encode):
        size = log_end[name]
        seg = here.get(name)
        if seg is None or seg.size < size:
            has = "missing" if seg is None else f"{seg.size} bytes"
            raise WalError(f"{has} here, {size} bytes when the log was listed for this "
                           "restore (deleted or cut since, or a copy of the log behind "
                           "the one listed?)",
                           file=str(wal_path / name))
        out.append(dataclasses.replace(seg, size=size))
    return out


def _budgeted(executor, memory_budget: int | None):
    """``executor``, its garbage allowance shared among its shards where a memory
    budget is given (the cpu executor's arenas; ``HostMap.share_slack``)."""
    if memory_budget is not None and hasattr(executor, "map"):
        executor.map.share_slack()
    return executor


def _check_targets(to_time, to_seq, to_transaction, to_position, exclusive) -> None:
    """At most one target, and ``exclusive`` only with one (``restore``, ``plan_restore``)."""
    targets = (to_time, to_seq, to_transaction, to_position)
    if sum(t is not None for t in targets) > 1:
        raise ValueError("give at most one of to_time, to_seq, to_transaction and "
                         "to_position")
    if exclusive and all(t is None for t in targets):
        # As the command line: "exclusive" of nothing is a slip, not the latest state.
        raise ValueError("exclusive leaves out the target: give to_time, to_seq, "
                         "to_transaction or to_position")


def _check_flags(**flags) -> None:
    """Each of ``flags`` a bool: "no" would be taken as True."""
    for name, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} is True or False, not {flag!r}")


def _target(to_time, to_seq, to_transaction, position, exclusive) -> tuple[dict, dict]:
    """The target for the plan walk, and the report's document of it."""
    if to_time is not None:
        target = {"to_time": parse_time(to_time, exclusive)}
        return target, {"kind": "time", "value": target["to_time"],
                        "exclusive": bool(exclusive)}
    if to_seq is not None:
        return _u64_target("to_seq", "sequence number", to_seq, "seq", exclusive)
    if to_transaction is not None:
        return _u64_target("to_transaction", "transaction id", to_transaction,
                           "transaction", exclusive)
    if position is not None:
        return ({"to_position": (position[1], position[2])},
                {"kind": "position", "value": f"{position[1]}:{position[2]}",
                 "exclusive": bool(exclusive)})
    return {}, {"kind": "latest", "value": None, "exclusive": False}


def _check_position_target(wal_path: Path, segments: list, position, exclusive, base,
                           snapshots) -> None:
    """A position target checked before a base is chosen or anything restored: a
    position mistyped is said at once, with the starts nearest it (a seq target's error
    waits for the log's end)."""
    if position is None:
        return
    if (not exclusive and find_segment(segments, position[1]) is None
            and _base_ends_at(base, snapshots, *position[1:])):
        # The segment is gone (the writer's retention, expire) and a base's last record
        # is the target: that base is the answer (``stops_at_base``), and nothing of the
        # segment is read. Its path is still judged.
        position_in_wal_dir(wal_path, *position[::2])
    else:
        check_position(wal_path, segments, *position)


def _u64_target(name: str, what: str, value, kind: str, exclusive) -> tuple[dict, dict]:
    """The target (``{name: value}``) and its report ``target`` of a u64 target argument
    (``to_seq``, ``to_transaction``): an integer in 0..2^64-1, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # 2.7 or True would restore to seq 2 or 1, and say so only in the report.
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if int(value) < 0 or int(value) >= 2**64:
        raise ValueError(f"{what} {value} is outside 0..2^64-1")
    return {name: int(value)}, {"kind": kind, "value": int(value), "exclusive": bool(exclusive)}


def parse_position(value) -> tuple[str, str, int]:
    """A position target's ``(FILE as given, segment name, offset)``, from
    ``"FILE:OFFSET"`` or ``(FILE, OFFSET)``: FILE a segment file name, or a path whose
    last part is one; OFFSET a byte offset (decimal digits in the text). A ValueError
    otherwise, before the log is listed."""
    from gpu_pitr.format.layout import SEGMENT_NAME_RE

    form = ("FILE:OFFSET (a segment file name, wal-<16 hex digits>.log, and the byte offset "
            "of a record in it, as `gpu-pitr inspect --records` prints them)")
    if isinstance(value, str):
        # Also the place as inspect prints it, ``wal-...log: offset 1234`` (an `end:`
        # line of --transactions copied up to its offset): what the runbook has the
        # operator paste.
        printed = re.fullmatch(r"(.+?): offset ([0-9]+)", value)
        file, sep, text = ((printed[1], ":", printed[2]) if printed
                           else value.rpartition(":"))
        if not sep or not text.isascii() or not text.isdigit():
            cut = re.match(r"(.+?): offset ([0-9]+):", value)
            hint = "" if cut is None else f" (give it as {cut[1]}:{cut[2]})"
            raise ValueError(f"to_position is {form}, not {value!r}{hint}")
        offset = int(text)
    elif isinstance(value, tuple) and len(value) == 2:
        file, offset = value
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
            raise ValueError(f"to_position's offset must be an integer, not {offset!r}")
        if not isinstance(file, (str, os.PathLike)):
            raise ValueError(f"to_position's file is a segment's name or path, not {file!r}")
        file = os.fspath(file)
        if int(offset) < 0:
            raise ValueError(f"to_position's offset {offset} is negative")
    else:
        raise ValueError(f"to_position is {form} or (FILE, OFFSET), not {value!r}")
    name = os.path.basename(file)
    if not isinstance(name, str) or not SEGMENT_NAME_RE.fullmatch(name):
        raise ValueError(f"to_position: {file!r} is not a segment file name "
                         "(wal-<16 lowercase hex digits>.log)")
    return file, name, int(offset)


def position_in_wal_dir(wal_path, file: str, offset: int) -> None:
    """A position's FILE given as a path must name a file in ``wal_path`` (the same
    directory, however written): one elsewhere is another log's segment of that name, a
    TargetNotFoundError. (``scaleout`` asks where the path was given: a worker's working
    directory is its own.)"""
    parent = os.path.dirname(file)
    if parent:
        try:
            same = os.path.samefile(parent, wal_path)
        except OSError:
            same = False
        if not same:
            raise TargetNotFoundError(
                f"the position's file is not in the WAL directory {wal_path}: give the "
                "segment's name alone, or its path there", file=file, offset=offset)


def check_position(wal_path: Path, segments: list, file: str, name: str, offset: int) -> None:
    """That a whole record starts at byte ``offset`` of segment ``name`` of the log
    (``segments``, listed), else a TargetNotFoundError naming the file and offset, and
    what is there instead (``format.dump.position_problem``). A FILE given as a path
    must be in ``wal_path``: one elsewhere is another log's segment of the same name."""
    from gpu_pitr.format.dump import position_problem

    position_in_wal_dir(wal_path, file, offset)
    k = find_segment(segments, name)
    if k is None:
        where = f"no segment {name} in the WAL directory"
        # An entry of that name the listing passes over (a directory, a FIFO, a link to
        # one): what it is, not a guess that the segment was deleted or mistyped.
        odd = dict(not_segment_files(wal_path)).get(name)
        if odd is not None:
            where += f": an entry {odd}"
        elif not segments:
            where += f" ({no_segments_note(wal_path)})"
        elif name.encode() < segments[0].name.encode():
            where += (f" (it would come before the log's first segment, {segments[0].name}: "
                      "deleted, expired, or never archived?)")
        elif name.encode() > segments[-1].name.encode():
            where += (f" (it would come after the log's last segment, {segments[-1].name}: "
                      "an archive not brought up to date?)")
        else:
            where += " (the log has segments before and after it: deleted, or mistyped?)"
        raise TargetNotFoundError(where, file=str(wal_path / name), offset=offset)
    problem = position_problem(segments[k], offset)
    if problem is not None:
        raise TargetNotFoundError(f"position target: {problem}",
                                  file=str(segments[k].path), offset=offset)


def _size_arg(name: str, value) -> int:
    """A size argument: whole bytes, or a size text like ``"256M"`` (as the command
    line's); positive. Anything else is a ValueError naming the argument."""
    from gpu_pitr.budget import parse_size

    if isinstance(value, str):
        try:
            size = parse_size(value)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} is whole bytes or a size text like '256M', not {value!r}")
    else:
        size = int(value)
    if size <= 0:
        raise ValueError(f"{name} must be positive (None: the default), not {value!r}")
    return size


@interrupts.raises_stops
def restore(
    wal_dir: str | os.PathLike,
    *,
    to_time: TimeTarget | None = None,
    to_seq: SupportsIndex | None = None,
    to_transaction: SupportsIndex | None = None,
    to_position: str | tuple[str | os.PathLike, SupportsIndex] | None = None,
    exclusive: bool = False,
    backend: str = "auto",
    skip_corrupt: bool = False,
    allow_incomplete_history: bool = False,
    chunk_bytes: SupportsIndex | str | None = None,
    memory_budget: SupportsIndex | str | None = None,
    progress: Callable[[str, int, int, int], object] | None = None,
    base: str | os.PathLike | Snapshot | None = None,
    snapshots: str | os.PathLike | None = None,
    id_shard: tuple[int, int] | None = None,
    log_end: Mapping[str, int] | None = None,
    read_after_stop: bool = True,
    strict: bool = False,
) -> RestoredIndex:
    """Restore the index in ``wal_dir`` as it was at a point in time (SPEC section 3).

    Args:
        wal_dir: directory of ``wal-*.log`` segments; only ever read.
        to_time: Unix seconds (a number, or its decimal text), a zone-aware
            ``datetime`` or ISO-8601 text with a zone; stop before the first commit
            point later than it (``exclusive``: at or later).
        to_seq: a log position: the first record with this sequence number; the
            commit points complete at it are applied (``exclusive``: only those
            complete before it, PostgreSQL's ``recovery_target_inclusive = off``).
        to_transaction: a transaction id X (PostgreSQL's ``recovery_target_xid``):
            stop just after the first CommitTransaction or AbortTransaction in log
            order that closes an open X (``exclusive``: just before it, X not
            applied). Ids reused after a writer restart: the first such record wins.
            An error if no record closes X (never begun, or still open at the end).
            With a base snapshot only the log after its position is read (see
            ``snapshots``).
        to_position: a log position named by the record there (PostgreSQL's
            ``recovery_target_lsn``): ``"FILE:OFFSET"`` or ``(FILE, OFFSET)``, FILE a
            segment's name (``wal-<16 hex>.log``, or a path to it in ``wal_dir``),
            OFFSET the byte offset of a record's header in it, as ``gpu-pitr inspect
            --records`` prints them. Applies exactly the commit points complete at
            that record, as ``to_seq`` at its seq does (``exclusive``: only those
            complete before it); unambiguous where seqs repeat after a writer
            restart. An error before anything is read if no whole record starts
            there (naming the nearest starts before and after it), in a torn tail,
            or in no segment of ``wal_dir``.
        exclusive: leave out the target itself (see ``to_time``, ``to_seq``,
            ``to_transaction`` and ``to_position``).
        backend: "cpu", "cuda" or "auto" (the GPU when CuPy sees one).
        skip_corrupt: skip undecodable records and unreadable segments, listing
            each in the report, instead of failing.
        allow_incomplete_history: restore even if the log does not start at
            sequence number 0.
        chunk_bytes: bytes read per chunk (default 16 MiB on the cpu executor,
            128 MiB on cuda; five such buffers are in use at once; at least 64 bytes
            are read at a time). A piece never spans two segments, so a size past
            the largest segment is cut to it (rounded up to whole MiB).
        memory_budget: instead of ``chunk_bytes``: the chunk size whose working
            memory (beyond the interpreter and the index) stays within this many
            bytes, or a size text like ``"256M"`` (``--memory-budget``).
        progress: called as ``progress(phase, bytes_done, bytes_total, records)``
            after each chunk (phase "read") and once before the final sort
            (phase "finish"); for progress bars.
        base: a snapshot directory (``gpu-pitr snapshot``) or a loaded
            ``Snapshot`` to start from: its state, then only the log after its
            position. The result is exactly that of a restore of the whole log.
        snapshots: a directory of snapshot directories: start from the newest
            intact one at or before the target (older ones when one is damaged,
            the whole log when none serves; the report's message says which). For
            ``to_transaction``, whose place no manifest says: the newest one before
            X's first end in the log, found by a pass over the log's markers of X
            first (``snapshot.choose``).
        id_shard: ``(index, count)``: keep only the ids of that shard of ``count``
            (``gpu_pitr.resolve.idshard``): the same log read, each id's entries
            applied by exactly one shard. ``gpu_pitr.scaleout`` runs the shards on
            Dask workers and ``merge_shards`` joins them into this call's result
            without ``id_shard``.
        log_end: ``{segment file name: bytes}``, the log as listed once: only those
            segments are read, each no further than its bytes, whatever was written
            since (``gpu_pitr.scaleout`` lists the log once for all its shards, so
            that they restore one state of a log being written). A segment listed
            that is gone or shorter here is an error.
        read_after_stop: False: stop reading the log at the stop point
            (``--stop-reading-at-target``). By default the log after it is read too,
            and checked, so that damage there is reported (SPEC section 2), which takes
            as long as the rest of the log; without it, a target early in a long log
            (or just after a snapshot, with ``snapshots``) reads only the log up to it.
            The report then covers the log up to the stop record: ``records_read``,
            ``bytes_read`` and ``segments`` count up to it, and ``damage_after_stop``
            holds at most the stop record's own damage (an exclusive seq target's
            record need not decode).
        strict: True: raise ``TargetNotReachedError`` where the state restored may
            not be the one asked for (``--strict``): the log ends before a time
            target, records are missing inside the log up to the stop point (a jump
            in the sequence numbers) or in the log a base snapshot covers
            (``base.missing_seqs``), no segment at all, a base snapshot with no log
            after it, or a log written before bincode 2 (docs/damage.md). By default
            each is a warning in ``report.warnings`` and the index is returned (SPEC
            section 3: a time past the log's end is its latest state).

    Returns:
        RestoredIndex with ids sorted by UTF-8 bytes, vectors, metadata, report.

    Raises:
        WalError: a subclass naming file, byte offset and sequence number.
    """
    _check_targets(to_time, to_seq, to_transaction, to_position, exclusive)
    position = None if to_position is None else parse_position(to_position)
    shard = parse_id_shard(id_shard)
    _check_flags(exclusive=exclusive, skip_corrupt=skip_corrupt,
                 allow_incomplete_history=allow_incomplete_history,
                 read_after_stop=read_after_stop, strict=strict)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress is a callable or None, not {progress!r}")
    # Before the log is listed and a base snapshot read whole: a slip is not found
    # after minutes of reading (nor behind "no such directory").
    if backend not in ("cpu", "cuda", "auto"):
        raise ValueError(f"unknown backend {backend!r} (cpu, cuda or auto)")
    if base is not None and snapshots is not None:
        raise ValueError("give at most one of base and snapshots")
    if chunk_bytes is not None:
        chunk_bytes = _size_arg("chunk_bytes", chunk_bytes)
    if memory_budget is not None:
        if chunk_bytes is not None:
            raise ValueError("give at most one of chunk_bytes and memory_budget")
        from gpu_pitr.budget import chunk_bytes_for_budget

        memory_budget = _size_arg("memory_budget", memory_budget)
        chunk_bytes = chunk_bytes_for_budget(memory_budget)
    started, compiled = time.perf_counter(), compile_seconds()
    target, target_doc = _target(to_time, to_seq, to_transaction, position, exclusive)
    wal_path = Path(wal_dir)
    if not wal_path.is_dir():
        raise WalError(f"WAL directory: {not_a_directory(wal_path)}", file=str(wal_path))
    segments = list_segments(wal_path)
    if log_end is not None:
        segments = _as_listed(segments, log_end, wal_path)
    _check_position_target(wal_path, segments, position, exclusive, base, snapshots)
    total = sum(s.size for s in segments)
    # At most about the log's bytes are filled (the index, arenas, a base's rows).
    with fill_once_pages(need=total + _base_bytes(base, snapshots)):
        # The stage "base" is the base's load (its checksums checked: a third of a restore
        # from the bench log's 90% snapshot) and the seeding of its rows (``_seed_base``).
        t = time.perf_counter()
        snap, notes, warnings = _base_for(base, snapshots, target, exclusive,
                                          allow_incomplete_history, segments)
        loaded = time.perf_counter() - t
        if snap is not None:
            # Room for the base's rows, which go through the executor like records.
            total += int(snap.vectors.nbytes) + len(snap.id_arena) + len(snap.meta_arena) \
                + 32 * int(snap.count) + len(snap.pending)
        why_cpu: list[str] = []
        executor = _budgeted(make_executor(backend, total, why_cpu), memory_budget)
        args = (wal_path, target, exclusive, skip_corrupt, allow_incomplete_history)
        fallback = None
        try:
            index, run = _run(args, executor, chunk_bytes, target_doc, progress, snap, segments,
                              shard, read_after_stop)
        except _needs_host() as err:
            fallback = str(err)  # not err: its traceback holds the device executor's memory
        except IncompleteHistoryError as err:
            raise _in_snapshots_words(err, snapshots, snap, notes, warnings) from None
        except WalError as err:
            if snapshots is None or not warnings:
                raise
            raise _with_damaged_snapshots(err, warnings) from None
        finally:
            # The page-locked read buffers, now free in CuPy's pool, go back to the
            # system: the pool would keep them locked for ever (reused only for a
            # request of the same size, which the next log's segments may not make).
            getattr(executor, "release_host_buffers", lambda: None)()
        if fallback is not None:
            # Exactness over speed: the host executor handles every input exactly. The
            # cuda executor's device and page-locked buffers go first.
            from gpu_pitr.executors.cpu import CpuExecutor

            executor = None
            index, run = _run(args, _budgeted(CpuExecutor(total), memory_budget), chunk_bytes,
                              target_doc, progress, snap, segments, shard, read_after_stop)
            notes.append(f"cuda executor: {fallback}; restored on the cpu executor instead")
    if snap is not None:
        run.timings["base"] += loaded
    report = index.report
    report.message = "; ".join(notes)
    jumps = run.seq_jumps
    report.seq_jumps = {"jumps": jumps.count, "missing": jumps.missing, "first": None
                        if jumps.where is None else {**jumps.where, "previous": jumps.first[0]}}
    unreached: list[tuple[str, dict]] = []
    report.warnings = warnings + _restore_warnings(run, report, target, memory_budget,
                                                   unreached)
    _writes_in_progress(report)
    report.last_commit_timestamp = run.plan.last_timestamp  # what the index is as of
    # Of the total (within the stages): Numba compiling, on a first run after an
    # install or an edit (PostgreSQL's EXPLAIN ANALYZE shows its JIT time apart too).
    run.timings["compile"] = compile_seconds() - compiled
    run.timings["total"] = time.perf_counter() - started
    report.timings = {k: round(v, 6) for k, v in run.timings.items()}
    if snap is not None and not run.segments:
        # The base's state alone: a WAL_DIR given wrong would pass without a word.
        report.warnings.append(_no_log_note(snap, wal_path))
        if report.stop["reason"] != "target":
            # (A seq or transaction target the base itself meets is reached: its state
            # is the one asked for, whatever log follows it.)
            unreached.append((report.warnings[-1], {"file": str(wal_path)}))
    if not report.message and snap is None:
        if report.segments == 0:
            report.message = _no_log_note(snap, wal_path)
            report.warnings.append(report.message)
            unreached.append((report.message, {"file": str(wal_path)}))
        elif report.records_read == 0:
            report.message = "nothing to restore: no records in the log"
        elif len(index) == 0:
            report.message = EMPTY_INDEX_NOTE
    report.message = "; ".join(m for m in (report.message, *why_cpu) if m)
    if strict and unreached:
        # After the restore, as PostgreSQL's: that the target was not reached is known
        # only at the end of the log. Before anything is written: nothing in place.
        raise _not_reached(unreached)
    if snap is not None:
        held = [snap]
        snap = run = executor = None
        _let_go(held)
    return index


def _no_log_note(snap, wal_path: Path) -> str:
    """The warning of a restore that read no segment (and ``plan_restore``'s): the base
    snapshot's state alone, or nothing at all; a WAL_DIR given wrong would pass without
    a word."""
    return ("the base snapshot's state alone, no log after it: " if snap is not None
            else "nothing to restore: ") + no_segments_note(wal_path)


def _not_reached(unreached: list) -> TargetNotReachedError:
    """``strict``'s refusal of what ``unreached`` holds (``(text, where)`` each), the
    first's place named (the restore's, and ``plan_restore``'s before reading)."""
    text, where = unreached[0]
    return TargetNotReachedError(
        "; ".join([text, *(f"also: {t}" for t, _ in unreached[1:])])
        + " (strict: the state asked for was not reached; nothing restored)", **where)


def _in_snapshots_words(err: IncompleteHistoryError, snapshots, snap, notes: list,
                        warnings: list) -> IncompleteHistoryError:
    """``err`` of a restore with ``snapshots``, saying which of DIR's snapshots it
    started from, or why none served."""
    if snapshots is not None and snap is not None:
        # "the base snapshot" of the message: which one of DIR's it chose.
        return IncompleteHistoryError(
            f"{err.what} (the base snapshot --snapshots chose: {snap.path})",
            file=err.file, offset=err.offset, seq=err.seq)
    if snapshots is None or not notes:
        return err
    # Why no snapshot served: the history the log alone lacks is what they hold. A
    # damaged one among them is said too: the error is all the command line prints, not
    # the warnings.
    from gpu_pitr.snapshot import FROM_LOG_ALONE

    why = "; ".join([*warnings, notes[-1].removesuffix(FROM_LOG_ALONE)])
    return IncompleteHistoryError(f"{err.what}; --snapshots: {why}",
                                  file=err.file, offset=err.offset, seq=err.seq)


def _with_damaged_snapshots(err: WalError, warnings: list) -> WalError:
    """``err`` of a restore with ``snapshots``, saying the damaged snapshots it passed
    over (``warnings``): a damaged one may be why the log was read as far as this error
    (one intact would have started past it), and the error is all the command line
    prints, not the warnings."""
    return type(err)(f"{err.what}; --snapshots: {'; '.join(warnings)}",
                     file=err.file, offset=err.offset, seq=err.seq)


#: What a snapshot's ``last_record`` holds of its record besides its place (written since
#: 2026-12-07): its variant's name and timestamp, None where it did not decode.
_LAST_KIND = ("record", "timestamp")


def _stored_kind(last: dict) -> dict:
    """What of ``_LAST_KIND`` a base's ``last_record`` holds (none before 2026-12-07)."""
    return {k: last[k] for k in _LAST_KIND if k in last}


def _base_last_kind(wal_dir: Path, last: dict) -> dict:
    """``_LAST_KIND`` of a base's last record: as the snapshot stored them (since
    2026-12-07: its segment may since have been expired), else read from the log."""
    stored = _stored_kind(last)
    if len(stored) == len(_LAST_KIND):
        return stored
    return _kind_and_stamp(wal_dir / last["segment"], last)


def _kind_and_stamp(path: Path, last: dict) -> dict:
    """``{"record": kind, "timestamp": stamp}`` of the record a base's ``last_record``
    names, read from the log at ``path`` (its bytes are checked against the recorded
    CRC-32 when the base was matched to the log), as a restore that stops after that
    record reports it; nothing where it cannot be read or does not decode (a skipped
    record's are unknown too)."""
    from gpu_pitr.format.codec import PayloadError, decode_entry

    try:
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), int(last["length"]), int(last["offset"]))
        entry, _ = decode_entry(data[RECORD_HEADER_SIZE:])
    except (OSError, PayloadError, KeyError, TypeError, ValueError, RecursionError):
        return {}
    if last.get("crc32") is not None and crc32(data) != int(last["crc32"]):
        return {}
    return {"record": type(entry).__name__, "timestamp": int(entry.timestamp)}


def _stored(snap, *keys) -> dict | None:
    """The dict at ``keys`` in the report stored with snapshot ``snap`` (that of the
    restore that wrote it; no keys: the report itself), or None where one is missing or
    not a dict (a ``Snapshot`` given without a manifest, or an older gpu-pitr's
    report)."""
    return _in_report(getattr(snap, "manifest", None), *keys)


def _in_report(manifest, *keys) -> dict | None:
    """``_stored`` of a snapshot's manifest (a dict, or anything else: None)."""
    doc = manifest
    for key in ("report", *keys):
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else None


def _stored_stop_at(snap) -> tuple | None:
    """``(segment name, offset, seq)`` of the record the restore that wrote ``snap``
    stopped at its target (None: it stopped at the end of the log, or says nothing)."""
    stop = _stored(snap, "stop")
    if stop is None or stop.get("reason") != "target" or not isinstance(stop.get("file"), str):
        return None
    return Path(stop["file"]).name, stop.get("offset"), stop.get("seq")


def _count(value) -> int:
    """A count a stored report gives: a positive int, else 0 (one no restore writes, a
    negative one, is none: "-3 entries" would be said, or another count cancelled)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _skipped_before(base) -> int:
    """How many damaged records or files the restores behind a snapshot skipped
    (``skip_corrupt``): the one that wrote it (its stored report's ``skipped``), and
    those of its own base, and so on back, as each report's ``base`` counts them."""
    own = (_stored(base) or {}).get("skipped")
    return (len(own) if isinstance(own, list) else 0) + _count(
        (_stored(base, "base") or {}).get("skipped"))


def _missing_before(base) -> int:
    """How many seqs were missing inside the log behind a snapshot (jumps forward up to
    its position): those its own restore counted (its stored report's ``seq_jumps``),
    and its base's, and so on back, as ``_skipped_before`` counts skipped records. A
    restore from it reads only the log after it, so would not see them: with them
    carried, it warns (and ``strict`` refuses) as a restore of the whole log does.
    Snapshots written before 2026-12-06 stored no count: none is known there."""
    return (_count((_stored(base, "seq_jumps") or {}).get("missing"))
            + _count((_stored(base, "base") or {}).get("missing_seqs")))


def _restore_warnings(run: _Restore, report: RestoreReport, target: dict,
                      memory_budget: int | None = None,
                      unreached: list | None = None) -> list[str]:
    """What a restore that succeeded must not pass over in silence (``report.warnings``):
    a gap in the history it was allowed to cross, a time target the log ends before (an
    archive not brought up to date would give an older state without a word; PostgreSQL
    fails such a recovery), a seq target met more than once, records missing inside
    the log, an entry named like a segment that is not a file, a memory budget that
    open transactions' records alone exceeded. Those that mean the state restored may
    not be the one asked for (``strict`` refuses them) go on ``unreached`` too, each
    with where it was found: ``(text, {file, offset, seq})``."""
    unreached = [] if unreached is None else unreached
    out = _not_segment_warnings(run.wal_dir)
    held, where = run.held_peak
    if memory_budget is not None and held > memory_budget:
        from gpu_pitr.budget import size_text

        out.append(
            f"records of open transactions, with those read behind them, took "
            f"{size_text(held)} of memory at once, more than the memory budget of "
            f"{size_text(memory_budget)} (the first from {Path(where['file']).name}"
            f" offset {where['offset']}, seq {where['seq']}): a transaction's records wait "
            "in memory for its commit or abort, outside any budget")
    jumps = run.seq_jumps
    if jumps.count:
        w = jumps.where
        more = f", and {jumps.count - 1} more such jumps" if jumps.count > 1 else ""
        out.append(
            f"records are missing from the log: the seq jumps from {jumps.first[0]} to "
            f"{jumps.first[1]} at {Path(w['file']).name} offset {w['offset']}{more} "
            f"({jumps.missing} seqs in all, up to the stop point: a segment deleted before "
            "it was archived, lost bytes, or a torn record's); the index restored lacks "
            "whatever they did. `gpu-pitr verify` lists each jump")
        unreached.append((out[-1], dict(w)))
    if run.joined_after_restart is not None:
        txn, total, after, w = run.joined_after_restart
        out.append(
            f"transaction {txn} is still open at the end of the log, and {after} of its "
            f"{total} records come after a writer restart (the first of them: seq "
            f"{w['seq']} at {Path(w['file']).name} offset {w['offset']}): they are "
            "discarded with it "
            "(SPEC section 3: in flight at a crash). A writer that restarts should first "
            "abort the transactions it had open; `gpu-pitr verify` lists those open at "
            "the end of the log")
    if run.gap_why is not None:
        out.append(_gap_warning(run.gap_why, run.gap_lacks))
    out += _base_warnings(report.base, unreached)
    older = _older_format(report.trailing_bytes)
    if older is not None:
        out.append(older[0])
        unreached.append(older)
    t = target.get("to_time")
    stamp = run.last_stamp
    went_past = stamp is not None and (stamp >= t if run.plan.exclusive else stamp > t)
    if t is not None and report.segments and report.stop["reason"] == "end_of_log" \
            and not went_past:
        latest = run.plan.max_timestamp
        # Stamped T itself (inclusive): the log reached T, but not past it.
        at_t = latest == t
        out.append(
            f"the log ends before the target {utc_text(t)}{' is passed' if at_t else ''}: "
            + ("it has no commit point" if latest is None else
               "its latest commit point is stamped that second itself" if at_t else
               f"its latest commit point is at {utc_text(latest)}")
            + "; if the log goes on elsewhere (an archive not brought up to date), "
            "this index lacks it")
        end = run.position or {}
        unreached.append((out[-1], {"file": str(run.wal_dir / end["segment"]),
                                    "offset": end["offset"]} if end.get("segment")
                          else {"file": str(run.wal_dir)}))
    # (Not known when reading ended at the stop: the other hits are after it.)
    if run.to_seq_hits > 1 and report.stop["reason"] == "target" and run.read_after_stop:
        stop = report.stop
        out.append(
            f"seq {run.to_seq} occurs {run.to_seq_hits} times in the log (the writer "
            f"numbered from 0 again): the restore stopped at the first, "
            f"{Path(stop.get('file', '')).name} offset {stop.get('offset')}; `gpu-pitr inspect "
            f"{shlex.quote(str(run.wal_dir))} --first-seq {run.to_seq} --last-seq {run.to_seq}`"
            " lists them")
    if run.txn_later and report.stop["reason"] == "target" and run.read_after_stop:
        # The runbook's --to-transaction X of a bad ingest, where an earlier use of X
        # (before a writer restart) ends first: a state long before the incident,
        # given without a word, where a seq target repeated is warned of.
        stop, again = report.stop, run.txn_later_first
        out.append(
            f"transaction {run.to_transaction} begins again later in the log "
            f"({plural(run.txn_later, 'more use')}, the first at {Path(again['file']).name} offset "
            f"{again['offset']} (seq {again['seq']}): a writer restarted uses ids again): "
            f"the restore stopped at the end of the first use, "
            f"{Path(stop.get('file', '')).name} offset {stop.get('offset')}; `gpu-pitr "
            f"inspect {shlex.quote(str(run.wal_dir))} --transactions --transaction "
            f"{run.to_transaction}` lists every use, and --to-position FILE:OFFSET from "
            "a later one's `end:` line reaches it")
    return out


def _older_format(trailing: list, examined: int = bincode1.EXAMINED,
                  tail: str = ": the index restored is not this log's state"
                  ) -> tuple[str, dict] | None:
    """The warning, and where, when the records that left bytes over after their payload
    (the first ``examined`` of them) are every one a whole bincode 1.3 entry: a log of an
    oxirs-vec before bincode 2 decodes, as bincode 2, to empty ids and vectors with bytes
    left over, which SPEC section 2 accepts; restored, it was an index of nothing,
    without a word (``format.bincode1``)."""
    if not trailing:
        return None
    first = trailing[:examined]
    if not all(bincode1.record_is_bincode1(t["file"], t["offset"]) for t in first):
        return None
    where = {k: first[0][k] for k in ("file", "offset", "seq")}
    return (f"{plural(len(trailing), 'record')} left bytes over after the payload, the "
            f"first at {Path(where['file']).name} offset {where['offset']} (seq "
            f"{where['seq']}), and {_every_one(len(first), len(trailing))} of "
            f"{bincode1.OLDER_FORMAT}{tail}", where)


def _every_one(examined: int, total: int) -> str:
    return ("it is a whole entry" if total == 1
            else f"all {total} are whole entries" if examined == total
            else f"the first {examined} are whole entries")


def _not_segment_warnings(wal_dir) -> list[str]:
    """The warning of each entry of ``wal_dir`` named like a segment that is not read
    (``not_segment_files``): the restore's first, and ``plan_restore``'s."""
    return [f"{name}: {what}" for name, what in not_segment_files(wal_dir)]


def _base_warnings(base: dict | None, unreached: list) -> list[str]:
    """The warnings of a restore from a base whose own restore (or one of its bases')
    went past records missing inside the log, or skipped damage with skip_corrupt:
    ``base`` is the report's (``path``, ``missing_seqs``: ``_missing_before``,
    ``skipped``: ``_skipped_before``), so both are known before reading, and
    ``plan_restore`` warns of them in these words too. The missing seqs go on
    ``unreached`` (``strict`` refuses them)."""
    out = []
    missing = (base or {}).get("missing_seqs")
    if missing:
        out.append(f"records are missing from the log the base snapshot {base['path']}"
                   f" covers: {missing} seqs in all, as the reports stored with it and its "
                   "bases count them (a segment deleted before it was archived, lost bytes); "
                   "the index restored lacks whatever they did. `gpu-pitr inspect "
                   f"{shlex.quote(base['path'])} --json` shows the stored report")
        unreached.append((out[-1], {"file": base["path"]}))
    skipped = (base or {}).get("skipped")
    if skipped:
        out.append(f"the base snapshot {base['path']} was restored past damage with "
                   f"skip_corrupt (--skip-corrupt): {skipped} "
                   f"{'entry' if skipped == 1 else 'entries'} of skipped records or files in "
                   "the reports stored with it and its bases; the state restored lacks "
                   "whatever those records did")
    return out


def _writes_in_progress(report: RestoreReport) -> None:
    """``size_now`` in each ``torn_tails`` entry that was a write in progress: the file
    has grown since it was read, and the record cut is whole there (the command line
    says so on that tail's line)."""
    for torn in report.torn_tails:
        size = written_since(torn["file"], torn["offset"], torn["bytes_lost"])
        if size is not None:
            torn["size_now"] = size


def _let_go(held: list) -> None:
    """Drop the objects in ``held`` (the caller holds no other reference to them) on a
    thread of its own. A base snapshot's files are mapped; unmapping the bench's 90%
    snapshot (555 MB of vectors) took 20-27 ms on the 2-core VM, which ``munmap`` does
    without holding the GIL: the caller has its index that much sooner, and the unmap
    goes on beside it."""
    threading.Thread(target=held.clear, name="gpu_pitr-release", daemon=True).start()


def plan_restore(
    wal_dir: str | os.PathLike,
    *,
    to_time: TimeTarget | None = None,
    to_seq: SupportsIndex | None = None,
    to_transaction: SupportsIndex | None = None,
    to_position: str | tuple[str | os.PathLike, SupportsIndex] | None = None,
    exclusive: bool = False,
    allow_incomplete_history: bool = False,
    base: str | os.PathLike | Snapshot | None = None,
    snapshots: str | os.PathLike | None = None,
    read_after_stop: bool = True,
    strict: bool = False,
    skip_corrupt: bool = False,
) -> dict:
    """What ``restore`` with these arguments would start from and read, without
    restoring (``restore --dry-run``): operators asked which snapshot a restore to T
    would use, and how much log it would read, before running one (pgBackRest's
    ``info`` and ``restore --set`` answer it there).

    The base is chosen exactly as ``restore`` chooses it (``_base_for``: ``--snapshots``'
    choice, the chosen one's checksums checked; ``--base``'s refusals raised as the
    restore raises them), a ``to_position`` is checked as the restore checks it, and a
    restore from the log alone whose history is incomplete (a first record that is not
    seq 0, segments ``expire`` deleted) raises ``IncompleteHistoryError`` as the restore
    would, unless ``allow_incomplete_history``; so does a base whose segment is gone
    where the log does not go on from it (``base_gap``, or a first record read after it
    that is not its last seq + 1, as the files' first record headers say), and a base
    that holds no record of the log (of an empty log, or of zero-filled records only)
    where the first record after it is not seq 0. What only
    reading the log finds (damage, a seq or transaction target the log lacks) is not
    looked for; but where no log is read at all (no segment, or none after a base that
    is not itself the target), a seq or transaction target raises the restore's
    ``TargetNotFoundError``, strict or not (the restore raises it at the end of its
    empty log, before strict's check). ``read_after_stop``: as the restore's (False: a
    target the base itself meets reads no log, so the log after it is not judged
    either). ``strict``: as the
    restore's, for what is known before reading: no log at all after the start, or
    after a base that is not itself the target, raises ``TargetNotReachedError`` in the
    restore's words (a time target the log ends before, or seqs missing inside it, are
    found only by reading), and so do seqs missing inside the log a base covers (its
    stored reports count them). A segment among those read whose header is damaged
    (wrong magic or version, one read of 16 bytes) that the restore reads before its
    stop point for certain (no target; one before a position target's segment; one
    before which no record is read) raises the restore's ``BadSegmentError``, as the
    restore does on reaching it (unless reading finds damage before it), and with
    ``skip_corrupt`` is listed as the restore lists it as skipped; one only reading
    tells (a time, seq or transaction target may stop before it) is warned of.

    Returns ``{"target", "base", "notes", "warnings", "read"}``: ``base`` the snapshot
    started from (``{"path", "count", "dim", "position"}``) or None (the start of the
    log); ``notes`` as the report's ``message`` says them (which snapshots were passed
    over and why; not what the restore finds on reading: no record in the log, an
    empty index, the executor it fell back to); ``warnings`` the damaged snapshots
    among them, no segment to read at all, and with ``allow_incomplete_history`` the gap
    in the history the restore would cross and warn of where that is known before
    reading (the segments ``expire`` deleted, a first record that is not where the log
    must go on, as the files' first record headers say), a base restored past damage or
    missing records and entries named like segments that are not files (in the
    restore's words), a damaged segment header the restore may
    or may not reach before its stop; ``skipped`` the files ``skip_corrupt`` would skip
    for their damaged header, as the report's ``skipped`` lists them (not the records
    only reading finds damaged); ``read`` the log after the base,
    ``{"segments", "bytes", "first_segment"}``, counted as the report's ``segments`` and
    ``bytes_read`` count a restore that reads to the end of the log (the default:
    ``read_after_stop=False`` stops at the target, within it), a segment whose header
    is damaged by its header's bytes alone, as the restore reads it (one read of 16
    bytes a segment here).
    """
    from gpu_pitr.snapshot import header_problem_of, log_after, position_brief

    _check_targets(to_time, to_seq, to_transaction, to_position, exclusive)
    _check_flags(exclusive=exclusive, skip_corrupt=skip_corrupt,
                 allow_incomplete_history=allow_incomplete_history,
                 read_after_stop=read_after_stop, strict=strict)
    if base is not None and snapshots is not None:
        raise ValueError("give at most one of base and snapshots")
    position = None if to_position is None else parse_position(to_position)
    target, target_doc = _target(to_time, to_seq, to_transaction, position, exclusive)
    wal_path = Path(wal_dir)
    if not wal_path.is_dir():
        raise WalError(f"WAL directory: {not_a_directory(wal_path)}", file=str(wal_path))
    segments = list_segments(wal_path)
    _check_position_target(wal_path, segments, position, exclusive, base, snapshots)
    snap, notes, warnings = _base_for(base, snapshots, target, exclusive,
                                      allow_incomplete_history, segments)
    passed_over = list(warnings)  # (the damaged snapshots: the restore's errors say them)
    allow = allow_incomplete_history
    unreached = []  # what strict refuses, known before reading
    # Each segment read after the base, its header as the restore's framer judges it.
    pos = {"segment": None} if snap is None else snap.position
    rest = resume_at(pos, segments)
    headers = {seg.name: header_problem_of(seg.path) for seg in rest[0]}
    over = _gone_past(headers, rest[0], snap, target, exclusive, skip_corrupt)
    zeros = _skipped_zeros(target, skip_corrupt)
    # The gaps a restore allowed to cross them would find, in the order it finds them:
    # it warns of the first (``_Restore._gap``).
    gaps: list[tuple | None] = []
    try:
        if snap is not None and snap.position.get("history_complete") is False:
            gaps.append((_restored_across_a_gap(snap), None))  # (else _base_for refused)
        expired = expired_before(wal_path, snap, allow)
        gaps.append(None if expired is None else (expired, None))
        if snap is None:
            gaps.append(_check_log_start(segments, allow, over, zeros))
        else:
            # (With no segment at all too: ``choose`` takes such a base, and the
            # restore refuses it as it starts.)
            later, starts, resume, gap = _resume_point(snap.position, segments)
            if gap is not None and _gap_not_read(snap, target, exclusive, read_after_stop):
                gap = None  # (never reached: the restore reads nothing after the base)
            if gap is not None and not allow:
                raise _no_history_after_base(gap, later, wal_path)
            gaps.append(None if gap is None else (gap, None))
            if _judges_after_base(snap, target, exclusive, read_after_stop):
                gaps.append(_check_resume(snap.position, later, starts, resume, allow,
                                          over=over, zeros=zeros))
        # Each segment read whose header is damaged, as the restore meets it: after the
        # checks above (the restore judges its first record where no header is damaged
        # before it), within this try (its error says the damaged snapshots passed over).
        skipped, damaged = _damaged_headers(rest, headers, snap, target, exclusive,
                                            skip_corrupt, strict)
    except IncompleteHistoryError as err:
        raise _in_snapshots_words(err, snapshots, snap, notes, warnings) from None
    except WalError as err:  # (an expire marker that does not read)
        if snapshots is None or not warnings:
            raise
        raise _with_damaged_snapshots(err, warnings) from None
    # The warnings in the restore's order: entries named like segments that are not
    # read, the gap it crossed, its base's own restores' missing records and skipped
    # damage (the reports stored with it say them).
    gap = next((g for g in gaps if g is not None), None)
    warnings = [*warnings, *_not_segment_warnings(wal_path),
                *([] if gap is None else [_gap_warning(*gap)])]
    if snap is not None:
        warnings += _base_warnings({"path": str(snap.path), "skipped": _skipped_before(snap),
                                    "missing_seqs": _missing_before(snap)}, unreached)
    warnings += damaged
    read = log_after(pos, segments, {name: nbytes for name, (problem, nbytes)
                                     in headers.items() if problem is not None})
    # The restore's message and warning where no segment is read at all, which it
    # knows before reading (not what it finds on reading: no record, an empty index).
    if snap is None:
        doc = None
        if not notes and not segments:
            notes.append(_no_log_note(snap, wal_path))
            warnings = [*warnings, notes[-1]]
            unreached.append((notes[-1], {"file": str(wal_path)}))
    else:
        doc = {"path": str(snap.path), "count": int(snap.count), "dim": snap.dim,
               "position": position_brief(snap.position)}
        if not read["segments"]:
            warnings = [*warnings, _no_log_note(snap, wal_path)]
            if not _base_is_the_stop(snap, target, exclusive):
                unreached.append((warnings[-1], {"file": str(wal_path)}))
    if not read["segments"] and (snap is None or not _base_is_the_stop(snap, target,
                                                                      exclusive)):
        # No record read at all: a seq or transaction target is not found, whatever
        # strict says (the restore finds it at the end of its empty log, before strict's
        # check); the dry run refused that as not reached, in other words (review
        # planprop: its property test).
        missing = _not_found_in_no_log(target, snap, segments, wal_path)
        if missing is not None:
            raise missing if snapshots is None or not passed_over else \
                _with_damaged_snapshots(missing, passed_over)
    if strict and unreached:
        # What ``strict`` refuses that is known before reading: no log to reach the
        # target in, records missing behind the base (the restore refuses them after
        # reading, in these words, unless reading finds more, which it names first).
        raise _not_reached(unreached)
    return {"wal_dir": str(wal_path), "target": target_doc, "base": doc, "notes": notes,
            "warnings": warnings, "skipped": skipped, "read": read}


def _not_found_in_no_log(target: dict, snap, segments: list, wal_path: Path
                         ) -> TargetNotFoundError | None:
    """The ``TargetNotFoundError`` a restore that reads no log at all (no segment, or
    none after the base ``snap``, which is not itself the target) raises at its end for
    a seq or transaction target, in its words (``_Restore._end_of_log``), for
    ``plan_restore``; None for the other targets."""
    from gpu_pitr.snapshot.base import SeqRuns

    pos = {} if snap is None else snap.position
    if "to_seq" in target:
        return _seq_not_found(int(target["to_seq"]), SeqRuns(pos.get("seq_runs"),
                                                             pos.get("last_seq")),
                              False, snap is not None, segments, wal_path)
    if "to_transaction" in target:
        return TargetNotFoundError(_txn_not_found(int(target["to_transaction"]), snap,
                                                  segments, wal_path), file=str(wal_path))
    return None


def _damaged_headers(rest: tuple[list, int], headers: dict, snap, target: dict,
                     exclusive: bool, skip_corrupt: bool, strict: bool = False
                     ) -> tuple[list, list]:
    """What the restore does with each segment it reads whose header is damaged (wrong
    magic or version; a torn one is a torn tail, no damage to skip), as known before
    reading (``plan_restore``): ``rest`` the segments after the base and where reading
    begins in the first (``resume_at``), ``headers`` each one's ``header_problem_of``.
    One the restore reads before its stop point for certain (``_read_before_stop``)
    raises its ``BadSegmentError`` (``_Restore._bad_header``: the first such), or with
    ``skip_corrupt`` is an entry of the report's ``skipped``; one after it, nothing (the
    report's ``damage_after_stop``); one only reading tells, a warning of both. With
    ``strict``, a file skipped that holds bytes past its header is warned of: records
    there leave a gap in the seqs, which the strict restore refuses, and only reading
    the records around it tells (review walk43: the dry run passed, the restore
    refused). Returns ``(skipped, warnings)``."""
    segs, start = rest
    skipped, warnings = [], []
    nothing_before = True  # no record read before this segment
    for k, seg in enumerate(segs):
        problem = headers[seg.name][0]
        if problem is None or problem == "torn":
            nothing_before = nothing_before and seg.size <= (start if k == 0 else HEADER_SIZE)
            continue
        if snap is not None and _base_is_the_stop(snap, target, exclusive):
            read = False  # (stopped at the base, before any segment)
        else:
            read = nothing_before or _read_before_stop(seg.name, target)
        if read and not skip_corrupt:
            raise BadSegmentError(problem, file=str(seg.path), offset=0)
        if read:
            skipped.append(_skipped_file(str(seg.path), problem))
            if strict and seg.size > HEADER_SIZE:
                warnings.append(
                    f"{seg.path}: offset 0: {problem}: --skip-corrupt skips its "
                    f"{seg.size - HEADER_SIZE:,} bytes after the header; records there "
                    "leave a gap in the seqs, which --strict refuses (the dry run reads "
                    "none of them: the restore finds whether there is a gap)")
        elif read is None:
            warnings.append(
                f"{seg.path}: offset 0: {problem}: a restore that has not stopped at its "
                "target before this segment " + (
                    "skips it (--skip-corrupt), and lacks its records" if skip_corrupt
                    else "fails here (--skip-corrupt skips it)"))
    return skipped, warnings


def _gone_past(headers: dict, segs: list, snap, target: dict, exclusive: bool,
               skip_corrupt: bool) -> dict:
    """``{segment name: entry}`` of the segments read (``segs``, in log order) whose
    header is damaged, where the restore goes on past them to judge its first record
    (``plan_restore``, for ``_check_resume``, which looks at those before that record
    alone): with ``skip_corrupt`` it skips them (``entry``: the report's ``skipped``
    entry, which its error of a log not from seq 0 names), and after a base that is
    itself the stop it passes them over as damage after the stop (``entry`` None).
    Without either it fails at the first (``_damaged_headers``): none is gone past."""
    stopped = snap is not None and _base_is_the_stop(snap, target, exclusive)
    if not (skip_corrupt or stopped):
        return {}
    return {seg.name: None if stopped else _skipped_file(str(seg.path), headers[seg.name][0])
            for seg in segs if headers[seg.name][0] not in (None, "torn")}


def _skipped_zeros(target: dict, skip_corrupt: bool) -> dict | None:
    """How the restore finds its first record past zero-filled records (``_Restore._chunk``,
    for ``plan_restore``'s ``_check_resume``): with ``skip_corrupt`` it skips those that
    lead what it reads, which carry no seq the writer gave, but for a seq 0 target (a
    zero record is one) and not past a position target's record. None: it judges the
    first zero record, as seq 0."""
    if not skip_corrupt or target.get("to_seq") == 0:
        return None
    at = target.get("to_position")
    return {"skip_zeros": True, "stop": None if at is None else (at[0], int(at[1]))}


def _read_before_stop(name: str, target: dict) -> bool | None:
    """Whether a restore to ``target`` reads the segment ``name`` (after the first record
    it reads) before its stop point, as known before reading: with no target it reads
    to the end of the log; a position target stops in its own segment. None: not known
    (a time, seq or transaction target stops where reading finds it)."""
    if not target:
        return True
    if "to_position" in target:
        at = target["to_position"][0]
        return None if name == at else name.encode() < at.encode()
    return None


def _check_log_start(segments: list, allow: bool = False, over: dict | None = None,
                     zeros: dict | None = None) -> tuple | None:
    """The ``IncompleteHistoryError`` a restore from the log alone raises at its first
    record, where that is not seq 0 (``plan_restore``: a record header or two read);
    with ``allow`` (``allow_incomplete_history``), the gap it warns of instead (None:
    none). ``over`` and ``zeros``: as ``_check_resume``'s."""
    return _check_resume({}, segments, {}, ("start", 0), allow, fix=_FROM_A_SNAPSHOT,
                         over=over, zeros=zeros)


def _check_resume(pos: dict, later: list, starts: dict, resume: tuple | None,
                  allow: bool = False, fix: str = _BASE_HOLDS_NONE,
                  over: dict | None = None, zeros: dict | None = None) -> tuple | None:
    """The ``IncompleteHistoryError`` a restore from a base raises at the first record it
    reads, judged from that record's header (``snapshot.first_log_record``, read from
    where the restore resumes: ``later`` and ``starts`` of ``_resume_point``; unknown
    there: not judged): where the base's segment is gone, a record that is not the
    base's last seq + 1 (a writer reopened, numbering from 0 again, or another log);
    where the base holds no record of the log (a snapshot of an empty log, or of
    zero-filled records only, its segment there or not), one that is not seq 0, as a
    restore of the whole log judges it (``_Restore._check_first``). ``plan_restore``,
    and ``snapshot.window``'s judgement of each snapshot. With ``allow``
    (``allow_incomplete_history``): the gap the restore warns of instead (None: none).
    ``fix``: what the error says to do (``_check_log_start``: the log alone). ``over``:
    the segments whose header is damaged that the restore goes past (``_gone_past``):
    the first record is the one after them, and one not from seq 0 names the first
    skipped before it, as the restore's error does (otherwise a damaged header is not
    judged past: the restore fails there). ``zeros``: ``first_log_record``'s
    ``skip_zeros`` and ``stop`` where the restore skips the zero-filled records before
    its first record (``_skipped_zeros``; None: it judges the first of them)."""
    from gpu_pitr.snapshot import first_log_record

    if resume is None:
        return None
    from_start = resume == ("start", 0) or (resume[0] != "start" and _holds_no_record(pos))
    if not from_start and resume[0] != "after":
        return None
    over = over or {}
    if over:
        if later and later[0].name in over:
            starts = {}  # (where reading begins in the base's own segment: skipped)
        later = [seg for seg in later if seg.name not in over]
    runs: list = []  # the zero-filled records skipped before it, where they are
    first = first_log_record(later, starts.get(0), **(zeros or {}), zero_runs=runs)
    if first is None:
        return None
    seg, seq, offset = first
    w = {"file": str(seg.path), "offset": offset, "seq": seq}
    if from_start and seq != 0:
        if allow:
            return _starts_past_zero(seq, seg.name, offset)
        # What the restore skipped first, in log order, as its report's ``skipped``
        # lists it: a file with a damaged header, or a run of zero-filled records.
        passed = [((name.encode(), 0), e) for name, e in over.items()
                  if e is not None and name.encode() < seg.name.encode()]
        passed += [((run.name.encode(), a),
                    zerofill.skipped_item(str(run.path), a, (b - a) // RECORD_HEADER_SIZE))
                   for run, a, b in runs[:1]]
        skipped = min(passed, key=lambda p: p[0])[1] if passed else None
        raise not_from_seq_zero(_skipped_fix(skipped, fix) if skipped else fix, **w)
    if not from_start and seq != resume[1]:
        if allow:
            return _resumes_elsewhere(pos, seq, resume[1])
        raise _resume_refused(pos, seq, resume[1], w, _zero_record_at(seg.path, offset))
    return None
