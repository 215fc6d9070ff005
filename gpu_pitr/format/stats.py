"""What ``gpu-pitr inspect`` reports about a WAL directory: ``wal_stats`` and its text.

``wal_stats`` runs the compiled pass of ``gpu_pitr.format.statwalk`` (imported
when called: Numba is not imported with the command line).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime


def wal_stats(wal_dir: str | os.PathLike, *, chunk_bytes: int | None = None,
              segments: list | None = None) -> dict:
    """What ``inspect`` reports about ``wal_dir``, as one JSON-able document.

    It judges nothing: every kind of damage is listed, none is fatal, and so is every
    entry named like a segment that was not read (``not_read``). Segment
    record counts include records whose payload does not decode; variant counts
    and timestamps come from those that do. The segments are read in pieces of
    ``chunk_bytes`` (default 16 MiB), never the whole log at once. Equal, for every
    WAL, to the pure-Python reader and codec's answer (tests/inspect_reference.py).
    ``segments``: ``list_segments(wal_dir)`` as the caller listed it, each read to its
    size there (None: listed here). A caller that judges the log by its own listing too
    (``snapshot.window``) passes it: a log being written rotates and deletes segments,
    and two listings may not be of the same log.
    """
    from gpu_pitr.format.statwalk import DEFAULT_CHUNK_BYTES, scan_stats

    stats = scan_stats(wal_dir, DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes,
                       segments)
    stats["not_read"] = not_read(wal_dir)
    return stats


def not_read(wal_dir: str | os.PathLike) -> list[dict]:
    """``wal_stats``'s ``not_read``: the entries named like a segment that no count
    includes (a directory, a name in upper case, ...), each ``{"file", "what"}``: text
    prints them as ``note:`` lines, and ``--json`` must not lose them."""
    from gpu_pitr.format.segments import not_segment_files

    return [{"file": name, "what": what} for name, what in not_segment_files(wal_dir)]


def stats_lines(stats: dict) -> list[str]:
    """``wal_stats`` as the human table ``inspect`` prints."""
    totals = stats["totals"]
    lines = [
        f"WAL directory {stats['wal_dir']}: {plural(totals['segments'], 'segment')}, "
        f"{plural(totals['bytes'], 'byte')}, {plural(totals['records'], 'record')}",
        history_line(stats["history"]),
        "",
        f"{'segment':<25} {'bytes':>10}  {'created':<20} {'records':>8}  {'seq':<13} timestamps",
    ]
    for seg in stats["segments"]:
        seqs = "-" if seg["first_seq"] is None else f"{seg['first_seq']}..{seg['last_seq']}"
        stamps = "-"
        if seg["min_timestamp"] is not None:
            stamps = f"{utc_text(seg['min_timestamp'])}..{utc_text(seg['max_timestamp'])}"
        created = "-" if seg["created"] is None else utc_text(seg["created"])
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
        f"  {_where(c)}: sequence_number {c['sequence_number']} at {utc_text(c['timestamp'])}"
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
    # Every record whose seq is not the previous one's + 1: a writer's restart at 0, a gap
    # or a repeat (verify judges which: seq_restart, seq_gap, seq_out_of_order).
    lines += ["", f"sequence-number breaks (restarts, gaps, repeats; verify judges them): "
              f"{len(stats['seq_restarts'])}"]
    lines += [f"  {_where(r)}: {r['from']} -> {r['to']}" for r in stats["seq_restarts"]]
    lines += ["", f"damage: {len(stats['damage'])}"]
    for d in stats["damage"]:
        what = {
            "bad_header": f"bad header: {d['what']}",
            "undecodable": f"undecodable: {d['what']}",
            "zero_filled": f"zero-filled: {d['what']}",
            "trailing_bytes": f"{d['bytes']} trailing bytes after the payload"
                              + ("" if d.get("what") is None else f"; {d['what']}"),
            "torn_tail": f"torn tail, {d['bytes']} bytes lost"
                         + ("" if d.get("size_now") is None else f" ({d['what']})"),
        }[d["kind"]]
        lines.append(f"  {_where(d)}: {what}")
    return lines


def history_line(history: dict) -> str:
    first = history["first_record"]
    needs = ("a restore needs a snapshot that covers them (--base/--snapshots) or "
             "--allow-incomplete-history")
    if history.get("expire_marker_problem"):
        return (f"history: UNKNOWN: its expire marker .gpu-pitr-expired: "
                f"{history['expire_marker_problem']}; restores refuse this directory while "
                "it is so")
    if history.get("expired_before"):
        # The segments left may start at seq 0 (a writer that restarted its numbers).
        return (f"history: INCOMPLETE: gpu-pitr expire deleted the segments before "
                f"{history['expired_before']}; {needs}")
    if first is None:
        return "history: no records"
    where = f"the log starts at seq {first['seq']} ({first['file']}: offset {first['offset']})"
    if history["complete"]:
        return f"history: complete: {where}"
    return f"history: INCOMPLETE: {where}, not 0: earlier records are gone; {needs}"


def _where(item: dict) -> str:
    seq = item.get("seq")
    return f"{item['file']}: offset {item['offset']}" + ("" if seq is None else f": seq {seq}")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 segment``, ``2 segments`` (``nouns``: the plural, where not noun + s)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def utc_text(seconds: int) -> str:
    """ISO-8601 UTC for a WAL timestamp, or the raw number where it is out of range."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def seconds_text(seconds: int) -> str:
    """A WAL timestamp as its number and, where it has one, its ISO-8601 UTC form:
    ``1764151320 (2026-11-26T10:02:00Z)``; the number alone when it is out of range
    (not the number twice)."""
    utc = utc_text(seconds)
    return str(seconds) if utc == str(seconds) else f"{seconds} ({utc})"
