"""A deliberately simple pure-Python reference restore, written straight from SPEC §2-§4.

It shares no code with the package (not even the layout constants): its own framing, its
own payload decoder, its own commit-point planner. Slow and obviously correct is the point;
the property tests compare the fast restore against it.

Decisions the SPEC leaves open, made here the way a sequential reader would make them:

- Like a replay, the log is read and applied strictly in log order, and the first fatal
  problem met before the stop point wins: a wrong-magic file or an undecodable record at
  its position; a history gap at the first record; a dimension mismatch at the record
  that completes the commit point applying it (the record itself for a standalone data
  record, the CommitTransaction for a transaction); a missing seq target at the end.
- A record is "reached" when it is at or before the stop point: for a time target the
  stop record (the first commit point past T) must decode, and is not applied; for a seq
  target the record with that seq must decode, and is processed (applied if it completes
  a commit point) — the target is inclusive.
- With ``skip_corrupt`` an undecodable record with the target seq is skipped and the
  restore still stops there (its position is known from the framing).
- At a record boundary, magic + version 1 is a second header; if fewer than 16 bytes of it
  are there, that is a torn tail.
- A record whose header or payload runs past the end of its file is a torn tail, not a
  record: its seq does not count for a seq target.
- Transactions open at the stop point (or at the end of the log) are "in flight".
- Non-data entries nested inside a Batch (markers, checkpoints) have no effect.
- A transaction target X is the first Commit/Abort of X, in log order, while X is open
  (one of X not open is an anomaly, not the target): processed, then the stop (inclusive),
  or the stop just before it, unapplied (exclusive); never found: TargetNotFoundError.
- A position target (segment name, offset) is the record whose header starts there, as
  a seq target's record is (inclusive, exclusive, skipped); a position where no framed
  record starts (a torn tail, a header, past the end, no such file) is a
  TargetNotFoundError before anything else, as the package checks it before it reads.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

_NAME = re.compile(r"wal-[0-9a-f]{16}\.log")
_MAGIC_V1 = b"WALV\x01\x00\x00\x00"


# ----------------------------------------------------------------------------- decoding
class Undecodable(Exception):
    pass


class _Cursor:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise Undecodable(f"needs {n} bytes, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def varint(self, bits: int) -> int:
        m = self.take(1)[0]
        if m < 251:
            return m
        if m == 251:
            return struct.unpack("<H", self.take(2))[0]
        if m == 252:
            return struct.unpack("<I", self.take(4))[0]
        if m == 253 and bits == 64:
            return struct.unpack("<Q", self.take(8))[0]
        raise Undecodable(f"bad varint marker {m}")

    def string(self) -> str:
        raw = self.take(self.varint(64))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Undecodable("invalid UTF-8") from e

    def option_tag(self) -> bool:
        t = self.take(1)[0]
        if t not in (0, 1):
            raise Undecodable(f"bad option tag {t}")
        return t == 1


def _leaf(variant: int, c: _Cursor) -> tuple:
    if variant in (0, 1):  # Insert, Update
        ident = c.string()
        vec = c.take(4 * c.varint(64))  # raw little-endian f32 bytes, bit-exact
        meta = None
        if c.option_tag():
            meta = {}
            for _ in range(c.varint(64)):
                k = c.string()
                meta[k] = c.string()
        return ("insert" if variant == 0 else "update", ident, vec, meta, c.varint(64))
    if variant == 2:
        ident = c.string()
        return ("delete", ident, c.varint(64))
    names = {4: "checkpoint", 5: "begin", 6: "commit", 7: "abort"}
    if variant in names:
        a = c.varint(64)
        return (names[variant], a, c.varint(64))
    raise Undecodable(f"unknown variant {variant}")


def decode_payload(payload: bytes) -> tuple[tuple, int]:
    """Decode one WalEntry; returns (entry, trailing byte count). Raises Undecodable.

    Entries are tuples: ("insert"|"update", id, vector_bytes, meta|None, ts),
    ("delete", id, ts), ("batch", [entries], ts), ("checkpoint", seqno, ts),
    ("begin"|"commit"|"abort", txid, ts). Iterative, so deep batch nesting is fine.
    """
    c = _Cursor(payload)
    stack: list[list] = []  # open batches: [entries still to read, entries read]
    while True:
        variant = c.varint(32)
        if variant == 3:
            stack.append([c.varint(64), []])
            done = None
        else:
            done = _leaf(variant, c)
        while True:
            if done is not None:
                if not stack:
                    return done, len(payload) - c.pos
                stack[-1][1].append(done)
                stack[-1][0] -= 1
                done = None
            if stack and stack[-1][0] == 0:
                entries = stack.pop()[1]
                done = ("batch", entries, c.varint(64))
                continue
            break


def flatten(entry: tuple) -> list[tuple]:
    """Data operations of an entry in order, nested batches flattened."""
    out, todo = [], [entry]
    while todo:
        e = todo.pop()
        if e[0] == "batch":
            todo.extend(reversed(e[1]))
        elif e[0] in ("insert", "update", "delete"):
            out.append(e)
    return out


# ----------------------------------------------------------------------------- framing
def _header_prefix_ok(data: bytes) -> bool:
    return data[:8] == _MAGIC_V1[: min(len(data), 8)]


def frame_log(wal_dir) -> list[tuple]:
    """Log items in log order: ("bad", file, what) | ("torn", file, offset, bytes_lost) |
    ("record", file, offset, end, seq, payload)."""
    names = sorted((n for n in os.listdir(wal_dir) if _NAME.fullmatch(n)), key=lambda n: n.encode())
    items: list[tuple] = []
    for name in names:
        path = os.path.join(wal_dir, name)
        if not os.path.isfile(path) and not (os.path.islink(path) and not os.path.exists(path)):
            continue  # a directory or a special file: not a segment
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # a link to a missing file, no permission: a bad segment
            items.append(("bad", name, "cannot read the file"))
            continue
        if len(data) < 16:
            if _header_prefix_ok(data):
                items.append(("torn", name, 0, len(data)))
            else:
                items.append(("bad", name, "short file, not a WALV header"))
            continue
        if data[:8] != _MAGIC_V1:
            items.append(("bad", name, "wrong magic or version"))
            continue
        pos = 16
        while pos < len(data):
            rest = len(data) - pos
            if rest >= 8 and data[pos : pos + 8] == _MAGIC_V1:
                if rest < 16:
                    items.append(("torn", name, pos, rest))
                    break
                pos += 16  # a second header (writer reopened within the same second)
                continue
            if rest < 12:
                items.append(("torn", name, pos, rest))
                break
            seq, length = struct.unpack_from("<QI", data, pos)
            if length > rest - 12:
                items.append(("torn", name, pos, rest))
                break
            end = pos + 12 + length
            items.append(("record", name, pos, end, seq, data[pos + 12 : end]))
            pos = end
    return items


# ----------------------------------------------------------------------------- restore
@dataclass
class RefError:
    cls: str  # name of the gpu_pitr.errors class the fast path must raise
    file: str | None = None
    offset: int | None = None  # start of the bad record (0 for a bad file)
    end: int | None = None  # end of the bad record: the fast path's offset is in [offset, end)
    seq: int | None = None


@dataclass
class RefResult:
    error: RefError | None = None
    ids: list[str] = field(default_factory=list)
    vectors: list[bytes] = field(default_factory=list)  # raw LE float32 bytes per id
    metadata: list[dict | None] = field(default_factory=list)
    dim: int | None = None
    # stop point: reason "target" | "end_of_log"; file/offset/seq/timestamp of the stop record
    stop: dict = field(default_factory=dict)
    records_read: int = 0  # records framed up to the stop (the stop record included)
    commit_points_applied: int = 0
    last_commit_timestamp: int | None = None  # the stamp of the last commit point applied
    inserts: int = 0
    updates: int = 0  # every Update applied, updates_of_missing included
    updates_of_missing: int = 0
    deletes: int = 0  # every Delete applied, deletes_of_missing included
    deletes_of_missing: int = 0
    committed: int = 0
    aborted: int = 0
    in_flight_discarded: int = 0
    anomalies: list[tuple] = field(default_factory=list)  # (file, offset, seq, kind)
    torn_tails: list[tuple] = field(default_factory=list)  # (file, offset, bytes_lost), all
    # damage lists: (file, record offset, seq, record end); a bad file is (file, 0, None, 16)
    skipped: list[tuple] = field(default_factory=list)
    damage_after_stop: list[tuple] = field(default_factory=list)
    trailing_bytes: list[tuple] = field(default_factory=list)  # (file, offset, seq, n)

    @property
    def outcome(self) -> str:
        return "ok" if self.error is None else self.error.cls

    def pos_reached(self, file: str, offset: int) -> bool:
        """Is log position (file, offset) at or before the stop point (read, not beyond)?"""
        if self.stop.get("reason") != "target":
            return True
        return (file.encode(), offset) <= (self.stop["file"].encode(), self.stop["offset"])


def _fail(res: RefResult, cls: str, file=None, offset=None, end=None, seq=None) -> RefResult:
    res.error = RefError(cls, file, offset, end, seq)
    return res


def restore(
    wal_dir,
    *,
    to_time: int | str | None = None,
    to_seq: int | None = None,
    exclusive: bool = False,
    skip_corrupt: bool = False,
    allow_incomplete_history: bool = False,
    to_transaction: int | None = None,
    to_position: tuple[str, int] | str | None = None,
) -> RefResult:
    res = RefResult()
    if isinstance(to_position, str):  # "FILE:OFFSET", FILE a segment's name
        name, _, offset = to_position.rpartition(":")
        to_position = (name, int(offset))
    if to_position is not None:
        to_position = (os.path.basename(os.fspath(to_position[0])), int(to_position[1]))
    if isinstance(to_time, str):  # ISO-8601 with a zone, whole seconds (as the tests give)
        from datetime import datetime

        to_time = int(datetime.fromisoformat(to_time).timestamp())
    items = frame_log(wal_dir)
    res.torn_tails = [(i[1], i[2], i[3]) for i in items if i[0] == "torn"]
    # A position target names a record's start: anything else (a torn tail, a header,
    # past the end, no such file) is an error before the log is restored.
    if to_position is not None and not any(
            i[0] == "record" and (i[1], i[2]) == tuple(to_position) for i in items):
        return _fail(res, "TargetNotFoundError", to_position[0], to_position[1])

    open_txns: list[list] = []  # [txid, [ops with their record]] in begin order
    state: dict[str, tuple[bytes, dict | None]] = {}
    first_record = True
    stop_index = None

    def past_target(ts: int) -> bool:
        return to_time is not None and (ts >= to_time if exclusive else ts > to_time)

    def apply(ops: list) -> tuple | None:
        """Apply one commit point; returns the record of a dimension mismatch, if any."""
        res.commit_points_applied += 1
        for op, *rec in ops:
            if op[0] in ("insert", "update"):
                n = len(op[2]) // 4
                if res.dim is None:
                    res.dim = n
                elif n != res.dim:
                    return rec
            ident = op[1]
            if op[0] == "insert":
                res.inserts += 1
                state[ident] = (op[2], op[3])
            elif op[0] == "update":
                res.updates += 1
                if ident in state:
                    meta = op[3] if op[3] is not None else state[ident][1]
                else:
                    res.updates_of_missing += 1
                    meta = op[3]
                state[ident] = (op[2], meta)
            else:
                res.deletes += 1
                if ident in state:
                    del state[ident]
                else:
                    res.deletes_of_missing += 1
        return None

    for idx, item in enumerate(items):
        if item[0] == "torn":
            continue
        if item[0] == "bad":
            if skip_corrupt:
                res.skipped.append((item[1], 0, None, 16))
                continue
            return _fail(res, "BadSegmentError", item[1], 0, 16)
        _, name, off, end, seq, payload = item
        res.records_read += 1
        # Records of 12 zero bytes carry no seq the writer gave: skipped, they do not
        # say where the history starts (unless seq 0 is the target, which one of them is).
        zero_skipped = (seq == 0 and not payload and skip_corrupt and to_seq != 0
                        and (name, off) != to_position)
        if first_record and not zero_skipped:
            first_record = False
            if seq != 0 and not allow_incomplete_history:
                return _fail(res, "IncompleteHistoryError", name, off, end, seq)
        is_target = (to_seq is not None and seq == to_seq) or (name, off) == to_position
        if is_target and exclusive:  # the position just before this record
            try:
                entry, trailing = decode_payload(payload)
            except Undecodable:
                ts = None
            else:  # read, as a time target's stop record is
                ts = entry[-1]
                if trailing:
                    res.trailing_bytes.append((name, off, seq, trailing))
            res.stop = dict(reason="target", file=name, offset=off, seq=seq, timestamp=ts)
            stop_index = idx - 1  # this record is after the stop: its damage is listed
            break
        try:
            entry, trailing = decode_payload(payload)
        except Undecodable:
            if not skip_corrupt:
                return _fail(res, "CorruptRecordError", name, off, end, seq)
            res.skipped.append((name, off, seq, end))
            if is_target:
                res.stop = dict(reason="target", file=name, offset=off, seq=seq, timestamp=None)
                stop_index = idx
                break
            continue
        if trailing:
            res.trailing_bytes.append((name, off, seq, trailing))
        kind, ts = entry[0], entry[-1]
        completed = None  # the ops of a commit point completed by this record
        if kind in ("insert", "update", "delete", "batch"):
            ops = [(op, name, off, end, seq) for op in flatten(entry)]
            if open_txns:
                open_txns[-1][1].extend(ops)
            else:
                completed = ops
        elif kind == "begin":
            if any(t[0] == entry[1] for t in open_txns):
                res.anomalies.append((name, off, seq, "begin of open transaction"))
            else:
                open_txns.append([entry[1], []])
        elif kind in ("commit", "abort"):
            match = [t for t in open_txns if t[0] == entry[1]]
            if not match:
                res.anomalies.append((name, off, seq, f"{kind} of unknown transaction"))
            elif entry[1] == to_transaction and exclusive:  # just before the record
                res.stop = dict(reason="target", file=name, offset=off, seq=seq, timestamp=ts)
                stop_index = idx - 1
                break
            elif kind == "abort":
                open_txns.remove(match[0])
                res.aborted += 1
            else:
                completed = match[0][1]
        # checkpoints carry no data
        if completed is not None:
            if past_target(ts):  # the first commit point past T: the stop, not applied
                res.stop = dict(reason="target", file=name, offset=off, seq=seq, timestamp=ts)
                stop_index = idx
                break
            if kind == "commit":
                open_txns.remove(match[0])
                res.committed += 1
            bad = apply(completed)
            if bad is not None:
                return _fail(res, "DimensionMismatchError", *bad)
            res.last_commit_timestamp = ts
        if is_target or (kind in ("commit", "abort") and match and entry[1] == to_transaction):
            res.stop = dict(reason="target", file=name, offset=off, seq=seq, timestamp=ts)
            stop_index = idx
            break

    if stop_index is None:
        if to_seq is not None or to_transaction is not None:
            return _fail(res, "TargetNotFoundError", seq=to_seq)
        res.stop = dict(reason="end_of_log", file=None, offset=None, seq=None, timestamp=None)
    else:  # damage after the stop point: reported, never fatal
        for item in items[stop_index + 1 :]:
            if item[0] == "bad":
                res.damage_after_stop.append((item[1], 0, None, 16))
            elif item[0] == "record":
                try:
                    decode_payload(item[5])
                except Undecodable:
                    res.damage_after_stop.append((item[1], item[2], item[4], item[3]))
    res.in_flight_discarded = len(open_txns)

    res.ids = sorted(state, key=lambda s: s.encode("utf-8"))
    res.vectors = [state[i][0] for i in res.ids]
    res.metadata = [state[i][1] for i in res.ids]
    return res


def report_dict(res: RefResult) -> dict:
    """The reference's result in the shape of the fast path's ``report.to_dict()``."""
    rec = ("file", "offset", "seq")
    return {
        "stop": dict(res.stop),
        "records_read": res.records_read,
        "commit_points_applied": res.commit_points_applied,
        "inserts": res.inserts,
        "updates": res.updates,
        "updates_of_missing": res.updates_of_missing,
        "deletes": res.deletes,
        "deletes_of_missing": res.deletes_of_missing,
        "transactions": {
            "committed": res.committed,
            "aborted": res.aborted,
            "in_flight_discarded": res.in_flight_discarded,
        },
        "anomalies": [dict(zip((*rec, "what"), a, strict=True)) for a in res.anomalies],
        "torn_tails": [
            dict(zip(("file", "offset", "bytes_lost"), t, strict=True)) for t in res.torn_tails
        ],
        "skipped": [dict(zip(rec, s[:3], strict=True)) for s in res.skipped],
        "damage_after_stop": [dict(zip(rec, d[:3], strict=True)) for d in res.damage_after_stop],
        "trailing_bytes": [dict(zip((*rec, "count"), t, strict=True)) for t in res.trailing_bytes],
    }
