"""The ``gpu-pitr`` command line: ``restore`` a WAL directory to an ``.npz``, ``inspect`` one.

Data errors exit 1 with one line on stderr; usage errors exit 2 (argparse).
Nothing is ever written into the WAL directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gpu_pitr.errors import WalError
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

PROG = "gpu-pitr"
U64_MAX = 2**64 - 1


def time_target(text: str) -> float:
    """``--to-time`` in Unix seconds: an integer, or ISO-8601 with a zone (may be fractional)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        seconds: float = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither Unix seconds nor an ISO-8601 time"
            ) from None
        if when.tzinfo is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} has no time zone; add one, e.g. {text}Z or {text}+01:00"
            )
        seconds = when.timestamp()
    if not 0 <= seconds <= U64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the WAL's timestamp range")
    return seconds


def whole_seconds(seconds: float, *, exclusive: bool) -> int:
    """The whole second that selects the same commit points as ``seconds``.

    WAL timestamps are whole seconds: ``ts > T`` is ``ts > floor(T)``, and
    ``ts >= T`` (``exclusive``) is ``ts >= ceil(T)``.
    """
    return math.ceil(seconds) if exclusive else math.floor(seconds)


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number (0 to 2**64-1)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Point-in-time restore of oxirs-vec write-ahead logs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    restore = commands.add_parser(
        "restore",
        help="restore a WAL directory to a point in time, into an .npz file",
        description="Restore WAL_DIR to a point in time and write the index to OUT.npz "
        "(arrays ids, vectors, metadata, report; loadable with allow_pickle=False).",
    )
    restore.add_argument("wal_dir", metavar="WAL_DIR")
    restore.add_argument("--out", required=True, metavar="OUT.npz", help="output file")
    target = restore.add_mutually_exclusive_group()
    target.add_argument(
        "--to-time",
        metavar="T",
        type=time_target,
        help="Unix seconds, or ISO-8601 with a zone (2026-11-26T10:02:00Z, ...+01:00)",
    )
    target.add_argument("--to-seq", metavar="N", type=_seq, help="stop at the record with seq N")
    target.add_argument("--latest", action="store_true", help="apply everything (the default)")
    restore.add_argument(
        "--exclusive",
        action="store_true",
        help="with --to-time: also leave out commit points stamped exactly T",
    )
    restore.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto")
    restore.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip undecodable records and unreadable segments (each one is reported)",
    )
    restore.add_argument(
        "--allow-incomplete-history",
        action="store_true",
        help="accept a log whose first record is not seq 0",
    )

    inspect = commands.add_parser(
        "inspect",
        help="statistics and damage of a WAL directory (read-only, always exits 0)",
        description="Per-segment statistics, record counts, checkpoints, transactions, "
        "sequence-number restarts and damage of WAL_DIR.",
    )
    inspect.add_argument("wal_dir", metavar="WAL_DIR")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``gpu-pitr``; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "restore":
            return _restore(parser, args)
        return _inspect(args)
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly, like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (WalError, OSError) as err:
        message = " ".join(str(err).splitlines())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


def _restore(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    to_time = None
    if args.to_time is not None:
        to_time = whole_seconds(args.to_time, exclusive=args.exclusive)
    out = Path(args.out)
    # The directory resolved, the name not: OUT may be a symlink, which is replaced, not followed.
    wal_dir = Path(os.path.realpath(args.wal_dir))
    out_real = Path(os.path.realpath(out.parent)) / out.name
    if out_real == wal_dir or wal_dir in out_real.parents:
        parser.error(f"argument --out: {out} is inside WAL_DIR; nothing is ever written there")
    if not wal_dir.is_dir():
        raise NotADirectoryError(f"{args.wal_dir}: not a directory")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory for --out")
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a directory")

    import gpu_pitr

    # Created before the restore so that an unwritable OUT directory fails at once.
    with _atomic_file(out) as tmp:
        index = gpu_pitr.restore(
            args.wal_dir,
            to_time=to_time,
            to_seq=args.to_seq,
            exclusive=args.exclusive,
            backend=args.backend,
            skip_corrupt=args.skip_corrupt,
            allow_incomplete_history=args.allow_incomplete_history,
        ).to_host()
        report = index.report.to_dict()
        np.savez(
            tmp,
            ids=np.asarray(index.ids, dtype=np.str_),
            vectors=np.asarray(index.vectors, dtype=np.float32),
            metadata=np.asarray(index.metadata_json(), dtype=np.str_),
            report=np.array(json.dumps(report)),
        )
    print("\n".join(restore_summary(report, out)))
    return 0


def restore_summary(report: dict, out: Path) -> list[str]:
    """A few lines for a person: what was restored, where it stopped, what was counted."""
    target, stop, txns = report["target"], report["stop"], report["transactions"]
    seconds = report["timings"].get("total", 0.0)
    lines = [
        f"restored {report['ids']} ids, dim {report['dim'] or 0} -> {out} "
        f"(backend {report['backend']}, {seconds:.3f} s)"
    ]
    if target["kind"] == "time":
        exclusive = ", exclusive" if target["exclusive"] else ""
        lines.append(f"target: time {_when(target['value'])}{exclusive}")
    elif target["kind"] == "seq":
        lines.append(f"target: seq {target['value']}")
    else:
        lines.append("target: latest")
    if stop["reason"] == "end_of_log":
        lines.append("stopped: at the end of the log")
    else:
        where = f"{Path(stop['file']).name}: offset {stop['offset']}: seq {stop['seq']}"
        stamp = "" if stop.get("timestamp") is None else f" at {_when(stop['timestamp'])}"
        record = stop.get("record") or "record"
        # A time target stops before its record; a seq target stops after it.
        how = "before" if target["kind"] == "time" else "after"
        lines.append(f"stopped: {how} {record} {where}{stamp}")
    lines += [
        f"read {report['records_read']} records, {report['bytes_read']} bytes, "
        f"{report['segments']} segments; applied {report['commit_points_applied']} commit "
        f"points: {report['inserts']} inserts, {report['updates']} updates, "
        f"{report['deletes']} deletes",
        f"transactions: {txns['committed']} committed, {txns['aborted']} aborted, "
        f"{txns['in_flight_discarded']} discarded in flight; "
        f"{len(report['anomalies'])} anomalies",
        f"damage: {len(report['torn_tails'])} torn tails, {len(report['skipped'])} skipped, "
        f"{len(report['damage_after_stop'])} after the stop point, "
        f"{len(report['trailing_bytes'])} with trailing bytes",
    ]
    if report.get("message"):
        lines.append(report["message"])
    return lines


@contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A new temp file beside ``dest``; fsynced and renamed onto ``dest`` if the block succeeds.

    On any failure the temp file is removed and an existing ``dest`` is left as it was.
    """
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    # os.open, not mkstemp: the result gets the umask's permissions, like any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    # One segment in memory at a time: scan_wal would hold the whole log.
    for segment in list_segments(wal_dir):
        scan = scan_segment(segment.path)
        name = scan.path.name
        if scan.bad_header is not None:
            damage.append(
                _damage("bad_header", name, scan.bad_header.offset, what=scan.bad_header.what)
            )
        stamps = []
        for rec in scan.records:
            if prev_seq is not None and rec.seq != prev_seq + 1:
                restarts.append(
                    {"file": name, "offset": rec.offset, "from": prev_seq, "to": rec.seq}
                )
            prev_seq = rec.seq
            try:
                entry, used = decode_entry(rec.payload)
            except PayloadError as err:
                damage.append(_damage("undecodable", name, rec.offset, rec.seq, what=str(err)))
                continue
            if used < len(rec.payload):
                damage.append(
                    _damage("trailing_bytes", name, rec.offset, rec.seq, len(rec.payload) - used)
                )
            top_level[VARIANT_NAMES[entry.variant]] += 1
            stamps.append(entry.timestamp)
            if isinstance(entry, Batch):
                for nested in _nested_entries(entry):
                    in_batches[VARIANT_NAMES[nested.variant]] += 1
            elif isinstance(entry, Checkpoint):
                checkpoints.append(
                    {
                        "file": name,
                        "offset": rec.offset,
                        "seq": rec.seq,
                        "sequence_number": entry.sequence_number,
                        "timestamp": entry.timestamp,
                    }
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
                    anomalies.append(
                        {
                            "file": name,
                            "offset": rec.offset,
                            "seq": rec.seq,
                            "transaction_id": txn,
                            "what": what,
                        }
                    )
        if scan.torn_tail is not None:
            tail = scan.torn_tail
            damage.append(_damage("torn_tail", name, tail.offset, nbytes=tail.lost))
        segments.append(
            {
                "name": name,
                "size": scan.size,
                "created": scan.created,
                "records": len(scan.records),
                "first_seq": scan.records[0].seq if scan.records else None,
                "last_seq": scan.records[-1].seq if scan.records else None,
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
    }


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


def stats_lines(stats: dict) -> list[str]:
    """``wal_stats`` as the human table ``inspect`` prints."""
    totals = stats["totals"]
    lines = [
        f"WAL directory {stats['wal_dir']}: {totals['segments']} segments, "
        f"{totals['bytes']} bytes, {totals['records']} records",
        "",
        f"{'segment':<25} {'bytes':>10}  {'created':<20} {'records':>8}  {'seq':<13} timestamps",
    ]
    for seg in stats["segments"]:
        seqs = "-" if seg["first_seq"] is None else f"{seg['first_seq']}..{seg['last_seq']}"
        stamps = "-"
        if seg["min_timestamp"] is not None:
            stamps = f"{_when(seg['min_timestamp'])}..{_when(seg['max_timestamp'])}"
        created = "-" if seg["created"] is None else _when(seg["created"])
        extra = f"  (+{seg['extra_headers']} headers)" if seg["extra_headers"] else ""
        lines.append(
            f"{seg['name']:<25} {seg['size']:>10}  {created:<20} {seg['records']:>8}  "
            f"{seqs:<13} {stamps}{extra}"
        )
    lines += ["", f"{'variant':<20} {'records':>8} {'in batches':>11}"]
    for variant, count in stats["records_by_variant"].items():
        lines.append(f"{variant:<20} {count:>8} {stats['batch_entries_by_variant'][variant]:>11}")

    lines += ["", f"checkpoints: {len(stats['checkpoints'])}"]
    lines += [
        f"  {_where(c)}: sequence_number {c['sequence_number']} at {_when(c['timestamp'])}"
        for c in stats["checkpoints"]
    ]
    txns = stats["transactions"]
    still_open = ", ".join(map(str, txns["open_at_end"]))
    lines += [
        "",
        f"transactions: {txns['committed']} committed, {txns['aborted']} aborted, "
        f"{len(txns['open_at_end'])} open at end" + (f" ({still_open})" if still_open else ""),
    ]
    lines += [
        f"  anomaly: {_where(a)}: {a['what']} (id {a['transaction_id']})" for a in txns["anomalies"]
    ]
    lines += ["", f"sequence-number restarts: {len(stats['seq_restarts'])}"]
    lines += [f"  {_where(r)}: {r['from']} -> {r['to']}" for r in stats["seq_restarts"]]
    lines += ["", f"damage: {len(stats['damage'])}"]
    for d in stats["damage"]:
        what = {
            "bad_header": f"bad header: {d['what']}",
            "undecodable": f"undecodable: {d['what']}",
            "trailing_bytes": f"{d['bytes']} trailing bytes after the payload",
            "torn_tail": f"torn tail, {d['bytes']} bytes lost",
        }[d["kind"]]
        lines.append(f"  {_where(d)}: {what}")
    return lines


def _where(item: dict) -> str:
    seq = item.get("seq")
    return f"{item['file']}: offset {item['offset']}" + ("" if seq is None else f": seq {seq}")


def _when(seconds: int) -> str:
    """ISO-8601 UTC for a WAL timestamp, or the raw number where it is out of range."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def _inspect(args: argparse.Namespace) -> int:
    stats = wal_stats(args.wal_dir)
    print(json.dumps(stats, indent=2) if args.json else "\n".join(stats_lines(stats)))
    return 0
