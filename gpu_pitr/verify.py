"""``gpu-pitr verify``: every problem of a WAL directory, found without restoring.

The bytes go through the restore's own compiled passes (read-ahead, framing on a
thread, the cpu executor's decode), so verify sees exactly what a restore sees;
one compiled walk over the record columns then adds what a restore does not
judge: sequence numbers, transaction markers and vector lengths. Nothing is
applied, no index is built, nothing is written.

Severities (docs/damage.md has the table):

* ``damage``: bytes the oxirs writer cannot have written, or records lost from
  inside the log: a bad or mismatched segment header, a torn tail, an
  undecodable payload, a run of zero-filled records, trailing bytes, a
  sequence-number gap or a jump back that is not a writer reopen, a header
  swallowed by a torn record;
* ``notice``: what a healthy writer and application leave behind, each with a
  SPEC rule a restore follows: a sequence-number restart at a writer reopen,
  history missing before the first record, transactions still open at the end,
  transaction anomalies, vector lengths that change, a segment file shorter than
  its header (a writer starting it, or a crash then; no record lost), a
  torn tail that was a write in progress (the file has grown since it was read,
  and the record cut is whole there now: a live log's newest segment), an entry
  named like a segment that is not a file (a directory, a FIFO: not read), a
  segment deleted after the listing (the writer's retention: not checked).

A torn tail stays damage: a crash that lost only the record it cut, and one that also
lost records the writer had acknowledged but not synced, leave the same bytes. An
operator who has reviewed one acknowledges it (``Accept``, ``gpu-pitr verify
--accept FILE:OFFSET:BYTES``): that torn tail, and no other, is then a notice.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numba import types
from numba.typed import Dict

from gpu_pitr import interrupts
from gpu_pitr.errors import FileReadError
from gpu_pitr.executors.cpu import CpuExecutor
from gpu_pitr.format import bincode1, zerofill
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.frame import header_problem
from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    COMMIT_TRANSACTION,
    DELETE,
    HEADER_ID,
    HEADER_SIZE,
    N_VARIANTS,
    RECORD_HEADER_SIZE,
    SEGMENT_NAME_RE,
    VARIANT_NAMES,
)
from gpu_pitr.format.payload import OK, STATUS_TEXT
from gpu_pitr.format.readahead import (
    BYTES_PER_ROW,
    DEFAULT_CHUNK_BYTES,
    framed_pieces,
    scan_chunk_bytes,
)
from gpu_pitr.format.segments import (
    list_segments,
    not_segment_files,
    vanished,
    written_since,
)
from gpu_pitr.format.stats import plural, seconds_text
from gpu_pitr.jit import njit
from gpu_pitr.report import short_repr

DAMAGE = "damage"
NOTICE = "notice"

# Every kind of problem verify reports, with its severity.
KINDS = {
    "bad_header": DAMAGE,
    "header_mismatch": DAMAGE,
    "torn_tail": DAMAGE,
    "write_in_progress": NOTICE,
    "undecodable": DAMAGE,
    zerofill.KIND: DAMAGE,
    "trailing_bytes": DAMAGE,
    "seq_gap": DAMAGE,
    "seq_out_of_order": DAMAGE,
    "swallowed_header": DAMAGE,
    "torn_header": NOTICE,
    "seq_restart": NOTICE,
    "incomplete_history": NOTICE,
    "expired_history": NOTICE,
    "bad_expire_marker": DAMAGE,
    "txn_begin_open": NOTICE,
    "txn_end_not_open": NOTICE,
    "txn_open_at_end": NOTICE,
    "dim_change": NOTICE,
    "not_a_file": NOTICE,
    "segment_name_case": NOTICE,
    "deleted": NOTICE,
    # An archive's copies against the sums ``gpu-pitr archive`` recorded (archivesums).
    "archive_changed": DAMAGE,
    "archive_cut": DAMAGE,
    "archive_missing": DAMAGE,
    "bad_archive_sums": DAMAGE,
    "archive_unchecked": NOTICE,
}

# Notices, not damage, that a restore refuses unless told otherwise: a history that does
# not start at seq 0 (without a base or --allow-incomplete-history), and vector lengths
# that change (when it applies both): ``summary`` names them, "clean" is no promise.
_REFUSING = ("incomplete_history", "expired_history", "dim_change")

_EVENTS = 4096  # rows of the walk's event buffer; the walk resumes when it fills
_DELETED = "deleted"  # a segment's header problem: gone since the listing
_OPEN_FILES = 16  # descriptors kept to look at damaged bytes again, at most
_HEADER_BLOCK = HEADER_SIZE << 16  # bytes of back-to-back headers read at once

# Events of the walk: (code, record index, a, b).
EV_HEADERS = 1  # segment headers skipped before the record; a = where they start
EV_HISTORY = 2  # the log's first record is not seq 0
EV_RESTART = 3  # seq 0 right after a header: a writer reopened without recovery
EV_GAP = 4  # seq larger than the previous one + 1
EV_BACK = 5  # seq smaller, and not a restart
EV_BEGIN_OPEN = 6
EV_END_NOT_OPEN = 7
EV_DIM = 8  # a = the previous vector length, b = this one
_EVENT_ROOM = 4  # events one record can emit at most

_U64_MAX = np.uint64(2**64 - 1)
_TXN_VALUE = types.Tuple((types.int64, types.int64, types.uint64))  # segment, offset, seq


@njit(cache=True, nogil=True)
def _walk(i, n, seg, foff, length, seq, status, kind, aux, nent, efirst, e_op, e_dim,
          state, last_seq, open_txns, events):
    """Walk records ``i..n-1`` in log order; returns ``(next record, events written)``.

    ``state`` carries over between calls: [any record seen, its segment, where it
    ended in the file, the last vector length (-1: none yet), a record with a seq seen
    (one not zero-filled; 2: but a segment deleted since)], ``last_seq`` the last such
    seq, ``open_txns`` the open transactions (id -> where they began).
    Stops early when ``events`` has no room for one more record's events.
    """
    m = 0
    while i < n and m + _EVENT_ROOM <= events.shape[0]:
        s = seg[i]
        off = foff[i]
        new_segment = state[0] == 0 or state[1] != s
        # Records are back to back: bytes before one were skipped as headers.
        headers_at = HEADER_SIZE if new_segment else state[2]
        if off > headers_at:
            events[m, 0] = EV_HEADERS
            events[m, 1] = i
            events[m, 2] = headers_at
            m += 1
        q = seq[i]
        # A zero-filled record's seq 0 is not one the writer gave (format.zerofill).
        zero = zerofill.is_zero_record(length[i], q)
        if zero:
            pass
        elif state[4] == 0:  # the first record with a seq: where the history starts
            if q != 0:
                events[m, 0] = EV_HISTORY
                events[m, 1] = i
                m += 1
        elif state[4] == 2:
            pass  # the first after a segment deleted while verify ran: no seq to follow
        elif last_seq[0] == _U64_MAX or q != last_seq[0] + np.uint64(1):
            # (2^64-1 + 1 wraps to 0 in uint64: no seq follows 2^64-1 in line)
            events[m, 1] = i
            events[m, 2] = np.int64(last_seq[0])  # the bits; the caller takes them back
            # A reopened writer starts a segment or appends a header, then counts from 0.
            if q == 0 and (new_segment or off > headers_at):
                events[m, 0] = EV_RESTART
            elif q > last_seq[0]:
                events[m, 0] = EV_GAP
            else:
                events[m, 0] = EV_BACK
            m += 1
        state[0] = 1
        state[1] = s
        state[2] = off + RECORD_HEADER_SIZE + length[i]
        if not zero:
            last_seq[0] = q
            state[4] = 1
        if status[i] == OK:
            k = kind[i]
            if k == BEGIN_TRANSACTION:
                if aux[i] in open_txns:
                    events[m, 0] = EV_BEGIN_OPEN
                    events[m, 1] = i
                    m += 1
                else:
                    open_txns[aux[i]] = (s, off, q)
            elif k == COMMIT_TRANSACTION or k == ABORT_TRANSACTION:
                if aux[i] in open_txns:
                    open_txns.pop(aux[i])
                else:
                    events[m, 0] = EV_END_NOT_OPEN
                    events[m, 1] = i
                    m += 1
            elif k <= BATCH:
                reported = False
                for e in range(efirst[i], efirst[i] + nent[i]):
                    if e_op[e] == DELETE:
                        continue
                    d = e_dim[e]
                    if state[3] >= 0 and d != state[3] and not reported:
                        events[m, 0] = EV_DIM
                        events[m, 1] = i
                        events[m, 2] = state[3]
                        events[m, 3] = d
                        m += 1
                        reported = True
                    state[3] = d
        i += 1
    return i, m


@njit(cache=True, nogil=True)
def _open_at_end(open_txns):
    """The transactions still open, in begin order, as columns (id, segment, offset, seq)."""
    n = len(open_txns)
    txns = np.empty(n, np.uint64)
    segs = np.empty(n, np.int64)
    offs = np.empty(n, np.int64)
    seqs = np.empty(n, np.uint64)
    j = 0
    for txn, where in open_txns.items():
        txns[j] = txn
        segs[j], offs[j], seqs[j] = where
        j += 1
    return txns, segs, offs, seqs


@dataclass
class Problem:
    """One problem: where it is (file name, byte offset, seq if known) and what it is."""

    kind: str
    file: str
    offset: int
    seq: int | None
    what: str
    extra: dict = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return NOTICE if self.extra.get("accepted") else KINDS[self.kind]

    @property
    def acknowledgement(self) -> str | None:
        """What ``--accept`` takes to acknowledge this problem once reviewed: a torn
        tail's ``FILE:OFFSET:BYTES``; None for every other kind."""
        if self.kind != "torn_tail":
            return None
        return str(Accept(self.file, self.offset, self.extra["bytes"]))

    def to_dict(self) -> dict:
        ack = self.acknowledgement
        return {"severity": self.severity, "kind": self.kind, "file": self.file,
                "offset": self.offset, "seq": self.seq, "what": self.what, **self.extra,
                **({"accept": ack} if ack is not None else {})}

    def line(self) -> str:
        seq = "" if self.seq is None else f": seq {self.seq}"
        accepted = (f"; accepted as reviewed (--accept {self.acknowledgement})"
                    if self.extra.get("accepted") else "")
        return (f"{self.file}: offset {self.offset}{seq}: {self.severity}: {self.kind}: "
                f"{self.what}{accepted}")

    def hint(self) -> str | None:
        """The line after a torn tail not accepted: the argument that accepts it (as
        PostgreSQL's HINT lines follow its errors), so that nobody types offsets."""
        if self.acknowledgement is None or self.extra.get("accepted"):
            return None
        return (f"hint: once reviewed (docs/recovery.md, \"After a crash: a torn tail\"), "
                f"verify with --accept {self.acknowledgement} to count this torn tail as a "
                "notice")


# An acknowledgement as verify's hint line gives it: the segment's name as verify prints
# it, the torn record's offset, the bytes lost (all three: see Accept).
_ACCEPT_RE = re.compile(r"(?P<file>[^:]*):(?P<offset>[0-9]+):(?P<bytes>[0-9]+)", re.ASCII)


@dataclass(frozen=True)
class Accept:
    """One torn tail an operator reviewed and acknowledged (``--accept``): the segment's
    name, the torn record's offset and the bytes lost, as verify reports them.

    All three must match. The bytes too: a tail that grew (an archive's copy of a file
    that gained bytes since the review) or was cut shorter is not what was reviewed,
    and a tear at another offset is another crash; each stays damage. ``origin`` says
    where it was given (``argument --accept``, ``PATH: line N``), for the warning when
    it matches nothing; it takes no part in comparisons.
    """

    file: str
    offset: int
    bytes: int
    origin: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}:{self.bytes}"

    @classmethod
    def parse(cls, text: str, origin: str = "") -> Accept:
        """``FILE:OFFSET:BYTES``, as verify's hint gives it; ``ValueError`` (one line,
        saying what is wrong) for anything else."""
        m = _ACCEPT_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(
                f"{text!r} is not FILE:OFFSET:BYTES (the segment's name, the torn tail's "
                "offset and the bytes lost, as verify's hint line gives them)")
        if not SEGMENT_NAME_RE.fullmatch(m["file"]):
            raise ValueError(
                f"{text!r}: {m['file']!r} is not a segment's name (wal-<16 hex digits>.log, "
                "without a directory, as verify prints it)")
        return cls(m["file"], int(m["offset"]), int(m["bytes"]), origin)


def read_accepts(path: str | os.PathLike) -> list[Accept]:
    """The acknowledgements of a file (``--accept-file``): one ``FILE:OFFSET:BYTES`` a
    line; blank lines and what follows a ``#`` (who reviewed it, when, why) are left
    out. ``ValueError`` naming the file and line for a line that is not one; ``OSError``
    when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{os.fsdecode(path)}: line {n}: byte {err.start + 1} is not "
                             "UTF-8") from None
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        origin = f"{os.fsdecode(path)}: line {n}"
        try:
            out.append(Accept.parse(text, origin))
        except ValueError as err:
            raise ValueError(f"{origin}: {err}") from None
    return out


@dataclass
class Unmatched:
    """An acknowledgement that matches no torn tail, and what the file has instead."""

    accept: Accept
    what: str

    def line(self) -> str:
        where = f"{self.accept.origin}: " if self.accept.origin else ""
        return f"{where}{self.accept} matches no torn tail: {self.what}"

    def to_dict(self) -> dict:
        return {"accept": str(self.accept), "from": self.accept.origin, "what": self.what}


@dataclass
class Verification:
    """What ``verify_wal`` found; ``clean`` when no problem is damage."""

    wal_dir: str
    segments: int = 0
    bytes: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    #: The acknowledgements given that match no torn tail (each one a warning).
    unmatched: list[Unmatched] = field(default_factory=list)

    __repr__ = short_repr  # (a zero-filled log's problems: one line each, not all)

    @property
    def damage(self) -> int:
        return sum(p.severity == DAMAGE for p in self.problems)

    @property
    def accepted(self) -> int:
        """Torn tails acknowledged as reviewed: notices, counted among ``notices``."""
        return sum(bool(p.extra.get("accepted")) for p in self.problems)

    @property
    def notices(self) -> int:
        return len(self.problems) - self.damage

    @property
    def clean(self) -> bool:
        return self.damage == 0

    def summary(self) -> str:
        verdict = "clean" if self.clean else "DAMAGED"
        counts = Counter(p.kind for p in self.problems)
        refusing = [f"{counts[kind]} {kind}" for kind in _REFUSING if counts[kind]]
        accepted = (f" ({plural(self.accepted, 'torn tail')} accepted)" if self.accepted
                    else "")
        unmatched = (f"; {plural(len(self.unmatched), 'acknowledgement')} "
                     f"{'matches' if len(self.unmatched) == 1 else 'match'} no torn tail"
                     if self.unmatched else "")
        return (f"{self.wal_dir}: {verdict}: {self.damage} damage, "
                f"{plural(self.notices, 'notice')}{accepted}; "
                f"{plural(self.segments, 'segment')}, "
                f"{plural(self.bytes, 'byte')}, {plural(self.records, 'record')} "
                f"({self.seconds:.3f} s){unmatched}"
                + (f"; a restore may still refuse this log, as these notices say: "
                   f"{', '.join(refusing)}" if refusing else ""))

    def lines(self) -> list[str]:
        """One line per problem, in log order (a torn tail not accepted followed by a
        ``hint:`` line, the ``--accept`` that acknowledges it), then the summary line."""
        out = []
        for p in self.problems:
            out.append(p.line())
            if (hint := p.hint()) is not None:
                out.append(hint)
        return out + [self.summary()]

    def to_dict(self) -> dict:
        return {"wal_dir": self.wal_dir, "clean": self.clean, "damage": self.damage,
                "notices": self.notices, "accepted": self.accepted,
                "segments": self.segments, "bytes": self.bytes,
                "records": self.records, "seconds": round(self.seconds, 6),
                "problems": [p.to_dict() for p in self.problems],
                "unmatched_accepts": [u.to_dict() for u in self.unmatched]}


@interrupts.raises_stops
def verify_wal(wal_dir: str | os.PathLike, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
               accept=()) -> Verification:
    """Every problem of ``wal_dir`` (SPEC section 2 and beyond), in log order.

    Reads every byte once and judges the whole log: verify has no target, so
    nothing is "after the stop point". ``accept``: torn tails an operator reviewed
    (``Accept``, or its ``FILE:OFFSET:BYTES`` text), each a notice when one matches;
    those that match none are in ``unmatched``. Raises only for a missing directory
    (``WalError``) or a file that cannot be read (``OSError``), and ``ValueError`` for
    an ``accept`` text that is not one.
    """
    accepts = [a if isinstance(a, Accept) else Accept.parse(a) for a in accept]
    started = time.perf_counter()
    run = _Verify(wal_dir, max(64, int(chunk_bytes)))
    run.run()
    result = run.result
    _apply_accepts(result, run.names, run.first_kept, accepts)
    result.seconds = time.perf_counter() - started
    return result


def _apply_accepts(result: Verification, names: list[str], first_kept: str | None,
                   accepts: list[Accept]) -> None:
    """Mark the torn tails acknowledged, each matched on its file, offset and bytes
    lost; list the acknowledgements that match none with what the file has instead
    (a stale one hides nothing: what it does not match stays damage)."""
    tails: dict[str, list[Problem]] = {}
    missing = set()
    for p in result.problems:
        if p.kind in ("torn_tail", "write_in_progress"):
            tails.setdefault(p.file, []).append(p)
        elif p.kind == "archive_missing":
            missing.add(p.file)
    listed = set(names)
    for a in dict.fromkeys(accepts):  # the same one twice: once
        here = tails.get(a.file, [])
        match = [p for p in here if p.kind == "torn_tail" and p.offset == a.offset
                 and p.extra["bytes"] == a.bytes]
        if match:
            match[0].extra["accepted"] = True
            continue
        same = [p for p in here if p.offset == a.offset]
        if a.file in missing:
            what = (f"{a.file} is gone from the archive, not deleted by gpu-pitr expire "
                    "(archive_missing)")
        elif a.file not in listed and first_kept is not None and a.file < first_kept:
            what = (f"gpu-pitr expire deleted {a.file}: this acknowledgement is no longer "
                    "needed")
        elif a.file not in listed:
            what = f"{result.wal_dir} has no {a.file} (deleted, or a mistyped name)"
        elif same and same[0].kind == "write_in_progress":
            what = (f"the record cut at offset {a.offset} was being written, and is whole "
                    "now (write_in_progress, a notice): nothing to accept")
        elif same:
            what = (f"the torn tail at offset {a.offset} has {same[0].extra['bytes']} bytes "
                    f"lost now, not {a.bytes}: the file changed since it was reviewed (review "
                    "it again), or the number is mistyped")
        elif here:
            what = "its torn tail is at " + ", ".join(
                f"offset {p.offset} ({p.extra['bytes']} bytes lost)" for p in here
            ) + f", not at offset {a.offset}"
        else:
            what = f"{a.file} has no torn tail"
        result.unmatched.append(Unmatched(a, what))


class _Verify:
    """One verification in progress: the loop over framed pieces."""

    def __init__(self, wal_dir, chunk_bytes: int) -> None:
        self.wal_dir = wal_dir
        self.segments = list_segments(wal_dir)
        self.names = [seg.name for seg in self.segments]
        self.older = bincode1.Examiner()  # records read again for bincode 1.3 (``_older``)
        self.result = Verification(str(wal_dir), segments=len(self.segments),
                                   bytes=sum(seg.size for seg in self.segments))
        self.chunk_bytes = scan_chunk_bytes(self.segments, chunk_bytes)
        self.cols = ChunkColumns(self.chunk_bytes // BYTES_PER_ROW + 64)
        self.decoder = CpuExecutor(0)  # its decode only; nothing is applied
        self.heads: list[bytes] = []
        self.framed_end: dict[int, int] = {}  # segment -> where framing ended
        self.record_end: dict[int, int] = {}  # segment -> end of its last record
        self.swallowed: set[tuple[int, int]] = set()  # (segment, offset) reported
        self.zero_run: Problem | None = None  # the run of zero records listed last
        self.fds: dict[int, int] = {}  # segment -> a descriptor, to look at damaged bytes
        # Looks at file bytes again that an item of small segments asked for (_piece).
        self._looks: list | None = None
        self.state = np.array([0, -1, 0, -1, 0], np.int64)
        self.last_seq = np.zeros(1, np.uint64)
        self.open_txns = Dict.empty(key_type=types.uint64, value_type=_TXN_VALUE)
        self.events = np.zeros((_EVENTS, 4), np.int64)
        self.first_kept: str | None = None  # expire's marker: the first segment it kept

    def _header_problem(self, head: bytes | OSError) -> str | None:
        self.heads.append(head)  # called once per segment, in log order
        if isinstance(head, OSError) and vanished(head):
            return _DELETED
        return header_problem(head)

    def run(self) -> None:
        from gpu_pitr.errors import WalError
        from gpu_pitr.expire import MARKER_NAME, read_marker

        try:
            expiry, bad_marker = read_marker(self.wal_dir), None
        except WalError as err:
            expiry, bad_marker = None, err.what
        self.first_kept = expiry.first_kept if expiry is not None else None
        copies = _ArchiveCopies(self.wal_dir, self.segments, expiry)
        try:
            for item in framed_pieces(self.segments, self.chunk_bytes, self._header_problem,
                                      merge_small="batch"):
                # Copies the log's pass is done with are checked while their pages are
                # still cached: an archive larger than memory was read twice from disk.
                copies.check_before(item.segment)
                if item.problem is not None:
                    self._bad_header(item)
                else:
                    self._piece(item)
            self._segment_ends()
            self._in_progress()
            archive_problems = copies.finish()
        finally:
            copies.close()
            for fd in self.fds.values():
                os.close(fd)
        txns, segs, offs, seqs = _open_at_end(self.open_txns)
        for txn, s, off, q in zip(txns.tolist(), segs.tolist(), offs.tolist(), seqs.tolist(),
                                  strict=True):
            self._add("txn_open_at_end", s, off, q,
                      f"transaction {txn} begun here is still open at the end of the log "
                      "(a restore discards it)", transaction_id=int(txn))
        for name, what in not_segment_files(self.wal_dir):
            kind = "not_a_file" if SEGMENT_NAME_RE.fullmatch(name) else "segment_name_case"
            self.result.problems.append(Problem(kind, name, 0, None, what))
        self.result.problems += archive_problems
        # In name order, segments or not (SPEC section 1's log order for the segments).
        self.result.problems.sort(key=lambda p: (p.file.encode(), p.offset))
        if expiry is not None:  # first: it is about where the log begins
            self.result.problems.insert(0, Problem(
                "expired_history", MARKER_NAME, 0, None,
                f"gpu-pitr expire deleted the segments before {expiry.first_kept}: restores "
                "start from a snapshot it kept"))
        elif bad_marker is not None:
            self.result.problems.insert(0, Problem("bad_expire_marker", MARKER_NAME, 0, None,
                                                   bad_marker))

    def _add(self, kind: str, segment: int, offset: int, seq: int | None, what: str,
             **extra) -> None:
        self.result.problems.append(
            Problem(kind, self.names[segment], int(offset), seq, what, extra))

    def _bad_header(self, item) -> None:
        if item.problem == _DELETED:
            self._add("deleted", item.segment, 0, None,
                      "deleted after verify listed the directory (the writer's retention "
                      "deletes its oldest segments at a checkpoint): not checked")
            if self.state[4] == 1:  # the seq after it follows what it held, not this
                self.state[4] = 2
        elif item.problem == "torn":
            self._add("torn_header", item.segment, 0, None,
                      f"file of {item.header_len} bytes, shorter than its header "
                      "(a writer starting the file, its header still in its buffer, "
                      "or a crash then; no record lost)",
                      bytes=item.header_len)
        else:
            self._add("bad_header", item.segment, 0, None,
                      f"{item.problem}: none of its records can be read")

    def _piece(self, item) -> None:
        """Decode and judge the records framed in one piece."""
        n, c = item.n, self.cols
        c.ensure_records(n)
        c.off[:n] = item.off[:n]
        c.length[:n] = item.length[:n]
        c.seq[:n] = item.seq[:n]
        if item.row_segment is None:
            c.seg[:n] = item.segment
            c.foff[:n] = c.off[:n] - item.start + item.file_start
        else:  # small segments framed together
            c.seg[:n] = item.row_segment[:n]
            c.foff[:n] = item.row_file_offset[:n]
        # The bytes looked at again go in log order, whatever segment of the item asks
        # first: a read error among them names the first file, as one item a file did.
        self._looks = []
        try:
            self._judge(item, n)
        finally:
            looks, self._looks = self._looks, None
        for _key, look, args in sorted(looks, key=lambda x: x[0]):
            look(*args)

    def _judge(self, item, n: int) -> None:
        c = self.cols
        if n:
            self.decoder.decode(item.buf, c, 0, n)
            self._undecodable(n)
            self._trailing(n)
            self._swallowed_by_records(n)
            self._walk(item.buf, n)
            self.result.records += n
            # Where each segment's last record ends (the walk's state: the last one's).
            segs = c.seg[:n]
            for i in np.flatnonzero(np.append(segs[1:] != segs[:-1], True)).tolist():
                self.record_end[int(segs[i])] = int(
                    c.foff[i] + RECORD_HEADER_SIZE + c.length[i])
        for segment, at, lost in item.torn_list():
            self.framed_end[segment] = at
            self._add("torn_tail", segment, at, None,
                      f"the file ends inside a record: {lost} bytes lost "
                      "(a restore stops reading this file here)", bytes=lost)
            self._swallowed_near(segment, at, at + lost)

    def _in_progress(self) -> None:
        """Torn tails that were writes in progress (a writer appending while verify
        read): the file has grown since, and the record cut is whole there now. Looked
        at last, when the writer has had the longest to go on."""
        paths = {seg.name: seg.path for seg in self.segments}
        for p in self.result.problems:
            if p.kind != "torn_tail":
                continue
            size = written_since(paths[p.file], p.offset, p.extra["bytes"])
            if size is not None:
                p.kind, p.extra["size_now"] = "write_in_progress", size
                p.what = (f"the file ended inside a record when it was read, "
                          f"{p.extra['bytes']} bytes of it, and has grown to {size} bytes "
                          "since, where the record is whole: a writer is appending to it")

    def _undecodable(self, n: int) -> None:
        c = self.cols
        rows = np.flatnonzero(c.status[:n] != OK)
        zero = zerofill.zero_records(c.length[rows], c.seq[rows])
        firsts, counts = zerofill.runs(c.seg[rows], c.foff[rows], zero)
        rows = rows[firsts]
        # ``at``: the byte where decoding failed, as a restore names it.
        for i, k, z, at in zip(rows.tolist(), counts.tolist(), zero[firsts].tolist(),
                               c.bad_offsets(rows).tolist(), strict=True):
            foff = int(c.foff[i])
            if z:
                self._zero_run(int(c.seg[i]), foff, k)
                continue
            kind = int(c.kind[i])
            variant = f"{VARIANT_NAMES[kind]} " if 0 <= kind < N_VARIANTS else ""
            self._add("undecodable", int(c.seg[i]), foff, int(c.seq[i]),
                      f"{STATUS_TEXT.get(int(c.status[i]), 'undecodable payload')} at file "
                      f"offset {at} (byte {at - foff - RECORD_HEADER_SIZE} of a "
                      f"{int(c.length[i])}-byte {variant}payload){self._older(c, i)}",
                      at=at)

    def _zero_run(self, segment: int, start: int, records: int) -> None:
        """List ``records`` zero records from ``start`` as one item, or add them to the
        run listed last when they continue it (a piece boundary split them)."""
        last = self.zero_run
        if last is not None and last.file == self.names[segment] and (
                last.offset + last.extra["bytes"] == start):
            last.extra["records"] += records
            last.extra["bytes"] += records * RECORD_HEADER_SIZE
            last.what = zerofill.describe(last.offset, last.extra["records"])
        else:
            # ``at``: the byte a restore names, as for an undecodable record.
            self._add(zerofill.KIND, segment, start, 0, zerofill.describe(start, records),
                      at=start + RECORD_HEADER_SIZE - 1, records=records,
                      bytes=records * RECORD_HEADER_SIZE)
            self.zero_run = self.result.problems[-1]
        end = start + records * RECORD_HEADER_SIZE
        self._swallowed_near(segment, start, end)

    def _trailing(self, n: int) -> None:
        c = self.cols
        for i in c.trailing_rows(0, n).tolist():
            count = c.trailing_count(i)
            self._add("trailing_bytes", int(c.seg[i]), int(c.foff[i]), int(c.seq[i]),
                      f"{count} bytes left after the payload decodes "
                      f"(a restore accepts the entry){self._older(c, i)}", bytes=count)

    def _older(self, c, i: int) -> str:
        """What a record that is not a clean bincode 2 entry is, where it is a whole
        bincode 1.3 one (``format.bincode1.Examiner``: the first few read again)."""
        older = self.older.at(self.segments[int(c.seg[i])].path, int(c.foff[i]))
        return "" if older is None else f"; {older}"

    def _swallowed_by_records(self, n: int) -> None:
        """Headers of this file inside the bytes of a record that does not decode cleanly.

        A writer reopened within the same second appends a header right after the torn
        bytes of its crash, where the torn record's length swallows it (SPEC §1 knows a
        header only at a record boundary): a restore never reads what follows.
        """
        c = self.cols
        size = RECORD_HEADER_SIZE + c.length[:n]
        damaged = (c.status[:n] != OK) | (c.stop[:n] < c.off[:n] + size)
        damaged &= ~zerofill.zero_records(c.length[:n], c.seq[:n])  # searched by _zero_run
        for i in np.flatnonzero(damaged).tolist():
            self._swallowed_near(int(c.seg[i]), int(c.foff[i]), int(c.foff[i] + size[i]))

    def _swallowed_near(self, segment: int, start: int, end: int) -> None:
        """Search file bytes ``[start, end)`` for swallowed headers, and any overlapping them."""
        if self._looks is not None:
            self._looks.append(((segment, start), self._swallowed_near, (segment, start, end)))
            return
        lo = max(HEADER_SIZE, start - HEADER_SIZE + 1)
        hi = min(self.segments[segment].size, end + HEADER_SIZE - 1)
        for pos in range(lo, hi, _HEADER_BLOCK):
            data = self._pread(segment, min(_HEADER_BLOCK + HEADER_SIZE - 1, hi - pos), pos)
            if not data:
                return
            self._swallowed(segment, pos, data)

    def _pread(self, segment: int, n: int, pos: int) -> bytes:
        """``n`` bytes of the segment at ``pos``, looked at again after the log's pass;
        nothing when the file was deleted since (the writer's retention, or ``expire`` of
        an archive: its records were read). Another error is a one-line
        ``FileReadError``, as in the log's pass."""
        try:
            return os.pread(self._fd(segment), n, pos)
        except OSError as err:
            if vanished(err):
                return b""
            raise FileReadError(self.segments[segment].path, pos, err) from err

    def _fd(self, segment: int) -> int:
        """A descriptor of the segment, for the few bytes looked at again (read-only)."""
        if segment not in self.fds:
            if len(self.fds) >= _OPEN_FILES:  # the oldest closed: segments come in order
                os.close(self.fds.pop(next(iter(self.fds))))
            self.fds[segment] = os.open(self.segments[segment].path,
                                        os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self.fds[segment]

    def _swallowed(self, segment: int, file_start: int, data: bytes) -> None:
        created = self.segments[segment].created
        pattern = HEADER_ID + created.to_bytes(8, "little")
        k = data.find(pattern)
        while k >= 0:
            at = file_start + k
            if (segment, at) not in self.swallowed:
                self.swallowed.add((segment, at))
                self._add("swallowed_header", segment, at, None,
                          "a header of this file inside a damaged record: a writer reopened "
                          "within the same second after a torn write, and a restore does not "
                          "read the records it wrote after this header")
            k = data.find(pattern, k + 1)

    def _walk(self, buf, n: int) -> None:
        c = self.cols
        i = 0
        while i < n:
            i, m = _walk(i, n, c.seg, c.foff, c.length, c.seq, c.status, c.kind, c.aux,
                         c.nent, c.efirst, c.e_op, c.e_dim, self.state, self.last_seq,
                         self.open_txns, self.events)
            for code, r, a, b in self.events[:m].tolist():
                self._event(code, r, a, b)

    def _event(self, code: int, i: int, a: int, b: int) -> None:
        c = self.cols
        s, off, q = int(c.seg[i]), int(c.foff[i]), int(c.seq[i])
        prev_seq = a % 2**64  # for the seq events: the previous seq, as int64 bits
        if code == EV_HEADERS:
            self._headers(s, a, off)
        elif code == EV_HISTORY:
            self._add("incomplete_history", s, off, q,
                      f"the log starts at seq {q}, not 0: earlier history is missing (a "
                      "restore needs a snapshot that covers it, --base/--snapshots, or "
                      "--allow-incomplete-history)")
        elif code == EV_RESTART:
            self._add("seq_restart", s, off, q,
                      f"seq restarts at 0 after {prev_seq}, after a segment header "
                      "(a writer reopened without recovery)", previous=prev_seq)
        elif code in (EV_GAP, EV_BACK):
            if code == EV_GAP:
                self._add("seq_gap", s, off, q, f"seq jumps from {prev_seq} to {q}: "
                          f"{q - prev_seq - 1} records missing", previous=prev_seq)
            else:
                why = " without a segment header before it" if q == 0 else ""
                self._add("seq_out_of_order", s, off, q,
                          f"seq goes back from {prev_seq} to {q}{why} (not a writer reopen)",
                          previous=prev_seq)
            # A record framed out of a swallowed header's bytes has a seq out of line.
            self._swallowed_near(s, off, off + RECORD_HEADER_SIZE + int(c.length[i]))
        elif code in (EV_BEGIN_OPEN, EV_END_NOT_OPEN):
            txn = int(c.aux[i])
            if code == EV_BEGIN_OPEN:
                kind, what = "txn_begin_open", "BeginTransaction for a transaction already open"
            else:
                kind = "txn_end_not_open"
                what = f"{VARIANT_NAMES[int(c.kind[i])]} for a transaction not open"
            self._add(kind, s, off, q, f"{what} (id {txn}; a restore ignores it)",
                      transaction_id=txn)
        elif code == EV_DIM:
            self._add("dim_change", s, off, q,
                      f"vector of length {b} after vectors of length {a}, in log order "
                      "(fatal to a restore that applies both; which records apply depends on "
                      "the transactions and the target)", dim=b, previous_dim=a)

    def _headers(self, segment: int, start: int, end: int) -> None:
        """Check the segment headers at file bytes ``[start, end)`` (a reopen within
        the same second appends one): each must carry the file name's second."""
        if self._looks is not None:
            self._looks.append(((segment, start), self._headers, (segment, start, end)))
            return
        for pos in range(start, end, _HEADER_BLOCK):
            data = self._pread(segment, min(_HEADER_BLOCK, end - pos), pos)
            for k in range(0, len(data) - HEADER_SIZE + 1, HEADER_SIZE):
                self._created(segment, pos + k, data[k:k + HEADER_SIZE])

    def _created(self, segment: int, offset: int, head: bytes) -> None:
        if head[:len(HEADER_ID)] != HEADER_ID:
            return  # framing skips only headers; the file changed while it was read
        created = int.from_bytes(head[8:16], "little")
        named = self.segments[segment].created
        if created != named:
            self._add("header_mismatch", segment, offset, None,
                      f"segment header says created {seconds_text(created)} but the "
                      f"file name says {seconds_text(named)}: renamed or spliced",
                      created=created)

    def _segment_ends(self) -> None:
        """First headers, and headers after a segment's last record."""
        for s, head in enumerate(self.heads):
            if header_problem(head) is not None:
                continue
            self._created(s, 0, head)
            end = self.framed_end.get(s, self.segments[s].size)
            start = self.record_end.get(s, HEADER_SIZE)
            if end > start:
                self._headers(s, start, end)



class _ArchiveCopies:
    """An archive's copies checked against the block sums ``gpu-pitr archive`` recorded
    when it copied them (``gpu_pitr.archivesums``): nothing for a directory that is not
    an archive. Each copy is checked on a thread (reads and CRC-32s release the GIL) once
    the log's pass has gone past it (``check_before``), the rest at the end (``finish``).
    """

    def __init__(self, wal_dir, segments: list, expiry) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.problems, self.sums = _archive_listing(wal_dir, segments, expiry)
        self.segments = segments
        self.next = 0  # segments[:next] are submitted (or have no sums)
        self.futures: list = []
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                       thread_name_prefix="gpu_pitr-sums") if self.sums else None

    def check_before(self, segment: int) -> None:
        """Start the checks of the copies before ``segments[segment]``."""
        if self.pool is None:
            return
        while self.next < min(segment, len(self.segments)):
            seg = self.segments[self.next]
            self.next += 1
            if seg.name in self.sums:
                self.futures.append(self.pool.submit(_archive_copy, seg, self.sums[seg.name]))

    def finish(self) -> list[Problem]:
        self.check_before(len(self.segments))
        for fut in self.futures:
            self.problems += fut.result()
        return self.problems

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _archive_listing(wal_dir, segments: list, expiry) -> tuple[list[Problem], dict]:
    """What the archive's listing says against its sums (bad sums, copies missing,
    copies without sums), and the sums by segment name (empty: nothing to check)."""
    from gpu_pitr import archivesums
    from gpu_pitr.archive import LOCK_NAME

    try:
        sums = archivesums.read(wal_dir)
    except archivesums.SumsError as err:
        return [Problem("bad_archive_sums", archivesums.SUMS_NAME, 0, None, err.what)], {}
    if sums is None:
        if not os.path.lexists(os.path.join(wal_dir, LOCK_NAME)):
            return [], {}  # not an archive
        sums = {}
    first_kept = expiry.first_kept.encode() if expiry is not None else b""
    listed = {seg.name for seg in segments}
    out = [Problem("archive_missing", name, 0, None,
                   f"gpu-pitr archive copied this segment ({plural(entry.size, 'byte')}), and "
                   "it is gone from the archive: not deleted by gpu-pitr expire (restores "
                   "across it lack its records)")
           for name, entry in sums.items()
           if name not in listed and name.encode() >= first_kept
           and not os.path.lexists(os.path.join(wal_dir, name))]
    unchecked = [seg.name for seg in segments if seg.name not in sums]
    if unchecked:
        # "A to B" only where no copy between them has sums (an upgraded archive's
        # segments WAL_DIR still held have them, those before and after do not).
        names = [seg.name for seg in segments]
        run = names.index(unchecked[-1]) - names.index(unchecked[0]) + 1 == len(unchecked)
        span = (unchecked[0] if len(unchecked) == 1
                else f"{unchecked[0]} to {unchecked[-1]}" if run
                else f"{unchecked[0]} and {unchecked[1]}" if len(unchecked) == 2
                else f"{unchecked[0]}, ..., {unchecked[-1]}, not all the segments between")
        out.append(Problem(
            "archive_unchecked", unchecked[0], 0, None,
            f"{plural(len(unchecked), 'segment')} of this archive ({span}) "
            f"{'has' if len(unchecked) == 1 else 'have'} no checksum recorded (copied by "
            "an older gpu-pitr, or before a run was killed), so a later change to "
            f"{'it' if len(unchecked) == 1 else 'them'} cannot be seen; the next "
            "gpu-pitr archive run records them while WAL_DIR still holds the segments",
            extra={"segments": len(unchecked)}))
    return out, sums


def _archive_copy(seg, entry) -> list[Problem]:
    """One copy against its sums (nothing when it cannot be opened: the read of the
    log has reported that; but an open that failed for no fault of the file, out of
    descriptors, is a ``FileReadError``: the read of the log had opened it, and the
    copy, unchecked, would pass as sound)."""
    from gpu_pitr import archivesums
    from gpu_pitr.format.segments import open_regular, raise_if_not_the_files

    try:
        fd = open_regular(seg.path)
    except OSError as err:
        raise_if_not_the_files(err)
        return []
    try:
        size = os.fstat(fd).st_size
        changed = archivesums.first_changed(fd, entry, size)
    except (OSError, EOFError):
        return []  # cut or gone while it was read: the read of the log says so
    finally:
        os.close(fd)
    out = []
    if changed is not None:
        start, end = entry.block_range(changed // archivesums.BLOCK)
        out.append(Problem(
            "archive_changed", seg.name, start, None,
            f"bytes {start} to {end - 1} are not the ones gpu-pitr archive copied (the "
            "CRC-32 of that block differs): the copy was changed or damaged since; "
            "restores that read it may apply wrong vectors or metadata"))
    if size < entry.size:
        out.append(Problem(
            "archive_cut", seg.name, size, None,
            f"the copy ends here, {plural(entry.size - size, 'byte')} before the "
            f"{entry.size} gpu-pitr archive copied: it was cut short since"))
    elif size > entry.size:
        out.append(Problem(
            "archive_unchecked", seg.name, entry.size, None,
            f"the {plural(size - entry.size, 'byte')} from here on have no checksum "
            "recorded (a run of gpu-pitr archive killed before it recorded them?): "
            "not checked", extra={"segments": 1}))
    return out
