"""The pure-Python ``wal_stats``: what ``gpu-pitr inspect`` reported before it was compiled.

Kept as the reference that ``gpu_pitr.format.stats.wal_stats`` must equal exactly
(tests/test_inspect_stats.py and the cross-checks of tests/test_verify.py and
tests/fuzzing.py). Built on the package's pure-Python reader and codec, one segment
in memory at a time; slow on purpose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from gpu_pitr.format import bincode1, stats
from gpu_pitr.format.codec import PayloadError, decode_entry
from gpu_pitr.format.entries import (
    AbortTransaction,
    Batch,
    BeginTransaction,
    Checkpoint,
    CommitTransaction,
)
from gpu_pitr.format.layout import VARIANT_NAMES
from gpu_pitr.format.reader import scan_segment
from gpu_pitr.format.segments import list_segments
from gpu_pitr.format.zerofill import describe as describe_zeros


def wal_stats(wal_dir: str | os.PathLike) -> dict:
    """What ``inspect`` reports about ``wal_dir``, as one JSON-able document.

    Built on the pure-Python reader and codec; it judges nothing: every kind of
    damage is listed, none is fatal. Segment record counts include records whose
    payload does not decode; variant counts and timestamps come from those that do.
    """
    segments, checkpoints, anomalies, restarts, damage = [], [], [], [], []
    top_level = dict.fromkeys(VARIANT_NAMES, 0)
    in_batches = dict.fromkeys(VARIANT_NAMES, 0)
    open_txns: list[int] = []  # in begin order
    committed = aborted = 0
    prev_seq = None
    first = None  # the log's first record
    looked = [0]  # payloads looked at for bincode 1.3: the first 8 not clean bincode 2

    def older(payload: bytes) -> str | None:
        if looked[0] >= 8:
            return None
        looked[0] += 1
        return (f"it is a whole entry of {bincode1.OLDER_FORMAT}"
                if bincode1.is_bincode1(payload) else None)

    # One segment in memory at a time: scan_wal would hold the whole log.
    for segment in list_segments(wal_dir):
        scan = scan_segment(segment.path)
        name = scan.path.name
        if scan.bad_header is not None:
            damage.append(
                _damage("bad_header", name, scan.bad_header.offset, what=scan.bad_header.what)
            )
        stamps, seqs = [], []
        for rec in scan.records:
            if rec.seq == 0 and not rec.payload:  # 12 zero bytes: no seq the writer gave
                last = damage[-1] if damage else None
                if (last and last["kind"] == "zero_filled" and last["file"] == name
                        and last["offset"] + last["bytes"] == rec.offset):
                    last["records"] += 1
                    last["bytes"] += 12
                    last["what"] = describe_zeros(last["offset"], last["records"])
                else:
                    damage.append({**_damage("zero_filled", name, rec.offset, 0, 12,
                                             describe_zeros(rec.offset, 1)), "records": 1})
                continue
            seqs.append(rec.seq)
            if prev_seq is not None and rec.seq != prev_seq + 1:
                restarts.append(
                    {"file": name, "offset": rec.offset, "from": prev_seq, "to": rec.seq}
                )
            prev_seq = rec.seq
            at = {"file": name, "offset": rec.offset, "seq": rec.seq}
            first = first or at
            try:
                entry, used = decode_entry(rec.payload)
            except PayloadError as err:
                note = older(rec.payload)
                damage.append(_damage("undecodable", name, rec.offset, rec.seq,
                                      what=str(err) + ("" if note is None else f"; {note}")))
                continue
            if used < len(rec.payload):
                damage.append(_damage("trailing_bytes", name, rec.offset, rec.seq,
                                      len(rec.payload) - used, older(rec.payload)))
            top_level[VARIANT_NAMES[entry.variant]] += 1
            stamps.append(entry.timestamp)
            if isinstance(entry, Batch):
                for nested in _nested_entries(entry):
                    in_batches[VARIANT_NAMES[nested.variant]] += 1
            elif isinstance(entry, Checkpoint):
                checkpoints.append(
                    {**at, "sequence_number": entry.sequence_number, "timestamp": entry.timestamp}
                )
            elif isinstance(entry, BeginTransaction | CommitTransaction | AbortTransaction):
                # The SPEC's transaction rules (section 3), markers nested in batches aside.
                txn = entry.transaction_id
                what = None
                if isinstance(entry, BeginTransaction):
                    if txn in open_txns:
                        what = "begin of an open transaction"
                    else:
                        open_txns.append(txn)
                elif txn not in open_txns:
                    kind = "commit" if isinstance(entry, CommitTransaction) else "abort"
                    what = f"{kind} of a transaction that is not open"
                else:
                    open_txns.remove(txn)
                    if isinstance(entry, CommitTransaction):
                        committed += 1
                    else:
                        aborted += 1
                if what is not None:
                    anomalies.append({**at, "transaction_id": txn, "what": what})
        if scan.torn_tail is not None:
            tail = scan.torn_tail
            damage.append(_damage("torn_tail", name, tail.offset, nbytes=tail.lost))
        segments.append(
            {
                "name": name,
                "size": scan.size,
                "created": scan.created,
                "records": len(scan.records),
                # Zero-filled records carry no seq the writer gave.
                "first_seq": seqs[0] if seqs else None,
                "last_seq": seqs[-1] if seqs else None,
                "min_timestamp": min(stamps, default=None),
                "max_timestamp": max(stamps, default=None),
                "extra_headers": len(scan.extra_headers),
            }
        )
    return {
        "wal_dir": str(wal_dir),
        "totals": {
            "segments": len(segments),
            "bytes": sum(seg["size"] for seg in segments),
            "records": sum(seg["records"] for seg in segments),
        },
        "segments": segments,
        "records_by_variant": top_level,
        "batch_entries_by_variant": in_batches,
        "checkpoints": checkpoints,
        "transactions": {
            "committed": committed,
            "aborted": aborted,
            "open_at_end": open_txns,
            "anomalies": anomalies,
        },
        "seq_restarts": restarts,
        "damage": damage,
        "history": _history(first, wal_dir),
        "not_read": stats.not_read(wal_dir),
    }


def _history(first, wal_dir) -> dict:
    # SPEC section 4, and the marker gpu-pitr expire leaves (docs/damage.md): read here
    # as plain JSON, not through gpu_pitr.expire.
    marker = Path(wal_dir) / ".gpu-pitr-expired"
    expired_before = problem = None
    if marker.exists():
        try:
            doc = json.loads(marker.read_bytes())
            expired_before = doc["first_kept"]
            assert doc["format"] == "gpu-pitr expire" and isinstance(expired_before, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            expired_before = None
            problem = ("not a marker gpu-pitr expire wrote (restore it, or delete it only if "
                       "no expire ever ran here)")
    starts_at_0 = first is None or first["seq"] == 0
    return {"complete": starts_at_0 and expired_before is None and problem is None,
            "first_record": first, "expired_before": expired_before,
            "expire_marker_problem": problem}


def _damage(kind, file, offset, seq=None, nbytes=None, what=None) -> dict:
    return {"kind": kind, "file": file, "offset": offset, "seq": seq, "bytes": nbytes, "what": what}


def _nested_entries(batch: Batch) -> Iterator:
    """Every entry inside ``batch``, nested batches walked too (with a stack: depth is free)."""
    stack = [iter(batch.entries)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if isinstance(entry, Batch):
            stack.append(iter(entry.entries))


def assert_same_stats(wal_dir, chunks=(None, 97)) -> dict:
    """The compiled ``gpu_pitr.format.stats.wal_stats``, at each piece size of ``chunks``
    (None: the default), equals ``wal_stats`` here: the document, its JSON text and the
    printed table. Returns the reference document."""
    import json

    ref = wal_stats(wal_dir)
    for chunk in chunks:
        got = stats.wal_stats(wal_dir, chunk_bytes=chunk)
        assert got == ref, (wal_dir, chunk, {k: (got.get(k), ref[k]) for k in ref
                                             if got.get(k) != ref[k]})
        assert json.dumps(got, indent=2) == json.dumps(ref, indent=2), (wal_dir, chunk)
        assert stats.stats_lines(got) == stats.stats_lines(ref), (wal_dir, chunk)
    return ref


#: What the reference gives of a damage item (``wal_records`` gives the rest).
DAMAGE_KEYS = ("file", "offset", "seq", "damage", "records")


def comparable(items) -> list[dict]:
    """``dump.wal_transactions``' items as the reference gives them: rows whole; damage
    items by their place, kind and zero-run length."""
    return [doc if "damage" not in doc else {k: doc[k] for k in DAMAGE_KEYS if k in doc}
            for doc in items]


def wal_transactions(wal_dir: str | os.PathLike) -> list[dict]:
    """What ``gpu_pitr.format.dump.wal_transactions`` lists, unfiltered: the pure-Python
    reader and codec, SPEC section 3's rules applied record by record, every row kept in
    memory and put in order at the end.

    A row per Begin that opens its id and per marker that is an anomaly, placed at the
    record that ends it (its Commit or Abort; an anomaly at its own record), those open
    at the end after everything, oldest first; damage items (``file``, ``offset``,
    ``seq``, ``damage``, and ``records`` of a zero-filled run) at their place. Data
    records count for the transaction begun most recently of those open; a batch's
    Inserts, Updates and Deletes at every depth."""
    items: list[dict] = []  # in log order: each appended at the record that decides it
    open_rows: list[dict] = []  # begin order
    damage_seen = 0

    def damage(item: dict) -> None:
        nonlocal damage_seen
        damage_seen += 1
        items.append(item)

    for scan in scan_wal_segments(wal_dir):
        name = scan.path.name
        if scan.bad_header is not None:
            damage({"file": name, "offset": scan.bad_header.offset, "seq": None,
                       "damage": "bad_header"})
        for rec in scan.records:
            if rec.seq == 0 and not rec.payload:  # 12 zero bytes: one run, back to back
                last = items[-1] if items else None
                if (last is not None and last.get("damage") == "zero_filled"
                        and last["file"] == name
                        and last["offset"] + 12 * last["records"] == rec.offset):
                    last["records"] += 1
                else:
                    damage({"file": name, "offset": rec.offset, "seq": 0,
                               "damage": "zero_filled", "records": 1})
                continue
            try:
                entry, _ = decode_entry(rec.payload)
            except PayloadError:
                damage({"file": name, "offset": rec.offset, "seq": rec.seq,
                           "damage": "undecodable"})
                continue
            at = {"file": name, "offset": rec.offset, "seq": rec.seq,
                  "timestamp": entry.timestamp}
            if isinstance(entry, Checkpoint):
                continue
            if isinstance(entry, BeginTransaction | CommitTransaction | AbortTransaction):
                txn = entry.transaction_id
                mine = [r for r in open_rows if r["transaction"] == txn]
                row = None
                if isinstance(entry, BeginTransaction):
                    if mine:
                        row = _txn_row(txn, "anomaly", at, None,
                                       what="begin of an open transaction",
                                       open_since=mine[0]["begin"])
                    else:
                        opened = _txn_row(txn, "open", at, None)
                        opened["damage_inside"] = damage_seen
                        open_rows.append(opened)
                elif not mine:
                    word = "commit" if isinstance(entry, CommitTransaction) else "abort"
                    row = _txn_row(txn, "anomaly", None, at,
                                   what=f"{word} of a transaction that is not open")
                else:
                    row = mine[0]
                    open_rows.remove(row)
                    row["outcome"] = ("committed" if isinstance(entry, CommitTransaction)
                                      else "aborted")
                    row["end"] = at
                    row["damage_inside"] = damage_seen - row["damage_inside"]
                if row is not None:
                    items.append(row)
                continue
            if open_rows:  # a data record: the newest open transaction's
                row = open_rows[-1]
                row["records"] += 1
                for e in _nested_entries(entry) if isinstance(entry, Batch) else [entry]:
                    kind = type(e).__name__
                    if kind in ("Insert", "Update", "Delete"):
                        row[kind.lower() + "s"] += 1
        if scan.torn_tail is not None:
            damage({"file": name, "offset": scan.torn_tail.offset, "seq": None,
                       "damage": "torn_tail"})
    for row in open_rows:
        row["damage_inside"] = damage_seen - row["damage_inside"]
    return items + open_rows


def _txn_row(txn, outcome, begin, end, **more) -> dict:
    return {"transaction": txn, "outcome": outcome, **more, "begin": begin, "end": end,
            "records": 0, "inserts": 0, "updates": 0, "deletes": 0, "damage_inside": 0}


def scan_wal_segments(wal_dir):
    """The segments of ``wal_dir`` scanned one at a time, in log order."""
    for segment in list_segments(wal_dir):
        yield scan_segment(segment.path)


def id_history(wal_dir: str | os.PathLike, ids) -> list[dict]:
    """What ``gpu_pitr.format.dump.wal_records(wal_dir, id=ids)`` lists, from the
    pure-Python reader and codec: each decodable data record that is an Insert, Update
    or Delete of one of ``ids`` (text, compared as text: exact code points, so exact
    UTF-8 bytes) or a Batch with an entry of one at any depth, in log order, as
    ``{file, offset, seq, variant, transaction, transaction_outcome}`` (the SPEC section
    3 transaction it belongs to: the one begun most recently of those open, or None;
    and how that use of the id ended: ``{outcome, end}``, ``committed`` or ``aborted``
    with the place and stamp of the Commit or Abort that closed it, or ``open`` at the
    end of the log with ``end`` None; None outside a transaction) and, for a batch,
    ``id_entries``: the indices of the id's entries among its entries flattened (a
    nested batch before its own entries). Damage is never listed. Every record held,
    the outcomes filled in at the end: slow on purpose."""
    wanted = set(ids)
    out = []
    ends: dict[tuple, dict] = {}  # a transaction's Begin's place -> how it ended
    for scan, rec, entry, owner, use in _decoded_uses(wal_dir):
        at = {"file": scan.path.name, "offset": rec.offset, "seq": rec.seq,
              "timestamp": entry.timestamp}
        if isinstance(entry, CommitTransaction | AbortTransaction):
            if use is not None:  # (the Begin it closes; None: an anomaly)
                ends[use] = {"outcome": "committed" if isinstance(entry, CommitTransaction)
                             else "aborted", "end": at}
            continue
        if isinstance(entry, BeginTransaction | Checkpoint):
            continue
        doc = {"file": scan.path.name, "offset": rec.offset, "seq": rec.seq,
               "variant": type(entry).__name__, "transaction": owner,
               "transaction_outcome": use}
        if isinstance(entry, Batch):
            doc["id_entries"] = [k for k, e in enumerate(_nested_entries(entry))
                                 if getattr(e, "id", None) in wanted]
            if doc["id_entries"]:
                out.append(doc)
        elif entry.id in wanted:
            out.append(doc)
    for doc in out:
        use = doc["transaction_outcome"]
        if use is not None:
            doc["transaction_outcome"] = ends.get(use, {"outcome": "open", "end": None})
    return out


def decoded_records(wal_dir: str | os.PathLike) -> Iterator[tuple]:
    """``(scan, record, entry, transaction)`` for each record of ``wal_dir`` that
    decodes, in log order, from the pure-Python reader and codec; ``transaction``: for
    a data record, the one it belongs to by SPEC section 3's rule (the one begun most
    recently of those open; a Begin of an open id or an end of one that is not open
    changes nothing), else None."""
    for scan, rec, entry, owner, _ in _decoded_uses(wal_dir):
        yield scan, rec, entry, owner


def _decoded_uses(wal_dir: str | os.PathLike) -> Iterator[tuple]:
    """``decoded_records``' tuples and, last, which use of a transaction id is meant
    (ids repeat): its Begin's ``(file, offset)``, for a data record the one it belongs
    to, for a Commit or an Abort the one it closes; else None."""
    open_txns: list[tuple[int, tuple]] = []  # (id, its Begin's place), begin order
    for scan in scan_wal_segments(wal_dir):
        for rec in scan.records:
            try:
                entry, _ = decode_entry(rec.payload)  # (12 zero bytes do not decode)
            except PayloadError:
                continue
            owner = use = None
            if isinstance(entry, BeginTransaction):
                if entry.transaction_id not in [t for t, _ in open_txns]:
                    open_txns.append((entry.transaction_id, (scan.path.name, rec.offset)))
            elif isinstance(entry, CommitTransaction | AbortTransaction):
                for k, (txn, begin) in enumerate(open_txns):
                    if txn == entry.transaction_id:
                        use = begin
                        del open_txns[k]
                        break
            elif not isinstance(entry, Checkpoint) and open_txns:
                owner, use = open_txns[-1]
            yield scan, rec, entry, owner, use


def id_history_of(items) -> list[dict]:
    """``wal_records``' items in ``id_history``'s shape."""
    out = []
    for doc in items:
        assert "damage" not in doc, doc
        got = {k: doc[k] for k in ("file", "offset", "seq", "variant")}
        got["transaction"] = doc.get("transaction")
        got["transaction_outcome"] = doc.get("transaction_outcome")
        assert (got["transaction"] is None) == (got["transaction_outcome"] is None), doc
        if doc["variant"] == "Batch":
            got["id_entries"] = doc["id_entries"]
        out.append(got)
    return out


def some_ids(wal_dir: str | os.PathLike, most: int = 3) -> list[list[str]]:
    """Id lists to filter by: each of the first ``most`` ids the log's decodable records
    name (at any depth) alone, then all of them with one no record names."""
    seen: dict[str, None] = {}
    for scan in scan_wal_segments(wal_dir):
        for rec in scan.records:
            try:
                entry, _ = decode_entry(rec.payload)
            except PayloadError:
                continue
            nested = _nested_entries(entry) if isinstance(entry, Batch) else [entry]
            for e in nested:
                if getattr(e, "id", None) is not None and len(seen) < most:
                    seen.setdefault(e.id)
    return [[i] for i in seen] + [[*seen, "\x00no such id\x00"]]
