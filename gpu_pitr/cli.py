"""The ``gpu-pitr`` command line: ``restore`` a WAL directory (to an ``.npz``, ``.parquet``,
FAISS index or snapshot), ``snapshot`` it, ``inspect`` or ``verify`` it (or a
snapshot), ``diff`` two restored indexes, ``archive`` its segments, ``expire`` the
snapshots and archived segments that the retention no longer needs.

Data errors exit 1 with one line on stderr (2 for ``verify`` and ``diff``, whose 1 is
their finding); usage errors exit 2 (argparse); an
interrupt (SIGINT, SIGTERM) exits 128 + the signal's number with one line, after
removing the outputs not yet in place. Nothing is ever written into the WAL directory.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

from gpu_pitr import __version__, environment, interrupts
from gpu_pitr.errors import MissingExtraError, WalError, os_reason
from gpu_pitr.format.segments import in_progress, not_a_directory
from gpu_pitr.format.stats import plural, stats_lines, utc_text, wal_stats
from gpu_pitr.format.times import U64_MAX
from gpu_pitr.outputs import (
    FORMATS,
    SUFFIXES,
    check_output,
    check_writable,
    inside,
    output_files,
    output_format,
    write_json,
    write_output,
)
from gpu_pitr.progress import progress_bar

PROG = "gpu-pitr"
#: The ids of transactions open at a restore's stop named on its summary line, at most.
_OPEN_IDS_SHOWN = 5


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number (0 to 2**64-1)")
    return int(text)


def _transaction_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a transaction id (0 to 2**64-1)")
    return int(text)


def _record_id(text: str) -> str:
    """``inspect --id``: an id is UTF-8 text in the log; an argument that is not (bytes
    that are not UTF-8, which Python gives as lone surrogates) can match no record."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not UTF-8 text: no id in a log is this") from None
    return text


def _position(text: str) -> str:
    """``--to-position FILE:OFFSET``: checked for its form here (a usage error); for a
    record there by the restore, which has the log."""
    from gpu_pitr.pipeline import parse_position

    try:
        parse_position(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("to_position: ")
                                         .replace("to_position is ", "a position is ")) from None
    return text


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0, 1, 2, ...)")
    return int(text)


def _keep(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: keep at least 1 snapshot (1, 2, 3, ...)")
    return int(text)


def _shards(text: str) -> int:
    from gpu_pitr.resolve.idshard import MAX_SHARDS

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of shards (1 to "
                                         f"{MAX_SHARDS})")
    return int(text)


def _out_path(text: str) -> str:
    # Path("") is the current directory: an unset variable (--out "$OUT") would have
    # written a snapshot over the directory the command ran in.
    if not text:
        raise argparse.ArgumentTypeError("an empty path (not taken for the current "
                                         "directory: say '.' for that)")
    return text


def _size(text: str) -> int:
    from gpu_pitr.budget import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its subparsers too), except that ``--help`` or ``--version``
    text that stdout cannot take (``> /dev/full``) is an error naming stdout, exit 1, as
    for a command's report: argparse drops the OSError, and exited 0 without a word."""

    def _print_message(self, message: str, file=None) -> None:
        if not message:
            return
        file = file or sys.stderr
        try:
            file.write(message)
            file.flush()
        except BrokenPipeError:  # (| head: quietly, as a command's report)
            if file is sys.stdout:
                _stdout_gone()
        except AttributeError:  # (no stream at all: started with stderr closed, 2>&-)
            return
        except OSError as err:
            if file is not sys.stdout:
                return  # (nowhere left to say it)
            _stdout_gone()
            self.exit(1, f"{PROG}: error: stdout: cannot write: {os_reason(err)}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Point-in-time restore of oxirs-vec write-ahead logs."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    restore = commands.add_parser(
        "restore",
        help="restore a WAL directory to a point in time, into .npz, .parquet, FAISS or a "
        "snapshot",
        description="Restore WAL_DIR to a point in time and write the index to OUT: an .npz "
        "(arrays ids, vectors, metadata, report; loadable with allow_pickle=False), a "
        ".parquet table, a FAISS index (+ OUT.ids.jsonl) or a snapshot directory. "
        "Exit status 0: restored (warnings, if any, on stderr); 1: a data error (one line "
        "naming the file and byte offset); 2: usage error; 128 + N: stopped by signal N.",
    )
    restore.add_argument("wal_dir", metavar="WAL_DIR")
    restore.add_argument(
        "--out", required=True, metavar="OUT", type=_out_path,
        help="output: OUT.npz, OUT.parquet, OUT.faiss, or a directory (OUT/) for a snapshot",
    )
    restore.add_argument(
        "--format", choices=FORMATS,
        help="output format (default: from OUT's suffix; a directory is a snapshot)",
    )
    _restore_options(restore)
    restore.add_argument(
        "--write-on-workers", action="store_true",
        help="with --dask-scheduler: each worker writes its shards into OUT, a directory "
        "(a Parquet dataset: a file a shard, and the report), at the same path on every "
        "worker; the index never passes through this process",
    )

    snap = commands.add_parser(
        "snapshot",
        help="write the state at a point in time as a snapshot directory (a restore base)",
        description="Restore WAL_DIR to a point in time and write it as a snapshot directory "
        "(docs/snapshot-format.md): later restores start from it with --base or --snapshots "
        "and read only the log after it. Written atomically. Exit status as for restore.",
    )
    snap.add_argument("wal_dir", metavar="WAL_DIR")
    snap.add_argument("--out", required=True, metavar="SNAP_DIR", type=_out_path,
                      help="snapshot directory")
    snap.set_defaults(format="snapshot")
    _restore_options(snap)

    inspect = commands.add_parser(
        "inspect",
        help="statistics and damage of a WAL directory, or its records or transactions "
        "one by one; what a snapshot, or a directory of them, holds (read-only; exits 0 "
        "whatever damage it finds)",
        description="Whether the history is complete, per-segment statistics, record "
        "counts, checkpoints, transactions, sequence-number restarts and damage of WAL_DIR; "
        "with --records, every record; with --transactions, one row per transaction. "
        "Given a snapshot directory: its manifest (ids, dimension, log position, files); "
        "given a directory of snapshots: one row each, oldest first; with --snapshots DIR: "
        "the restorable window of WAL_DIR and DIR's snapshots. Checksums are not "
        "checked (verify does). Exit 0 whatever damage it finds; 1: WAL_DIR cannot be "
        "read (one line naming it); 2: usage error.",
    )
    inspect.add_argument("wal_dir", metavar="WAL_DIR")
    inspect.add_argument("--json", action="store_true",
                         help="print one JSON document (with --records or --transactions: one "
                         "per line)")
    inspect.add_argument(
        "--snapshots", metavar="DIR",
        help="the restorable window of WAL_DIR (an archive) with the snapshots of DIR, as "
        "restore --snapshots DIR would use them (pgbackrest info): the earliest and latest "
        "moments a restore reaches, and for each snapshot whether a restore can start "
        "from it, the earliest --to-time it serves and the log after it, which such a "
        "restore reads; not with --records or --transactions")
    records = inspect.add_argument_group(
        "records", "list the records one by one, in log order, with the damage where it lies "
        "(pg_waldump): to find the record a bad ingest began with. Each option below "
        "implies --records, unless --transactions is given")
    records.add_argument("--records", action="store_true", help="list the records")
    records.add_argument(
        "--transactions", action="store_true",
        help="list the transactions instead, one each, in the order they end (those open "
        "at the end of the log last): id, outcome (committed, aborted, open at the end of "
        "the log, or an anomaly), where it begins and ends, its records, inserts, updates "
        "and deletes; the X to give restore --to-transaction. --since/--until keep those "
        "whose span overlaps the range, --transaction X the uses of id X, --limit N the "
        "first N; not with --records, --first-seq, --last-seq or --id")
    records.add_argument("--since", metavar="T",
                         help="records stamped at or after T (Unix seconds or ISO-8601)")
    records.add_argument("--until", metavar="T", help="records stamped at or before T")
    records.add_argument("--first-seq", type=_seq, metavar="N", help="records with seq >= N")
    records.add_argument("--last-seq", type=_seq, metavar="N", help="records with seq <= N")
    records.add_argument("--transaction", type=_transaction_id, metavar="X",
                         help="the records of transaction X: its begin, its commit or abort "
                         "and the records inside it (pg_waldump --xid)")
    records.add_argument("--id", type=_record_id, action="append", metavar="ID",
                         help="the history of id ID (pg_waldump --relation): its inserts, "
                         "updates and deletes, and the batches with an entry of it (only "
                         "its entries printed, and a count of the others), each one in a "
                         "transaction with how that ended (committed, and where; aborted or "
                         "open at the end of the log: discarded); matched by its exact "
                         "bytes; repeat for several ids (any of them); an id that begins "
                         "with '-': --id=-ID")
    records.add_argument("--limit", type=_count, metavar="N", help="stop after N items")

    verify = commands.add_parser(
        "verify",
        help="check a WAL directory, a snapshot or a directory of snapshots for damage "
        "without restoring (exit 1 if damaged)",
        description="Check every segment header, record and payload of WAL_DIR, sequence "
        "numbers and transactions, without restoring anything; one line per problem "
        "(damage or notice) and a summary. Given a snapshot directory: its manifest, every "
        "checksum, the Arrow data and the order of the ids; given a directory of "
        "snapshots: each one. Exit 0: no damage (notices allowed); 1: damage found; 2: "
        "usage error, WAL_DIR unreadable, out of memory, or stdout that cannot be written.",
    )
    verify.add_argument("wal_dir", metavar="WAL_DIR")
    _json_quiet(verify, "print nothing when no damage is found (notices, hints and the "
                "summary included); with damage, print as without it (for cron: output "
                "means trouble)")
    _accept_options(verify, "is a notice, not damage; one that matches none is a warning")

    diff = commands.add_parser(
        "diff",
        help="what differs between two restored states: ids only in A, only in B, and "
        "in both with other vector bits or metadata (exit 1 if any)",
        description="Compare two outputs of restores, each an .npz, a .parquet or a "
        "snapshot directory (a restore before a bad ingest and one after it): the ids "
        "only in A, the ids only in B, and the ids in both whose vector bits (NaN "
        "payloads and -0.0 count) or metadata differ, each sorted by UTF-8 bytes. Vectors "
        "of different lengths make every id in both changed (said in one line). Exit "
        "status as diff(1)'s: 0: the same; 1: different; 2: usage error, A or B "
        "unreadable or not an output a restore writes, out of memory, or stdout that "
        "cannot be written.",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true",
                      help="print one JSON document, with every id of each list unless "
                      "--limit is given")
    diff.add_argument("--limit", type=_count, metavar="N",
                      help="list the first N ids of each list (default: 10; with --json, "
                      "all); the counts count them all")

    arch = commands.add_parser(
        "archive",
        help="copy the segments of WAL_DIR that are new or have grown into an archive "
        "that keeps them after the writer deletes them",
        description="Copy into ARCHIVE_DIR every segment of WAL_DIR that is not there yet "
        "or has grown since the last run, each one atomically; never delete one. The "
        "writer keeps only its newest segments: run this more often than it rotates "
        "(from cron, a timer or after each checkpoint), then restore, inspect or verify "
        "ARCHIVE_DIR. A segment whose archived bytes differ from the file is a conflict: "
        "the archive's copy is kept. Exit 0: all copied; 1: a conflict, a segment that "
        "could not be read or was deleted before it was copied, segments the writer "
        "deleted before any run copied them, a copy that could not be written, a "
        "checksum file that cannot be used, or an error.",
    )
    arch.add_argument("wal_dir", metavar="WAL_DIR")
    arch.add_argument("--out", required=True, metavar="ARCHIVE_DIR", type=_out_path,
                      help="the archive directory (created if missing; not inside WAL_DIR)")
    _json_quiet(arch, "print nothing unless there is a problem")
    exp = commands.add_parser(
        "expire",
        help="delete the snapshots and archived segments that the retention no longer needs",
        description="Keep the newest N snapshots of SNAP_DIR (--keep N), or the ones needed "
        "to restore any moment from T on (--keep-since T); delete the older snapshots and "
        "the segments of ARCHIVE_DIR that come wholly before the oldest snapshot kept. "
        "Restores of ARCHIVE_DIR with --snapshots SNAP_DIR reach back to that snapshot. "
        "Only an archive made by gpu-pitr archive is touched, under its lock. The oldest "
        "snapshot kept is checked whole first (a damaged one is passed over) and must be of "
        "this archive's log; with fewer than N snapshots nothing is deleted. Exit 0: done, "
        "or nothing to do; 1: a deletion failed, or an error.",
    )
    exp.add_argument("archive_dir", metavar="ARCHIVE_DIR")
    exp.add_argument("--snapshots", required=True, metavar="SNAP_DIR",
                     help="the directory of this archive's snapshots")
    keep = exp.add_mutually_exclusive_group(required=True)
    keep.add_argument("--keep", type=_keep, metavar="N",
                      help="keep the newest N snapshots (at least 1)")
    keep.add_argument("--keep-since", metavar="T",
                      help="keep what restores any moment from T on (Unix seconds, ISO-8601 "
                      "with a zone, or an age: 7d, 12h, 30m, 90s, 2w = that long before now)")
    exp.add_argument("--dry-run", action="store_true",
                     help="delete nothing: print what would be deleted")
    _json_quiet(exp, "print nothing unless there is a problem or a damaged snapshot")
    for sub in commands.choices.values():  # usage errors found later print its usage
        sub.set_defaults(command_parser=sub)
    return parser


def _accept_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--accept`` and ``--accept-file`` (``verify`` and the restores): torn tails an
    operator reviewed after a crash, each ``FILE:OFFSET:BYTES`` as verify's hint gives."""
    p.add_argument(
        "--accept", action="append", default=[], metavar="FILE:OFFSET:BYTES",
        help="a torn tail reviewed after a crash (the argument verify's hint line gives): "
        f"that one torn tail, same file, offset and bytes lost, {what}. Repeatable")
    p.add_argument(
        "--accept-file", action="append", default=[], metavar="PATH",
        help="the --accept arguments of a file, one a line ('#' starts a comment)")


def _accepts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """The acknowledgements ``--accept`` and ``--accept-file`` give (usage errors for one
    that is not one, or a file that cannot be read)."""
    from gpu_pitr.verify import Accept, read_accepts

    accepts = []
    for text in args.accept:
        try:
            accepts.append(Accept.parse(text, "argument --accept"))
        except ValueError as err:
            parser.error(f"argument --accept: {err}")
    for path in args.accept_file:
        try:
            accepts += read_accepts(path)
        except ValueError as err:
            parser.error(f"argument --accept-file: {err}")
        except OSError as err:
            parser.error(f"argument --accept-file: {path}: {os_reason(err)}")
    return accepts


def _json_quiet(p: argparse.ArgumentParser, quiet_help: str) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def _restore_options(p: argparse.ArgumentParser) -> None:
    """What ``restore`` and ``snapshot`` share: target, executor, base, memory, output."""
    p.add_argument("-q", "--quiet", action="store_true",
                         help="no progress bar and no summary (errors and warnings still "
                         "print, on stderr)")
    p.add_argument("--report-json", metavar="PATH", type=_out_path,
                         help="also write the report as JSON to PATH")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument(
        "--chunk-size", metavar="SIZE", type=_size,
        help="bytes read per chunk, e.g. 64M (default: 16M on cpu, 128M on cuda)",
    )
    memory.add_argument(
        "--memory-budget", metavar="SIZE", type=_size,
        help="keep the restore's working memory, besides the index and the records of "
        "open transactions (held until they commit), within SIZE (picks the chunk size)",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--to-time",
        metavar="T",
        help="Unix seconds, or ISO-8601 with a zone (2026-11-26T10:02:00Z, ...+01:00)",
    )
    target.add_argument("--to-seq", metavar="N", type=_seq, help="stop at the record with seq N")
    target.add_argument(
        "--to-transaction", metavar="X", type=_transaction_id,
        help="stop just after the first CommitTransaction or AbortTransaction that ends "
        "transaction X (PostgreSQL's recovery_target_xid); an id a restarted writer used "
        "again is matched at its first use, with a warning (inspect --transactions lists "
        "each use: --to-position its end reaches a later one)")
    target.add_argument(
        "--to-position", metavar="FILE:OFFSET", type=_position,
        help="stop just after the record that starts at byte OFFSET of segment FILE, as "
        "`gpu-pitr inspect --records` and the begin:/end: lines of `inspect --transactions` "
        "print them (`wal-...log: offset N`, quoted, or wal-...log:N; FILE: the segment's "
        "name, or its path in "
        "WAL_DIR; PostgreSQL's recovery_target_lsn): the commit points complete at that "
        "record are applied, as with --to-seq, but a position names one record even where "
        "seqs repeat after a writer restart; an error if no whole record starts there")
    target.add_argument("--latest", action="store_true", help="apply everything (the default)")
    p.add_argument(
        "--exclusive",
        action="store_true",
        help="leave out the target itself: with --to-time, commit points stamped exactly "
        "T; with --to-seq, the record numbered N; with --to-transaction, the record that "
        "ends X; with --to-position, the record at FILE:OFFSET (stop just before it)",
    )
    p.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto",
                   help="the executor: cpu, cuda (an error where no GPU is usable) or auto "
                   "(the default: the GPU when CuPy sees one, else cpu)")
    p.add_argument(
        "--stop-reading-at-target",
        action="store_true",
        help="read the log only as far as the stop point (by default the rest is read "
        "too, and checked for damage): a target early in a long log, or just after a "
        "snapshot, is restored without reading what follows it; damage after it is not "
        "looked for",
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip undecodable records and unreadable segments (each one is reported)",
    )
    _accept_options(p, "is not warned of on stderr (the report still lists it); "
                    "verify checks the acknowledgements")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1, nothing written) where the target may not have been reached, "
        "as PostgreSQL's recovery does: the log ends before --to-time, records are "
        "missing inside the log (a jump in seq), no segment in WAL_DIR, or a base with "
        "no log after it; by default each is a warning",
    )
    p.add_argument(
        "--allow-incomplete-history",
        action="store_true",
        help="accept a gap in the history (a log whose first record is not seq 0, "
        "segments expire deleted, a base the log does not go on from), with a warning",
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--base", metavar="SNAP_DIR",
        help="start from this snapshot (gpu-pitr snapshot) and read only the log after it",
    )
    base.add_argument(
        "--snapshots", metavar="DIR",
        help="start from the newest intact snapshot in DIR at or before the target",
    )
    p.add_argument(
        "--dry-run", action="store_true",
        help="restore nothing and write nothing: say which snapshot the restore would start "
        "from (and which it would pass over, and why) and how much log it would read; "
        "--out is checked as for the restore. Exit 1 where the restore would be refused "
        "before reading the log (a base past the target, an incomplete history)",
    )
    p.add_argument(
        "--dask-scheduler", metavar="ADDRESS",
        help="restore on this Dask cluster (tcp://host:8786, or a scheduler file), one "
        "shard of the ids per worker; WAL_DIR, --base and --snapshots must be readable "
        "at the same paths on every worker (needs gpu-pitr[dask])",
    )
    p.add_argument("--shards", metavar="N", type=_shards,
                   help="with --dask-scheduler: how many shards (default: one per worker)")


def run() -> NoReturn:
    """The ``gpu-pitr`` command (and ``python -m gpu_pitr``): ``main()``, then exit.

    Once the command has finished, its outputs are complete: a Ctrl-C or SIGTERM
    arriving while the interpreter shuts down (joining threads, unloading compiled
    code: tens of milliseconds) is ignored, so it cannot turn a finished restore into
    a death by signal. Warnings print as one line each, like errors, and so does a
    SIGBUS (a mapped file cut short while it is read: ``gpu_pitr.buserror``).
    """
    import warnings

    warnings.showwarning = _show_warning
    sys.exit(_main(None, restore_signals=False, on_bus_error=True))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Best effort, as Python's own: a stderr on a full disk (Numba's cache and the job's
    # log on one file system) made the cache's warning an OSError inside the compile.
    with contextlib.suppress(OSError):
        print(f"{PROG}: warning: {' '.join(str(message).splitlines())}",
              file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Run ``gpu-pitr``; return the exit status."""
    return _main(argv, restore_signals=True)


def _escape_unencodable(stream) -> None:
    """Print what ``stream``'s encoding cannot hold as JSON's ``\\uXXXX`` escapes: ids
    and metadata are any Unicode text, and a terminal in a legacy locale (ISO-8859-1),
    or ``PYTHONIOENCODING=ascii`` in a job's environment, made ``inspect --records`` of
    a Cyrillic id a traceback after the lines before it. JSON's escapes (a surrogate
    pair past U+FFFF), not Python's ``\\U0001f600``: ``--records --json`` prints non-ASCII
    text as it is, and its lines stay JSON (the text lines quote ids as JSON does)."""
    reconfigure = getattr(stream, "reconfigure", None)
    # (stderr's own default, backslashreplace, wrote the same path as \xe4 there and
    # as \u00e4 on stdout.)
    if reconfigure is not None and getattr(stream, "errors", None) in (
            "strict", "backslashreplace"):
        with contextlib.suppress(ValueError, OSError):  # (a stream that cannot change)
            reconfigure(errors=_JSON_ESCAPES)


def _json_escapes(err: UnicodeError) -> tuple[str, int]:
    """The codec error handler ``_JSON_ESCAPES``: each character the encoding lacks as
    ``json.dumps`` escapes it (lowercase hex)."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), err.end


_JSON_ESCAPES = "gpu_pitr.json_escapes"
codecs.register_error(_JSON_ESCAPES, _json_escapes)


def _main(argv: list[str] | None, restore_signals: bool, on_bus_error: bool = False) -> int:
    _escape_unencodable(sys.stdout)
    _escape_unencodable(sys.stderr)  # (a path named in an error: the same escapes)
    args = None
    try:  # a Ctrl-C while Numba is imported (half a second) is one line too
        args = _parser().parse_args(argv)
        with interrupts.handle_signals(restore=restore_signals):
            if on_bus_error:  # the process is the command's: a SIGBUS is one line
                from gpu_pitr import buserror

                buserror.install(_error_status(args.command))
            if (problem := environment.threads_problem()) is not None:
                print(f"{PROG}: error: {problem}", file=sys.stderr)
                return _error_status(args.command)
            return _command(args.command_parser, args)
    except (KeyboardInterrupt, interrupts.Terminated) as stop:
        # The others only read (and before a command has started, nothing is written).
        writes = args is not None and args.command in ("restore", "snapshot", "archive")
        return interrupts.announce(interrupts.signal_of(stop), writes)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _stdout_lost.clear()
    status = _run_command(parser, args)
    if _stdout_lost:  # the run went on to its end: said last, one line
        print(f"{PROG}: error: stdout: cannot write: {_stdout_lost[0]} (the {args.command} "
              "went on to its end: only what it printed there is lost)", file=sys.stderr)
        return max(status, 1)
    return status


def _run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.command in ("restore", "snapshot"):
            return _restore(parser, args)
        if args.command == "verify":
            return _verify(parser, args)
        if args.command == "diff":
            return _diff(args)
        if args.command == "archive":
            return _archive(parser, args)
        if args.command == "expire":
            return _expire(parser, args)
        return _inspect(parser, args)
    except BrokenPipeError:
        _stdout_gone()
        return 1
    except _StdoutError as err:
        _print_error(err)
        return _error_status(args.command)
    except (WalError, OSError, MissingExtraError) as err:
        from gpu_pitr.errors import CorruptRecordError

        if (isinstance(err, CorruptRecordError) and args.command in ("restore", "snapshot")
                and not args.skip_corrupt):
            # What the operator can do next, on the same line: the record is fatal only
            # because the restore had to apply past it (SPEC section 2).
            _print_error(f"{err}; --skip-corrupt restores past it (and reports it), and a "
                         "target before it needs no option")
            return 1
        _print_error(err)
        return 1
    except MemoryError as err:  # NumPy's says what it could not allocate; Python's, nothing
        hint = ("; a smaller --chunk-size or a --memory-budget needs less besides the index"
                if args.command in ("restore", "snapshot") else "")
        if type(err).__module__.startswith("cupy"):
            # CuPy's OutOfMemoryError: the cuda executor builds the index in GPU memory,
            # which neither a chunk size nor a host budget changes.
            hint = "; GPU memory: --backend cpu restores in host memory"
        _print_error(f"out of memory: {str(err) or 'an allocation failed'}{hint}")
        return _error_status(args.command)


def _error_status(command: str) -> int:
    """The exit status of an error that is not damage found: 1, but 2 for ``verify``,
    whose 1 says the log is damaged (as ``__main__.error_status``, before a command is
    parsed), and for ``diff``, whose 1 says A and B differ."""
    return 2 if command in ("verify", "diff") else 1


class _StdoutError(Exception):
    """stdout could not be written (a full disk, ``> /dev/full``): said so, naming it."""


def _emit(text: str, end: str = "\n") -> None:
    """Print a command's report, its last act: a reader that went away (``| head``)
    does not change the exit status, which says what the command found; stdout that
    cannot be written is an error naming stdout (verify: exit 2, as for anything
    that is not damage)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        _stdout_gone()
    except OSError as err:
        _stdout_gone()  # nothing more goes there, at exit either
        raise _StdoutError(f"stdout: cannot write: {os_reason(err)}") from err


def _stdout_gone() -> None:
    """The reader of stdout went away (``| head``): stop quietly, like other tools; what
    is still buffered goes nowhere, not into the closed pipe at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: Why stdout could not be written while a run that changes files went on (once).
_stdout_lost: list[str] = []


def _progress_line(line: str, stream) -> None:
    """A line of a run that changes files (restore, snapshot, archive, expire), as it
    goes or once it is done. A reader of stdout that went away (``| head``) does not
    stop the run halfway, as it stops a command that only reads: the run goes on, and
    prints nothing more there. Nor does stdout that cannot be written (a full disk):
    the run goes on, and its exit status then says it could not print (``_command``),
    as GNU tools do."""
    try:
        try:
            print(line, file=stream, flush=True)
        except UnicodeEncodeError:
            # A name that is not UTF-8 (b'\xff.npz', held as a surrogate) to a stdout
            # that refuses it: \udcff, as stderr writes it, not a traceback once done.
            enc = stream.encoding or "utf-8"
            print(line.encode(enc, "backslashreplace").decode(enc), file=stream, flush=True)
    except BrokenPipeError:
        if stream is sys.stdout:
            _stdout_gone()
    except OSError as err:
        if stream is not sys.stdout:
            raise
        _stdout_gone()
        if not _stdout_lost:
            _stdout_lost.append(os_reason(err))


def _print_error(err: Exception) -> None:
    """``gpu-pitr: error: <what>`` on stderr, always one line. Best effort: a stderr that
    cannot be written (``verify ... >>LOG 2>&1``, LOG's disk full) loses the line, not the
    exit status; the OSError escaped and Python exited 1, which from verify and diff says
    the log is damaged or A and B differ."""
    with contextlib.suppress(OSError):
        print(f"{PROG}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)


def _restore(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.exclusive and args.to_time is None and args.to_seq is None and (
            args.to_transaction is None and args.to_position is None):
        parser.error("argument --exclusive: leaves out the target: give --to-time, --to-seq, "
                     "--to-transaction or --to-position")
    to_time = None
    if args.to_time is not None:
        to_time = _time_target(parser, args.to_time, args.exclusive)
    accepts = _accepts(parser, args)
    on_workers = getattr(args, "write_on_workers", False)  # restore's, not snapshot's
    if on_workers:
        if args.dask_scheduler is None:
            parser.error("argument --write-on-workers: needs --dask-scheduler")
        if args.format not in (None, "parquet"):
            parser.error("argument --write-on-workers: the workers write a Parquet dataset, "
                         f"not --format {args.format}")
        suffix = Path(args.out).suffix.lower()
        if SUFFIXES.get(suffix, "parquet") != "parquet":
            parser.error(f"argument --out: {args.out!r} is a {suffix} name, which does not "
                         "fit the Parquet dataset --write-on-workers writes (a directory)")
        fmt = "parquet"
    else:
        try:
            fmt = output_format(args.out, args.format)
        except ValueError as err:
            parser.error(f"argument --out: {err}")
    out = Path(args.out)
    report_json = None if args.report_json is None else Path(args.report_json)
    for flag, path in (("--out", out), ("--report-json", report_json)):
        if path is None:
            continue
        for written in output_files(path, fmt) if flag == "--out" else [path]:
            # OUT may be a symlink, which is replaced in its directory, not followed.
            if inside(written.parent if written.is_symlink() else written, args.wal_dir):
                parser.error(f"argument {flag}: {written} is inside WAL_DIR; "
                             "nothing is ever written there")
    if report_json is not None and any(inside(report_json, written)
                                       for written in output_files(out, fmt)):
        # One would overwrite the other (the index lost), or land in the snapshot's tree.
        parser.error(f"argument --report-json: {report_json} is what --out writes, or inside "
                     "it; give the report a path of its own")
    chunk_bytes = args.chunk_size
    if args.memory_budget is not None:
        from gpu_pitr.budget import chunk_bytes_for_budget

        try:
            chunk_bytes = chunk_bytes_for_budget(args.memory_budget)
        except ValueError as err:
            parser.error(f"argument --memory-budget: {err}")
    if args.shards is not None and args.dask_scheduler is None:
        parser.error("argument --shards: needs --dask-scheduler")
    if args.dry_run and args.dask_scheduler is not None:
        parser.error("argument --dry-run: not allowed with --dask-scheduler (the choice is "
                     "the same: drop --dask-scheduler to see it)")
    if not os.path.isdir(args.wal_dir):
        raise NotADirectoryError(f"{args.wal_dir}: {not_a_directory(args.wal_dir)}")
    # Before the restore, so that a missing extra or an unwritable directory fails at once.
    if args.dask_scheduler is not None:  # first: the dask extra has pyarrow too
        from gpu_pitr.scaleout import require_distributed

        require_distributed()
    check_output(out, fmt, dataset=on_workers)
    if report_json is not None:
        check_writable(report_json, "--report-json")
    replaced = _replaced_snapshot_position(out) if fmt == "snapshot" else None
    if args.dry_run:
        return _dry_run(args, to_time)

    import gpu_pitr
    from gpu_pitr.jit import watch_compiles

    kwargs = dict(to_time=to_time, to_seq=args.to_seq, to_transaction=args.to_transaction,
                  to_position=args.to_position, exclusive=args.exclusive,
                  backend=args.backend, skip_corrupt=args.skip_corrupt,
                  read_after_stop=not args.stop_reading_at_target, strict=args.strict,
                  allow_incomplete_history=args.allow_incomplete_history,
                  base=args.base, snapshots=args.snapshots,
                  **({"memory_budget": args.memory_budget} if args.memory_budget is not None
                     else {"chunk_bytes": chunk_bytes}))
    if on_workers:
        from gpu_pitr.scaleout import write_with_scheduler

        report = write_with_scheduler(args.dask_scheduler, args.wal_dir, out, report_json,
                                      shards=args.shards, **kwargs)
        index = None
    else:
        if args.dask_scheduler is not None:
            from gpu_pitr.scaleout import restore_with_scheduler

            # The tasks' progress is on the cluster's dashboard: no bar here.
            bar = None
            restore = functools.partial(restore_with_scheduler, args.dask_scheduler,
                                        shards=args.shards)
        else:
            bar = progress_bar(quiet=args.quiet)
            restore = functools.partial(gpu_pitr.restore, progress=bar)
        # The bar says when Numba compiles (a first run) rather than show a rate.
        watch = contextlib.nullcontext() if bar is None else watch_compiles(bar.compiling)
        try:
            with watch:
                index = restore(args.wal_dir, **kwargs).to_host()
                if bar is not None:
                    bar.phase("write")
                report = index.report.to_dict()
                if report_json is None:
                    write_output(index, out, fmt)
                else:  # the index written inside the report's write: both, or neither
                    write_json(report_json, report,
                               then=lambda: write_output(index, out, fmt))
        finally:
            if bar is not None:
                bar.close()
    warnings = restore_warnings(report, accepts)
    if replaced is not None and index.position is not None and (
            replaced.get("segment"), replaced.get("offset")) != (
            index.position.get("segment"), index.position.get("offset")):
        # A restore point gone (pg_basebackup refuses a target that is not empty).
        warnings.append(f"{out}: replaced a snapshot of another point "
                        f"({_snapshot_position(replaced)}): give each snapshot a name of "
                        "its own to keep them all")
    for line in warnings:  # with --quiet too: damage is not news to drop
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not args.quiet:
        from gpu_pitr.snapshot.format import pending_transactions

        # (no index here when the workers wrote the dataset: the count alone)
        position = None if index is None else index.position
        open_ids = (None if position is None else
                    [txn for txn, _ in pending_transactions(position)])
        lines = restore_summary(report, out, open_ids)
        if fmt == "snapshot" and index.position is not None:
            pos = index.position
            open_txns = len(pending_transactions(pos))
            lines.append(f"snapshot: {out} covers the log up to {_snapshot_where(pos)} "
                         f"({plural(open_txns, 'open transaction')} kept, "
                         f"to apply at {'its' if open_txns == 1 else 'their'} commit)")
        _progress_line("\n".join(lines), sys.stdout)  # the output is in place already
    return 0


def _dry_run(args: argparse.Namespace, to_time: int | None) -> int:
    """``restore --dry-run``: ``pipeline.plan_restore``, printed (warnings on stderr, as
    the restore prints them)."""
    from gpu_pitr.pipeline import plan_restore

    plan = plan_restore(args.wal_dir, to_time=to_time, to_seq=args.to_seq,
                        to_transaction=args.to_transaction, to_position=args.to_position,
                        exclusive=args.exclusive, base=args.base, snapshots=args.snapshots,
                        allow_incomplete_history=args.allow_incomplete_history,
                        read_after_stop=not args.stop_reading_at_target, strict=args.strict,
                        skip_corrupt=args.skip_corrupt)
    # The files --skip-corrupt would skip, warned of as the restore warns of them.
    for line in restore_warnings({"torn_tails": [], "skipped": plan["skipped"],
                                  "warnings": plan["warnings"]}):
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not args.quiet:
        _emit("\n".join(plan_lines(plan, stop_reading=args.stop_reading_at_target)))
    return 0


def plan_lines(plan: dict, stop_reading: bool = False) -> list[str]:
    """``pipeline.plan_restore``'s document as ``restore --dry-run`` prints it."""
    target = plan["target"]
    exclusive = ", exclusive" if target["exclusive"] else ""
    if target["kind"] == "time":
        what = f"time {utc_text(target['value'])}{exclusive}"
    elif target["kind"] == "latest":
        what = "latest"
    else:
        what = f"{target['kind']} {target['value']}{exclusive}"
    base, read = plan["base"], plan["read"]
    if base is None:
        start = "the start of the log"
    else:
        dim = "" if base["dim"] is None else f", dim {base['dim']}"
        start = (f"snapshot {base['path']} ({plural(base['count'], 'id')}{dim}, "
                 f"{_snapshot_position(base['position'])})")
    reads = (f"{plural(read['segments'], 'segment')}, {plural(read['bytes'], 'byte')} of log"
             + ("" if read["first_segment"] is None else f", from {read['first_segment']}")
             + (": to the end of the log" if target["kind"] == "latest" else
                ": at most that, up to the stop point (--stop-reading-at-target)"
                if stop_reading else ": to the end of the log (--stop-reading-at-target "
                "reads only up to the stop point)"))
    return ["dry run: nothing restored, nothing written",
            f"target: {what}",
            f"would start from {start}",
            f"would read {reads}",
            *(f"would skip {Path(s['file']).name}: {s['what']} (--skip-corrupt)"
              for s in plan.get("skipped", ())),
            *(f"note: {note}" for note in plan["notes"]
              if not note.startswith("started from snapshot "))]


#: An age for ``expire --keep-since`` (pgBackRest keeps backups by count or days): so
#: long before now, by this machine's clock (the writer's stamps are Unix seconds).
_AGE = re.compile(r"([0-9]+)\s*([smhdw])")  # lower case: 6M (months?) is refused
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _time_target(parser: argparse.ArgumentParser, text: str, up: bool,
                 option: str = "--to-time") -> int:
    """A time option as whole Unix seconds (``parse_time``: a fraction rounds down, or up
    with ``up``); a usage error if it is not one."""
    from gpu_pitr.format.times import parse_time

    try:
        seconds = parse_time(text, up)
    except ValueError as err:
        parser.error(f"argument {option}: {err}")
    if not 0 <= seconds <= U64_MAX:
        parser.error(f"argument {option}: {text!r} is outside the WAL's timestamp range")
    return seconds


#: A restore that spent this long compiling says so in its summary (a first run after an
#: install or an upgrade compiled for 30.2 s on the 2-core VM, 2026-12-04; a cached one, 0).
COMPILE_NOTE_SECONDS = 0.5


#: Of each kind of damage a restore went past, the first this many are warned of one by one.
WARN_EACH = 10


def _zero_records(entries: list[dict]) -> str:
    """`` (one a run of 1,398,101 zero-filled records)``: what entries of runs of
    zero-filled records hold (``format.zerofill``), or nothing."""
    runs = [e["records"] for e in entries if e.get("records") is not None]
    if not runs:
        return ""
    which = "one a run" if len(runs) == 1 else f"{len(runs)} runs"
    return f" ({which} of {sum(runs):,} zero-filled records)"


def _past_stop(entry: dict, stop: dict | None) -> bool:
    """Whether ``entry`` (a file and offset) lies after the stop record of a restore
    stopped at its target: what was lost there is after the target, so a torn tail a
    crash left later in the archive is not one the restore to before it lost data to
    (a runbook reads a torn-tail warning as "the result may not be what was asked
    for"). Segment names sort in log order; paths may differ in their directory only."""
    if not stop or stop.get("reason") != "target" or stop.get("file") is None:
        return False
    return ((Path(entry["file"]).name, entry["offset"])
            > (Path(stop["file"]).name, stop["offset"]))


def restore_warnings(report: dict, accepts=()) -> list[str]:
    """What a restore went past that a person must not miss: each torn tail (the bytes
    after it in its file were not read) and each record or file ``--skip-corrupt``
    skipped, the first ``WARN_EACH`` of each, then the report's ``warnings``. A torn
    tail an operator reviewed (``accepts``, ``--accept``: the same file name, offset and
    bytes lost) is not warned of again (the report still lists it)."""
    reviewed = {(a.file, a.offset, a.bytes) for a in accepts}
    # inspect's words for a torn tail; an empty file's loses nothing, so is not one
    torn = [f"{t['file']}: offset {t['offset']}: torn tail, {t['bytes_lost']} bytes lost"
            + (" (after the stop point: the state restored does not reach it)"
               if _past_stop(t, report.get("stop")) else "")
            + ("" if t.get("size_now") is None else
               f" ({in_progress(t['size_now'])}: a writer is appending to it, and this "
               "restore has the log up to the bytes it read)")
            for t in report["torn_tails"] if t["bytes_lost"]
            and (Path(t["file"]).name, t["offset"], t["bytes_lost"]) not in reviewed]
    skipped = [f"{s['file']}: offset {s['offset']}: "
               + ("" if s.get("seq") is None else f"seq {s['seq']}: ")
               + f"skipped: {s['what']}" for s in report["skipped"]]
    lines = []
    for kind, items in (("torn tails", torn), ("skipped", skipped)):
        lines += items[:WARN_EACH]
        if len(items) > WARN_EACH:
            lines.append(f"{len(items) - WARN_EACH} more {kind} (the report lists every one)")
    return lines + list(report.get("warnings", []))


def _replaced_snapshot_position(path: Path) -> dict | None:
    """The log position of the intact snapshot at ``path`` (None: none there)."""
    if not path.is_dir():
        return None
    from gpu_pitr.snapshot.format import read_manifest

    try:
        return read_manifest(path)["position"]
    except (WalError, OSError, KeyError):
        return None  # no snapshot, or a damaged one: nothing a restore could start from


def restore_summary(report: dict, out: Path, open_ids: list[int] | None = None) -> list[str]:
    """A few lines for a person: what was restored, where it stopped, what was counted.

    ``open_ids``: the ids of the transactions open at the stop (the index's position's
    pending ones), named on the ``stopped:`` line, so that an operator who stopped
    inside or before a bad transaction sees that it is the one left out."""
    target, stop, txns = report["target"], report["stop"], report["transactions"]
    seconds = report["timings"].get("total", 0.0)
    compiling = report["timings"].get("compile", 0.0)
    if compiling >= COMPILE_NOTE_SECONDS:
        from gpu_pitr.jit import CACHE_ERRORS

        cached = ("again on every run: the cache could not be used" if CACHE_ERRORS
                  else "once: later runs load the cache")
    lines = [
        f"restored {plural(report['ids'], 'id')}"
        + ("" if report["dim"] is None else f", dim {report['dim']}")
        + f" -> {out} "
        f"(backend {report['backend']}, {seconds:.3f} s"
        + (f", {compiling:.1f} s of it compiling, {cached})"
           if compiling >= COMPILE_NOTE_SECONDS else ")")
    ]
    if target["kind"] == "time":
        exclusive = ", exclusive" if target["exclusive"] else ""
        lines.append(f"target: time {utc_text(target['value'])}{exclusive}")
    elif target["kind"] == "seq":
        exclusive = ", exclusive" if target["exclusive"] else ""
        lines.append(f"target: seq {target['value']}{exclusive}")
    elif target["kind"] in ("transaction", "position"):
        exclusive = ", exclusive" if target["exclusive"] else ""
        lines.append(f"target: {target['kind']} {target['value']}{exclusive}")
    else:
        lines.append("target: latest")
    if stop["reason"] == "end_of_log":
        lines.append("stopped: at the end of the log")
    else:
        where = f"{Path(stop['file']).name}: offset {stop['offset']}: seq {stop['seq']}"
        stamp = "" if stop.get("timestamp") is None else f" at {utc_text(stop['timestamp'])}"
        record = stop.get("record") or "record"
        # A time target stops before its record; a seq, transaction or position target
        # after it (unless exclusive).
        how = "before" if target["kind"] == "time" or target["exclusive"] else "after"
        open_there = txns["in_flight_discarded"]  # open at the stop: not applied
        named = ""
        if open_ids and len(open_ids) == open_there:
            shown = ", ".join(map(str, open_ids[:_OPEN_IDS_SHOWN]))
            more = len(open_ids) - _OPEN_IDS_SHOWN
            named = f": {shown}" + (f" and {more} more" if more > 0 else "")
        lines.append(f"stopped: {how} {record} {where}{stamp}" + (
            f" ({plural(open_there, 'transaction')} open there, not applied{named})"
            if open_there else ""))
    if report.get("last_commit_timestamp") is not None:
        lines.append(f"as of {utc_text(report['last_commit_timestamp'])}: the last commit "
                     "point applied")
    damage_after = report["damage_after_stop"]
    past = sum(_past_stop(t, stop) for t in report["torn_tails"])
    torn_past = f" ({past} beyond the stop record)" if past else ""
    after_stop = f"{len(damage_after)} after the stop point{_zero_records(damage_after)}"
    # (Stopped at the end of the log, the whole log was read, the option given or not.)
    if not report.get("read_after_stop", True) and stop["reason"] == "target":
        # What there is lies in the stop record (an exclusive seq target's, read).
        after_stop = (f"{after_stop} in the stop record, " if damage_after else "") + (
            "the log after the stop point not read (--stop-reading-at-target)")
    lines += [
        f"read {plural(report['records_read'], 'record')}, "
        f"{plural(report['bytes_read'], 'byte')}, {plural(report['segments'], 'segment')}; "
        f"applied {plural(report['commit_points_applied'], 'commit point')}: "
        f"{plural(report['inserts'], 'insert')}, {plural(report['updates'], 'update')}, "
        f"{plural(report['deletes'], 'delete')}",
        f"transactions: {txns['committed']} committed, {txns['aborted']} aborted, "
        f"{txns['in_flight_discarded']} discarded in flight; "
        f"{plural(len(report['anomalies']), 'anomaly', 'anomalies')}",
        f"damage: {plural(len(report['torn_tails']), 'torn tail')}{torn_past}, "
        f"{len(report['skipped'])} skipped{_zero_records(report['skipped'])}, "
        f"{after_stop}, {len(report['trailing_bytes'])} with trailing bytes",
    ]
    if report.get("base"):
        base = report["base"]
        lines.append(f"base: snapshot {base['path']} ({base['ids']} ids, up to "
                     f"{base['segment']} offset {base['offset']})")
    if report.get("message"):
        lines.append(report["message"])
    return lines


def _inspect(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gpu_pitr.snapshot.format import holds_snapshot_files

    filters = (args.since, args.until, args.first_seq, args.last_seq, args.transaction,
               args.id, args.limit)
    if args.snapshots is not None:
        return _inspect_window(parser, args, filters)
    if args.transactions:
        return _inspect_transactions(parser, args)
    if args.records or any(f is not None for f in filters):
        return _inspect_records(parser, args)
    if holds_snapshot_files(args.wal_dir):
        doc, lines = _snapshot_manifest(args.wal_dir)
        _emit(json.dumps(doc, indent=2) if args.json else "\n".join(lines))
        return 0
    stats = wal_stats(args.wal_dir)
    if stats["totals"]["segments"] == 0 and not stats["damage"]:
        snapshots = _snapshots_in(args.wal_dir)
        if snapshots:
            return _inspect_snapshots(args, snapshots)
    if args.json:
        _emit(json.dumps(stats, indent=2))
    else:
        _emit("\n".join(stats_lines(stats)))
        for item in stats["not_read"]:
            print(f"note: {item['file']}: {item['what']}", file=sys.stderr)
        _say_if_no_segments(args.wal_dir, stats["totals"]["segments"])
    return 0


def _inspect_records(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``inspect --records``: every record (or those the filters keep), one by one."""
    from gpu_pitr.format.dump import record_lines, wal_records
    from gpu_pitr.snapshot.format import holds_snapshot_files

    if holds_snapshot_files(args.wal_dir):
        parser.error(f"--records lists the records of a WAL directory; {args.wal_dir} is a "
                     "snapshot")
    since, until = _time_window(parser, args, "record")
    if args.first_seq is not None and args.last_seq is not None \
            and args.first_seq > args.last_seq:
        parser.error(f"argument --first-seq: {args.first_seq} is larger than --last-seq "
                     f"{args.last_seq}: no record can be both")
    # One item past the limit, to say whether more follow (pg_waldump --limit does not).
    items = wal_records(args.wal_dir, since=since, until=until, first_seq=args.first_seq,
                        last_seq=args.last_seq, transaction=args.transaction, id=args.id,
                        limit=None if args.limit is None else args.limit + 1)
    more, shown = _print_items(items, args, record_lines)
    if more:
        print(f"note: --limit {args.limit} reached: more items follow (narrow the filters, "
              "or page on with --first-seq)", file=sys.stderr)
    elif not shown and args.id is not None:
        # (Nothing printed and exit 0 left "not in this log" to a guess, as --transaction.)
        from gpu_pitr.format.dump import json_line

        others = any(f is not None for f in (since, until, args.first_seq, args.last_seq,
                                             args.transaction))
        print(f"note: no record of id{'s' if len(args.id) > 1 else ''} "
              f"{', '.join(map(json_line, args.id))} "
              + ("passes the other filters" if others else "in the log (damage aside: "
                 "an undecodable record names no id)"), file=sys.stderr)
    return 0


def _inspect_transactions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``inspect --transactions``: one row per transaction (``dump.wal_transactions``)."""
    from gpu_pitr.format.dump import transaction_lines, wal_transactions
    from gpu_pitr.snapshot.format import holds_snapshot_files

    # Seq filters select records; a transaction spans many seqs, which repeat after a
    # restart: refused rather than given a meaning an operator would have to guess.
    for option, value in (("--records", args.records or None),
                          ("--first-seq", args.first_seq), ("--last-seq", args.last_seq),
                          ("--id", args.id)):
        if value is not None:
            parser.error(f"argument --transactions: not allowed with {option} (it lists "
                         "transactions: select them with --since, --until, --transaction "
                         "or --limit)")
    if holds_snapshot_files(args.wal_dir):
        parser.error(f"--transactions lists the transactions of a WAL directory; "
                     f"{args.wal_dir} is a snapshot")
    since, until = _time_window(parser, args, "transaction")
    items = wal_transactions(args.wal_dir, since=since, until=until,
                             transaction=args.transaction,
                             limit=None if args.limit is None else args.limit + 1)
    # With a filter the damage items are left out: a row's count of them is not "above".
    listed = since is None and until is None and args.transaction is None
    more, rows = _print_items(items, args, lambda doc: transaction_lines(doc, listed))
    if more:
        # (No --first-seq to page on here: a transaction spans seqs, which repeat.)
        what = ("more items follow" if args.transaction is None else
                f"transaction {args.transaction} has more rows (its id used again, or an "
                "anomaly of it)")
        print(f"note: --limit {args.limit} reached: {what}: raise --limit, or narrow "
              "--since/--until to the time wanted (a transaction whose span from begin to "
              "end overlaps them is kept)", file=sys.stderr)
    elif not rows and args.transaction is not None:
        # (Nothing printed and exit 0 left "not in this log" to a guess.)
        print(f"note: no transaction {args.transaction} "
              + ("in the log: no BeginTransaction, CommitTransaction or AbortTransaction "
                 "has its id" if since is None and until is None
                 else "overlaps the --since/--until window"), file=sys.stderr)
    return 0


def _time_window(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 what: str) -> tuple[int | None, int | None]:
    """``--since``/``--until`` as whole seconds (``_time_target``); a usage error when
    no ``what`` (a record, a transaction) can fall in both."""
    since = None if args.since is None else _time_target(parser, args.since, True, "--since")
    until = None if args.until is None else _time_target(parser, args.until, False, "--until")
    if since is not None and until is not None and since > until:
        from gpu_pitr.format.times import parse_time

        if parse_time(args.since) > until:  # not only its fraction rounded up
            parser.error(f"argument --since: {args.since} is later than --until "
                         f"{args.until}: no {what} can be both")
        parser.error(f"argument --since: no whole second from {args.since} to --until "
                     f"{args.until}, and records are stamped in whole seconds: no {what} "
                     "can be both")
    return since, until


def _print_items(items, args: argparse.Namespace, lines) -> tuple[bool, int]:
    """Print ``items`` (asked for one past ``--limit``), each as a JSON line with
    ``--json`` or as ``lines`` gives it; whether more followed the limit, and how many
    were printed."""
    from gpu_pitr.format.dump import json_line

    shown, more = 0, False
    for doc in items:
        if shown == args.limit:
            more = True
            items.close()
            break
        shown += 1
        text = (json_line(doc) if args.json
                else "\n".join(lines(doc)))
        try:
            print(text)
        except BrokenPipeError:  # | head: the reader has what it wanted
            items.close()
            _stdout_gone()
            return False, shown
        except OSError as err:  # a full disk: one line naming stdout, as _emit says it
            items.close()
            _stdout_gone()
            raise _StdoutError(f"stdout: cannot write: {os_reason(err)}") from err
    _emit("", end="")  # what is still buffered, whose failure is _emit's too
    return more, shown


def _snapshots_in(directory: str) -> list[str]:
    """The snapshots of a directory of snapshots (none if it cannot be listed)."""
    from gpu_pitr.snapshot import snapshot_dirs

    try:
        return snapshot_dirs(directory)
    except OSError:
        return []


def _say_if_no_segments(wal_dir: str, segments: int) -> None:
    """Notes on stderr: a WAL_DIR without segment files is empty, not damaged; what it
    may be instead."""
    if segments == 0:
        from gpu_pitr.pipeline import no_segments_note

        print(f"note: {no_segments_note(wal_dir)}", file=sys.stderr)


def _verify(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``verify``: 0 without damage, 1 with; 2 when WAL_DIR cannot be read at all."""
    if not os.path.isdir(args.wal_dir):
        parser.error(f"argument WAL_DIR: {args.wal_dir}: {not_a_directory(args.wal_dir)}")
    from gpu_pitr.snapshot.format import holds_snapshot_files
    from gpu_pitr.verify import verify_wal  # with Numba: imported when a command needs it

    accepts = _accepts(parser, args)
    snapshots_only = ("argument --accept: names torn tails of a WAL directory, and "
                      f"{args.wal_dir} holds snapshots")
    if holds_snapshot_files(args.wal_dir):
        if accepts:
            parser.error(snapshots_only)
        return _verify_snapshots(args, [args.wal_dir], single=True)
    try:
        result = verify_wal(args.wal_dir, accept=accepts)
    except OSError as err:
        # Not damage: exit 1 is kept for "damage found".
        _print_error(err)
        return 2
    if result.segments == 0 and not result.problems:
        snapshots = _snapshots_in(args.wal_dir)
        if snapshots:
            if accepts:
                parser.error(snapshots_only)
            return _verify_snapshots(args, snapshots)
    silent = result.clean and args.quiet  # -q: nothing unless there is damage
    if not silent:
        _emit(json.dumps(result.to_dict(), indent=2) if args.json
              else "\n".join(result.lines()))
    for unmatched in result.unmatched:  # a stale or mistyped one, to clean up: not damage
        print(f"{PROG}: warning: {unmatched.line()}", file=sys.stderr)
    if not args.json and not silent:
        _say_if_no_segments(args.wal_dir, result.segments)
    return 0 if result.clean else 1


def _diff(args: argparse.Namespace) -> int:
    """``diff``: 0 when A and B are the same, 1 when they differ, 2 when either cannot be
    read (diff(1)'s statuses: 1 is kept for "different", as verify keeps it for damage)."""
    from gpu_pitr.diff import diff

    limit = args.limit if args.limit is not None or args.json else 10
    try:
        result = diff(args.a, args.b, limit=limit)
    except (WalError, OSError, MissingExtraError) as err:
        _print_error(err)
        return 2
    _emit(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(result.lines()))
    return 0 if result.same else 1


def _archive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``archive``: 0 when every segment is in the archive, 1 otherwise."""
    from gpu_pitr.archive import archive

    if inside(args.out, args.wal_dir):
        parser.error(f"argument --out: {args.out} is inside WAL_DIR; nothing is ever "
                     "written there")
    def say(row) -> None:  # each segment's line as soon as it is done
        line = row.line(problems_only=args.quiet)
        if line is not None:
            _progress_line(line, sys.stderr if args.quiet else sys.stdout)

    result = archive(args.wal_dir, args.out, on_segment=None if args.json else say)
    if not args.json:  # with --quiet too, as a restore's warnings
        for line in result.not_segments:
            print(f"{PROG}: warning: {line}", file=sys.stderr)
    if result.sums_line is not None and not args.json:
        _progress_line(result.sums_line, sys.stderr if args.quiet else sys.stdout)
    if not (result.segments or args.json or args.quiet):
        _say_if_no_segments(args.wal_dir, 0)
    if args.json:  # after the run: printed as its lines are
        _progress_line(json.dumps(result.to_dict(), indent=2), sys.stdout)
    elif not args.quiet:
        _progress_line(result.lines()[-1], sys.stdout)  # the summary
    return 0 if result.ok else 1


def _expire(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``expire``: 0 when everything to delete was deleted (or nothing was to be), else 1."""
    from gpu_pitr.expire import expire

    since = None
    if args.keep_since is not None:
        text = args.keep_since.strip()
        age = _AGE.fullmatch(text)
        if age:
            since = int(time.time()) - int(age[1]) * _AGE_UNITS[age[2]]
            if since < 0:
                parser.error(f"argument --keep-since: {text!r} reaches back before 1970")
        elif re.fullmatch(r"[0-9]+\s*[A-Za-z]+", text):
            parser.error(f"argument --keep-since: {text!r}: an age is a number and one of "
                         "s, m (minutes), h, d, w")
        else:
            since = _time_target(parser, text, False, "--keep-since")

    def say(item) -> None:  # each deletion's line as soon as it is done
        if item.problem is not None or not args.quiet:
            _progress_line(item.line(args.dry_run), sys.stderr if args.quiet else sys.stdout)

    result = expire(args.archive_dir, args.snapshots, keep=args.keep, keep_since=since,
                    dry_run=args.dry_run, on_expired=None if args.json else say)
    if args.json:  # after the run: printed as its lines are
        _progress_line(json.dumps(result.to_dict(), indent=2), sys.stdout)
    else:
        for line in result.damaged:
            print(f"{PROG}: warning: {line}", file=sys.stderr)
        if not args.quiet:
            _progress_line("\n".join([*result.notes, result.summary()]), sys.stdout)
    return 0 if result.ok else 1


def _snapshot_where(position: dict) -> str:
    """The log position a snapshot covers up to: ``SEGMENT offset N``, or the start."""
    if not position.get("segment"):
        return "the start of the log"
    return f"{position['segment']} offset {position['offset']}"


def _snapshot_position(position: dict) -> str:
    """Where in the log a snapshot stands, for a person."""
    text = f"up to {_snapshot_where(position)}"
    if position.get("segment") and position.get("timestamp") is not None:
        text += f", last commit point applied at {utc_text(position['timestamp'])}"
    return text


def _snapshot_manifest(path: str) -> tuple[dict, list[str]]:
    """``inspect`` of one snapshot: its manifest (checksums not checked), as a JSON
    document and the lines to print."""
    from gpu_pitr.snapshot.format import NewerFormatError, pending_transactions, read_manifest

    try:
        manifest = read_manifest(path)
    except WalError as err:
        doc = {"snapshot": path, "error": str(err)}
        if isinstance(err, NewerFormatError):
            doc["newer"] = True  # not damage: a later gpu-pitr's (snapshot.format.trouble)
        return doc, [f"snapshot {path}: {err}"]
    position = manifest["position"]
    pending = pending_transactions(position)
    return {"snapshot": path, "manifest": manifest}, [
        f"snapshot {path}: format version {manifest['format_version']}, "
        f"created {manifest.get('created')}"
        + (f" by {manifest['written_by']}" if "written_by" in manifest else ""),
        f"{manifest['count']} ids, dim {manifest['dim']}; {_snapshot_position(position)}",
        *_snapshot_last_seq(path, position),
        f"open transactions kept for their commit: {len(pending)}",
        "",
        f"{'file':<20} {'bytes':>14}",
        *(f"{name:<20} {f['size']:>14}" for name, f in sorted(manifest["files"].items())),
        "",
        f"checksums not checked: gpu-pitr verify {path} checks them",
    ]


def _snapshot_last_seq(path: str, position: dict) -> list[str]:
    """The line naming the seq of the last record a snapshot covers and the restore of
    exactly its state: an operator who took a snapshot as a named restore point (before
    a migration) had no way to see which ``--to-seq`` gives it back (a time target goes
    on to later records stamped in the same second). Where that seq occurs earlier in
    the log it covers (a writer restarted), ``--to-seq`` names the earlier record and
    is refused with this base: ``--to-position`` of its last record is named instead."""
    import shlex

    last = position.get("last_seq")
    if last is None:  # an empty log's, or one written before the field was added
        return []
    from gpu_pitr.snapshot.base import target_problem

    # One restored across a gap is refused as a base without the option (the command
    # named failed); a path with a space is quoted, so that the command can be pasted.
    allow = (" --allow-incomplete-history" if position.get("history_complete") is False
             else "")
    target = f"--to-seq {last}"
    record = position.get("last_record")
    if target_problem(position, {"to_seq": last}, False) is not None and isinstance(
            record, dict) and record.get("segment") and record.get("offset") is not None:
        # The seq occurs earlier in the log it covers (a writer restarted): --to-seq
        # names that first record, before the base, and fails; its position names this.
        target = f"--to-position {record['segment']}:{record['offset']}"
    # A zero-filled record's seq 0 is none the writer gave (format.zerofill): it is named
    # as what it is, the target naming it all the same.
    from gpu_pitr.format.layout import RECORD_HEADER_SIZE
    from gpu_pitr.format.zerofill import is_zero_record

    what = f"seq {last}"
    if isinstance(record, dict) and isinstance(record.get("length"), int) and is_zero_record(
            record["length"] - RECORD_HEADER_SIZE, last):
        what = "a zero-filled record (12 zero bytes: no seq the writer gave)"
    # --stop-reading-at-target: the state is the base's own, and the log after it is not
    # read (recovery_target = 'immediate'); by default all of it would be, to look for
    # damage the state does not depend on.
    return [f"last record covered: {what} (this state exactly: gpu-pitr restore "
            f"WAL_DIR --base {shlex.quote(str(path))} {target}{allow} "
            "--stop-reading-at-target --out OUT)"]


def _inspect_snapshots(args: argparse.Namespace, paths: list[str]) -> int:
    """``inspect`` of a directory of snapshots (what ``--snapshots`` takes): one row per
    snapshot, in log order, from the manifests alone (``pgbackrest info``)."""
    from gpu_pitr.snapshot import log_order, serves_time_from

    docs = [_snapshot_manifest(path)[0] for path in paths]
    docs.sort(key=lambda d: (0, log_order(d["manifest"]["position"])) if "manifest" in d
              else (1, ()))
    if args.json:
        _emit(json.dumps({"snapshots_dir": args.wal_dir, "snapshots": docs}, indent=2))
        return 0
    # One a later gpu-pitr wrote is not damaged (a fleet upgraded host by host).
    newer = sum(bool(d.get("newer")) for d in docs)
    damaged = sum("error" in d for d in docs) - newer
    lines = [f"snapshots in {args.wal_dir}: {len(docs)}, {damaged} with a damaged manifest"
             + (f", {newer} written by a newer gpu-pitr" if newer else "")
             + " (oldest first)", "",
             f"{'snapshot':<24} {'ids':>10} {'dim':>5}  {'--to-time from':<20}  "
             f"{'taken':<20}  up to"]
    for doc in docs:
        name = os.path.basename(doc["snapshot"])
        if "error" in doc:
            lines.append(f"{name:<24} {'NEWER' if doc.get('newer') else 'DAMAGED'}: "
                         f"{doc['error']}")
            continue
        m = doc["manifest"]
        pos = m["position"]
        when = _utc_or_dash(serves_time_from(pos))  # the earliest time target it serves
        taken = m["created"][:19] + "Z"  # the writer's clock, to the second
        lines.append(f"{name:<24} {m['count']:>10} {m['dim'] if m['dim'] is not None else '-':>5}"
                     f"  {when:<20}  {taken:<20}  {_snapshot_where(pos)}")
    lines += ["", f"checksums not checked: gpu-pitr verify {args.wal_dir} checks them",
              f"to restore from the newest that serves a target: gpu-pitr restore WAL_DIR "
              f"--snapshots {args.wal_dir} --out OUT "
              "[--to-time T | --to-seq N | --to-transaction X | --to-position FILE:OFFSET]"]
    _emit("\n".join(lines))
    return 0


def _inspect_window(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    filters: tuple) -> int:
    """``inspect WAL_DIR --snapshots DIR``: the restorable window (``snapshot.window``)."""
    from gpu_pitr.snapshot import window
    from gpu_pitr.snapshot.format import holds_snapshot_files

    if args.records or args.transactions or any(f is not None for f in filters):
        parser.error("argument --snapshots: not allowed with --records, --transactions or "
                     "their filters (it shows the restorable window of WAL_DIR)")
    if holds_snapshot_files(args.wal_dir):
        parser.error(f"--snapshots shows the restorable window of a WAL directory; "
                     f"{args.wal_dir} is a snapshot (--base takes one)")
    doc = window(args.wal_dir, args.snapshots)
    _emit(json.dumps(doc, indent=2) if args.json else "\n".join(window_lines(doc)))
    return 0


def window_lines(doc: dict) -> list[str]:
    """``snapshot.window``'s document as ``inspect --snapshots`` prints it."""
    import shlex

    from gpu_pitr.format.stats import history_line

    log, earliest, latest = doc["log"], doc["earliest"], doc["latest"]
    name = os.path.basename
    head = f"restorable window of {doc['wal_dir']} with the snapshots in {doc['snapshots_dir']}"
    if earliest is None and not log["segments"]:
        lines = [f"{head}: NONE: no wal-<16 hex digits>.log files in {doc['wal_dir']}: a "
                 "restore gives a snapshot's own state alone, no moment between (is it the "
                 "WAL directory?)"]
    elif earliest is None and log["history"].get("expire_marker_problem"):
        lines = [f"{head}: NONE: restores refuse this directory while its expire marker "
                 "is as it is (history, below)"]
    elif earliest is None:
        passed = sum(not r["usable"] for r in doc["snapshots"])
        lines = [f"{head}: NONE: no snapshot can start a restore of this log"
                 + (f" ({plural(passed, 'snapshot')} passed over: below)" if passed else "")
                 + ", and the log alone lacks its start (--allow-incomplete-history restores "
                 "the log left, without what came before it)"]
    else:
        lines = [f"{head}:"]
        if earliest["from"] == "log_start":
            first = log["history"]["first_record"]
            lines.append("  earliest: the start of the log"
                         + ("" if first is None else
                            f" ({first['file']}: offset {first['offset']}: seq {first['seq']})")
                         + ": any target (a --to-time before the first commit point gives "
                         "the empty index)")
        else:
            pos = earliest["position"]
            at = ("any --to-time" if earliest["time"] is None else
                  f"--to-time T for T >= {utc_text(earliest['time'])} (T > it with "
                  "--exclusive)")
            lines.append(f"  earliest: {_utc_or_dash(earliest['time'])}, from snapshot"
                         f" {name(earliest['snapshot'])} ({_snapshot_where(pos)}"
                         + ("" if pos.get("last_seq") is None else f", seq {pos['last_seq']}")
                         + f"): {at}; a seq or position target after its position")
        last = latest["last_record"]
        lines.append(f"  latest:   {_utc_or_dash(latest['time'])}, the end of the log"
                     + ("" if last is None else f" ({last['file']}: seq {last['seq']})")
                     + ": --latest"
                     + ("" if latest["time"] is None else
                        " (its newest record stamp, or its base snapshot's: a --to-time at "
                        "or after it restores the same state, warning that the log ends "
                        "before the target)"))
    stamped = ("" if log["min_timestamp"] is None else
               f", stamped {utc_text(log['min_timestamp'])}..{utc_text(log['max_timestamp'])}")
    lines += [f"log: {plural(log['segments'], 'segment')}, {plural(log['bytes'], 'byte')}, "
              f"{plural(log['records'], 'record')}{stamped}; {log['seq_breaks']} "
              f"sequence-number breaks, {log['damage']} damage items"
              + (f" (gpu-pitr verify {shlex.quote(doc['wal_dir'])} judges them: a target past "
                 "a gap or damage warns or fails)" if log["seq_breaks"] or log["damage"]
                 else ""),
              history_line(log["history"]), "",
              f"{'snapshot':<24} {'ids':>10} {'dim':>5}  {'--to-time from':<20}  "
              f"{'up to':<36}  log after it (a restore from it reads)"]
    for row in doc["snapshots"]:
        if "position" not in row:
            lines += [f"{name(row['snapshot']):<24} not a start: {row['why']}"]
            continue
        when = _utc_or_dash(row["serves_time_from"])
        after = row["log_after"]
        dim = "-" if row["dim"] is None else row["dim"]
        lines.append(f"{name(row['snapshot']):<24} {row['count']:>10} {dim:>5}  {when:<20}  "
                     f"{_snapshot_where(row['position']):<36}  "
                     f"{plural(after['segments'], 'segment')}, {plural(after['bytes'], 'byte')}")
        if not row["usable"]:
            lines.append(f"  not a start: {row['why']}")
    if not doc["snapshots"]:
        lines.append("(none)")
    lines += ["", f"checksums not checked: gpu-pitr verify {shlex.quote(doc['snapshots_dir'])} "
              "checks them"]
    if earliest is not None:
        lines.append(f"to restore a moment T in the window: gpu-pitr restore "
                     f"{shlex.quote(doc['wal_dir'])} --snapshots "
                     f"{shlex.quote(doc['snapshots_dir'])} --to-time T --out OUT")
    return lines


def _utc_or_dash(seconds: int | None) -> str:
    return "-" if seconds is None else utc_text(seconds)


def _check_snapshot(path: str) -> tuple[dict, list[str]]:
    """``snapshot.verify`` of ``path`` as a JSON document and the lines to print.

    Raises ``MissingExtraError`` or ``OSError`` when it cannot be checked at all.
    """
    from gpu_pitr import snapshot
    from gpu_pitr.snapshot.format import NewerFormatError

    started = time.perf_counter()
    try:
        doc = snapshot.verify(path)
    except WalError as err:
        seconds = time.perf_counter() - started
        doc = {"snapshot": path, "clean": False, "seconds": round(seconds, 6),
               "problem": {"file": err.file, "offset": err.offset, "what": err.what}}
        if isinstance(err, NewerFormatError):
            # Not damage, and not checked: a later gpu-pitr wrote it (hosts upgraded one
            # by one share the directory). Still not clean: this version cannot vouch.
            doc["newer"] = True
            return doc, [str(err), f"{path}: NOT CHECKED: snapshot written by a newer "
                         f"gpu-pitr ({seconds:.3f} s)"]
        return doc, [str(err), f"{path}: DAMAGED: snapshot ({seconds:.3f} s)"]
    seconds = time.perf_counter() - started
    doc["seconds"] = round(seconds, 6)
    others = doc["other_files"]
    return doc, [f"{path}: clean: snapshot of {doc['count']} ids, dim {doc['dim']}, "
                 f"{_snapshot_position(doc['position'])}; {doc['bytes']} bytes checked "
                 f"({seconds:.3f} s)"
                 + (f"; not part of it, not checked: {', '.join(others)}" if others else "")]


def _verify_snapshots(args: argparse.Namespace, paths: list[str], single: bool = False) -> int:
    """``verify`` of snapshots (one, ``single``, or each in a ``--snapshots`` directory): 0 when
    every one is intact, 1 when one is damaged, 2 when they cannot be checked."""
    docs, lines = [], []
    try:
        for path in paths:
            doc, text = _check_snapshot(path)
            docs.append(doc)
            lines += text
    except (MissingExtraError, OSError) as err:
        _print_error(err)
        return 2
    clean = all(doc["clean"] for doc in docs)
    if single:
        out = docs[0]
    else:
        newer = sum(bool(doc.get("newer")) for doc in docs)
        damaged = sum(not doc["clean"] for doc in docs) - newer
        out = {"snapshots_dir": args.wal_dir, "clean": clean, "snapshots": docs}
        verdict = "clean" if clean else "DAMAGED" if damaged else "NOT CHECKED"
        lines.append(f"{args.wal_dir}: {verdict}: {plural(len(docs), 'snapshot')}, "
                     f"{damaged} damaged"
                     + (f", {newer} written by a newer gpu-pitr (not checked)" if newer
                        else ""))
    if not (clean and args.quiet):
        _emit(json.dumps(out, indent=2) if args.json else "\n".join(lines))
    return 0 if clean else 1
