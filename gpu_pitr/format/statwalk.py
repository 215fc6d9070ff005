"""The compiled pass behind ``wal_stats`` (``gpu-pitr inspect``).

The bytes go through the restore's own pieces: ``Readahead`` and ``FrameAhead``
(``frame_records``) read and frame each segment piece by piece on threads, and one
compiled walk per framed piece (``_walk``) parses every payload with the shared
parser (``payload.parse_payload``, no entry written) and keeps what inspect counts:
variants at the top level and inside batches, sequence-number restarts and the
transaction rules of SPEC section 3. What is listed record by record (damage,
checkpoints, anomalies, restarts) comes back as events, so the Python work is one
dict per listed item, not per record. An undecodable payload is decoded once more
by the pure-Python codec, for its message.

Memory: the read-ahead ring (five buffers of one piece plus headroom), the record
columns of one piece, and the open transactions; on a log of small segments, up to
three batches of their pieces on their way from the framing thread (each within
``readahead.BATCH_BYTES``, 1 MiB).
"""

from __future__ import annotations

import os

import numpy as np
from numba import types
from numba.typed import Dict

from gpu_pitr.format import bincode1, zerofill
from gpu_pitr.format.codec import PayloadError, decode_entry
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    CHECKPOINT,
    COMMIT_TRANSACTION,
    DELETE,
    HEADER_ID,
    HEADER_SIZE,
    MAGIC,
    N_VARIANTS,
    RECORD_HEADER_SIZE,
    VARIANT_NAMES,
    VARINT_U32,
    VARINT_U64,
    VERSION,
)
from gpu_pitr.format.payload import (
    ERR_DEPTH,
    MAX_BATCH_DEPTH,
    OK,
    parse_payload,
    read_length,
    read_varint,
    record_columns,
    skip_metadata,
    stack_for,
)
from gpu_pitr.format.readahead import (
    BYTES_PER_ROW,
    DEFAULT_CHUNK_BYTES,
    framed_pieces,
    scan_chunk_bytes,
)
from gpu_pitr.format.segments import (
    in_progress,
    list_segments,
    raise_if_not_the_files,
    unreadable,
    written_since,
)
from gpu_pitr.jit import NO_REFCOUNTS, njit

_U64_MAX = np.uint64(2**64 - 1)

# Events of the walk: (code, record index in the piece, a number: see each code).
EV_RESTART = 1  # seq is not the previous record's + 1 (the previous seq's bits)
EV_UNDECODABLE = 2
EV_TRAILING = 3  # bytes left after the payload decodes
EV_CHECKPOINT = 4
EV_BEGIN_OPEN = 5  # BeginTransaction of an open transaction
EV_END_NOT_OPEN = 6  # Commit/AbortTransaction of a transaction not open
EV_ZEROS = 7  # a run of zero-filled records (format.zerofill): how many
_EVENTS = 4096  # rows of the event buffer; the walk resumes when it fills
_EVENT_ROOM = 3  # events one record can emit at most: restart, trailing, checkpoint/anomaly

# The walk's counters, carried across pieces and segments (``state``).
_SEEN = 0  # a record with a seq was seen, not zero-filled (``prev`` holds its seq)
_NEXT_BEGIN = 1  # begin order of the next transaction opened
_COMMITTED = 2
_ABORTED = 3
_BAD_BATCH = 4  # 1 + the record whose batch the entry count could not walk (a bug)


@njit(cache=True, nogil=True)
def nested_entry(buf, p, end, stack, depth, check_utf8):
    """One entry of a data payload at ``p`` (a record's own entry at ``depth`` 0, then
    those nested in its batches), read as ``parse_payload`` lays them out: returns
    ``(kind, id_at, id_len, next_pos, depth)``, the id's bytes for an Insert, Update or
    Delete (``id_at`` -1 for others), and the depth after it, every batch whose entries
    are then all read closed (its timestamp read). ``kind`` -1: the bytes do not walk;
    -2: a batch nested deeper than ``stack``. Metadata is skipped by its lengths, its
    strings' UTF-8 checked too with ``check_utf8``. The one walk of ``_count_nested``
    and ``format.dump``'s id filter."""
    v, p = read_varint(buf, p, end, VARINT_U32)
    if p < 0 or v >= np.uint64(N_VARIANTS):
        return -1, -1, 0, p, depth
    kind = np.int64(v)
    id_at, id_len = np.int64(-1), np.int64(0)
    if kind == BATCH:
        count, p = read_length(buf, p, end, 1)
        if p < 0:
            return -1, -1, 0, p, depth
        if depth >= stack.shape[0]:
            return -2, -1, 0, p, depth
        stack[depth] = count
        depth += 1
    else:
        if kind <= DELETE:
            id_len, p = read_length(buf, p, end, 1)  # the id: its UTF-8 was checked
            if p < 0:
                return -1, -1, 0, p, depth
            id_at = p
            p += id_len
            if kind != DELETE:
                dim, p = read_length(buf, p, end, 4)
                if p < 0:
                    return -1, -1, 0, p, depth
                p += dim * 4
                if check_utf8:
                    _s, _n, p = skip_metadata(buf, p, end)
                elif p >= end:
                    p = -1
                elif buf[p] == 1:  # Some(map): its keys and values, by their lengths
                    pairs, p = read_length(buf, p + 1, end, 2)
                    for _ in range(2 * pairs):
                        if p < 0:
                            break
                        n, p = read_length(buf, p, end, 1)
                        p += n
                else:
                    p += 1
                if p < 0:
                    return -1, -1, 0, p, depth
        else:
            _a, p = read_varint(buf, p, end, VARINT_U64)
            if p < 0:
                return -1, -1, 0, p, depth
        _t, p = read_varint(buf, p, end, VARINT_U64)  # the entry's timestamp
        if p < 0:
            return -1, -1, 0, p, depth
        if depth > 0:
            stack[depth - 1] -= 1
    # Close every batch whose entries are all read: its timestamp follows.
    while depth > 0 and stack[depth - 1] == 0:
        _t, p = read_varint(buf, p, end, VARINT_U64)
        if p < 0:
            return -1, -1, 0, p, depth
        depth -= 1
        if depth > 0:
            stack[depth - 1] -= 1
    return kind, id_at, id_len, p, depth


@njit(cache=True, nogil=True)
def _count_nested(buf, pos, end, stack, nested):
    """Count, by variant, every entry nested in the Batch payload ``buf[pos:end]``
    (nested batches and markers included). The payload is one ``parse_payload``
    accepted with a stack as deep as ``stack``; False if it does not walk."""
    p = pos
    depth = 0
    top = True
    while True:
        kind, _i, _n, p, depth = nested_entry(buf, p, end, stack, depth, True)
        if kind < 0:
            return False
        if top:
            top = False
            if kind != BATCH:
                return False  # the top-level entry is a batch
        else:
            nested[kind] += 1
        if depth == 0:
            return True


@njit(cache=True, nogil=True, **NO_REFCOUNTS)
def _parse(buf, n, off, length, stack, status, kind, ts, aux, nent, stop, e_i64, e_u64):
    """Record columns of records ``0..n-1`` of a piece (``_walk`` reads them), no entry
    written: the executors' ``record_columns``, in a loop compiled without reference
    counting (see ``gpu_pitr.jit.NO_REFCOUNTS``)."""
    for i in range(n):
        start = off[i] + RECORD_HEADER_SIZE
        record_columns(buf, start, start + length[i], i, stack, False, status, kind, ts, aux,
                       nent, stop, e_i64, e_i64, e_i64, e_i64, e_i64, e_i64, e_i64, e_u64)


@njit(cache=True, nogil=True)
def _parsed_deep(buf, i, off, length, stack, status, kind, ts, aux, stop, e_i64, e_u64):
    """Record ``i``'s columns (from ``_parse``), parsed again with a deeper stack where it
    is nested deeper than ``stack`` (``ERR_DEPTH``; bounded by ``stack_for``) and written
    back; returns the stack it parsed with (``_count_nested`` of a batch needs one as
    deep)."""
    st = stack
    if status[i] != ERR_DEPTH:
        return st
    start = off[i] + RECORD_HEADER_SIZE
    end = start + length[i]
    s = np.int64(ERR_DEPTH)
    k, t, a, e = kind[i], ts[i], aux[i], stop[i]
    while s == ERR_DEPTH:
        st = np.empty(min(st.shape[0] * 64, stack_for(length[i])), np.int64)
        s, k, t, a, _ne, e = parse_payload(buf, start, end, st, False, 0, e_i64, e_i64,
                                           e_i64, e_i64, e_i64, e_i64, e_i64, e_u64)
    status[i] = s
    kind[i] = k
    ts[i] = t
    aux[i] = a
    stop[i] = e
    return st


@njit(cache=True, nogil=True)
def _walk(buf, i, n, off, length, seq, row_seg, status, kind, ts, aux, stop,
          state, prev, counts, nested, open_txns, stack, e_i64, e_u64, events):
    """Walk records ``i..n-1`` of a piece in log order; returns ``(next record, events)``.
    ``row_seg``: each record's segment (small segments framed together), or empty.

    Takes ``status``, ``kind``, ``ts``, ``aux`` and ``stop`` per record from ``_parse``
    (as the executors' record columns; a record nested deeper than ``stack`` is
    parsed again here with a deeper one), counts decodable records by top-level variant in
    ``counts`` and the entries nested in their batches in ``nested``, and applies
    the transaction rules to ``open_txns`` (id -> begin order). ``state`` and
    ``prev`` (the last seq) carry over between calls. Stops early when ``events``
    has no room for one more record's events.
    """
    m = 0
    while i < n and m + _EVENT_ROOM <= events.shape[0]:
        q = seq[i]
        if zerofill.is_zero_record(length[i], q):
            # Zero-filled records back to back, one event: undecodable, and no seq the
            # writer gave (format.zerofill).
            j = i + 1
            while (j < n and zerofill.is_zero_record(length[j], seq[j])
                   and off[j] == off[j - 1] + RECORD_HEADER_SIZE
                   and (len(row_seg) == 0 or row_seg[j] == row_seg[j - 1])):
                j += 1
            events[m, 0] = EV_ZEROS
            events[m, 1] = i
            events[m, 2] = j - i
            m += 1
            i = j
            continue
        # As Python ints: after 2**64 - 1 every seq is a restart.
        if state[_SEEN] != 0 and (prev[0] == _U64_MAX or q != prev[0] + np.uint64(1)):
            events[m, 0] = EV_RESTART
            events[m, 1] = i
            events[m, 2] = np.int64(prev[0])  # the bits; the caller takes them back
            m += 1
        state[_SEEN] = 1
        prev[0] = q
        start = off[i] + RECORD_HEADER_SIZE
        end = start + length[i]
        st = _parsed_deep(buf, i, off, length, stack, status, kind, ts, aux, stop, e_i64,
                          e_u64)
        s, k, a, e = status[i], kind[i], aux[i], stop[i]
        if s != OK:
            events[m, 0] = EV_UNDECODABLE
            events[m, 1] = i
            m += 1
            i += 1
            continue
        if e < end:
            events[m, 0] = EV_TRAILING
            events[m, 1] = i
            m += 1
        counts[k] += 1
        if k == BATCH:
            if not _count_nested(buf, start, end, st, nested) and state[_BAD_BATCH] == 0:
                state[_BAD_BATCH] = i + 1
        elif k == CHECKPOINT:
            events[m, 0] = EV_CHECKPOINT
            events[m, 1] = i
            m += 1
        elif k == BEGIN_TRANSACTION:
            if a in open_txns:
                events[m, 0] = EV_BEGIN_OPEN
                events[m, 1] = i
                m += 1
            else:
                open_txns[a] = state[_NEXT_BEGIN]
                state[_NEXT_BEGIN] += 1
        elif k == COMMIT_TRANSACTION or k == ABORT_TRANSACTION:
            if a in open_txns:
                open_txns.pop(a)
                if k == COMMIT_TRANSACTION:
                    state[_COMMITTED] += 1
                else:
                    state[_ABORTED] += 1
            else:
                events[m, 0] = EV_END_NOT_OPEN
                events[m, 1] = i
                m += 1
        i += 1
    return i, m


@njit(cache=True, nogil=True)
def _new_txn_map():
    return Dict.empty(key_type=types.uint64, value_type=types.int64)


@njit(cache=True, nogil=True)
def _open_in_begin_order(open_txns):
    """The ids of the transactions still open, in the order they were begun."""
    n = len(open_txns)
    ids = np.empty(n, np.uint64)
    order = np.empty(n, np.int64)
    j = 0
    for txn, at in open_txns.items():
        ids[j] = txn
        order[j] = at
        j += 1
    return ids[np.argsort(order)]


def header_damage(head: bytes | OSError) -> tuple | None:
    """What inspect lists for a segment's first bytes (``head``: up to 16 of them, or
    the ``OSError`` of reading them), as ``(kind, offset, what, bytes)``, or None for a
    valid header."""
    if isinstance(head, OSError):
        raise_if_not_the_files(head)
        return ("bad_header", 0, unreadable(head), None)
    if len(head) < HEADER_SIZE:
        if head[: len(HEADER_ID)] == HEADER_ID[: len(head)]:
            return ("torn_tail", 0, None, len(head))
        return ("bad_header", 0, "wrong magic", None)
    if head[:4] != MAGIC:
        return ("bad_header", 0, f"wrong magic {head[:4]!r}", None)
    version = int.from_bytes(head[4:8], "little")
    if version != VERSION:
        return ("bad_header", 0, f"unsupported version {version}", None)
    return None


class _Segment:
    """What inspect says about one segment, gathered piece by piece."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.created: int | None = None
        self.records = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.min_ts: int | None = None
        self.max_ts: int | None = None
        self.record_bytes = 0  # record headers and payloads framed
        self.torn_at: int | None = None  # where a torn tail starts

    def to_dict(self) -> dict:
        extra = 0
        if self.created is not None:
            # Framing consumes only whole records and 16-byte headers, up to the end
            # of the file or its torn tail: what no record holds is headers.
            end = self.size if self.torn_at is None else self.torn_at
            extra = (end - HEADER_SIZE - self.record_bytes) // HEADER_SIZE
        return {
            "name": self.name,
            "size": self.size,
            "created": self.created,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "min_timestamp": self.min_ts,
            "max_timestamp": self.max_ts,
            "extra_headers": extra,
        }


def history(first_record: dict | None, wal_dir=None) -> dict:
    """``wal_stats``'s ``history``: complete when the log's first record (SPEC section 4:
    the first in log order) is seq 0, or when there is none, and when ``gpu-pitr
    expire`` has not deleted segments of ``wal_dir`` (its marker: ``expired_before``,
    the first segment kept; the segments left may well start at seq 0, a writer that
    restarted its numbers). A marker that is not one expire wrote makes the history
    unknown, not complete (``expire_marker_problem``), as restores refuse it."""
    from gpu_pitr.errors import WalError
    from gpu_pitr.expire import read_marker

    expired_before = problem = None
    if wal_dir is not None:
        try:
            expiry = read_marker(wal_dir)
        except WalError as err:
            problem = err.what
        else:
            expired_before = None if expiry is None else expiry.first_kept
    starts_at_0 = first_record is None or first_record["seq"] == 0
    return {"complete": starts_at_0 and expired_before is None and problem is None,
            "first_record": first_record, "expired_before": expired_before,
            "expire_marker_problem": problem}


def scan_stats(wal_dir: str | os.PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
               segments: list | None = None) -> dict:
    """``wal_stats``: see ``gpu_pitr.format.stats``."""
    scan = _Scan(wal_dir, max(64, int(chunk_bytes)), segments)
    scan.run()
    return scan.result()


class _Scan:
    """One ``wal_stats`` in progress: the loop over framed pieces."""

    def __init__(self, wal_dir, chunk_bytes: int, segments: list | None = None) -> None:
        self.wal_dir = wal_dir
        self.segments = list_segments(wal_dir) if segments is None else list(segments)
        self.segs = [_Segment(seg.name, seg.size) for seg in self.segments]
        self.older = bincode1.Examiner()  # payloads looked at for bincode 1.3
        self.chunk_bytes = scan_chunk_bytes(self.segments, chunk_bytes)
        self.cols = ChunkColumns(self.chunk_bytes // BYTES_PER_ROW + 64, 1)
        self.heads: list[bytes] = []
        self.stack = np.empty(MAX_BATCH_DEPTH, np.int64)
        self.state = np.zeros(5, np.int64)
        self.prev = np.zeros(1, np.uint64)
        self.counts = np.zeros(N_VARIANTS, np.int64)
        self.nested = np.zeros(N_VARIANTS, np.int64)
        self.open_txns = _new_txn_map()
        self.events = np.zeros((_EVENTS, 3), np.int64)
        self.checkpoints: list[dict] = []
        self.anomalies: list[dict] = []
        self.restarts: list[dict] = []
        self.damage: list[dict] = []
        self.first_record: dict | None = None  # the log's first record: its history

    def _header(self, head: bytes):
        self.heads.append(head)  # called once per segment, in log order (frame thread)
        return header_damage(head)

    def run(self) -> None:
        for item in framed_pieces(self.segments, self.chunk_bytes, self._header,
                                  merge_small="batch"):
            if item.problem is not None:
                kind, offset, what, nbytes = item.problem
                self.damage.append(_damage(kind, self.segs[item.segment].name, offset,
                                           nbytes=nbytes, what=what))
            else:
                self._piece(item)
        for seg, head in zip(self.segs, self.heads, strict=False):
            if header_damage(head) is None:
                seg.created = int.from_bytes(head[8:16], "little")
        paths = {seg.name: seg.path for seg in self.segments}
        for d in self.damage:  # last, when a writer has had the longest to go on
            size = d["kind"] == "torn_tail" and written_since(paths[d["file"]], d["offset"],
                                                              d["bytes"])
            if size:
                d["size_now"] = size
                d["what"] = in_progress(size)
        if self.state[_BAD_BATCH]:
            raise RuntimeError("inspect: a batch the payload parser accepted did not walk "
                               "(a bug in gpu_pitr.format.statwalk)")

    def _piece(self, item) -> None:
        """Walk the records framed in one item (several small segments framed together:
        ``item.row_segment``), then list what they hold, segment by segment."""
        n, c = item.n, self.cols
        merged = item.row_segment is not None
        rows = item.row_segment[:n] if merged else np.full(n, item.segment, np.int64)
        torn = sorted(item.torn_list())  # listed after their segment's other damage
        t = 0
        if n:
            c.ensure_records(n)
            _parse(item.buf, n, item.off, item.length, self.stack, c.status, c.kind, c.ts,
                   c.aux, c.nent, c.stop, c.e_op, c.e_key)
            i = 0
            while i < n:
                i, m = _walk(item.buf, i, n, item.off, item.length, item.seq,
                             rows if merged else _NO_ROWS, c.status, c.kind, c.ts, c.aux,
                             c.stop, self.state, self.prev, self.counts, self.nested,
                             self.open_txns, self.stack, c.e_op, c.e_key, self.events)
                for code, r, a in self.events[:m].tolist():
                    segment = int(rows[r])
                    while t < len(torn) and torn[t][0] < segment:
                        self._torn(*torn[t])
                        t += 1
                    self._event(code, r, a, item, self.segs[segment])
            self._segment_stats(item, rows)
        for tail in torn[t:]:
            self._torn(*tail)

    def _torn(self, segment: int, at: int, lost: int) -> None:
        seg = self.segs[segment]
        seg.torn_at = at
        self.damage.append(_damage("torn_tail", seg.name, at, nbytes=lost))

    def _segment_stats(self, item, rows: np.ndarray) -> None:
        """Add the records of ``item`` (of segments ``rows``, in log order) to their
        segments' counts, seq and time ranges and bytes."""
        n, c = item.n, self.cols
        seq = item.seq[:n]
        firsts = _group_starts(rows)  # where each segment's rows start
        counts = np.diff(np.append(firsts, n))
        nbytes = np.add.reduceat(item.length[:n].astype(np.int64), firsts) \
            + RECORD_HEADER_SIZE * counts
        # Zero-filled records carry no seq the writer gave (format.zerofill): they
        # count as records, but neither start the history nor bound a segment's seqs.
        some = np.flatnonzero(~zerofill.zero_records(item.length[:n], seq))
        if len(some) and self.first_record is None:
            f = int(some[0])
            self.first_record = {"file": self.segs[int(rows[f])].name,
                                 "offset": item.file_offset(f), "seq": int(seq[f])}
        ok = c.status[:n] == OK
        seqs = _first_last(rows[some], seq[some])
        stamps = _low_high(rows[ok], c.ts[:n][ok])
        for segment, count, size in zip(rows[firsts].tolist(), counts.tolist(),
                                        nbytes.tolist(), strict=True):
            seg = self.segs[segment]
            seg.records += count
            seg.record_bytes += size
            if segment in seqs:
                first, seg.last_seq = seqs[segment]
                if seg.first_seq is None:
                    seg.first_seq = first
            if segment in stamps:
                low, high = stamps[segment]
                seg.min_ts = low if seg.min_ts is None else min(seg.min_ts, low)
                seg.max_ts = high if seg.max_ts is None else max(seg.max_ts, high)

    def _event(self, code: int, i: int, a: int, item, seg: _Segment) -> None:
        c = self.cols
        offset = item.file_offset(i)
        q = int(item.seq[i])
        if code == EV_RESTART:
            self.restarts.append({"file": seg.name, "offset": offset, "from": a % 2**64,
                                  "to": q})
            return
        if code == EV_ZEROS:
            self._zeros(seg.name, offset, a)
            return
        start = int(item.off[i]) + RECORD_HEADER_SIZE
        length = int(item.length[i])
        if code == EV_UNDECODABLE:
            payload = item.buf[start:start + length]
            older = self.older.of(payload)
            self.damage.append(_damage("undecodable", seg.name, offset, q,
                                       what=_payload_error(payload)
                                       + ("" if older is None else f"; {older}")))
        elif code == EV_TRAILING:
            self.damage.append(_damage("trailing_bytes", seg.name, offset, q,
                                       start + length - int(c.stop[i]),
                                       what=self.older.of(item.buf[start:start + length])))
        elif code == EV_CHECKPOINT:
            self.checkpoints.append({"file": seg.name, "offset": offset, "seq": q,
                                     "sequence_number": int(c.aux[i]),
                                     "timestamp": int(c.ts[i])})
        else:
            if code == EV_BEGIN_OPEN:
                what = "begin of an open transaction"
            else:
                end = "commit" if int(c.kind[i]) == COMMIT_TRANSACTION else "abort"
                what = f"{end} of a transaction that is not open"
            self.anomalies.append({"file": seg.name, "offset": offset, "seq": q,
                                   "transaction_id": int(c.aux[i]), "what": what})

    def _zeros(self, name: str, start: int, records: int) -> None:
        """List a run of zero records, or add it to the run listed last when it goes on
        from there (a piece boundary split it)."""
        if not zerofill.join(self.damage[-1] if self.damage else None, name, start, records,
                             "offset", ""):
            self.damage.append({**_damage(zerofill.KIND, name, start, 0,
                                          records * RECORD_HEADER_SIZE,
                                          zerofill.describe(start, records)),
                                "records": records})

    def result(self) -> dict:
        segments = [seg.to_dict() for seg in self.segs]
        return {
            "wal_dir": str(self.wal_dir),
            "totals": {
                "segments": len(segments),
                "bytes": sum(seg["size"] for seg in segments),
                "records": sum(seg["records"] for seg in segments),
            },
            "segments": segments,
            "records_by_variant": dict(zip(VARIANT_NAMES, self.counts.tolist(), strict=True)),
            "batch_entries_by_variant": dict(zip(VARIANT_NAMES, self.nested.tolist(),
                                                 strict=True)),
            "checkpoints": self.checkpoints,
            "transactions": {
                "committed": int(self.state[_COMMITTED]),
                "aborted": int(self.state[_ABORTED]),
                "open_at_end": _open_in_begin_order(self.open_txns).tolist(),
                "anomalies": self.anomalies,
            },
            "seq_restarts": self.restarts,
            "damage": self.damage,
            "history": history(self.first_record, self.wal_dir),
        }


_NO_ROWS = np.zeros(0, np.int64)


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``groups`` (sorted, not empty) starts."""
    return np.flatnonzero(np.diff(groups, prepend=groups[0] - 1))


def _first_last(groups: np.ndarray, values: np.ndarray) -> dict:
    """``{group: (first value, last value)}`` of ``values`` grouped by ``groups`` (sorted)."""
    if not len(groups):
        return {}
    starts = _group_starts(groups)
    ends = np.append(starts[1:], len(groups)) - 1
    return dict(zip(groups[starts].tolist(),
                    zip(values[starts].tolist(), values[ends].tolist(), strict=True),
                    strict=True))


def _low_high(groups: np.ndarray, values: np.ndarray) -> dict:
    """``{group: (least value, greatest value)}`` of ``values`` grouped by ``groups``
    (sorted)."""
    if not len(groups):
        return {}
    starts = _group_starts(groups)
    return dict(zip(groups[starts].tolist(),
                    zip(np.minimum.reduceat(values, starts).tolist(),
                        np.maximum.reduceat(values, starts).tolist(), strict=True),
                    strict=True))


def _payload_error(payload: np.ndarray) -> str:
    """The pure-Python codec's message for a payload the compiled parser rejected."""
    try:
        decode_entry(payload.tobytes())
    except PayloadError as err:
        return str(err)
    raise RuntimeError("inspect: the payload parser and the codec disagree on a payload "
                       f"({payload.tobytes()[:64].hex()})")


def _damage(kind, file, offset, seq=None, nbytes=None, what=None) -> dict:
    return {"kind": kind, "file": file, "offset": offset, "seq": seq, "bytes": nbytes, "what": what}
