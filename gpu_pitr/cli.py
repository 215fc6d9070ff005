"""The ``gpu-pitr`` command line: ``restore`` a WAL directory to an ``.npz``, ``inspect`` one.

Data errors exit 1 with one line on stderr; usage errors exit 2 (argparse).
Nothing is ever written into the WAL directory.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gpu_pitr.errors import WalError
from gpu_pitr.format.stats import stats_lines, utc_text, wal_stats

PROG = "gpu-pitr"
U64_MAX = 2**64 - 1


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
        to_time = _time_target(parser, args.to_time, args.exclusive)
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
        lossy = index.ids_ending_in_nul()
        if lossy:
            # NumPy's unicode arrays drop trailing NULs: two ids would become one.
            raise WalError(f"id {lossy[0]!r} ends with a NUL character, which the .npz "
                           f"ids array cannot hold ({len(lossy)} such ids)", file=str(out))
        np.savez(
            tmp,
            ids=np.asarray(index.ids, dtype=np.str_),
            vectors=np.asarray(index.vectors, dtype=np.float32),
            metadata=np.asarray(index.metadata_json(), dtype=np.str_),
            report=np.array(json.dumps(report)),
        )
    print("\n".join(restore_summary(report, out)))
    return 0


def _time_target(parser: argparse.ArgumentParser, text: str, exclusive: bool) -> int:
    """``--to-time`` as whole Unix seconds (``parse_time``); a usage error if it is not one."""
    from gpu_pitr.pipeline import parse_time  # with Numba: not imported for ``inspect``

    try:
        seconds = parse_time(text, exclusive)
    except ValueError as err:
        parser.error(f"argument --to-time: {err}")
    if not 0 <= seconds <= U64_MAX:
        parser.error(f"argument --to-time: {text!r} is outside the WAL's timestamp range")
    return seconds


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
        lines.append(f"target: time {utc_text(target['value'])}{exclusive}")
    elif target["kind"] == "seq":
        lines.append(f"target: seq {target['value']}")
    else:
        lines.append("target: latest")
    if stop["reason"] == "end_of_log":
        lines.append("stopped: at the end of the log")
    else:
        where = f"{Path(stop['file']).name}: offset {stop['offset']}: seq {stop['seq']}"
        stamp = "" if stop.get("timestamp") is None else f" at {utc_text(stop['timestamp'])}"
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


def _inspect(args: argparse.Namespace) -> int:
    stats = wal_stats(args.wal_dir)
    print(json.dumps(stats, indent=2) if args.json else "\n".join(stats_lines(stats)))
    return 0
