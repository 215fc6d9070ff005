"""When a restore FROM A BASE SNAPSHOT warns: tests/reference_warnings.py's model, extended.

``reference_warnings`` models the restore of a log from its start. This models a restore
that starts from a snapshot (``base=``, or the one ``snapshots=`` chooses), written from
the docs, not from ``gpu_pitr.pipeline``:

- docs/snapshots.md: which targets a snapshot serves (a time T: no commit point it
  covers stamped past T; a seq N: no record it covers before its last numbered N, and
  with ``exclusive`` not its last either; its last record's seq, inclusive: the snapshot
  itself is the answer); the history after it (its segment gone: the next file's first
  record must be its last seq + 1, else a gap, refused unless
  ``allow_incomplete_history``); which snapshot ``snapshots=`` starts from (the newest
  that serves, damaged ones passed over for the next, one restored across a gap
  passed over unless the restore allows that too, one of another log passed over);
- docs/semantics.md: a transaction target from a base (X open at the base, in its
  pending transactions, counts as begun; an end of X in the log it covers is not seen;
  a snapshot taken ``--to-transaction X`` is the answer to X from it; ``snapshots=``
  starts from the newest snapshot whose restore stops where the whole log's does);
  a position target (a snapshot at or before the record serves; its last record,
  inclusive, is the answer); "a target the log does not settle": records missing up
  to the stop point "after a base's position too: from its last record on", a base with
  no log after it refused by strict "unless its position meets a seq or transaction
  target", restarts for a transaction open at the end "count from the base's position
  on (and among the records the base kept, their seqs going back)";
- docs/api.md, the report's ``warnings``: "each damaged snapshot passed over"; "a base
  snapshot with no log after it (no segment file)"; "records missing in the log a base
  snapshot covers, as its stored report and its bases' count them
  (``base.missing_seqs``)", refused by strict; a gap crossed ("a base's segment gone, a
  base itself restored across a gap").

Where the docs are read as promising what a restore of the whole log owes, this model
owes it too: a seq target N met more than once in the log (the base's last record one of
them), a time target the log's last record is stamped past (the base's last record, when
nothing follows it), a restart right at the base's position (the record there numbered
not above the base's last, whatever the base's own restore stopped at). Where the docs
say otherwise, it follows them: a restart between a transaction's begin and the base's
position that none of its own records shows is not seen (docs/semantics.md: "from the
base's position on"; a restore of the whole log warns there); a jump in seq onto the
record the base's own restore stopped at (a time or exclusive target) is warned of once,
as missing in the log the base covers (its stored report counts it), not again from the
base's last record; where the base's segment is gone and the log does not go on at its
last seq + 1, the jump is the gap. The categories of the log-only model keep their
names; new here: ``base_missing`` (refused), ``base_no_log`` (refused unless the base is
the stop), ``snapshot_damaged``.

The snapshots are a restore of the same log to a target of their own (``base_kw``), saved
with ``gpu_pitr.snapshot.save``; ``present``: the segments the WAL directory still holds
when the restore runs (the writer's retention deleted the others, each one all of whose
records the snapshot covers). No damage in the log, no memory budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import reference
import reference_warnings as rw

END = "end"  # the stop of a restore that reads to the end of the log
AT_BASE = "base"  # the stop of a restore whose answer is the base itself


@dataclass
class Base:
    """What a snapshot of ``base_kw`` covers, as its own restore (the reference's) had it."""

    kw: dict
    last: int  # index (in ``records``) of the last record covered; -1: none
    judged: int  # index of the last record its restore read up to its stop (jumps)
    open: list = field(default_factory=list)  # [[txid, [record index, ...]], ...]
    gap: bool = False  # restored across a gap in the history (history_complete false)
    missing: bool = False  # its restore counted records missing (seq_jumps)
    # Its restore was an inclusive transaction target that stopped (its stored report
    # says so): the answer to that target from it (docs/semantics.md).
    txn_answer: int | None = None
    segment: str | None = None  # the segment of its position (the first byte not covered)
    at_segment_end: bool = False  # its position is the end of its segment


def _records(wal_dir) -> list[tuple]:
    return [i for i in reference.frame_log(wal_dir) if i[0] == "record"]


def _jump(records: list, lo: int, hi: int) -> bool:
    """A seq jump forward among records ``lo..hi``, each against the one before it among
    them (``lo`` not against the record before it)."""
    prev = None
    for r in records[max(lo, 0):hi + 1]:
        if rw._zero_filled(r):
            continue
        if prev is not None and r[4] > prev + 1:
            return True
        prev = r[4]
    return False


def _open_at(records: list, upto: int) -> list:
    """SPEC section 3's open transactions after records ``0..upto``, in begin order, each
    with the indices of its records (data records and batches; markers carry none)."""
    open_txns: list[list] = []
    for k, r in enumerate(records[:upto + 1]):
        e = rw._decoded(r)
        if e is None:
            continue
        if e[0] in ("insert", "update", "delete", "batch"):
            if open_txns:
                open_txns[-1][1].append(k)
        elif e[0] == "begin":
            if all(t[0] != e[1] for t in open_txns):
                open_txns.append([e[1], []])
        elif e[0] in ("commit", "abort"):
            open_txns = [t for t in open_txns if t[0] != e[1]]
    return open_txns


def base_of(wal_dir, base_kw: dict) -> Base | None:
    """The snapshot a restore of ``wal_dir`` with ``base_kw`` saves (None: it fails)."""
    ref = reference.restore(wal_dir, **base_kw)
    if ref.error is not None:
        return None
    records = _records(wal_dir)
    if ref.stop.get("reason") != "target":
        last = judged = len(records) - 1
    else:
        where = {(r[1], r[2]): k for k, r in enumerate(records)}
        s = where[(ref.stop["file"], ref.stop["offset"])]
        before = base_kw.get("exclusive") or (
            "to_time" in base_kw)  # (a time target's stop record is not applied)
        last, judged = (s - 1 if before else s), s
    txn = base_kw.get("to_transaction")
    base = Base(dict(base_kw), last, judged, _open_at(records, last))
    base.gap = bool(base_kw.get("allow_incomplete_history") and records
                    and ref.records_read and records[0][4] != 0)
    base.missing = _jump(records, 0, judged)
    if txn is not None and not base_kw.get("exclusive") and ref.stop.get("reason") == "target":
        base.txn_answer = txn
    # Its position (docs/snapshots.md): the record its restore stopped before, else the
    # end of the last record covered (in the last segment that holds a record).
    if judged == last + 1:
        base.segment = records[judged][1]
    elif last >= 0:
        base.segment = records[last][1]
        base.at_segment_end = last + 1 == len(records) or records[last + 1][1] != base.segment
    return base


def deletable(wal_dir, base: Base) -> list[str]:
    """The segments the writer's retention may delete once ``base`` is taken: each one
    every record of which the snapshot covers (and not its position's segment, unless
    its position is that segment's end)."""
    records = _records(wal_dir)
    names = sorted({r[1] for r in records}, key=str.encode)
    out = []
    for name in names:
        ks = [k for k, r in enumerate(records) if r[1] == name]
        if ks and max(ks) <= base.last and (name != base.segment or base.at_segment_end):
            out.append(name)
    return out


def _transaction_stop(records: list, base: Base, x: int) -> int | None:
    """The record a restore from ``base`` stops at for transaction X: the first end of X
    after its position that closes an open X (X open there where its pending holds it)."""
    is_open = any(t[0] == x for t in base.open)
    for k in range(base.last + 1, len(records)):
        e = rw._decoded(records[k])
        if e is None or e[0] not in ("begin", "commit", "abort") or e[1] != x:
            continue
        if e[0] == "begin":
            is_open = True
        elif is_open:
            return k
    return None


def stop_from(wal_dir, base: Base, kw: dict, present=None) -> tuple:
    """``(error class or None, stop)`` of a restore from ``base`` with ``kw``: the stop is
    a record index, ``END`` or ``AT_BASE``. The errors known before the log is read (a
    position with no record, or in a segment gone; a target before the base) come first,
    a seq or transaction target not found only after it (``late``: the class)."""
    records = _records(wal_dir)
    present = _present(wal_dir, present)
    exclusive = bool(kw.get("exclusive"))
    position = kw.get("to_position")
    if position is not None:
        if isinstance(position, str):
            name, _, off = position.rpartition(":")
        else:
            name, off = os.path.basename(os.fspath(position[0])), position[1]
        at = [k for k, r in enumerate(records) if (r[1], r[2]) == (name, int(off))]
        if not at:
            return "TargetNotFoundError", None
        r = at[0]
        if not exclusive and r == base.last:
            return None, AT_BASE
        if name not in present:  # (checked before anything is read)
            return "TargetNotFoundError", None
        if r <= base.last:
            return "TargetBeforeBaseError", None
        return None, r
    if "to_transaction" in kw:
        x = int(kw["to_transaction"])
        if base.txn_answer == x and not exclusive:
            return None, AT_BASE
        k = _transaction_stop(records, base, x)
        return ("late:TargetNotFoundError", None) if k is None else (None, k)
    if "to_seq" in kw:
        n = int(kw["to_seq"])
        hits = [k for k, r in enumerate(records) if r[4] == n]
        if not hits:
            return "late:TargetNotFoundError", None
        s = hits[0]
        if s < base.last or (exclusive and s == base.last):
            return "TargetBeforeBaseError", None
        return (None, AT_BASE) if s == base.last else (None, s)
    if "to_time" in kw:
        ref = reference.restore(wal_dir, to_time=kw["to_time"], exclusive=exclusive,
                                allow_incomplete_history=True)
        if ref.stop.get("reason") != "target":
            return None, END
        s = next(k for k, r in enumerate(records)
                 if (r[1], r[2]) == (ref.stop["file"], ref.stop["offset"]))
        return ("TargetBeforeBaseError", None) if s <= base.last else (None, s)
    return None, END


def _present(wal_dir, present) -> set:
    """The segment files the restore's WAL directory holds (``present``; default: those
    of ``wal_dir``, records or not)."""
    if present is not None:
        return set(present)
    return {n for n in os.listdir(wal_dir) if reference._NAME.fullmatch(n)
            and os.path.isfile(os.path.join(wal_dir, n))}


@dataclass
class BaseVerdict:
    error: reference.RefError | None  # the restore fails (no warning owed), else None
    categories: tuple = ()  # each category owed once, sorted
    refused: tuple = ()  # what strict refuses


def _fails(cls: str) -> BaseVerdict:
    return BaseVerdict(reference.RefError(cls))


#: The categories strict refuses (docs/api.md): the log-only ones, records missing in
#: the log a base covers, a base with no log after it (unless it is the stop).
REFUSED = rw.REFUSED | {"base_missing", "base_no_log"}


def base_warnings_model(wal_dir, base: Base, *, present=None, read_after_stop: bool = True,
                        **kw) -> BaseVerdict:
    """The warning categories a restore of ``wal_dir`` from ``base`` with ``kw`` owes,
    and whether it fails. ``wal_dir`` holds the whole log; ``present``: the segments
    the restore's WAL directory holds (default: all)."""
    records = _records(wal_dir)
    present = _present(wal_dir, present)
    allow = bool(kw.get("allow_incomplete_history"))
    out: set[str] = set()
    err, stop = stop_from(wal_dir, base, kw, present)
    if err is not None and not err.startswith("late:"):
        return _fails(err)
    if base.gap:
        if not allow:
            return _fails("IncompleteHistoryError")
        out.add("gap")
    after = [k for k in range(base.last + 1, len(records)) if records[k][1] in present]
    reads = not (stop == AT_BASE and not read_after_stop)  # the log after the base
    # The base's segment gone: the log must go on from it, at its last seq + 1.
    resumes = True
    if reads and base.segment is not None and base.segment not in present and after:
        if base.last < 0 or records[after[0]][4] != records[base.last][4] + 1:
            if not allow:
                return _fails("IncompleteHistoryError")
            out.add("gap")
            resumes = False
    if reads and base.last < 0 and after and records[after[0]][4] != 0:
        # A base of no record: the log after it is judged as from its start.
        if not allow:
            return _fails("IncompleteHistoryError")
        out.add("gap")
    # Data errors (a vector of another dimension) as the whole log's restore to the same
    # stop meets them: the first fatal problem in log order wins over a target the log
    # after the base does not hold (docs/semantics.md).
    fatal = _fatal_before(wal_dir, records, stop, kw)
    if fatal is not None:
        return _fails(fatal)
    if err is not None:
        return _fails(err.split(":", 1)[1])
    end = after[-1] if after else base.last
    upto = base.last if stop == AT_BASE else end if stop == END else stop
    if base.missing:
        out.add("base_missing")
    # Records missing from the base's last record on, up to the stop record: but for
    # a jump onto the record its own restore stopped at (counted in its stored report),
    # and onto a later segment's first record where the base's segment is gone (a gap).
    lo = base.last if (base.judged == base.last and resumes) else base.last + 1
    if _jump(records, lo, upto):
        out.add("seq_jump")
    if not present:
        out.add("base_no_log")
    t = kw.get("to_time")
    if t is not None and present and stop == END:
        stamps = [e[-1] for e in map(rw._decoded, records[:end + 1]) if e is not None]
        past = stamps and (stamps[-1] >= t if kw.get("exclusive") else stamps[-1] > t)
        if not past:
            out.add("time_not_reached")
    n = kw.get("to_seq")
    if n is not None and stop != END and read_after_stop:
        if sum(r[4] == n for r in records) > 1:
            out.add("seq_repeated")
    x = kw.get("to_transaction")
    if x is not None and stop != END and read_after_stop:
        for r in records[upto + 1:]:
            e = rw._decoded(r)
            if e is not None and e[0] == "begin" and e[1] == x:
                out.add("txn_again")
    if stop == END and _joined_after_restart(records, base, present):
        out.add("joined_after_restart")
    refused = {c for c in out if c in REFUSED}
    if stop == AT_BASE:
        refused.discard("base_no_log")  # (its position meets the target)
    return BaseVerdict(None, tuple(sorted(out)), tuple(sorted(refused)))


def _fatal_before(wal_dir, records: list, stop, kw: dict) -> str | None:
    """The error class of the whole log's reference restore to the record a restore from
    the base stops at (inclusive where that record is applied or processed), or to the
    end; None where the base is the stop, or it restores."""
    if stop == AT_BASE:
        return None
    where = {}
    if stop not in (END, None):
        r = records[stop]
        # (a time target's stop, an exclusive one's: the record is not processed)
        before = bool(kw.get("exclusive")) or "to_time" in kw
        where = {"to_position": (r[1], r[2]), "exclusive": before}
    ref = reference.restore(wal_dir, allow_incomplete_history=True, **where)
    return None if ref.error is None else ref.error.cls


def _joined_after_restart(records: list, base: Base, present: set) -> bool:
    """A transaction open at the end of the log with a record of its own after a writer
    restart that followed its begin; for one the base carried in, a restart counted from
    the base's position on (the first record read against the base's last), or its own
    records' seqs going back."""
    open_txns = [[t, True, False, [records[k][4] for k in ks]] for t, ks in base.open]
    # [id, carried, joined after a restart, own seqs]; restarted: since its begin
    restarted = {t[0]: False for t in open_txns}
    prev = records[base.last][4] if base.last >= 0 else None
    for r in (records[k] for k in range(base.last + 1, len(records)) if records[k][1] in present):
        if prev is not None and r[4] <= prev and not rw._zero_filled(r):
            for t in open_txns:
                restarted[t[0]] = True
        if not rw._zero_filled(r):
            prev = r[4]
        e = rw._decoded(r)
        if e is None:
            continue
        if e[0] in ("insert", "update", "delete", "batch") and open_txns:
            txn = open_txns[-1]
            if restarted[txn[0]] or (txn[1] and txn[3] and r[4] <= txn[3][-1]):
                txn[2] = True
            txn[3].append(r[4])
        elif e[0] == "begin" and all(t[0] != e[1] for t in open_txns):
            open_txns.append([e[1], False, False, []])
            restarted[e[1]] = False
        elif e[0] in ("commit", "abort"):
            open_txns = [t for t in open_txns if t[0] != e[1]]
    # Among the carried records themselves: their seqs going back.
    for t in open_txns:
        if t[1] and not t[2]:
            own = t[3]
            if any(b <= a for a, b in zip(own, own[1:], strict=False)):
                t[2] = True
    return any(t[2] for t in open_txns)
