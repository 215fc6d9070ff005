"""Synthetic oxirs-vec WALs for benchmarks and tests, generated with array operations.

The workload is planned as columns (top-level records, data entries), each field's byte
offset is laid out with cumulative sums, and every field is scattered into a whole-segment
buffer at once: there is no Python work per record, so a GiB takes seconds.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpu_pitr.format.codec import encode_varint
from gpu_pitr.format.layout import (
    ABORT_TRANSACTION,
    BATCH,
    BEGIN_TRANSACTION,
    CHECKPOINT,
    COMMIT_TRANSACTION,
    DELETE,
    HEADER_ID,
    HEADER_SIZE,
    INSERT,
    N_VARIANTS,
    OPTION_NONE,
    OPTION_SOME,
    RECORD_HEADER_SIZE,
    UPDATE,
    VARIANT_NAMES,
    VARINT_MAX_SINGLE,
    VARINT_U16,
    VARINT_U32,
    VARINT_U64,
    segment_name,
)
from gpu_pitr.format.payload import varint_widths

# The workload. Shares of data entries (top-level or inside a batch or transaction):
OP_SHARES = (0.80, 0.15, 0.05)  # Insert, Update, Delete
# Inserts that overwrite an id inserted earlier (upserts): with the deletes this leaves
# the final index at about 75% of the inserts.
REINSERT_SHARE = 0.19
METADATA_SHARE = 0.10  # of inserts and updates
# Shares of "units" in log order: a unit is one data record, one batch record, one
# checkpoint, or a whole transaction (Begin, data records, Commit or Abort).
BATCH_SHARE = 0.01
TXN_SHARE = 0.005
CHECKPOINT_SHARE = 2e-5
BATCH_SIZES = (2, 16)  # entries per batch, inclusive
TXN_SIZES = (1, 5)  # data records per transaction, inclusive
ABORT_SHARE = 0.1  # of transactions
RECORDS_PER_SECOND = 300.0  # mean rate of the writer; timestamps are whole seconds

# Ids are URI-like, 35-41 UTF-8 bytes, one family chosen by id number (one is not ASCII,
# so byte lengths and character counts differ). The number makes every id distinct.
ID_PREFIXES = (
    "https://data.example.org/item/",
    "https://kb.example.com/id/",
    "https://data.example.org/doc/en/",
    "https://data.example.org/café/",
)
ID_DIGITS = 9

_DATA = -1  # record kind of a record holding one data entry (its variant is the entry's op)
_UNIT_DATA, _UNIT_BATCH, _UNIT_TXN, _UNIT_CHECKPOINT = range(4)
_SCATTER_ELEMENTS = 1 << 20  # index elements per scatter step: bounds temporary memory


def synthetic_id(number: int) -> str:
    """The id string the generator uses for id ``number``."""
    return f"{ID_PREFIXES[number % len(ID_PREFIXES)]}{number:0{ID_DIGITS}d}"


@dataclass
class SynthStats:
    """What ``write_synthetic_wal`` wrote, and the state a correct restore must produce.

    ``records_by_variant`` counts top-level records; ``entries_by_op`` counts data
    entries wherever they are (top level, batch, transaction). ``live_ids`` is the
    index size after restoring to the latest state, ``live_ids_mid`` after restoring
    to ``mid_timestamp``; ``live_numbers``/``live_numbers_mid`` hold the id numbers
    (see ``synthetic_id``) when the stats come from the generator itself.
    """

    wal_dir: str
    files: list[str]
    bytes: int
    dim: int
    seed: int
    records: int
    entries: int
    records_by_variant: dict[str, int]
    entries_by_op: dict[str, int]
    entries_with_metadata: int
    commit_points: int
    transactions_committed: int
    transactions_aborted: int
    first_timestamp: int
    last_timestamp: int
    mid_timestamp: int
    live_ids: int
    live_ids_mid: int
    seconds: float
    live_numbers: np.ndarray | None = field(default=None, repr=False)
    live_numbers_mid: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-able fields (the id-number arrays left out)."""
        out = asdict(self)
        out.pop("live_numbers")
        out.pop("live_numbers_mid")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SynthStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def expected_ids(self, mid: bool = False) -> np.ndarray:
        """Ids of the restored index (latest, or at ``mid_timestamp``), sorted by UTF-8 bytes."""
        numbers = self.live_numbers_mid if mid else self.live_numbers
        if numbers is None:
            raise ValueError("id numbers are only known to stats fresh from the generator")
        ids = sorted((synthetic_id(int(n)) for n in numbers), key=lambda s: s.encode())
        return np.array(ids, dtype=str)


def write_synthetic_wal(
    wal_dir: str | os.PathLike,
    *,
    total_bytes: int = 1 << 30,
    dim: int = 128,
    segments: int = 8,
    seed: int = 0,
    start_time: int = 1_700_000_000,
    max_ids: int | None = None,
) -> SynthStats:
    """Write a realistic WAL of about ``total_bytes`` into ``segments`` segment files.

    Sequence numbers run 0.. across all files; timestamps start at ``start_time``
    and rise about one second per ``RECORDS_PER_SECOND`` records. Vectors are
    random float32 in [-0.5, 0.5) with no element exactly zero. Existing segment
    files of the same names are overwritten; other files are left alone.
    ``max_ids``: entries use id numbers modulo it, an update-heavy log whose index
    stays at most that large (for memory checks).
    """
    if dim < 1 or segments < 1 or total_bytes < 1:
        raise ValueError("dim, segments and total_bytes must be positive")
    started = time.perf_counter()
    wal_dir = Path(wal_dir)
    wal_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    budget = max(total_bytes - segments * HEADER_SIZE, 1)
    plan = _plan_bytes(rng, budget, dim, start_time, max_ids)

    seg_of_record = np.minimum(plan.r_start * segments // plan.total, segments - 1)
    rec_bounds = np.searchsorted(seg_of_record, np.arange(segments + 1))
    files: list[str] = []
    created_prev = -1
    total_written = 0
    seg_sizes = [
        HEADER_SIZE + int(plan.r_size[rec_bounds[s] : rec_bounds[s + 1]].sum())
        for s in range(segments)
    ]
    # One buffer for every segment: recycled pages fill far faster than fresh ones.
    scratch = np.empty(max(seg_sizes), np.uint8)
    for s in range(segments):
        r0, r1 = int(rec_bounds[s]), int(rec_bounds[s + 1])
        first_ts = int(plan.r_ts[r0]) if r1 > r0 else created_prev + 1
        created = max(first_ts, created_prev + 1)
        created_prev = created
        buf = scratch[: seg_sizes[s]]
        _fill_segment(buf, plan, r0, r1, created, np.random.default_rng([seed, 1, s]))
        path = wal_dir / segment_name(created)
        with open(path, "wb") as f:
            f.write(memoryview(buf))
        files.append(str(path))
        total_written += len(buf)

    live, live_mid, mid_ts = _expected_state(plan)
    n_txn_commit = int(np.count_nonzero(plan.r_kind == COMMIT_TRANSACTION))
    n_standalone = int(np.count_nonzero(plan.r_kind == _DATA))
    n_batch = int(np.count_nonzero(plan.r_kind == BATCH))
    # Clipped: a log ending in records without entries has r_e0 == n_entries there.
    first_op = plan.e_op[np.minimum(plan.r_e0, plan.n_entries - 1)]
    variants = np.where(plan.r_kind == _DATA, first_op, plan.r_kind)
    by_variant = np.bincount(variants, minlength=N_VARIANTS)
    by_op = np.bincount(plan.e_op, minlength=DELETE + 1)
    return SynthStats(
        wal_dir=str(wal_dir),
        files=files,
        bytes=total_written,
        dim=dim,
        seed=seed,
        records=plan.n_records,
        entries=plan.n_entries,
        records_by_variant={VARIANT_NAMES[v]: int(by_variant[v]) for v in range(N_VARIANTS)},
        entries_by_op={VARIANT_NAMES[v]: int(by_op[v]) for v in (INSERT, UPDATE, DELETE)},
        entries_with_metadata=int(np.count_nonzero(plan.e_meta >= 0)),
        commit_points=n_standalone + n_batch + n_txn_commit,
        transactions_committed=n_txn_commit,
        transactions_aborted=int(np.count_nonzero(plan.r_kind == ABORT_TRANSACTION)),
        first_timestamp=int(plan.r_ts[0]),
        last_timestamp=int(plan.r_ts[-1]),
        mid_timestamp=mid_ts,
        live_ids=len(live),
        live_ids_mid=len(live_mid),
        seconds=time.perf_counter() - started,
        live_numbers=live,
        live_numbers_mid=live_mid,
    )


class _Plan:
    """The whole log as columns: top-level records (``r_*``) and data entries (``e_*``).

    Record kinds are variant numbers, or ``_DATA`` for a record holding one data
    entry. Entries are in log order; ``e_rec`` is the record holding each one and
    ``e_off`` its offset inside that record's payload. ``r_start`` is each record's
    offset in the concatenation of all records (segment headers excluded).
    """

    def __init__(self, rng: np.random.Generator, n_units: int, dim: int, start_time: int,
                 max_ids: int | None = None):
        shares = np.array([BATCH_SHARE, TXN_SHARE, CHECKPOINT_SHARE])
        # Bins of a uniform draw: [0, batch) batch, then transaction, checkpoint, data.
        kinds = np.array([_UNIT_BATCH, _UNIT_TXN, _UNIT_CHECKPOINT, _UNIT_DATA], np.int8)
        u_kind = kinds[np.searchsorted(np.cumsum(shares), rng.random(n_units), side="right")]
        u_kind[0] = _UNIT_DATA  # the log opens with an insert, so later ops have targets
        is_txn = u_kind == _UNIT_TXN
        u_nrec = np.ones(n_units, np.int64)
        u_nrec[is_txn] = rng.integers(TXN_SIZES[0], TXN_SIZES[1] + 1, int(is_txn.sum())) + 2
        u_abort = is_txn & (rng.random(n_units) < ABORT_SHARE)
        u_txid = np.cumsum(is_txn)  # transaction ids 1, 2, ...
        u_rec0 = np.cumsum(u_nrec) - u_nrec

        n_rec = int(u_nrec.sum())
        r_unit = np.repeat(np.arange(n_units), u_nrec)
        r_pos = np.arange(n_rec) - u_rec0[r_unit]
        uk = u_kind[r_unit]
        r_kind = np.full(n_rec, _DATA, np.int8)
        r_kind[uk == _UNIT_BATCH] = BATCH
        r_kind[uk == _UNIT_CHECKPOINT] = CHECKPOINT
        in_txn = uk == _UNIT_TXN
        r_kind[in_txn & (r_pos == 0)] = BEGIN_TRANSACTION
        closing = in_txn & (r_pos == u_nrec[r_unit] - 1)
        r_kind[closing] = np.where(u_abort[r_unit[closing]], ABORT_TRANSACTION, COMMIT_TRANSACTION)
        # The u64 field of markers: the transaction id, or for a checkpoint the
        # sequence number of the record before it (what the store had persisted).
        r_arg = np.where(r_kind == CHECKPOINT, np.maximum(np.arange(n_rec) - 1, 0), u_txid[r_unit])
        r_ts = start_time + np.floor(
            np.cumsum(rng.exponential(1.0 / RECORDS_PER_SECOND, n_rec))
        ).astype(np.int64)
        is_batch = r_kind == BATCH
        r_nent = (r_kind == _DATA).astype(np.int64)
        r_nent[is_batch] = rng.integers(BATCH_SIZES[0], BATCH_SIZES[1] + 1, int(is_batch.sum()))
        r_e0 = np.cumsum(r_nent) - r_nent

        n_ent = int(r_nent.sum())
        e_rec = np.repeat(np.arange(n_rec), r_nent)
        e_op = np.searchsorted(np.cumsum(OP_SHARES)[:-1], rng.random(n_ent), side="right")
        e_op = e_op.astype(np.int8)
        e_op[0] = INSERT
        fresh = (e_op == INSERT) & (rng.random(n_ent) >= REINSERT_SHARE)
        fresh[0] = True
        fresh_before = np.cumsum(fresh) - fresh
        # Updates, deletes and re-inserts pick any id inserted earlier in the log.
        e_id = np.where(fresh, fresh_before, np.floor(rng.random(n_ent) * fresh_before))
        e_id = e_id.astype(np.int64)
        if max_ids:
            e_id %= max_ids
        blocks = _metadata_blocks()
        e_meta = np.where(
            (e_op != DELETE) & (rng.random(n_ent) < METADATA_SHARE),
            rng.integers(0, len(blocks), n_ent),
            -1,
        )

        id_len = np.array([len(p.encode()) + ID_DIGITS for p in ID_PREFIXES], np.int64)
        if id_len.max() > VARINT_MAX_SINGLE:
            raise AssertionError("id lengths must stay one-byte varints")
        meta_len = np.array([len(b) for b in blocks], np.int64)
        vec_len = varint_widths(np.array([dim]))[0] + 4 * dim
        e_ts = r_ts[e_rec]
        e_size = (
            2
            + id_len[e_id % len(ID_PREFIXES)]
            + np.where(e_op == DELETE, 0, vec_len + 1 + np.where(e_meta >= 0, meta_len[e_meta], 0))
            + varint_widths(e_ts)
        )
        cs = np.concatenate(([0], np.cumsum(e_size)))
        r_payload = np.where(
            r_kind == _DATA, cs[r_e0 + r_nent] - cs[r_e0], 1 + varint_widths(r_arg)
        )
        r_payload[is_batch] = (
            1 + varint_widths(r_nent[is_batch]) + cs[r_e0 + r_nent][is_batch] - cs[r_e0][is_batch]
        )
        r_payload[is_batch | (r_kind >= CHECKPOINT)] += varint_widths(
            r_ts[is_batch | (r_kind >= CHECKPOINT)]
        )
        e_off = cs[:-1] - cs[r_e0[e_rec]]
        batch_entry = is_batch[e_rec]
        e_off[batch_entry] += 1 + varint_widths(r_nent[e_rec[batch_entry]])
        r_size = RECORD_HEADER_SIZE + r_payload

        self.dim = dim
        self.u_end_bytes = np.cumsum(r_size)[u_rec0 + u_nrec - 1]
        self.u_rec0, self.u_nrec = u_rec0, u_nrec
        self.r_kind, self.r_arg, self.r_ts = r_kind, r_arg, r_ts
        self.r_nent, self.r_e0 = r_nent, r_e0
        self.r_payload, self.r_size = r_payload, r_size
        self.e_rec, self.e_op, self.e_id, self.e_meta, self.e_ts = e_rec, e_op, e_id, e_meta, e_ts
        self.e_size, self.e_off = e_size, e_off
        self.blocks = blocks
        self.id_len = id_len
        self._finish()

    def _finish(self) -> None:
        self.n_records = len(self.r_kind)
        self.n_entries = len(self.e_op)
        self.r_start = np.cumsum(self.r_size) - self.r_size
        self.total = int(self.r_size.sum())

    def keep_units(self, n_units: int) -> None:
        """Cut the log after its first ``n_units`` units (every column is prefix-closed)."""
        n_rec = int(self.u_rec0[n_units - 1] + self.u_nrec[n_units - 1])
        n_ent = int(self.r_e0[n_rec - 1] + self.r_nent[n_rec - 1])
        for name in ("r_kind", "r_arg", "r_ts", "r_nent", "r_e0", "r_payload", "r_size"):
            setattr(self, name, getattr(self, name)[:n_rec])
        for name in ("e_rec", "e_op", "e_id", "e_meta", "e_ts", "e_size", "e_off"):
            setattr(self, name, getattr(self, name)[:n_ent])
        self.u_end_bytes = self.u_end_bytes[:n_units]
        self._finish()


def _plan_bytes(rng: np.random.Generator, budget: int, dim: int, start_time: int,
                max_ids: int | None = None) -> _Plan:
    """A plan of whole units whose records total at least ``budget`` bytes (just over)."""
    record_guess = 4 * dim + 60
    n_units = int(budget / record_guess / (1 + BATCH_SHARE * 8 + TXN_SHARE * 4) * 1.15) + 64
    while True:
        plan = _Plan(rng, n_units, dim, start_time, max_ids)
        if plan.u_end_bytes[-1] >= budget:
            break
        n_units *= 2
    plan.keep_units(int(np.searchsorted(plan.u_end_bytes, budget)) + 1)
    return plan


def _metadata_blocks() -> list[bytes]:
    """Encoded ``Some(map)`` metadata bodies (after the option tag) the records draw from."""
    sources = [f"feed-{i:02d}" for i in range(6)] + ["crawl-2024-11", "manual"]
    langs = ["en", "de", "fr", "ja"]
    maps = []
    for i, src in enumerate(sources):
        for j, lang in enumerate(langs):
            pairs = [("src", src), ("lang", lang)]
            if (i + j) % 3 == 0:
                pairs.reverse()  # HashMap order is arbitrary
            if (i + j) % 5 == 0:
                pairs.append(("title", "Überblick" if lang == "de" else "overview"))
            maps.append(pairs)
        maps.append([("src", src)])
    return [_encode_map(pairs) for pairs in maps]


def _encode_map(pairs: list[tuple[str, str]]) -> bytes:
    out = bytearray(encode_varint(len(pairs)))
    for key, value in pairs:
        for text in (key, value):
            raw = text.encode()
            out += encode_varint(len(raw)) + raw
    return bytes(out)


def _varint_rows(values: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Minimal varints of ``values``, one ``(mask, rows)`` group per encoded width."""
    v = values.astype(np.uint64)
    groups = []
    for marker, dtype, lo, hi in (
        (None, np.uint8, 0, VARINT_MAX_SINGLE + 1),
        (VARINT_U16, np.dtype("<u2"), VARINT_MAX_SINGLE + 1, 1 << 16),
        (VARINT_U32, np.dtype("<u4"), 1 << 16, 1 << 32),
        (VARINT_U64, np.dtype("<u8"), 1 << 32, None),
    ):
        mask = v >= lo if hi is None else (v >= lo) & (v < hi)
        if not mask.any():
            continue
        body = v[mask].astype(dtype).view(np.uint8).reshape(-1, np.dtype(dtype).itemsize)
        if marker is not None:
            body = np.hstack([np.full((len(body), 1), marker, np.uint8), body])
        groups.append((mask, body))
    return groups


def _put(buf: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
    """``buf[offsets[i] : offsets[i] + w] = rows[i]`` for every i, in bounded steps."""
    n, width = rows.shape
    if n == 0:
        return
    cols = np.arange(width)
    step = max(1, _SCATTER_ELEMENTS // width)
    for i in range(0, n, step):
        buf[offsets[i : i + step, None] + cols] = rows[i : i + step]


def _put_column(buf: np.ndarray, offsets: np.ndarray, row: np.ndarray | bytes) -> None:
    """The same bytes ``row`` at every offset."""
    row = np.frombuffer(bytes(row), np.uint8)
    _put(buf, offsets, np.broadcast_to(row, (len(offsets), len(row))))


def _put_varints(buf: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> None:
    for mask, rows in _varint_rows(values):
        _put(buf, offsets[mask], rows)


def _put_vectors(buf: np.ndarray, offsets: np.ndarray, dim: int, rng: np.random.Generator) -> None:
    """Random vectors at byte ``offsets``, written as 4-byte words.

    Offsets are grouped by their remainder mod 4 so that each group is a plain
    float32 scatter into a shifted view of the buffer (4x fewer index elements
    than byte scattering).
    """
    cols = np.arange(dim)
    step = max(1, _SCATTER_ELEMENTS // dim)
    for shift in range(4):
        group = offsets[offsets % 4 == shift]
        if len(group) == 0:
            continue
        words = buf[shift : shift + (len(buf) - shift) // 4 * 4].view("<f4")
        word_at = (group - shift) // 4
        for i in range(0, len(group), step):
            at = word_at[i : i + step]
            values = rng.random((len(at), dim), dtype=np.float32)
            values -= np.float32(0.5)
            values[values == 0] = np.float32(0.25)
            words[at[:, None] + cols] = values


def _fill_segment(
    buf: np.ndarray, plan: _Plan, r0: int, r1: int, created: int, rng: np.random.Generator
) -> None:
    """Write into ``buf`` (exactly its size) the segment file holding records ``r0:r1``."""
    buf[:HEADER_SIZE] = np.frombuffer(
        HEADER_ID + created.to_bytes(8, "little"), np.uint8
    )
    if r1 == r0:
        return
    start = HEADER_SIZE + plan.r_start[r0:r1] - plan.r_start[r0]
    kind = plan.r_kind[r0:r1]
    header = np.empty(r1 - r0, np.dtype([("seq", "<u8"), ("len", "<u4")]))
    header["seq"] = np.arange(r0, r1)
    header["len"] = plan.r_payload[r0:r1]
    _put(buf, start, header.view(np.uint8).reshape(-1, RECORD_HEADER_SIZE))

    # Batches and markers: variant, then the entry count or the u64 field, then
    # (after a batch's entries) the timestamp. A data record is just its entry.
    framed = kind != _DATA
    p0 = start[framed] + RECORD_HEADER_SIZE
    buf[p0] = kind[framed]
    rel = np.flatnonzero(framed) + r0
    args = np.where(kind[framed] == BATCH, plan.r_nent[rel], plan.r_arg[rel])
    _put_varints(buf, p0 + 1, args)
    ts = plan.r_ts[rel]
    _put_varints(buf, p0 + plan.r_payload[rel] - varint_widths(ts), ts)

    e0, e1 = int(plan.r_e0[r0]), int(plan.r_e0[r1 - 1] + plan.r_nent[r1 - 1])
    at = start[plan.e_rec[e0:e1] - r0] + RECORD_HEADER_SIZE + plan.e_off[e0:e1]
    op = plan.e_op[e0:e1]
    ids = plan.e_id[e0:e1]
    meta = plan.e_meta[e0:e1]
    buf[at] = op
    family = ids % len(ID_PREFIXES)
    for f, prefix in enumerate(ID_PREFIXES):
        sel = family == f
        raw = prefix.encode()
        rows = np.empty((int(sel.sum()), 1 + len(raw) + ID_DIGITS), np.uint8)
        rows[:, 0] = len(raw) + ID_DIGITS
        rows[:, 1 : 1 + len(raw)] = np.frombuffer(raw, np.uint8)
        n = ids[sel]
        for k in range(ID_DIGITS):
            rows[:, 1 + len(raw) + k] = (n // 10 ** (ID_DIGITS - 1 - k)) % 10 + ord("0")
        _put(buf, at[sel] + 1, rows)
    after_id = at + 2 + plan.id_len[family]
    vec = op != DELETE
    dim_varint = np.frombuffer(encode_varint(plan.dim), np.uint8)
    _put_column(buf, after_id[vec], dim_varint)
    floats_at = after_id[vec] + len(dim_varint)
    _put_vectors(buf, floats_at, plan.dim, rng)
    option_at = floats_at + 4 * plan.dim
    has_meta = meta[vec] >= 0
    buf[option_at] = np.where(has_meta, OPTION_SOME, OPTION_NONE)
    meta_at, meta_idx = option_at[has_meta] + 1, meta[vec][has_meta]
    for b, block in enumerate(plan.blocks):
        _put_column(buf, meta_at[meta_idx == b], block)
    ts = plan.e_ts[e0:e1]
    _put_varints(buf, at + plan.e_size[e0:e1] - varint_widths(ts), ts)


def _expected_state(plan: _Plan) -> tuple[np.ndarray, np.ndarray, int]:
    """Live id numbers after the whole log and at the mid timestamp, and that timestamp.

    Transactions here never interleave, so commit points are in log order and their
    timestamps never decrease: a time target keeps exactly the entries whose commit
    timestamp is <= T, and the last of those per id decides whether it is live.
    """
    kind = plan.r_kind
    # The log is cut at unit boundaries, so every Begin has its Commit or Abort and
    # a record inside a transaction is closed by the first closing marker after it.
    ends = np.flatnonzero((kind == COMMIT_TRANSACTION) | (kind == ABORT_TRANSACTION))
    rec = np.arange(plan.n_records)
    depth = np.zeros(plan.n_records + 1, np.int64)
    depth[np.flatnonzero(kind == BEGIN_TRANSACTION)] += 1
    depth[ends + 1] -= 1
    in_txn = np.cumsum(depth[:-1]) > 0
    closer = rec.copy()
    closer[in_txn] = ends[np.searchsorted(ends, rec[in_txn])]
    committed = kind[closer] != ABORT_TRANSACTION
    e_closer = closer[plan.e_rec]
    applied = committed[plan.e_rec]
    e_commit_ts = plan.r_ts[e_closer]
    mid_ts = int(plan.r_ts[plan.n_records // 2])

    def live_at(keep: np.ndarray) -> np.ndarray:
        ids = plan.e_id[keep][::-1]
        ops = plan.e_op[keep][::-1]
        numbers, last = np.unique(ids, return_index=True)
        return numbers[ops[last] != DELETE]

    return live_at(applied), live_at(applied & (e_commit_ts <= mid_ts)), mid_ts
