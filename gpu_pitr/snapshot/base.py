"""Restoring from a base snapshot (SPEC section 4): the log position a state covers,
which targets it can serve, and how its rows seed an executor.

A snapshot holds the state after a *prefix* of the log. Its ``position`` says where
that prefix ends (``segment``, ``offset``: the first byte not covered), which
commit points it holds (``max_timestamp``: a time target earlier than that lies
before the snapshot; ``seq_runs``/``last_seq``: the sequence numbers of the records
it covered), and the transactions open there (``pending``: their records, kept
raw so that their commit after the position applies them, exactly as a restore
from the start of the log would).
"""

from __future__ import annotations

import bisect
import os

import numpy as np
from numba import prange

from gpu_pitr.format.layout import HEADER_SIZE, RECORD_HEADER_SIZE
from gpu_pitr.format.payload import varint_widths, write_varint
from gpu_pitr.homes import HOME_SEED, seeded_home
from gpu_pitr.jit import PREFETCH_AHEAD, njit, prefetch
from gpu_pitr.resolve.idsort import compare_ids, span_keys

# Beyond this many runs of consecutive sequence numbers, the runs are kept as
# their hull: a conservative answer ("maybe covered") for a hostile log.
MAX_SEQ_RUNS = 4096


class SeqRuns:
    """Sequence numbers of the records a restore consumed, as merged intervals.

    ``add`` takes them in log order. The last record's number is held apart
    (``last``): a sequence target equal to it, seen nowhere before, stops exactly
    where the snapshot stops.
    """

    def __init__(self, runs=None, last=None) -> None:
        self.runs: list[list[int]] = [list(r) for r in runs or []]
        self.last: int | None = last

    def add(self, seqs: np.ndarray) -> None:
        if not len(seqs):
            return
        seqs = np.asarray(seqs, np.uint64)
        has_last = self.last is not None
        starts, ends = _run_bounds(seqs, np.uint64(self.last if has_last else 0), has_last)
        self.last = int(seqs[-1])
        if self.runs and len(starts) and int(starts[0]) - self.runs[-1][1] in (0, 1):
            # The chunk's first run goes on from the last one (its first number is the
            # one held apart, which followed that run or repeated its end).
            self.runs[-1][1] = int(ends[0])
            starts, ends = starts[1:], ends[1:]
        if len(self.runs) + len(starts) <= MAX_SEQ_RUNS:
            self.runs.extend([s, e] for s, e in zip(starts.tolist(), ends.tolist(),
                                                    strict=True))
            return
        # Merged as arrays: a hostile log's chunk can hold millions of runs (seqs that
        # never follow one another), too many for a Python list a run (5.5M: 9 s).
        held = np.array(self.runs, np.uint64).reshape(-1, 2)
        starts = np.concatenate([held[:, 0], starts])
        ends = np.concatenate([held[:, 1], ends])
        order = np.argsort(starts, kind="stable")
        starts, ends = _merge_sorted(starts[order], ends[order])
        if len(starts) > MAX_SEQ_RUNS:
            starts, ends = starts[:1], ends.max(keepdims=True)
        self.runs = [[s, e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]

    def merged(self) -> list[list[int]]:
        return merge_runs(self.runs)


@njit(cache=True, nogil=True, inline="always")
def _follows(prev, x):
    # x is one more than prev (uint64: the largest, whose successor wraps to 0, has none).
    nxt = prev + np.uint64(1)
    return nxt != np.uint64(0) and x == nxt


@njit(cache=True, nogil=True)
def _run_bounds(seqs, last, has_last):
    """``(starts, ends)`` of the runs of consecutive numbers in ``[last] + seqs[:-1]``
    (``last`` only if ``has_last``): one pass, no temporary column per chunk. A number
    follows the one before if it is one more (the largest uint64 has no successor)."""
    h = 1 if has_last else 0
    n = len(seqs) - 1 + h  # x[i] = last if has_last and i == 0 else seqs[i - h]
    if n <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    runs = 1
    prev = last if has_last else seqs[0]
    for i in range(1, n):
        x = seqs[i - h]
        if not _follows(prev, x) and x != prev:  # (a number again: covered already)
            runs += 1
        prev = x
    starts = np.empty(runs, np.uint64)
    ends = np.empty(runs, np.uint64)
    prev = last if has_last else seqs[0]
    starts[0] = prev
    r = 0
    for i in range(1, n):
        x = seqs[i - h]
        if x == prev:
            continue
        if not _follows(prev, x):
            ends[r] = prev
            r += 1
            starts[r] = x
        prev = x
    ends[r] = prev
    return starts, ends


@njit(cache=True, nogil=True)
def _merge_sorted(starts, ends):
    """``merge_runs`` of intervals sorted by start, as arrays (uint64: the largest
    number has no successor to be adjacent to)."""
    out_s = np.empty_like(starts)
    out_e = np.empty_like(ends)
    k = -1
    for i in range(len(starts)):
        s, e = starts[i], ends[i]
        if k >= 0 and (s <= out_e[k] or _follows(out_e[k], s)):
            if e > out_e[k]:
                out_e[k] = e
        else:
            k += 1
            out_s[k] = s
            out_e[k] = e
    return out_s[:k + 1], out_e[:k + 1]


def merge_runs(runs) -> list[list[int]]:
    """Sorted, non-overlapping, non-adjacent intervals covering ``runs``."""
    out: list[list[int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in runs):
        if out and s <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def seq_covered(runs, seq: int) -> bool:
    return any(s <= seq <= e for s, e in runs)


def target_problem(position: dict, target: dict, exclusive: bool) -> str | None:
    """Why the snapshot at ``position`` cannot serve ``target`` (None: it can).

    A time target T is reached at the first commit point stamped later than T
    (``exclusive``: at or later); if one of the snapshot's commit points is, the
    restore stops before the snapshot's position. A sequence target N stops at
    the first record numbered N (``exclusive``: just before it); if the snapshot
    covered one before its last record (``exclusive``: or as its last record),
    likewise. A transaction target's place is known only from the log, after reading
    (see ``snapshot.choose``): none is judged here. A position target (segment name,
    offset of a record) compares with the snapshot's position directly: a snapshot
    whose position is at or before the record serves (exclusive too: its restore stops
    on reading the record), and, inclusive, one whose last record is that record (its
    state is the answer: ``stops_at_base``); any other covers records after it.
    """
    if "to_time" in target:
        t, top = int(target["to_time"]), position.get("max_timestamp")
        if top is not None and (t < 0 or (top >= t if exclusive else top > t)):
            from gpu_pitr.format.stats import seconds_text

            return (f"the snapshot holds a commit point stamped {seconds_text(top)}, "
                    f"{'at or ' if exclusive else ''}later than the target time "
                    f"{seconds_text(t)}{' (exclusive)' if exclusive else ''}")
    elif "to_seq" in target:
        n = int(target["to_seq"])
        if seq_covered(position.get("seq_runs") or [], n):
            return f"the snapshot covers an earlier record with sequence number {n}"
        if exclusive and position.get("last_seq") == n:
            return (f"the snapshot covers the record with sequence number {n}, which the "
                    "target (exclusive) stops before")
    elif "to_position" in target:
        from gpu_pitr.snapshot import log_order

        name, offset = target["to_position"]
        segment = position.get("segment")
        if log_order(position) <= log_order({"segment": name, "offset": offset}):
            return None  # (a snapshot of the log's start, or one at or before the record)
        if not exclusive and _last_record_is(position, name, offset):
            return None
        at = f"{segment} offset {position.get('offset')}"
        if _last_record_is(position, name, offset):
            return (f"the snapshot covers the record at {name} offset {offset} (its position "
                    f"is just after it, {at}), which the target (exclusive) stops before")
        return (f"the snapshot's position, {at}, is past the record at {name} offset "
                f"{offset}: it covers records after the target")
    return None


def _last_record_is(position: dict, name: str, offset: int) -> bool:
    """Whether the last record the snapshot at ``position`` covers is the one at
    ``name`` offset ``offset`` (snapshots that recorded their last record)."""
    last = position.get("last_record")
    return (isinstance(last, dict) and last.get("segment") == name
            and last.get("offset") == int(offset))


def record_mismatch(position: dict, segments: dict, whose: str) -> str | None:
    """Why the log of ``segments`` (name -> ``Segment``) is not the one a snapshot at
    ``position`` was taken of, by its records (None: nothing says so): the record at its
    position must carry the sequence number it recorded, and its last record the seq and
    the CRC-32 it recorded (snapshots that recorded one). Reads one or two records.
    ``whose``: the log, for the text ("this archive's log")."""
    from gpu_pitr.crc import crc32
    from gpu_pitr.errors import os_reason
    from gpu_pitr.format.layout import MAGIC

    checks = []
    seg = segments.get(position.get("segment"))
    if seg is not None and position.get("seq") is not None:
        checks.append((seg, int(position["offset"]), int(position["seq"]), None, None))
    last = position.get("last_record") or {}
    if last.get("segment") in segments and position.get("last_seq") is not None:
        checks.append((segments[last["segment"]], int(last["offset"]),
                       int(position["last_seq"]), last.get("length"), last.get("crc32")))
    for s, at, want, length, crc in checks:
        try:
            with open(s.path, "rb") as f:
                f.seek(at)
                head = f.read(RECORD_HEADER_SIZE)
                if crc is not None and len(head) == RECORD_HEADER_SIZE:
                    body = f.read(int(length) - RECORD_HEADER_SIZE)
        except OSError as err:
            return f"{s.path}: offset {at}: cannot read: {os_reason(err)}"
        if len(head) < RECORD_HEADER_SIZE or head[: len(MAGIC)] == MAGIC:
            continue  # the end of the file, or a writer's second header: nothing to compare
        seq = int.from_bytes(head[:8], "little")
        if seq != want:
            return (f"{s.path}: offset {at}: the record there has seq {seq}, the snapshot "
                    f"recorded {want}: not {whose}")
        if crc is not None and crc32(head + body) != int(crc):
            return (f"{s.path}: offset {at}: the record there differs from the one the "
                    f"snapshot recorded (CRC-32): not {whose}")
    return skipped_record(position, segments)


def skipped_record(position: dict, segments: dict) -> str | None:
    """A whole record after the snapshot's last one, in that record's file, where the
    position is in a later file: written after the snapshot was taken, which skips it.
    A writer rotating creates the new file before it flushes the old one's buffer; a
    snapshot taken then (before version 2026-12-05 placed the position of ``latest``
    in the newest file, even one holding no record yet) covers a prefix of the log no
    more. Zero-filled bytes, a torn tail or a second header there are not records."""
    from gpu_pitr.format.layout import HEADER_ID

    last = position.get("last_record") or {}
    seg = segments.get(last.get("segment"))
    if seg is None or last.get("length") is None or last["segment"] == position.get(
            "segment"):
        return None
    at = int(last["offset"]) + int(last["length"])
    try:
        with open(seg.path, "rb") as f:
            head = os.pread(f.fileno(), RECORD_HEADER_SIZE, at)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None  # the restore names what cannot be read
    if (len(head) < RECORD_HEADER_SIZE or head[:len(HEADER_ID)] == HEADER_ID
            or not any(head)
            or at + RECORD_HEADER_SIZE + int.from_bytes(head[8:], "little") > size):
        return None
    return (f"{seg.path}: offset {at}: a record the snapshot does not cover, before its "
            f"position ({position['segment']} offset {position['offset']}): written after "
            "the snapshot was taken, while the writer was starting a new segment; take the "
            "snapshot again")


def _log_order(seg) -> bytes:
    return seg.name.encode()


def find_segment(segments, name) -> int | None:
    """The index of the segment named ``name`` in ``segments`` (in log order), or None.
    By bisection: ``snapshot.choose`` asks for every snapshot of a directory, and a
    dict or a scan of a long-kept archive's segments each time made the choice
    snapshots x segments (300 snapshots of 20,000 segments: 2 s)."""
    if not isinstance(name, str):
        return None
    k = bisect.bisect_left(segments, name.encode(), key=_log_order)
    return k if k < len(segments) and segments[k].name == name else None


def first_after(segments, name: str) -> int:
    """The index in ``segments`` (in log order) of the first segment after ``name``
    (``len(segments)`` if none): where a log goes on when a base's segment is gone."""
    return bisect.bisect_right(segments, name.encode(), key=_log_order)


def resume_at(position: dict, segments) -> tuple[list, int]:
    """Where a restore from a snapshot at ``position`` reads the log of ``segments`` (in
    log order): the segments from its own on (the writer's retention deleted it: from
    the first after it), and the byte of the first of them where reading begins (its
    header's end, or the position within its own segment). The restore's resume point
    (``pipeline._Restore._resume_at``) and what ``snapshot.log_after`` counts for it."""
    name = position.get("segment")
    if name is None:  # a snapshot of an empty log: all of it comes after
        return list(segments), HEADER_SIZE
    k = find_segment(segments, name)
    if k is None:
        return list(segments[first_after(segments, name):]), HEADER_SIZE
    return list(segments[k:]), max(int(position["offset"]), HEADER_SIZE)


def counted_bytes(size: int, start: int, bad_header: int | None = None) -> int:
    """The bytes a restore's report (``bytes_read``) counts for a segment of ``size``
    bytes read from byte ``start``, as its framer counts them: a damaged header's bytes
    alone (``bad_header``: how many it read of it); a segment with no record from
    ``start`` on, its header (read to check it: a base at a segment's end too); one read
    from its header's end, all of it; one read from within (a base's position), from
    there."""
    if bad_header is not None:
        return bad_header
    if size <= start:
        return min(size, HEADER_SIZE)
    return size if start <= HEADER_SIZE else size - start


def base_mismatch(position: dict, segments) -> str | None:
    """Why a restore of the log of ``segments`` (in log order) cannot start from a
    snapshot at ``position`` (None: it can, as far as its records tell).

    The log must reach the snapshot's position: its segment there and long enough, or
    (the writer's retention deleted it) a later segment. A log that ends before the
    snapshot's segment is another store's (a snapshots directory shared by shards),
    or one not archived that far yet: restoring from it would return the snapshot's
    rows as this log's. A log of no segment at all leaves the snapshot alone (its state
    is the restore's). Then ``record_mismatch``.
    """
    name = position.get("segment")
    if name is None or not segments:
        return None
    last = (position.get("last_record") or {}).get("segment")
    # (the two names record_mismatch looks up)
    by_name = {n: segments[k] for n in (name, last) if (k := find_segment(segments, n)) is not None}
    seg = by_name.get(name)
    if seg is not None and int(position["offset"]) > seg.size:
        return (f"{seg.path} ends before the snapshot's position (offset "
                f"{position['offset']}): another log, or not archived that far yet")
    if seg is None and segments[-1].name.encode() < name.encode():
        return (f"the log ends before the snapshot's segment {name} (its last is "
                f"{segments[-1].name}): another store's log, or not archived that far yet")
    return record_mismatch(position, by_name, "this log")


def base_gap(position: dict, segments, look: bool = False) -> str | None:
    """Why the log of ``segments`` (in log order) does not go on from a snapshot at
    ``position``: the snapshot's segment is gone, and the log resumes in a later one
    (None: it goes on, or may). A snapshot at the end of its segment (or before a torn
    tail there) goes on into a next file whose first record is its last seq + 1: the
    restore checks that as it reads; with ``look``, the next file's first record is read
    here too (one whose seq cannot be read, or is 0, is left to the restore). A gap in
    this store's history (segments deleted before they were archived), or another
    store's snapshot: the log cannot tell which."""
    from gpu_pitr.format.segments import first_record_seq

    name = position.get("segment")
    if name is None or find_segment(segments, name) is not None:
        return None
    # At the end of its segment's whole records (a torn tail after them: a crash, or the
    # writer's record still in progress, which the next file's first seq tells apart).
    at_end = position.get("at_segment_end") or position.get("at_torn_tail")
    if at_end and position.get("last_seq") is not None:
        k = first_after(segments, name)
        later = segments[k] if look and k < len(segments) else None
        first = first_record_seq(later.path) if later is not None else None
        if not first or first == int(position["last_seq"]) + 1:
            return None
        return (f"the base snapshot's segment {name} is gone, and the log resumes at seq "
                f"{first} in {later.name}, not {int(position['last_seq']) + 1}")
    return (f"the base snapshot's segment {name} is gone, with records after its position "
            f"(offset {position.get('offset')})")


def stops_at_base(position: dict, target: dict, exclusive: bool = False) -> bool:
    """An inclusive sequence or position target met by the last record the snapshot
    covered."""
    if "to_position" in target:
        return not exclusive and _last_record_is(position, *target["to_position"])
    return ("to_seq" in target and not exclusive
            and position.get("last_seq") == int(target["to_seq"]))


@njit(cache=True, nogil=True, parallel=True)
def _encode_inserts(first, starts, id_arena, id_offs, id_lens, vec_bytes, meta_arena,
                    meta_offs, meta_lens, out, rec_len):
    """``Insert{id, vector, metadata, timestamp: 0}`` records for rows ``first`` on, the
    one of row ``first + j`` at ``out[starts[j]:]`` (``insert_record_sizes`` apart, so
    rows are encoded in parallel); ``rec_len[j]``: its length as written."""
    width = vec_bytes.shape[1]
    dim = width // 4
    for j in prange(len(starts)):
        i = first + j
        start = starts[j]
        p = start + RECORD_HEADER_SIZE
        out[p] = 0  # variant Insert
        p += 1
        n = id_lens[i]
        p = write_varint(out, p, n)
        o = id_offs[i]
        out[p:p + n] = id_arena[o:o + n]
        p += n
        p = write_varint(out, p, dim)
        out[p:p + width] = vec_bytes[i]
        p += width
        if meta_offs[i] < 0:
            out[p] = 0
            p += 1
        else:
            out[p] = 1
            p += 1
            o = meta_offs[i]
            out[p:p + meta_lens[i]] = meta_arena[o:o + meta_lens[i]]
            p += meta_lens[i]
        out[p] = 0  # timestamp 0
        p += 1
        length = p - start - RECORD_HEADER_SIZE
        for k in range(8):
            out[start + k] = 0  # sequence number 0: never walked
        for k in range(4):
            out[start + 8 + k] = (length >> (8 * k)) & 0xFF
        rec_len[j] = length


def insert_record_sizes(snap) -> np.ndarray:
    """Bytes of the Insert record of each row of ``snap`` (header included)."""
    dim = snap.vectors.shape[1] if snap.vectors.ndim == 2 else 0
    id_lens = snap.id_lens
    meta = np.where(snap.meta_offs < 0, 1, 1 + snap.meta_lens)
    return (RECORD_HEADER_SIZE + 1 + varint_widths(id_lens) + id_lens
            + varint_widths(np.full(len(id_lens), dim)) + 4 * dim + meta + 1)


def seed_chunks(snap, chunk_bytes: int, alloc):
    """Every row of the snapshot as an Insert record, in pieces of about
    ``chunk_bytes``.

    Yields ``(buf, rec_off, rec_len)``: the cuda executor decodes and applies them as
    it would the log's own records, so a state loaded from a snapshot is exactly
    the state those inserts build. One buffer is reused for every piece. (The cpu
    executor takes base rows straight from the columns: ``HostMap.seed``.)
    """
    count = len(snap.id_lens)
    if count == 0:
        return
    sizes = insert_record_sizes(snap)
    ends = np.cumsum(sizes)
    vec_bytes = np.ascontiguousarray(snap.vectors).view(np.uint8).reshape(count, -1)
    buf = None
    lo = 0
    while lo < count:
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + chunk_bytes, side="right")))
        need = int(ends[hi - 1] - base)
        if buf is None or len(buf) < need:
            buf = alloc(max(need, min(int(ends[-1]), chunk_bytes)))
        rec_off = ends[lo:hi] - sizes[lo:hi] - base
        rec_len = np.empty(hi - lo, np.int64)
        _encode_inserts(lo, rec_off, snap.id_arena, snap.id_offs, snap.id_lens, vec_bytes,
                        snap.meta_arena, snap.meta_offs, snap.meta_lens, buf, rec_len)
        if not np.array_equal(rec_len + RECORD_HEADER_SIZE, sizes[lo:hi]):
            raise AssertionError("insert_record_sizes disagrees with _encode_inserts")
        yield buf, rec_off, rec_len
        lo = hi


def id_key_table(arena, offs, lens, *, parallel: bool = True) -> tuple:
    """``(keys, table)``: each row's id key, and the table from key to rows that
    ``LazyBase`` finds the base rows a chunk names with (``_key_table``).
    ``parallel``: see ``span_keys`` (the table itself is built on one thread either
    way)."""
    keys = span_keys(arena, offs, lens, parallel=parallel)
    return keys, _key_table(keys)


def _key_table(keys: np.ndarray, seed=HOME_SEED) -> tuple:
    """``(slots, chain, seed)``: from each distinct key to every base row of it.

    ``slots``: open addressing, linear probing from ``homes.seeded_home`` (at most
    half full), one slot per distinct key: -1 empty, else ``tag << (b + 1) | more << b
    | r`` (``_row_bits``: b bits name any row of a table of that size), ``r`` the key's
    first row, ``more`` set when it has others (``chain[r]`` the key's next row, -1
    after its last; read only for such keys), ``tag`` the key's top bits in what the
    slot has left (``_tag_bits``: 8 for 4M keys in 32-bit slots, none for 2^30; past
    that, slots are 64-bit), so a probe reads the key of a row only when the tags
    agree (4M random keys: 88 -> 56 ms to build; 1.08M: 7.6-8.1 ms, 5.8-6.2 ms for
    the old one slot a row from the key's low bits, whose queries took longer: 17
    against 21 ms for every key).

    Ids are chosen by the store's users and their key is cheap to collide
    (``tests/collisions.py``): one slot per row put every row of one key in one run,
    walked by every insert and every query that met it (16k ids of one key: 1.45 s
    to restore from a base, 32k: 5.8 s), and a home of the key's low bits did the same
    for keys chosen to share them. The seed goes with the table: one built in another
    process is still found. Slots are 32-bit where rows fit: half the memory, and
    its random writes and probes miss the caches less (1.08M keys, one slot a row:
    0.047 -> 0.030 s to build)."""
    n = len(keys)
    cap = 16
    while cap < 2 * n:
        cap *= 2
    slots = np.full(cap, -1, np.int32 if cap <= 1 << 31 else np.int64)
    chain = np.empty(n, np.int32 if n < 2**31 else np.int64)  # touched where keys repeat
    seed = np.uint64(seed)
    _fill_key_table(keys, slots, chain, seed)
    return slots, chain, seed


@njit(cache=True, nogil=True, inline="always")
def _row_bits(slots):
    # The bits of a slot of ``_key_table`` that name a row: its rows are fewer than
    # half its slots.
    b = 1
    while (1 << b) < len(slots) // 2:
        b += 1
    return b


@njit(cache=True, nogil=True, inline="always")
def _tag_bits(slots, b):
    # The bits of a slot left for the key's tag: all but the sign, ``more`` and the row.
    return slots.itemsize * 8 - 2 - b


@njit(cache=True, nogil=True, inline="always")
def _tag(key, b, t):
    # The key's top ``t`` bits, where a slot of ``_key_table`` keeps them.
    if t == 0:
        return np.int64(0)
    return np.int64(key >> np.uint64(64 - t)) << (b + 1)


@njit(cache=True, nogil=True, inline="always")
def _slot_of(k, tag, slots, keys, mask, b, seed):
    """``(slot, value)``: the slot of ``_key_table`` that holds the key ``k`` (its tag
    ``tag``), or the empty one (value -1) its run ends at."""
    s = seeded_home(k, mask, seed)
    while True:
        h = np.int64(slots[s])
        if h == -1 or (h >> (b + 1) << (b + 1) == tag and keys[h & ((1 << b) - 1)] == k):
            return s, h
        s = (s + 1) & mask


@njit(cache=True, nogil=True)
def _fill_key_table(keys, slots, chain, seed):
    mask = len(slots) - 1
    b = _row_bits(slots)
    t = _tag_bits(slots, b)
    first_of = (1 << b) - 1
    n = len(keys)
    for r in range(n):
        if r + PREFETCH_AHEAD < n:  # the slot a later key goes to: the writes are random
            prefetch(slots, seeded_home(keys[r + PREFETCH_AHEAD], mask, seed))
        k = keys[r]
        tag = _tag(k, b, t)
        s, h = _slot_of(k, tag, slots, keys, mask, b, seed)
        if h == -1:
            slots[s] = tag | r
            continue
        first = h & first_of  # a later row of this key: linked after its first
        if h >> b & 1:
            chain[r] = chain[first]
        else:
            slots[s] = h | (1 << b)
            chain[r] = -1
        chain[first] = r


@njit(cache=True, nogil=True)
def _take_rows(query, slots, chain, seed, keys, moved, out):
    """Every row not yet ``moved`` whose key is in ``query`` (several base ids may share
    a key): marked moved, written to ``out``; returns how many.

    A key's rows move together (here; ``id_shard_mask`` is a function of the key;
    ``LazyBase.take_rest`` moves them all), so a key whose first row has moved has
    none left: a key queried again costs its probe, not a walk of its rows."""
    mask = len(slots) - 1
    b = _row_bits(slots)
    t = _tag_bits(slots, b)
    first_of = (1 << b) - 1
    m = 0
    n = len(query)
    for q in range(n):
        if q + PREFETCH_AHEAD < n:  # a later query's slot, and nearer, the row its slot names
            prefetch(slots, seeded_home(query[q + PREFETCH_AHEAD], mask, seed))
            h = np.int64(slots[seeded_home(query[q + PREFETCH_AHEAD // 2], mask, seed)])
            if h != -1:
                prefetch(keys, h & first_of)
                prefetch(moved, h & first_of)
        k = query[q]
        s, h = _slot_of(k, _tag(k, b, t), slots, keys, mask, b, seed)
        if h != -1:
            r = h & first_of
            if not moved[r]:
                moved[r] = True
                out[m] = r
                m += 1
                if h >> b & 1:
                    r = chain[r]
                    while r >= 0:
                        if not moved[r]:
                            moved[r] = True
                            out[m] = r
                            m += 1
                        r = chain[r]
    return m


class LazyBase:
    """A base state kept aside: only the rows the log touches go into the executor.

    Rows are found by their id key (the executors' own ``id_key``); every base row
    sharing a key with an entry of a chunk is moved in before that chunk applies,
    so the executor sees exactly the state a full load would give it for every id
    the log names. The rows never touched join the result at the end
    (``merge``): they are already sorted, so they are merged, not sorted again,
    and their vectors are copied once, from the snapshot's (a restore maps them:
    page-cache pages, not a copy) straight into their rows of the result.
    """

    def __init__(self, snap, id_shard=None) -> None:
        self.snap = snap
        prepared = getattr(snap, "key_table", None)
        self.keys, self.table = prepared or id_key_table(snap.id_arena, snap.id_offs,
                                                         snap.id_lens)
        if id_shard is None:
            self.moved = np.zeros(len(self.keys), np.bool_)
        else:  # the rows of other shards' ids never move in: as if moved already
            from gpu_pitr.resolve.idshard import id_shard_mask

            self.moved = ~id_shard_mask(self.keys, id_shard)

    def take(self, keys: np.ndarray) -> np.ndarray:
        """Base rows (not moved before) sharing a key with ``keys``; marks them moved."""
        if not len(self.keys) or not len(keys):
            return np.zeros(0, np.int64)
        out = np.empty(len(self.keys), np.int64)  # pages are touched only as used
        m = _take_rows(np.ascontiguousarray(keys, np.uint64), *self.table, self.keys,
                       self.moved, out)
        return np.sort(out[:m])

    def untouched(self) -> int:
        """How many base rows have not moved in."""
        return len(self.moved) - int(np.count_nonzero(self.moved))

    def take_rest(self) -> np.ndarray:
        """The base rows not moved in before (ascending: the base's id order); marks
        them moved, as ``take`` does."""
        rest = np.flatnonzero(~self.moved)
        self.moved[rest] = True
        return rest

    def merge(self, index, row_of):
        """``index`` (the executor's result) with the base rows never moved in.

        ``row_of`` (from ``CpuExecutor.finish_unmoved``): the vector of ``index``'s id
        ``k`` is row ``row_of[k]`` of ``index.vectors``. Each vector is copied once,
        into its row of the result."""
        from gpu_pitr.index import RestoredIndex

        snap = self.snap
        rest = np.flatnonzero(~self.moved)
        ids, id_offs, id_lens = index._id_arena, index._id_offs, index._id_lens
        n = len(id_offs) + len(rest)
        cols = [np.empty(n, np.int64) for _ in range(4)]  # id offs, lens; meta offs, lens
        # Only the cpu executor keeps a base aside: its vectors are host arrays.
        vectors = index.vectors
        dim = snap.vectors.shape[1] if len(index) == 0 else vectors.shape[1]
        out = np.empty((n, dim), np.float32)
        _merge_into(ids, id_offs, id_lens, index._meta_offs, index._meta_lens, row_of,
                    vectors.reshape(-1, dim) if dim else out, snap.id_arena, rest,
                    snap.id_offs, snap.id_lens, snap.meta_offs, snap.meta_lens,
                    snap.vectors if dim else out, len(ids), len(index._meta_arena), *cols,
                    out)
        out_id_offs, out_id_lens, out_meta_offs, out_meta_lens = cols
        merged = RestoredIndex(_joined(ids, snap.id_arena), out_id_offs, out_id_lens, out,
                               _joined(index._meta_arena, snap.meta_arena), out_meta_offs,
                               out_meta_lens, index.report)
        index.report.ids = n
        index.report.dim = int(dim)
        return merged


def _joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.concatenate([a, b])`` of two byte arrays, copied on the Numba threads."""
    out = np.empty(len(a) + len(b), np.uint8)
    _join(a, b, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _join(a, b, out):
    na = len(a)
    step = 1 << 22
    for c in prange((len(out) + step - 1) // step):
        lo = c * step
        hi = min(len(out), lo + step)
        if lo < na:
            e = min(hi, na)
            out[lo:e] = a[lo:e]
        if hi > na:
            s = max(lo, na)
            out[s:hi] = b[s - na:hi - na]


# Parts of the merge below: equal stretches of the result, so the threads share it
# evenly whichever way the two lists interleave (a log whose new ids all sort after
# the base's puts every base row before the first of them).
MERGE_PARTS = 16


@njit(cache=True, nogil=True)
def _co_rank(k, a, a_offs, a_lens, b, rest, b_offs, b_lens):
    # How many of list a's ids are among the first k of the merge of a and the rows
    # ``rest`` of b (sorted, no id in both): the smallest i whose a[i] does not sort
    # before b's (k - i - 1)-th id (a binary search along the merge's diagonal k).
    lo, hi = max(0, k - len(rest)), min(k, len(a_offs))
    while lo < hi:
        i = (lo + hi) // 2
        r = rest[k - i - 1]
        if compare_ids(a, a_offs[i], a_lens[i], b, b_offs[r], b_lens[r]) < 0:
            lo = i + 1
        else:
            hi = i
    return lo


@njit(cache=True, nogil=True)
def merge_cuts(a, a_offs, a_lens, b, rest, b_offs, b_lens):
    """``(cut_a, cut_b)``: where each of up to MERGE_PARTS parts of the merge starts in
    list a and in ``rest``; part p writes the result's rows from ``cut_a[p] +
    cut_b[p]``, and the parts are as long as each other (to a row)."""
    n = len(a_offs) + len(rest)
    parts = MERGE_PARTS if n >= MERGE_PARTS else 1
    cut_a = np.empty(parts + 1, np.int64)
    cut_b = np.empty(parts + 1, np.int64)
    for p in range(parts + 1):
        k = p * n // parts
        cut_a[p] = _co_rank(k, a, a_offs, a_lens, b, rest, b_offs, b_lens)
        cut_b[p] = k - cut_a[p]
    return cut_a, cut_b


@njit(cache=True, nogil=True, parallel=True)
def _merge_into(a, a_offs, a_lens, a_meta_offs, a_meta_lens, a_row, a_rows,
                b, rest, b_offs, b_lens, b_meta_offs, b_meta_lens, b_rows, id_base, meta_base,
                o_id_offs, o_id_lens, o_meta_offs, o_meta_lens, out):
    """Merge two id lists sorted by bytes (no id in both) into the result's columns:
    list a (the executor's: id ``i`` has vector ``a_rows[a_row[i]]``) and the rows
    ``rest`` of list b (the base's), whose id and metadata spans shift past a's
    arenas (they are appended after them). Each vector is copied once. Cut into
    equal parts (``merge_cuts``), merged in parallel."""
    cut_a, cut_b = merge_cuts(a, a_offs, a_lens, b, rest, b_offs, b_lens)
    width = out.shape[1]
    for p in prange(len(cut_a) - 1):
        i, i_end = cut_a[p], cut_a[p + 1]
        j, j_end = cut_b[p], cut_b[p + 1]
        for k in range(i + j, i_end + j_end):
            r = rest[j] if j < j_end else -1
            if r < 0 or (i < i_end and compare_ids(a, a_offs[i], a_lens[i],
                                                   b, b_offs[r], b_lens[r]) < 0):
                o_id_offs[k] = a_offs[i]
                o_id_lens[k] = a_lens[i]
                o_meta_offs[k] = a_meta_offs[i]
                o_meta_lens[k] = a_meta_lens[i]
                if width:
                    out[k, :] = a_rows[a_row[i], :]
                i += 1
            else:
                o_id_offs[k] = b_offs[r] + id_base
                o_id_lens[k] = b_lens[r]
                m = b_meta_offs[r]
                o_meta_offs[k] = m + meta_base if m >= 0 else -1
                o_meta_lens[k] = b_meta_lens[r]
                if width:
                    out[k, :] = b_rows[r, :]
                j += 1
