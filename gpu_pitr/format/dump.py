"""The records of a WAL directory one by one: ``gpu-pitr inspect --records``.

What ``pg_waldump`` is without ``--stats``: the tool an operator reads to find the
record a bad ingest started with, and so the target to restore to. Records are
framed and their record columns parsed by the compiled pass of ``inspect``
(``statwalk._parse``: timestamp, variant, status of every record), filtered by
sequence number and timestamp there, and only the records that are printed are
decoded again by the pure-Python codec, for their fields. Damage (bad headers,
undecodable records, torn tails) is listed where it lies in log order.
"""

from __future__ import annotations

import json
import operator
import os
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
from numba.extending import register_jitable

from gpu_pitr.format import bincode1, zerofill
from gpu_pitr.format.codec import PayloadError, decode_entry
from gpu_pitr.format.columns import ChunkColumns
from gpu_pitr.format.entries import (
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
    Delete,
)
from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    COMMIT_TRANSACTION,
    DELETE,
    HEADER_SIZE,
    INSERT,
    N_VARIANTS,
    RECORD_HEADER_SIZE,
    UPDATE,
)
from gpu_pitr.format.payload import (
    ERR_DEPTH,
    MAX_BATCH_DEPTH,
    OK,
    id_key,
    stack_for,
)
from gpu_pitr.format.readahead import BYTES_PER_ROW, framed_pieces, scan_chunk_bytes
from gpu_pitr.format.segments import in_progress, list_segments, written_since
from gpu_pitr.format.stats import utc_text
from gpu_pitr.format.statwalk import (
    DEFAULT_CHUNK_BYTES,
    _count_nested,
    _new_txn_map,
    _parse,
    _parsed_deep,
    header_damage,
    nested_entry,
)
from gpu_pitr.format.times import U64_MAX, TimeTarget, parse_time
from gpu_pitr.jit import njit
from gpu_pitr.resolve.idsort import compare_ids


def wal_records(
    wal_dir: str | os.PathLike,
    *,
    since: TimeTarget | None = None,
    until: TimeTarget | None = None,
    first_seq: int | None = None,
    last_seq: int | None = None,
    transaction: int | None = None,
    id: str | Iterable[str] | None = None,  # (``--id``: named as ``transaction`` is)
    limit: int | None = None,
    chunk_bytes: int | None = None,
) -> Iterator[dict]:
    """The records of ``wal_dir`` in log order, as JSON-able dicts, and its damage.

    A record: ``file``, ``offset`` (of its header), ``seq``, ``length`` (of its
    payload), ``timestamp``, ``variant``, ``entry`` (its fields, vectors as their
    dimension only; a batch's ``entries`` flattened in log order, each with its
    ``depth``) and ``trailing_bytes`` (where non-zero, ``bincode1``: whether the payload
    is a whole bincode 1.3 entry, ``format.bincode1``); a data record inside a transaction also has
    ``transaction``, its id (the one begun most recently of those open there, SPEC
    section 3: the record takes effect at that transaction's commit). Damage:
    ``file``, ``offset``, ``seq`` (or None), ``damage`` (``bad_header``,
    ``undecodable``, ``zero_filled``: a run of records of 12 zero bytes, with its
    ``records``; ``torn_tail``), ``what`` and ``bytes`` lost.

    ``first_seq``/``last_seq`` keep the records (undecodable ones included) whose
    seq is in that range; ``since``/``until`` the records stamped in that range
    (inclusive; any form ``restore``'s ``to_time`` takes: Unix seconds, ISO-8601 text
    with a zone, a datetime; a fraction of a second narrows the range to the whole
    seconds inside it). What a filter cannot place is left out: bad headers and torn
    tails (no seq, no timestamp) with any filter, undecodable records (no timestamp)
    with a time filter. ``transaction`` keeps the records of one transaction (as
    ``pg_waldump --xid`` does): its Begin, Commit and Abort markers and the data records
    inside it (those given its id as ``transaction``), so that a bulk load's first and
    last records, and so the targets before and after it, show without paging through
    it; damage is left out, even an undecodable record between its Begin and its
    Commit (no transaction can be read from it, and the seq filters, which do keep it,
    show it: ``first_seq``/``last_seq`` of the Begin and the Commit). ``id`` (one id,
    or an iterable of ids: any of them) keeps the history of that id (``pg_waldump
    --relation``/``--block``): the Inserts, Updates and Deletes of it and the Batches
    with an entry of it at any depth, so "when did doc-5 change, and to what?" lists
    without the rest of the log; a batch kept so also has ``id_entries``, the indices
    in its ``entry["entries"]`` of the entries of the id (the others stay there, as
    the listing without the filter gives them), and a record kept so that is in a
    transaction has ``transaction_outcome``, whether the write ever took effect:
    ``outcome`` (``committed``, ``aborted`` or ``open``: still open at the end of the
    log, so discarded as in flight) and ``end`` (``file``, ``offset``, ``seq``,
    ``timestamp`` of its Commit or Abort, or None), as ``wal_transactions`` gives that
    use of the id (a transaction ends after its records: one pass over the log holds
    back a record whose transaction has not ended yet, and those listed after it, until
    it ends; past ``HOLD_ENTRIES`` held, a second pass from the start finds the
    outcomes instead: ``_id_history``). Ids match by their UTF-8 bytes exactly (the
    64-bit id key only finds the candidates in compiled code, each confirmed byte for
    byte; an id that is not valid Unicode text, a lone surrogate, is in no log and
    matches nothing). Damage is left out,
    undecodable records included: no id can be read from one. ``limit`` stops after
    that many items. The filters combine: a record is listed when every filter given
    keeps it.

    Raises:
        ValueError: a time that is not one, a seq that is not an integer, an id that
            is not text.
    """
    wanted = _wanted_ids(id)
    filters = _filters(wal_dir, since, until, transaction, limit)
    first_seq = None if first_seq is None else operator.index(first_seq)
    last_seq = None if last_seq is None else operator.index(last_seq)
    if (filters is None or (first_seq is not None and first_seq > U64_MAX)
            or (last_seq is not None and last_seq < 0)
            or (wanted is not None and not wanted.texts)):
        return  # a range no u64 falls in, a limit of 0, no id that can be in a log
    segments, since, until, transaction = filters
    # Bounds past the u64 range are those of the range (a filter all the same).
    first_seq = None if first_seq is None else max(first_seq, 0)
    last_seq = None if last_seq is None else min(last_seq, U64_MAX)
    # The transaction filter places records by seq as the seq filters do: damage
    # without a record's place (bad headers, torn tails) is left out.
    # So does the id filter: damage holds no id it could be said to touch.
    by_seq = (first_seq is not None or last_seq is not None or transaction is not None
              or wanted is not None)
    by_time = since is not None or until is not None
    left = limit
    txns = _Transactions(listing=False)

    def listed(item, cols, owners, outcomes):
        """The records of one piece the filters keep (``_piece``)."""
        return _piece(item, segments[item.segment].name, cols, since, until, first_seq,
                      last_seq, by_seq, by_time, owners, transaction, wanted, outcomes)

    def pieces():
        for item, cols in _parsed_pieces(segments, chunk_bytes):
            if item.problem is not None:
                kind, offset, what, nbytes = item.problem
                if not (by_seq or by_time):
                    yield _damage(segments[item.segment].name, offset, None, kind, what,
                                  nbytes)
            else:
                yield from listed(item, cols, txns.owners(item, item.segment, cols), None)
                if item.torn is not None and not (by_seq or by_time):
                    at, lost = item.torn
                    doc = _damage(segments[item.segment].name, at, None, "torn_tail", None,
                                  lost)
                    size = written_since(segments[item.segment].path, at, lost)
                    if size is not None:  # a writer appending: the same words as inspect's
                        doc.update(size_now=size, what=in_progress(size))
                    yield doc

    items = pieces()
    if wanted is not None:  # (no damage listed: ``by_seq``)
        items = _id_history(
            segments, chunk_bytes, listed,
            lambda item, c, owned, owner, among: _kept(
                item, c, owned, owner, since, until, first_seq, last_seq, by_time,
                transaction, wanted, among)[0],
            limit)
    for doc in _zero_runs_joined(items):
        yield doc
        if left is not None:
            left -= 1
            if left == 0:
                return


class _WantedIds:
    """The ids of ``wal_records``' ``id`` filter: ``texts`` (a frozenset, what the
    printed records' entries are matched by in Python: equal text is equal UTF-8 bytes),
    and for the compiled filter their UTF-8 bytes in one arena, ``offsets`` and
    ``lengths`` into it and ``keys`` (``payload.id_key``), all sorted by key, and the
    ids of one key by their bytes (``_find_wanted`` searches them: text sorts by code
    point, which is UTF-8's byte order, a prefix first)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = frozenset(texts)
        raw = [t.encode("utf-8") for t in sorted(self.texts)]
        self.arena = np.frombuffer(b"".join(raw) or b"\0", np.uint8).copy()
        lengths = np.array([len(r) for r in raw], np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        keys = _keys_of(self.arena, offsets[:len(raw)], lengths)
        order = np.argsort(keys, kind="stable")
        self.keys, self.offsets, self.lengths = keys[order], offsets[order], lengths[order]


def _wanted_ids(ids) -> _WantedIds | None:
    """``wal_records``' ``id``: one id (a str) or an iterable of them; None: no filter.
    Ids that are not valid Unicode text (a lone surrogate, which no UTF-8 encodes) are
    in no log and dropped: with none left the filter keeps nothing."""
    if ids is None:
        return None
    if isinstance(ids, str):
        ids = [ids]
    elif isinstance(ids, bytes | bytearray | memoryview) or not hasattr(ids, "__iter__"):
        raise ValueError(f"id is an id's text (str), or an iterable of them, not {ids!r}")
    texts = []
    for text in ids:
        if not isinstance(text, str):
            raise ValueError(f"id is an id's text (str), or an iterable of them; {text!r} "
                             "is not text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue  # no UTF-8 id is this text
        texts.append(text)
    return _WantedIds(texts)


@njit(cache=True, nogil=True)
def _keys_of(arena, offsets, lengths):
    """``payload.id_key`` of each id in ``arena``, as the compiled filter computes them."""
    keys = np.empty(len(offsets), np.uint64)
    for j in range(len(offsets)):
        keys[j] = id_key(arena, offsets[j], lengths[j])
    return keys


def _filters(wal_dir, since, until, transaction, limit) -> tuple | None:
    """What ``wal_records`` and ``wal_transactions`` make of their common arguments:
    ``(segments listed, since, until, transaction)``, the times as whole seconds within
    the u64 range (a bound past it is the range's), each None where not given; None
    where nothing can be listed (a limit of 0, a time range or a transaction id no u64
    falls in). A ValueError for a limit that is not a count or a time that is not one."""
    if limit is not None and (isinstance(limit, bool) or operator.index(limit) < 0):
        raise ValueError(f"limit is a count of items (0 or more), not {limit!r}")
    segments = list_segments(wal_dir)
    since = None if since is None else parse_time(since, exclusive=True)
    until = None if until is None else parse_time(until)
    transaction = None if transaction is None else operator.index(transaction)
    if ((transaction is not None and not 0 <= transaction <= U64_MAX)
            or (since is not None and since > U64_MAX) or (until is not None and until < 0)
            or limit == 0):
        return None
    return (segments, None if since is None else max(since, 0),
            None if until is None else min(until, U64_MAX), transaction)


def transaction_markers(segments: list, txn: int, chunk_bytes: int | None = None
                        ) -> list[tuple[int, str, int]]:
    """The top-level BeginTransaction, CommitTransaction and AbortTransaction records of
    transaction ``txn`` in ``segments`` (listed, in log order): ``(kind, segment file
    name, offset)`` each, in log order. One framing and parsing pass, as
    ``wal_records``'s, nothing decoded in Python: where a transaction target
    (``to_transaction``) lies among the snapshots' positions (``snapshot.choose``)."""
    out = []
    for item, c in _parsed_pieces(segments, chunk_bytes):
        n = item.n
        if item.problem is not None or not n:
            continue
        rows = np.flatnonzero((c.status[:n] == OK) & (c.kind[:n] >= BEGIN_TRANSACTION)
                              & (c.aux[:n] == np.uint64(txn)))
        name = segments[item.segment].name
        out += [(int(c.kind[i]), name, item.file_offset(i)) for i in rows.tolist()]
    return out


def wal_transactions(
    wal_dir: str | os.PathLike,
    *,
    since: TimeTarget | None = None,
    until: TimeTarget | None = None,
    transaction: int | None = None,
    limit: int | None = None,
    chunk_bytes: int | None = None,
) -> Iterator[dict]:
    """The transactions of ``wal_dir``, one dict each, and its damage where it lies.

    What ``inspect --transactions`` lists: the id to give ``to_transaction`` and the
    time window of a bad ingest. The transaction rules are SPEC section 3's, as a
    restore applies them: a Begin opens its id unless it is open already, a Commit or
    an Abort closes it, a data record belongs to the one begun most recently of those
    open; an id begun again after it ended (a writer restart reuses ids) is a
    transaction of its own, and so a row of its own.

    A transaction: ``transaction`` (its id), ``outcome`` (``committed``, ``aborted``,
    ``open``: still open at the end of the log, so discarded as in flight, or
    ``anomaly``, with ``what`` in ``inspect``'s words: a Begin of an open transaction,
    which changes nothing, with ``open_since``, the Begin of the one open; a Commit or
    an Abort of one not open), ``begin`` and ``end`` (``file``, ``offset``, ``seq``,
    ``timestamp`` of the marker, or None: ``end`` of one still open, ``begin`` of an end
    that closes nothing), ``records`` (the data records that belong to it),
    ``inserts``, ``updates``, ``deletes`` (its entries of each kind, those in batches
    counted one by one, nested batches flattened) and ``damage_inside`` (how many of the
    damage items listed took place while it was open: an undecodable record there may
    have been one of its own, which a restore with ``skip_corrupt`` leaves out). Damage
    items are those of ``wal_records``, at their place.

    Order: each item where the record that decides it lies in log order, that is a
    transaction at its end (its Commit or Abort: the order in which a restore applies
    them), an anomaly and a damage item at their own record; then those still open at
    the end of the log, oldest first. Listing by Begin would hold every row behind a
    transaction open long (to the end of the log, at worst) in memory: this order
    streams, holding only the open ones (as any restore does).

    ``since``/``until`` (inclusive; what ``wal_records`` takes) keep the transactions
    whose span overlaps that range: from the earlier to the later of the stamps of its
    Begin and its end (one still open: to any time after its Begin; an anomaly: its own
    record's stamp), so that "what committed between 10:00 and 10:05" lists every
    transaction that wrote in that window, begun before it or ending after it included.
    ``transaction`` keeps the uses of that id. With either filter damage items are left
    out, as ``wal_records`` leaves out what it cannot place (the rows' ``damage_inside``
    still count them). ``limit`` stops after that many items.

    One framing and parsing pass (``_parsed_pieces``), then a compiled walk per piece
    (``_txn_walk``) that applies the transaction rules, counts each one's data and
    applies the filters, so the Python work is per item listed: a 1 GiB log lists in
    about the time ``inspect`` takes (docs/measurements.md).

    Raises:
        ValueError: a time that is not one, or a limit that is not a count.
    """
    filters = _filters(wal_dir, since, until, transaction, limit)
    if filters is None:
        return  # a range no u64 falls in, or a limit of 0
    segments, since, until, transaction = filters
    left = limit
    items = _transaction_items(segments, chunk_bytes, since, until, transaction)
    for doc in _zero_runs_joined(items):
        yield doc
        if left is not None:
            left -= 1
            if left == 0:
                return


def _transaction_items(segments: list, chunk_bytes: int | None, since: int | None = None,
                       until: int | None = None, transaction: int | None = None
                       ) -> Iterator[dict]:
    """The transaction rows and damage items of ``segments`` that ``wal_transactions``
    lists (``since``, ``until``, ``transaction``: its filters, None where not given;
    with any of them given, damage items are left out, but still counted in the rows'
    ``damage_inside``), in
    its order (zero-filled runs split by a piece boundary not yet joined). The rows
    that end or are anomalies in the log are filtered by the compiled walk, those still
    open at its end by ``still_open``, the framing's damage (bad headers, torn tails,
    which the walk never sees) here."""
    txns = _Transactions(since, until, transaction)
    for item, c in _parsed_pieces(segments, chunk_bytes):
        name = segments[item.segment].name
        if item.problem is not None:
            kind, offset, what, nbytes = item.problem
            txns.state[_DAMAGE] += 1
            if not txns.filtered:
                yield _damage(name, offset, None, kind, what, nbytes)
            continue
        yield from txns.piece(item, item.segment, segments, c)
        if item.torn is not None:
            txns.state[_DAMAGE] += 1
            if not txns.filtered:
                at, lost = item.torn
                doc = _damage(name, at, None, "torn_tail", None, lost)
                size = written_since(segments[item.segment].path, at, lost)
                if size is not None:  # a writer appending: the same words as inspect's
                    doc.update(size_now=size, what=in_progress(size))
                yield doc
    yield from txns.still_open(segments)


# The walk's counters, carried across pieces (``_Transactions.state``).
_DAMAGE = 0  # damage items so far (a transaction keeps the count at its Begin)
_ZEROS_SEG = 1  # where the last zero-filled run ended (segment, file offset), or -1
_ZEROS_END = 2
_TOP = 3  # entries in ``begun``
_FREE = 4  # entries in ``free``
_ORDER = 5  # begin order of the next transaction opened
_FILTERED = 6  # bits: _NO_DAMAGE, _ONE_ID, _NO_ROWS
_NO_DAMAGE, _ONE_ID, _NO_ROWS = 1, 2, 4  # leave damage out, keep one id, list nothing
# An open transaction's slot: ``slot_u`` (id, begin seq, begin stamp) and ``slot_i``
# (its Begin's segment and file offset, its counts, the damage count at its Begin, its
# begin order: -1 for a free slot):
_S_SEG, _S_OFF, _S_RECORDS, _S_DAMAGE, _S_ORDER = 0, 1, 2, 6, 7  # counts at 2..5
# The walk's events (``ev_i`` column 0), each at a record (column 1):
_EV_ENDED, _EV_BEGIN_OPEN, _EV_END_NOT_OPEN, _EV_DAMAGE, _EV_ZEROS = range(1, 6)
_EVENTS = 4096  # rows of the event buffers; the walk resumes when they fill
_OUTCOME = {COMMIT_TRANSACTION: "committed", ABORT_TRANSACTION: "aborted"}


class _Transactions:
    """The transactions open as the log is read (SPEC section 3), in compiled
    structures: an id -> slot map, slot tables of where each began and what it holds so
    far, and a stack of begins for the newest open one, to which data records belong.
    ``piece`` walks a piece's records in ``_txn_walk`` for ``wal_transactions``' rows;
    ``owners`` walks them for ``wal_records``, which lists no rows, only which
    transaction each data record is in. Python makes a dict only for what is listed.

    ``since``, ``until`` and ``transaction``: the rows to list (those ``wal_transactions``
    keeps, None where not given; with any of them given, a bound of the whole range
    included, no damage items). ``listing=False``: nothing at all. ``counts=False``: the
    rows' counts are left at 0 (``_data_counts`` not run), and no damage items listed:
    what ``_outcomes`` walks for, only where each transaction ends."""

    def __init__(self, since: int | None = None, until: int | None = None,
                 transaction: int | None = None, listing: bool = True,
                 counts: bool = True) -> None:
        self.open = _new_txn_map()
        self.slot_u = np.zeros((0, 3), np.uint64)
        self.slot_i = np.zeros((0, 8), np.int64)
        self.free = np.zeros(0, np.int64)
        self.begun = np.zeros((0, 2), np.int64)
        self.state = np.zeros(7, np.int64)
        self.state[_ZEROS_SEG] = -1
        filtered = (not listing or not counts
                    or any(f is not None for f in (since, until, transaction)))
        self.counts = listing and counts
        self.state[_FILTERED] = (_NO_DAMAGE * filtered + _ONE_ID * (transaction is not None)
                                 + _NO_ROWS * (not listing))
        self.bounds = np.array([since or 0, U64_MAX if until is None else until,
                                transaction or 0], np.uint64)
        self.ev_i = np.zeros((_EVENTS, 10), np.int64)
        self.ev_u = np.zeros((_EVENTS, 3), np.uint64)
        self.owned = np.zeros(0, np.bool_)
        self.owner = np.zeros(0, np.uint64)
        self.owner_begin = np.zeros((0, 2), np.int64)
        self._grow()

    @property
    def filtered(self) -> bool:
        """Whether damage items are left out (a filter is set)."""
        return bool(self.state[_FILTERED] & _NO_DAMAGE)

    def _grow(self) -> None:
        """Room for twice as many open transactions (a slot each)."""
        old = len(self.free)
        cap = max(64, 2 * old)
        self.slot_u = np.concatenate((self.slot_u, np.zeros((cap - old, 3), np.uint64)))
        more = np.zeros((cap - old, 8), np.int64)
        more[:, _S_ORDER] = -1  # free
        self.slot_i = np.concatenate((self.slot_i, more))
        free = np.zeros(cap, np.int64)
        top = int(self.state[_FREE])
        free[:top] = self.free[:top]
        free[top:top + cap - old] = np.arange(cap - 1, old - 1, -1)
        self.free = free
        self.state[_FREE] = top + cap - old
        # The stack holds at most twice the open ones and 64, and one more pushed.
        begun = np.zeros((2 * cap + 128, 2), np.int64)
        begun[:len(self.begun)] = self.begun
        self.begun = begun

    def piece(self, item, seg: int, segments: list, c) -> Iterator[dict]:
        """The rows and damage items one framed piece (its records parsed into ``c``)
        completes, in log order."""
        name = segments[seg].name
        for m, foff in self._walk(item, seg, c):
            for e in range(m):
                yield self._item(item, name, segments, foff, c, e)

    def owners(self, item, seg: int, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of each record of one framed piece (its records parsed into ``c``), whether it
        is a data record inside a transaction, that transaction's id and where its Begin
        is, ``[segment, file offset]`` (which transaction, where ids repeat: ``_Outcomes``'
        key): ``(owned, owner, owner_begin)``, valid until the next piece. The walk lists nothing
        (``listing=False``); a record nested deeper than the parse's stack has its
        columns parsed again."""
        for m, _ in self._walk(item, seg, c):
            assert m == 0  # (nothing is listed)
        n = item.n
        return self.owned[:n], self.owner[:n], self.owner_begin[:n]

    def _walk(self, item, seg: int, c) -> Iterator[tuple[int, np.ndarray]]:
        """Walk one piece in ``_txn_walk``: each time it stops, the count of events in
        ``ev_i`` (valid until the next) and the piece's records' file offsets. Fills
        ``owned``, ``owner`` and ``owner_begin`` for the piece."""
        n = item.n
        if not n:
            return
        data = np.zeros((n, len(_COUNTED)), np.int64)
        stack = np.empty(MAX_BATCH_DEPTH, np.int64)
        if not self.counts:  # no rows to count for: deep records parsed
            _parsed_deeper(item.buf, n, item.off, item.length, stack, c.status, c.kind,
                           c.ts, c.aux, c.stop, c.e_op, c.e_key)
        else:
            _data_counts(item.buf, n, item.off, item.length, stack, c.status, c.kind, c.ts,
                         c.aux, c.stop, c.e_op, c.e_key, data)
        foff = (item.row_file_offset[:n] if item.row_file_offset is not None
                else item.off[:n] - item.start + item.file_start)
        zero = zerofill.zero_records(item.length[:n], item.seq[:n])
        if len(self.owned) < n:
            self.owned = np.zeros(n, np.bool_)
            self.owner = np.zeros(n, np.uint64)
            self.owner_begin = np.zeros((n, 2), np.int64)
        self.owned[:n] = False
        i = 0
        while i < n:
            i, m, more_room = _txn_walk(
                i, n, seg, c.status, c.kind, c.aux, c.ts, item.seq, foff, zero, data,
                self.open, self.slot_u, self.slot_i, self.free, self.begun, self.state,
                self.bounds, self.ev_i, self.ev_u, self.owned, self.owner,
                self.owner_begin)
            yield m, foff
            if more_room:
                self._grow()

    def _item(self, item, name: str, segments: list, foff, c, e: int) -> dict:
        """The listed item of event ``e``."""
        code, i, k, seg, off, *counts = self.ev_i[e].tolist()
        txn, seq, ts = self.ev_u[e].tolist()
        at = foff[i].item()
        if code == _EV_ZEROS:  # ``k``: how many records
            return {**_damage(name, at, 0, zerofill.KIND, zerofill.describe(at, k),
                              k * RECORD_HEADER_SIZE), "records": k}
        if code == _EV_DAMAGE:
            return _record(item, name, i)  # the decoder's words for the damage
        here = {"file": name, "offset": at, "seq": item.seq[i].item(),
                "timestamp": c.ts[i].item()}
        if code == _EV_END_NOT_OPEN:
            word = "commit" if k == COMMIT_TRANSACTION else "abort"
            return _row(txn, "anomaly", None, here,
                        what=f"{word} of a transaction that is not open")
        began = {"file": segments[seg].name, "offset": off, "seq": seq, "timestamp": ts}
        if code == _EV_BEGIN_OPEN:
            return _row(txn, "anomaly", here, None, what="begin of an open transaction",
                        open_since=began)
        return _row(txn, _OUTCOME[k], began, here, **dict(zip(_COUNTED, counts[:4],
                                                               strict=True)),
                    damage_inside=counts[4])

    def still_open(self, segments: list) -> Iterator[dict]:
        """The rows of the transactions open at the end of the log that the filters keep
        (as ``_txn_walk``: the id, and a span from the Begin's stamp on to any later
        time), oldest first."""
        _, until, want = self.bounds
        order = self.slot_i[:, _S_ORDER]
        keep = (order >= 0) & (self.slot_u[:, 2] <= until)  # a free slot's order is -1
        if self.state[_FILTERED] & _ONE_ID:
            keep &= self.slot_u[:, 0] == want
        if self.state[_FILTERED] & _NO_ROWS:
            keep[:] = False
        slots = np.flatnonzero(keep)
        for s in slots[np.argsort(order[slots])].tolist():
            txn, seq, ts = self.slot_u[s].tolist()
            seg, off, *counts = self.slot_i[s, :_S_DAMAGE + 1].tolist()
            yield _row(txn, "open", {"file": segments[seg].name, "offset": off, "seq": seq,
                                     "timestamp": ts}, None,
                       **dict(zip(_COUNTED, counts[:4], strict=True)),
                       damage_inside=int(self.state[_DAMAGE]) - counts[4])


def _row(txn: int, outcome: str, begin: dict | None, end: dict | None, **more) -> dict:
    row = {"transaction": txn, "outcome": outcome}
    for key in ("what", "open_since"):
        if key in more:
            row[key] = more.pop(key)
    row.update(begin=begin, end=end, records=0, inserts=0, updates=0, deletes=0,
               damage_inside=0)
    row.update(more)
    return row


#: The counts of ``_data_counts``' columns, in order.
_COUNTED = ("records", "inserts", "updates", "deletes")


@njit(cache=True, nogil=True)
def _txn_walk(i, n, seg, status, kind, aux, ts, seq, foff, zero, data, open_txns, slot_u,
              slot_i, free, begun, state, bounds, ev_i, ev_u, owned, owner, owner_begin):
    """Walk records ``i..n-1`` of a piece in log order under SPEC section 3's transaction
    rules; returns ``(next record, events, whether a slot is wanted)``. Stops early when
    ``ev_i`` is full or no slot is free for a Begin (the caller grows the tables).

    A Begin opens its id unless it is open already, a Commit or an Abort closes it; a
    data record belongs to the one begun most recently of those open: ``owned[i]``,
    ``owner[i]`` its id, ``owner_begin[i]`` its Begin's segment and file offset (which
    use of the id: ids repeat after a writer restart), and ``data[i]``
    (``_data_counts``) is added to its slot. The newest open one is the top of a stack
    of begins (``begun``: slot and begin order) from which ended ones are popped when
    they reach the top, so each lookup is O(1) and each end amortized O(1) (a lookup
    walking past ended ones was quadratic: a log closing its transactions newest first,
    200,000 open, took 14 s).

    Events: a transaction ended (its slot's begin and counts copied out), a Begin of an
    open id (the open one's begin), an end of one not open, damage (counted always,
    listed unless ``state[_FILTERED]``). A transaction or anomaly the filters
    (``bounds``: since, until, id; ``_NO_ROWS``: all) leave out is not an event."""
    m = 0
    since, until, want = bounds[0], bounds[1], bounds[2]
    by_id = (state[_FILTERED] & _ONE_ID) != 0
    rows = (state[_FILTERED] & _NO_ROWS) == 0
    while i < n:
        if m >= ev_i.shape[0]:
            return i, m, False
        if zero[i]:  # a run of zero-filled records back to back: one damage item
            j = i + 1
            while j < n and zero[j] and foff[j] == foff[j - 1] + RECORD_HEADER_SIZE:
                j += 1
            if not (state[_ZEROS_SEG] == seg and state[_ZEROS_END] == foff[i]):
                state[_DAMAGE] += 1  # (one a piece boundary split is joined later)
            state[_ZEROS_SEG] = seg
            state[_ZEROS_END] = foff[i] + (j - i) * RECORD_HEADER_SIZE
            if (state[_FILTERED] & _NO_DAMAGE) == 0:
                ev_i[m, 0] = _EV_ZEROS
                ev_i[m, 1] = i
                ev_i[m, 2] = j - i
                m += 1
            i = j
            continue
        if status[i] != OK:
            state[_DAMAGE] += 1
            state[_ZEROS_SEG] = -1
            if (state[_FILTERED] & _NO_DAMAGE) == 0:
                ev_i[m, 0] = _EV_DAMAGE
                ev_i[m, 1] = i
                m += 1
            i += 1
            continue
        k = kind[i]
        if k <= BATCH:
            top = state[_TOP]
            if top > 0:
                s = begun[top - 1, 0]
                owned[i] = True
                owner[i] = slot_u[s, 0]
                owner_begin[i, 0] = slot_i[s, _S_SEG]
                owner_begin[i, 1] = slot_i[s, _S_OFF]
                for f in range(4):
                    slot_i[s, _S_RECORDS + f] += data[i, f]
            i += 1
            continue
        if k < BEGIN_TRANSACTION:  # a Checkpoint
            i += 1
            continue
        txn = aux[i]
        t = ts[i]
        keep = rows and (not by_id or txn == want)
        if k == BEGIN_TRANSACTION and txn in open_txns:
            if keep and since <= t <= until:
                s = open_txns[txn]
                _event(ev_i, ev_u, m, _EV_BEGIN_OPEN, i, k, txn, slot_u, slot_i, s, 0)
                m += 1
        elif k == BEGIN_TRANSACTION:
            top = state[_FREE]
            if top == 0:
                return i, m, True
            s = free[top - 1]
            state[_FREE] = top - 1
            slot_u[s, 0] = txn
            slot_u[s, 1] = seq[i]
            slot_u[s, 2] = t
            slot_i[s, _S_SEG] = seg
            slot_i[s, _S_OFF] = foff[i]
            for f in range(4):
                slot_i[s, _S_RECORDS + f] = 0
            slot_i[s, _S_DAMAGE] = state[_DAMAGE]
            slot_i[s, _S_ORDER] = state[_ORDER]
            open_txns[txn] = s
            begun[state[_TOP], 0] = s
            begun[state[_TOP], 1] = state[_ORDER]
            state[_TOP] += 1
            state[_ORDER] += 1
        elif txn not in open_txns:  # a Commit or an Abort of one not open
            if keep and since <= t <= until:
                ev_i[m, 0] = _EV_END_NOT_OPEN
                ev_i[m, 1] = i
                ev_i[m, 2] = k
                ev_u[m, 0] = txn
                m += 1
        else:
            s = open_txns[txn]
            open_txns.pop(txn)
            b = slot_u[s, 2]
            if keep and min(b, t) <= until and max(b, t) >= since:
                _event(ev_i, ev_u, m, _EV_ENDED, i, k, txn, slot_u, slot_i, s,
                       state[_DAMAGE])
                m += 1
            slot_i[s, _S_ORDER] = -1
            free[state[_FREE]] = s
            state[_FREE] += 1
            # The ended ones popped off the top (one begun again since has a later
            # entry), so the top is the newest open one; those ended below an open one
            # (each transaction committed after the next one began) are dropped once
            # they are half the stack, which so stays within twice the open ones (and
            # 64).
            top = state[_TOP]
            while top > 0 and slot_i[begun[top - 1, 0], _S_ORDER] != begun[top - 1, 1]:
                top -= 1
            if top > 2 * len(open_txns) + 64:
                kept = 0
                for j in range(top):
                    if slot_i[begun[j, 0], _S_ORDER] == begun[j, 1]:
                        begun[kept, 0] = begun[j, 0]
                        begun[kept, 1] = begun[j, 1]
                        kept += 1
                top = kept
            state[_TOP] = top
        i += 1
    return n, m, False


@njit(cache=True, nogil=True)
def _event(ev_i, ev_u, m, code, i, k, txn, slot_u, slot_i, s, damage):
    """Event ``m``: ``code`` at record ``i`` (of kind ``k``) for ``txn``, with the begin
    and counts of slot ``s`` (its damage items: ``damage``, the count now, less the
    count at its Begin)."""
    ev_i[m, 0] = code
    ev_i[m, 1] = i
    ev_i[m, 2] = k
    ev_i[m, 3] = slot_i[s, _S_SEG]
    ev_i[m, 4] = slot_i[s, _S_OFF]
    for f in range(4):
        ev_i[m, 5 + f] = slot_i[s, _S_RECORDS + f]
    ev_i[m, 9] = damage - slot_i[s, _S_DAMAGE]
    ev_u[m, 0] = txn
    ev_u[m, 1] = slot_u[s, 1]
    ev_u[m, 2] = slot_u[s, 2]


@njit(cache=True, nogil=True)
def _data_counts(buf, n, off, length, stack, status, kind, ts, aux, stop, e_i64, e_u64, out):
    """Of each record ``i`` of a piece (columns from ``_parse``): ``out[i]`` = 1 for a
    data record (Insert, Update, Delete, Batch), then its inserts, updates and deletes,
    a batch's entries counted at every depth (nested markers change nothing: SPEC
    section 3). A record nested deeper than ``stack`` is parsed again with a deeper one
    and its columns written back (``statwalk._parsed_deep``, as ``statwalk._walk``)."""
    nested = np.zeros(N_VARIANTS, np.int64)
    for i in range(n):
        # Called for every record, ``_parsed_deep`` (not inlined: its twelve arrays'
        # reference counts taken and dropped each time) took 0.2 s a GiB.
        st = stack
        if status[i] == ERR_DEPTH:
            st = _parsed_deep(buf, i, off, length, stack, status, kind, ts, aux, stop, e_i64,
                              e_u64)
        k = kind[i]
        if status[i] != OK or k > BATCH:
            continue
        out[i, 0] = 1
        if k == BATCH:
            nested[:] = 0
            start = off[i] + RECORD_HEADER_SIZE
            _count_nested(buf, start, start + length[i], st, nested)
            out[i, 1] = nested[INSERT]
            out[i, 2] = nested[UPDATE]
            out[i, 3] = nested[DELETE]
        else:
            out[i, 1 + k] = 1


@njit(cache=True, nogil=True)
def _parsed_deeper(buf, n, off, length, stack, status, kind, ts, aux, stop, e_i64, e_u64):
    """Each record of a piece nested deeper than ``stack`` parsed again with a deeper one
    and its columns written back (``statwalk._parsed_deep``): ``_data_counts`` without
    the counts, which ``wal_records`` has no use for (they took 0.06 s a GiB, 5% of
    ``inspect --records`` with a filter that decodes few records)."""
    for i in range(n):
        if status[i] == ERR_DEPTH:  # (a call for each record: 0.2 s a GiB, as above)
            _parsed_deep(buf, i, off, length, stack, status, kind, ts, aux, stop, e_i64,
                         e_u64)


def transaction_lines(doc: dict, damage_listed: bool = True) -> list[str]:
    """One item of ``wal_transactions`` for a person: a damage item as ``record_lines``
    says it; a transaction as one line, where it begins and ends as ``--records`` names
    a record's place, then what it holds. ``damage_listed``: whether the damage items
    are in the list too (``wal_transactions`` leaves them out with a filter), so that a
    row's ``damage_inside`` is not said to be "listed above" when it is not."""
    if "damage" in doc:
        return record_lines(doc)
    txn, outcome = doc["transaction"], doc["outcome"]
    if outcome == "anomaly":
        at = doc["begin"] or doc["end"]
        text = f"{_place(at)}: anomaly: transaction {txn}: {doc['what']} (changes nothing)"
        if doc.get("open_since") is not None:
            text += f"; open since {_place(doc['open_since'])}"
        return [text]
    holds = ", ".join(f"{doc[k]} {k if doc[k] != 1 else k[:-1]}" for k in _COUNTED)
    line = f"transaction {txn}: {outcome}: {holds}"
    if doc["damage_inside"]:
        line += (f"; {doc['damage_inside']} damage item"
                 f"{'s' if doc['damage_inside'] != 1 else ''} while open "
                 + ("(listed above)" if damage_listed else
                    "(left out by the filter: inspect --transactions without one, or "
                    f"verify, lists {'them' if doc['damage_inside'] != 1 else 'it'})"))
    lines = [line, f"  begin: {_place(doc['begin'])}"]
    lines.append(f"  end:   {_place(doc['end'])}" if doc["end"] is not None
                 else "  end:   none: open at the end of the log (discarded, in flight)")
    return lines


def _place(at: dict) -> str:
    """A marker's place and stamp, in ``record_lines``' words."""
    return (f"{at['file']}: offset {at['offset']}: seq {at['seq']}: "
            f"{utc_text(at['timestamp'])}")


def _parsed_pieces(segments: list, chunk_bytes: int | None):
    """``framed_pieces`` of ``segments``, each with the columns its records parse into
    (``statwalk._parse``: status, kind, stamp, transaction id, ...; one columns object
    reused, valid until the next piece): what ``wal_records`` and
    ``transaction_markers`` walk."""
    chunk = scan_chunk_bytes(segments, DEFAULT_CHUNK_BYTES if chunk_bytes is None
                             else max(64, int(chunk_bytes)))
    c = ChunkColumns(chunk // BYTES_PER_ROW + 64, 1)
    stack = np.empty(MAX_BATCH_DEPTH, np.int64)
    for item in framed_pieces(segments, chunk, header_damage):
        if item.problem is None and item.n:
            c.ensure_records(item.n)
            _parse(item.buf, item.n, item.off, item.length, stack, c.status, c.kind, c.ts,
                   c.aux, c.nent, c.stop, c.e_op, c.e_key)
        yield item, c


def _zero_runs_joined(docs: Iterator[dict]) -> Iterator[dict]:
    """``docs`` with each run of zero-filled records that a piece boundary split made
    one item again: a run is held until the item after it is known."""
    held = None
    for doc in docs:
        if doc.get("damage") == zerofill.KIND and zerofill.join(
                held, doc["file"], doc["offset"], doc["records"], "offset", ""):
            continue
        if held is not None:
            yield held
            held = None
        if doc.get("damage") == zerofill.KIND:
            held = doc
        else:
            yield doc
    if held is not None:
        yield held


def _piece(item, name, cols, since, until, first_seq, last_seq, by_seq, by_time, owners,
           transaction=None, wanted=None, outcomes=None):
    """The items of one framed piece (its records parsed into ``cols``, those nested
    deeper than the parse's stack parsed again: ``_Transactions.owners``, which gives
    ``owners``, each record's transaction), each made as it is asked for: a piece is up
    to a chunk of records, and the dicts of 800,000 small ones held at once took
    0.7 GB. ``wanted``: the ids of the ``id`` filter (``_WantedIds``), or None;
    ``outcomes``: with it, how each transaction that holds a record kept ended
    (``_Ends.of``: the outcome, or a ``_Pending`` for ``_id_history`` to fill in)."""
    n = item.n
    if n:
        owned, owner, begin = owners
        keep, zero = _kept(item, cols, owned, owner, since, until, first_seq, last_seq,
                           by_time, transaction, wanted)
        rows = np.flatnonzero(keep)
        # A run of zero-filled records back to back is one item (format.zerofill).
        firsts, counts = zerofill.runs(np.zeros(len(rows), np.int64), item.off[rows],
                                       zero[rows])
        rows = rows[firsts]
        runs = zero[rows]  # (each other record is a run of its own: not held)
        records = dict(zip(rows[runs].tolist(), counts[runs].tolist(), strict=True))
        for i in rows.tolist():
            if zero[i]:
                at = item.file_offset(i)
                k = records[i]
                yield {**_damage(name, at, 0, zerofill.KIND, zerofill.describe(at, k),
                                 k * RECORD_HEADER_SIZE), "records": k}
                continue
            doc = _record(item, name, i)
            if "damage" in doc:
                if by_time or wanted is not None:
                    continue  # no timestamp to place it by, no id to match
            else:
                if owned[i]:
                    doc["transaction"] = owner[i].item()
                    # (None: not looked for; only were the codec to refuse a record
                    # the compiled parse accepted, so that a limit lists one more.)
                    outcome = None if outcomes is None else outcomes.of(begin[i])
                    if outcome is not None:
                        doc["transaction_outcome"] = outcome
                if wanted is not None and doc["variant"] == "Batch":
                    doc["id_entries"] = [k for k, e in enumerate(doc["entry"]["entries"])
                                         if e.get("id") in wanted.texts]
            yield doc


def _kept(item, c, owned, owner, since, until, first_seq, last_seq, by_time,
          transaction, wanted, among=None) -> tuple[np.ndarray, np.ndarray]:
    """Of each record of one framed piece (columns ``c``, transactions ``owned`` and
    ``owner``), whether ``wal_records``' filters keep it, and whether it is
    zero-filled: ``(keep, zero)``. What the listing prints and what ``_outcomes``
    looks ahead for, so the two passes keep the same records. ``among``: only these
    records can be kept (``_outcomes``: those in a transaction, so the id walk skips
    the rest)."""
    n = item.n
    seq = item.seq[:n]
    keep = np.ones(n, np.bool_) if among is None else among.copy()
    if first_seq is not None:
        keep &= seq >= np.uint64(first_seq)
    if last_seq is not None:
        keep &= seq <= np.uint64(last_seq)
    status = c.status[:n]
    if by_time:
        ts = c.ts[:n]
        parsed = status == OK
        if since is not None:
            keep &= ~parsed | (ts >= since)
        if until is not None:
            keep &= ~parsed | (ts <= until)
    zero = zerofill.zero_records(item.length[:n], seq)
    if by_time or transaction is not None or wanted is not None:
        keep &= ~zero  # no timestamp to place them by, in no transaction, no id
    if transaction is not None:  # its markers (top level only) and its members
        want = np.uint64(transaction)
        keep &= ((owned & (owner == want))
                 | ((status == OK) & (c.kind[:n] >= BEGIN_TRANSACTION)
                    & (c.aux[:n] == want)))
    if wanted is not None:  # last: only the records the other filters keep walked
        _touching(item.buf, n, item.off, item.length, status, c.kind,
                  np.empty(MAX_BATCH_DEPTH, np.int64), wanted.keys, wanted.offsets,
                  wanted.lengths, wanted.arena, keep)
    return keep, zero


def _begin_keys(span: int, seg: np.ndarray, off: np.ndarray) -> np.ndarray:
    """One int64 for each Begin at segment ``seg`` (an index into the listing), file
    offset ``off`` (below ``span``: ``_span``): what ``_Outcomes`` knows a transaction
    by. Its place, not its begin order: a log being written loses its oldest segments
    to the writer's retention, and a segment gone between the two passes shifted every
    later count by the transactions begun in it, so that each record said another
    transaction's outcome."""
    return seg.astype(np.int64) * span + off.astype(np.int64)


def _span(segments: list) -> int:
    """Past every file offset of the listed ``segments`` (each read to its listed size)."""
    return max((s.size for s in segments), default=0) + 1


class _Outcomes:
    """How each transaction that holds a record of an id's history ended, by where its
    Begin is (``_begin_keys``): sorted columns, 48 bytes a transaction, not a dict each
    (an id written in a million transactions)."""

    def __init__(self, segments: list, ended: list[tuple], still_open: np.ndarray
                 ) -> None:
        self.span = _span(segments)
        self.names = [s.name for s in segments]
        self.still_open = still_open  # (sorted)
        cols = [np.concatenate(col) for col in zip(*ended, strict=True)] if ended else [
            np.zeros(0, t) for t in (np.int64, np.int64, np.int64, np.int64, np.uint64,
                                     np.uint64)]
        by = np.argsort(cols[0], kind="stable")
        self.key, self.kind, self.seg, self.off, self.seq, self.ts = (
            col[by] for col in cols)

    def of(self, begin: np.ndarray) -> dict | None:
        """``transaction_outcome`` of the transaction whose Begin is at ``begin``
        (``[segment, file offset]``): ``outcome`` (``committed``, ``aborted``, ``open``:
        still open at the end of the log, so discarded as in flight) and ``end``
        (``file``, ``offset``, ``seq``, ``timestamp`` of its Commit or Abort; None for
        one open), as ``inspect --transactions`` gives them. None: not looked for (not
        a kept record's)."""
        key = int(_begin_keys(self.span, begin[:1], begin[1:])[0])
        j = int(np.searchsorted(self.key, key))
        if j == len(self.key) or self.key[j] != key:
            k = int(np.searchsorted(self.still_open, key))
            if k < len(self.still_open) and self.still_open[k] == key:
                return {"outcome": "open", "end": None}
            return None
        return {"outcome": _OUTCOME[int(self.kind[j])],
                "end": {"file": self.names[int(self.seg[j])], "offset": int(self.off[j]),
                        "seq": int(self.seq[j]), "timestamp": int(self.ts[j])}}


def _outcomes(segments: list, chunk_bytes: int | None, select, limit: int | None
              ) -> _Outcomes:
    """A pass of its own over the log for ``wal_records`` with an ``id`` filter, once
    ``_id_history`` holds back more than ``HOLD_ENTRIES``: the log walked under SPEC
    section 3's rules (``_txn_walk``, as ``wal_transactions`` walks it, without its
    counts), to find how each transaction that holds a record the listing keeps ends.
    A record is listed before its transaction's Commit or Abort is read, so the listing
    says it in the same pass only by holding the record back until then (to the end of
    the log, for one open there: ``_id_history``'s bound); this pass holds a few numbers
    a transaction instead, and reads the log once more. ``select(item,
    c, owned, owner, among)``: ``_kept``'s ``keep`` with the listing's filters;
    ``limit``: the records the listing stops after, so this pass stops once their
    transactions are known. Holds only the transactions of kept records: those still
    open as the pieces are read, and those ended. Without a limit only the records in
    a transaction are walked for the ids (most records are in none: the id walk is
    most of the listing's compiled time); with one, every record, to count them."""
    txns = _Transactions(counts=False)
    ended: list[tuple] = []  # (key, kind, segment, offset, seq, stamp) of those found
    waiting = np.zeros(0, np.int64)  # ``_begin_keys`` of kept records' open transactions
    left = limit
    span = _span(segments)
    for item, c in _parsed_pieces(segments, chunk_bytes):
        if item.problem is not None or not item.n:
            continue
        ends = []
        for m, foff in txns._walk(item, item.segment, c):
            ev = txns.ev_i[:m]
            at = ev[ev[:, 0] == _EV_ENDED]
            rows = at[:, 1]
            ends.append((_begin_keys(span, at[:, 3], at[:, 4]), at[:, 2], foff[rows],
                         item.seq[rows], c.ts[rows]))
        n = item.n
        owned = txns.owned[:n]
        if left is None:
            rows = (np.flatnonzero(select(item, c, owned, txns.owner[:n], owned))
                    if owned.any() else np.zeros(0, np.int64))
        else:
            rows = np.flatnonzero(select(item, c, owned, txns.owner[:n], None))[:left]
            left -= len(rows)
            rows = rows[owned[rows]]
        begin = txns.owner_begin[rows]
        waiting = np.union1d(waiting, _begin_keys(span, begin[:, 0], begin[:, 1]))
        if ends and len(waiting):
            key, kind, off, seq, ts = (np.concatenate(col) for col in zip(*ends,
                                                                          strict=True))
            hit = np.isin(key, waiting)
            if hit.any():
                ended.append((key[hit], kind[hit], np.full(int(hit.sum()), item.segment,
                                                           np.int64),
                              off[hit], seq[hit], ts[hit]))
                waiting = np.setdiff1d(waiting, key[hit], assume_unique=True)
        if left == 0 and not len(waiting):
            break  # (the rest of the log holds nothing the listing prints)
    return _Outcomes(segments, ended, waiting)  # (waiting: open at the end, if read)


#: How many entries (a record one, a batch one and one for each entry it holds at any
#: depth) ``_id_history`` holds back, waiting for a transaction's end, before it reads
#: the log once more for the outcomes instead (``_outcomes``). An entry's dict took
#: 0.7 KB (tracemalloc, 20,000 records of ``synth.write_synthetic_wal``'s log, their
#: metadata included), so about 12 MB held; more where metadata is large.
HOLD_ENTRIES = 1 << 14


class _Pending:
    """``transaction_outcome`` of a record whose transaction has not ended where the log
    has been read to: its Begin's place (``[segment, file offset]``) and ``_begin_keys``
    key. ``_id_history`` replaces it before the record is handed out."""

    __slots__ = ("begin", "key")

    def __init__(self, begin: np.ndarray, key: int) -> None:
        self.begin = begin.copy()
        self.key = key


class _Ends:
    """Where the transactions ended in the piece last walked (``_Transactions`` end
    events), by their Begins' places (``_begin_keys``), for ``_id_history``; or, once it
    has fallen back to reading the log twice, ``table`` (``_outcomes``)."""

    def __init__(self, segments: list) -> None:
        self.span = _span(segments)
        self.names = [s.name for s in segments]
        self.table: _Outcomes | None = None
        self.piece([], 0)

    def piece(self, ends: list[tuple], seg: int) -> None:
        """The ends of one piece (of segment ``seg``): ``(key, kind, offset, seq,
        stamp)`` column tuples, one per stop of its walk."""
        cols = ([np.concatenate(col) for col in zip(*ends, strict=True)] if ends else
                [np.zeros(0, t) for t in (np.int64, np.int64, np.int64, np.uint64,
                                          np.uint64)])
        by = np.argsort(cols[0], kind="stable")
        self.key, self.kind, self.off, self.seq, self.ts = (col[by] for col in cols)
        self.seg = seg

    def outcome(self, j: int) -> dict:
        """``transaction_outcome`` of the transaction of end ``j``, as ``_Outcomes.of``."""
        return {"outcome": _OUTCOME[int(self.kind[j])],
                "end": {"file": self.names[self.seg], "offset": int(self.off[j]),
                        "seq": int(self.seq[j]), "timestamp": int(self.ts[j])}}

    def of(self, begin: np.ndarray):
        """``_piece``'s outcome of the transaction whose Begin is at ``begin``: the
        table's, once fallen back to it; its end if it ended in this piece (after the
        record: a transaction ends after its records); else a ``_Pending``."""
        if self.table is not None:
            return self.table.of(begin)
        key = int(_begin_keys(self.span, begin[:1], begin[1:])[0])
        j = int(np.searchsorted(self.key, key))
        if j < len(self.key) and self.key[j] == key:
            return self.outcome(j)
        return _Pending(begin, key)


def _id_history(segments: list, chunk_bytes: int | None, listed, select,
                limit: int | None) -> Iterator[dict]:
    """``wal_records``' items with an ``id`` filter, each record in a transaction with
    how that transaction ends (``transaction_outcome``), in one pass over the log where
    it can: the listing's transaction walk (``_txn_walk``, with its end events) finds
    the ends as it goes, and a record whose transaction is still open at the end of its
    piece is held back, with every record listed after it (the order is the log's),
    until that transaction ends (or the log does: ``open``). Memory: what is held, the
    records of the ids from the first one in a transaction not yet ended on; the
    transactions' ends are kept for one piece. Past ``HOLD_ENTRIES`` held (an id's
    record in a transaction that a crash left open early in the log holds every later
    one to the end), the log is read once more from its start for the outcomes of every
    record the listing keeps (``_outcomes``, what every ``--id`` listing did before),
    the held records are given theirs and the listing goes on from where it is: two
    reads at most, as before, and memory as before (the outcomes of the kept records'
    transactions). ``listed(item, cols, owners, outcomes)``: ``_piece`` with the
    filters; ``select``: ``_kept``'s ``keep`` (``_outcomes``' argument); ``limit``:
    the records to list at most, after which the log is read only as far as the ends
    of the held ones."""
    txns = _Transactions(counts=False)  # no rows listed: only its ends are used
    ends = _Ends(segments)
    queue: deque = deque()  # (doc, entries) to hand out, in log order
    pending: dict[int, list] = {}  # a Begin's key -> the held records in its transaction
    held = 0  # entries in ``queue``
    left = limit

    def flush():
        nonlocal held
        while queue and not isinstance(queue[0][0].get("transaction_outcome"), _Pending):
            doc, size = queue.popleft()
            held -= size
            yield doc

    for item, c in _parsed_pieces(segments, chunk_bytes):
        if item.problem is not None:
            continue
        n = item.n
        found = []
        for m, foff in txns._walk(item, item.segment, c):
            ev = txns.ev_i[:m]
            at = ev[ev[:, 0] == _EV_ENDED]
            rows = at[:, 1]
            found.append((_begin_keys(ends.span, at[:, 3], at[:, 4]), at[:, 2], foff[rows],
                          item.seq[rows], c.ts[rows]))
        ends.piece(found, item.segment)
        if pending and len(ends.key):
            for j in np.flatnonzero(np.isin(ends.key, np.fromiter(pending, np.int64))):
                for doc in pending.pop(int(ends.key[j])):
                    doc["transaction_outcome"] = ends.outcome(j)
        yield from flush()
        if left == 0:
            if not pending:
                return  # (the rest of the log holds nothing listed)
            continue
        owners = (txns.owned[:n], txns.owner[:n], txns.owner_begin[:n])
        for doc in listed(item, c, owners, ends):
            entries = 1 + len(doc["entry"].get("entries", ()))
            queue.append((doc, entries))
            held += entries
            outcome = doc.get("transaction_outcome")
            if isinstance(outcome, _Pending):
                pending.setdefault(outcome.key, []).append(doc)
            if pending and held > HOLD_ENTRIES:
                ends.table = _outcomes(segments, chunk_bytes, select, limit)
                for docs in pending.values():
                    for waiting in docs:
                        _resolved(waiting, ends.table)
                pending.clear()
            yield from flush()
            if left is not None:
                left -= 1
                if left == 0:
                    break
    for docs in pending.values():  # still open at the end of the log
        for doc in docs:
            doc["transaction_outcome"] = {"outcome": "open", "end": None}
    yield from flush()


def _resolved(doc: dict, table: _Outcomes) -> None:
    """A held record's outcome from ``_outcomes``' table (none: not looked for, as
    ``_piece`` leaves it without one)."""
    outcome = table.of(doc["transaction_outcome"].begin)
    if outcome is None:
        del doc["transaction_outcome"]
    else:
        doc["transaction_outcome"] = outcome


@njit(cache=True, nogil=True)
def _touching(buf, n, off, length, status, kind, stack, keys, offsets, lengths, arena, keep):
    """``keep[i]`` left true only for the records of a piece (columns from ``_parse``,
    deep ones parsed again) that touch one of the ids (``_WantedIds``): an Insert,
    Update or Delete of it, a Batch with an entry of it at any depth. Only the records
    ``keep`` holds are walked; a batch nested deeper than ``stack`` is walked again with
    a stack as deep as its length allows (``stack_for``)."""
    for i in range(n):
        if not keep[i]:
            continue
        if status[i] != OK or kind[i] > BATCH:
            keep[i] = False
            continue
        start = off[i] + RECORD_HEADER_SIZE
        end = start + length[i]
        found = _has_id(buf, start, end, stack, keys, offsets, lengths, arena)
        if found < 0:
            found = _has_id(buf, start, end, np.empty(stack_for(length[i]), np.int64), keys,
                            offsets, lengths, arena)
        keep[i] = found == 1


@njit(cache=True, nogil=True)
def _has_id(buf, pos, end, stack, keys, offsets, lengths, arena):
    """1 if the data entry ``buf[pos:end]`` (one ``parse_payload`` accepted) is, or holds
    at any depth, an entry of one of the ids; 0 if not; -1 if it nests deeper than
    ``stack``. ``statwalk.nested_entry``'s walk, stopping at the first match; metadata
    skipped by its lengths (its UTF-8 was checked by the parse)."""
    p = pos
    depth = 0
    while True:
        kind, id_at, id_len, p, depth = nested_entry(buf, p, end, stack, depth, False)
        if kind == -2:
            return -1
        if kind < 0:
            return 0
        if id_at >= 0 and _is_wanted(buf, id_at, id_len, keys, offsets, lengths, arena):
            return 1
        if depth == 0:
            return 0


@njit(cache=True, nogil=True)
def _is_wanted(buf, p, m, keys, offsets, lengths, arena):
    """Whether the id ``buf[p:p+m]`` is one of the ids (``_find_wanted``)."""
    return _find_wanted(buf, p, m, keys, offsets, lengths, arena)[0] >= 0


@register_jitable
def _find_wanted(buf, p, m, keys, offsets, lengths, arena):
    """``(j, compared)``: the index among the ids of the id ``buf[p:p+m]`` (-1: not one
    of them), and how many of them it was compared with byte for byte. Its key is
    looked up among theirs (sorted), then the ids of that key searched by their bytes
    (a key is no identity: different ids share one, tests/collisions.py). Compared
    with each id of its key in turn, a log of 64k ids of one key listed with a quarter
    of them wanted compared every entry with every wanted id: 12 s, 0.27 s for random
    ids; now a binary search (``_WantedIds`` orders the ids of a key by their bytes)."""
    key = id_key(buf, p, m)
    lo = np.searchsorted(keys, key)
    hi = np.searchsorted(keys, key, side="right")
    compared = 0
    while lo < hi:
        mid = (lo + hi) // 2
        compared += 1
        c = compare_ids(buf, p, m, arena, offsets[mid], lengths[mid])
        if c == 0:
            return mid, compared
        if c < 0:
            hi = mid
        else:
            lo = mid + 1
    return -1, compared


def _record(item, name: str, i: int) -> dict:
    offset = item.file_offset(i)
    seq = int(item.seq[i])
    start = int(item.off[i]) + RECORD_HEADER_SIZE
    length = int(item.length[i])
    payload = item.buf[start:start + length].tobytes()
    try:
        entry, used = decode_entry(payload)
    except PayloadError as err:
        what = str(err)
        if bincode1.is_bincode1(payload):
            what += f"; {bincode1.WHOLE_ENTRY}"
        return _damage(name, offset, seq, "undecodable", what, None)
    doc = {"file": name, "offset": offset, "seq": seq, "length": length,
           "timestamp": entry.timestamp, "variant": type(entry).__name__,
           "entry": _fields(entry), "trailing_bytes": length - used}
    if used < length:
        # Read as bincode 2, an older oxirs-vec's record decodes to an empty entry with
        # bytes left over: its listing is not what was logged, and says so.
        doc["bincode1"] = bincode1.is_bincode1(payload)
    return doc


def _fields(entry) -> dict:
    """An entry's fields; a batch's entries flattened in log order, each with its depth
    (1: in this batch), a nested batch before its own entries: no recursion, at any
    depth."""
    if isinstance(entry, Batch):
        flat = []
        stack = [iter(entry.entries)]
        while stack:
            e = next(stack[-1], None)
            if e is None:
                stack.pop()
                continue
            item = {"depth": len(stack), "variant": type(e).__name__, "timestamp": e.timestamp}
            item.update({"count": len(e.entries)} if isinstance(e, Batch) else _fields(e))
            flat.append(item)
            if isinstance(e, Batch):
                stack.append(iter(e.entries))
        return {"count": len(entry.entries), "entries": flat}
    if isinstance(entry, Checkpoint):
        return {"sequence_number": entry.sequence_number}
    if isinstance(entry, BeginTransaction | CommitTransaction | AbortTransaction):
        return {"transaction_id": entry.transaction_id}
    if isinstance(entry, Delete):
        return {"id": entry.id}
    return {"id": entry.id, "dim": len(entry.vector), "metadata": entry.metadata}


def _damage(file, offset, seq, kind, what, nbytes) -> dict:
    return {"file": file, "offset": offset, "seq": seq, "damage": kind, "what": what,
            "bytes": nbytes}


def record_lines(doc: dict) -> list[str]:
    """One item of ``wal_records`` for a person: a line, and one more per batch entry;
    of a batch kept by the ``id`` filter (``id_entries``), one per entry of the id (at
    its depth's indentation), then how many others it holds: a bulk batch of 10,000
    entries is the id's one line, not 10,000. A record in a transaction says so, and
    with the ``id`` filter how that transaction ended (``transaction_outcome``)."""
    where = f"{doc['file']}: offset {doc['offset']}"
    if doc["seq"] is not None:
        where += f": seq {doc['seq']}"
    if "damage" in doc:
        if doc["damage"] == "torn_tail":
            note = "" if doc.get("size_now") is None else f" ({doc['what']})"
            return [f"{where}: torn tail, {doc['bytes']} bytes lost{note}"]
        return [f"{where}: {doc['damage'].replace('_', ' ')}: {doc['what']}"]
    extra = ""
    if doc["trailing_bytes"]:
        older = (": a whole bincode 1.3 entry, an older oxirs-vec's format"
                 if doc.get("bincode1") else "")
        extra = f" (+{doc['trailing_bytes']} trailing bytes{older})"
    txn = ("" if doc.get("transaction") is None else
           f" (in transaction {doc['transaction']}{_outcome_text(doc)})")
    lines = [f"{where}: {utc_text(doc['timestamp'])} "
             f"{_entry_text(doc['variant'], doc['entry'])}{extra}{txn}"]
    entries = doc["entry"].get("entries", ())
    shown = doc.get("id_entries")
    if shown is not None:
        shown = _with_enclosing(entries, shown)
    lines += [f"{_indent(e['depth'])}{utc_text(e['timestamp'])} {_entry_text(e['variant'], e)}"
              for e in (entries if shown is None else (entries[k] for k in shown))]
    others = 0 if shown is None else len(entries) - len(shown)
    if others:
        lines.append(f"  (and {others} other entr{'y' if others == 1 else 'ies'}: "
                     f"--first-seq {doc['seq']} --last-seq {doc['seq']} lists the batch "
                     "whole)")
    return lines


def _outcome_text(doc: dict) -> str:
    """How the transaction of a record of an id's history ended (``transaction_outcome``),
    after its id: whether the record ever took effect. The end's place as
    ``--to-position`` takes it."""
    outcome = doc.get("transaction_outcome")
    if outcome is None:
        return ""
    end = outcome["end"]
    if end is None:
        return ": still open at the end of the log: discarded, in flight"
    at = f" at {end['file']}:{end['offset']}, seq {end['seq']}"
    if outcome["outcome"] == "committed":
        return f": committed{at}"
    return f": aborted{at}: discarded"


def _with_enclosing(entries, shown: list[int]) -> list[int]:
    """``shown`` (indices of a batch's entries, flattened in log order with their
    ``depth``) with the nested batches that hold each of them, in order: an entry of the
    id inside a nested batch is printed under that batch's line, not under whatever
    entry of the id came before it."""
    want = set(shown)
    out: list[int] = []
    open_at: list[int] = []  # the batch entries holding the next one, outermost first
    listed = 0  # how many of ``open_at`` are in ``out`` already
    for k, e in enumerate(entries):
        depth = e["depth"]
        del open_at[max(depth - 1, 0):]
        listed = min(listed, len(open_at))
        if k in want:
            out += open_at[listed:]
            listed = len(open_at)
            out.append(k)
        if e["variant"] == "Batch":
            open_at.append(k)
    return out


#: Levels of nesting shown by indentation; an entry deeper is indented as deep as this
#: and says its depth. Indenting every level made the text of a batch nested d deep
#: d * d bytes: a 500 KB record nested 100,000 deep printed 10 GB, held in memory.
INDENT_LEVELS = 256


def _indent(depth: int) -> str:
    if depth <= INDENT_LEVELS:
        return "  " * depth
    return f"{'  ' * INDENT_LEVELS}(depth {depth}) "


#: Line breaks to ``str.splitlines`` that JSON leaves unescaped (with ``ensure_ascii=False``):
#: escaped, so that a record (or a FAISS sidecar's id) is one line however its output is
#: split.
LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_line(value) -> str:
    """``value`` as JSON on one line: non-ASCII text kept as it is, but for the line
    breaks of ``str.splitlines`` (they occur only inside strings, so escaping them
    keeps the same value)."""
    return json.dumps(value, ensure_ascii=False).translate(LINE_BREAKS)


def _entry_text(variant: str, fields: dict) -> str:
    if "count" in fields:
        return f"{variant} of {fields['count']} entries"
    if "sequence_number" in fields:
        return f"{variant} sequence_number {fields['sequence_number']}"
    if "transaction_id" in fields:
        return f"{variant} {fields['transaction_id']}"
    text = f"{variant} {json_line(fields['id'])}"
    if "dim" in fields:
        meta = fields["metadata"]
        # An Update without metadata keeps the id's metadata (SPEC section 3).
        shown = ("unchanged" if meta is None and variant == "Update"
                 else json_line(meta))
        text += f" dim {fields['dim']} metadata {shown}"
    return text


def position_problem(segment, offset: int, chunk_bytes: int | None = None) -> str | None:
    """Why no whole record starts at byte ``offset`` of ``segment`` (a listed
    ``Segment``; None: one does), in words that help fix a position target
    (``to_position``, ``--to-position FILE:OFFSET``): the starts of the records nearest
    before and after it, as ``inspect --records`` prints them (the offset of a record's
    header, its sequence number first), or that the offset lies in the file's torn tail,
    past its end, or in a file whose header is damaged. One framing pass of that file
    alone, nothing decoded: a zero-filled record is a record here (undecodable, as a
    seq target's record may be). PostgreSQL's recovery never reaches a target past the
    end of the valid log; a torn record is not one, so it is never a target."""
    chunk = scan_chunk_bytes([segment], DEFAULT_CHUNK_BYTES if chunk_bytes is None
                             else max(64, int(chunk_bytes)))
    before = after = None  # (offset, seq) of the nearest record starts
    torn = None
    unread = []  # the file could not be read at all: not a damaged header

    def header_check(head):
        if isinstance(head, OSError):
            unread.append(head)
        return header_damage(head)

    for item in framed_pieces([segment], chunk, header_check):
        if item.problem is not None:
            kind, _, what, nbytes = item.problem
            if kind == "torn_tail":
                return (f"the file is {nbytes} bytes, a torn header: no record starts in "
                        "it (the target is never reached)")
            if unread:  # deleted since the listing (the writer's retention), unreadable
                return f"{what}: no record in it can be read"
            return f"its header is damaged ({what}): no record in it can be read"
        n = item.n
        if n:
            starts = item.off[:n] - item.start + item.file_start
            k = int(np.searchsorted(starts, offset))
            if k < n and int(starts[k]) == offset:
                return None
            if k > 0:
                before = (int(starts[k - 1]), int(item.seq[k - 1]))
            if k < n and after is None:
                after = (int(starts[k]), int(item.seq[k]))
        if item.torn is not None:
            torn = item.torn
    if torn is not None and offset >= torn[0] and offset < segment.size:
        at, lost = torn
        size = written_since(segment.path, at, lost)
        if size is not None:
            # A live log's last record, cut by the listing, not by a crash: whole now.
            return (f"in the file's torn tail as it was listed: the file ended {lost} bytes "
                    f"into the record that starts at offset {at} ({in_progress(size)}): "
                    "run the restore again to read it" + _nearest(before, None))
        return (f"in the file's torn tail: the file ends {lost} bytes into the record that "
                f"starts at offset {at}, which is not whole (a crash mid-write): no record "
                "there is ever reached"
                + _nearest(before, None))
    if offset >= segment.size:
        try:
            now = os.stat(segment.path).st_size
        except OSError:
            now = 0
        if now > offset:
            # A live log's segment, grown since it was listed: the record may be there now.
            return (f"past the end of the file as it was listed ({segment.size:,} bytes; it "
                    f"has grown to {now:,} since: a writer appending to it): run the restore "
                    "again to read it" + _nearest(before, None))
        if now > segment.size:
            # Grown, but not to the offset: both sizes, not the listing's alone as the
            # file's (which ``ls -l`` contradicts).
            return (f"past the end of the file as it was listed ({segment.size:,} bytes) "
                    f"and as it is now ({now:,}: a writer appending to it)"
                    + _nearest(before, None))
        return (f"past the end of the file ({segment.size:,} bytes)" + _nearest(before, None))
    if before is None and after is None:
        return "no record starts there: the file holds none" + (
            f" (its last {segment.size - HEADER_SIZE} bytes are not a whole record)"
            if segment.size > HEADER_SIZE else "")
    return "no record starts there" + _nearest(before, after)


def _nearest(before: tuple | None, after: tuple | None) -> str:
    """``; the nearest record starts before it at offset B (seq S), after it at offset
    A (seq T)``: of those known."""
    said = [f"{how} it at offset {near[0]} (seq {near[1]})"
            for how, near in (("before", before), ("after", after)) if near is not None]
    return f"; the nearest record starts {', '.join(said)}" if said else ""
