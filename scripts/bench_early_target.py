"""Benchmark: a restore to an early target, reading on past it or stopping there.

By default a restore reads the whole log, so that damage after its stop point is
reported; ``read_after_stop=False`` (``--stop-reading-at-target``) ends reading at
the stop record. In one run on the same files this times, alternated, median of
``--repeat``: restores to targets at fractions of the log's time span, each way; and,
from a snapshot taken at ``--snapshot-at``, a restore to a target a little after it
(the case of an incident found hours late: the hour's snapshot, then minutes of log).
Every pair must give the same index (ids and vector bits compared). A benchmark: it
prints ratios measured in this run, it never asserts a time.

    python scripts/bench_early_target.py --dir /tmp/bench1g
    python scripts/bench_early_target.py --size 64M --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def _fingerprint(index) -> tuple:
    """What two restores that agree share: ids, and the vectors' bits (CRC-32)."""
    host = index.to_host()
    vectors = np.ascontiguousarray(host.vectors)
    return (len(host), zlib.crc32(host._id_arena), zlib.crc32(vectors.view(np.uint8)))


def drop_page_cache() -> None:
    """The log's pages out of the page cache (Linux, as root), so that a restore reads
    it from the disk: ``--cold``."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _timed(restore, cold: bool = False, **kw) -> tuple[float, tuple, dict]:
    gc.collect()
    if cold:
        drop_page_cache()
    t = time.perf_counter()
    index = restore(**kw)
    seconds = time.perf_counter() - t
    report = index.report
    facts = {"bytes_read": report.bytes_read, "records_read": report.records_read,
             "ids": report.ids}
    fingerprint = _fingerprint(index)
    del index
    return seconds, fingerprint, facts


def compare(restore, repeat: int, cold: bool = False, **kw) -> dict:
    """Reading on against stopping, alternated; the same index both ways."""
    runs: dict[str, list[float]] = {"read_on": [], "stop": []}
    seen: dict[str, tuple] = {}
    facts: dict[str, dict] = {}
    for _ in range(repeat):
        for way, flag in (("read_on", True), ("stop", False)):
            seconds, fingerprint, facts[way] = _timed(restore, cold, read_after_stop=flag,
                                                      **kw)
            runs[way].append(seconds)
            seen.setdefault(way, fingerprint)
            if seen[way] != fingerprint:
                raise SystemExit(f"{way}: two runs gave different indexes")
    if seen["read_on"] != seen["stop"]:
        raise SystemExit(f"stopping at the target gave another index than reading on ({kw})")
    on, stop = statistics.median(runs["read_on"]), statistics.median(runs["stop"])
    return {"read_on_s": on, "stop_s": stop, "speedup": on / stop, "runs": runs,
            "bytes_read": {k: v["bytes_read"] for k, v in facts.items()},
            "ids": facts["stop"]["ids"], "equal": True}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="WAL directory: reused if it holds segments, else written")
    ap.add_argument("--size", default="64M", help="WAL size when one is written (64M, 1G)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--fractions", default="0.1,0.5,0.9",
                    help="targets, as fractions of the log's time span")
    ap.add_argument("--snapshot-at", type=float, default=0.5,
                    help="the snapshot's place (a fraction); the target is 5%% later")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each restore (Linux, root): the log "
                    "read from the disk, as after a reboot or on a host that did not write it")
    ap.add_argument("--json", help="also write every number to this file")
    opts = ap.parse_args(argv)

    import gpu_pitr
    from gpu_pitr.budget import parse_size
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.snapshot import save
    from gpu_pitr.synth import write_synthetic_wal

    wal = Path(opts.dir or Path(tempfile.mkdtemp(prefix="gpu_pitr_early_")) / "wal")
    if not (wal.is_dir() and list_segments(wal)):
        write_synthetic_wal(wal, total_bytes=parse_size(opts.size), dim=opts.dim, segments=8)
    log_bytes = sum(s.size for s in list_segments(wal))
    gpu_pitr.restore(wal, backend="cpu", to_seq=0)  # the warm-up: compiled code loaded
    first, last = _time_span(wal)
    restore = gpu_pitr.restore
    out: dict = {"wal": str(wal), "log_bytes": log_bytes, "cold": opts.cold, "targets": []}
    if opts.cold:
        try:
            drop_page_cache()  # refused (not root, not Linux): said now, not mid-run
        except OSError as err:
            raise SystemExit(f"--cold: cannot drop the page cache ({err}): it needs Linux "
                             "and root") from None
    print(f"log {wal}: {log_bytes / 1e9:.3f} GB, stamps {first}..{last}; "
          f"medians of {opts.repeat}, alternated; page cache "
          f"{'dropped before each restore' if opts.cold else 'warm'}\n")
    print(f"{'target':>24} {'read on s':>10} {'stop s':>8} {'speedup':>8} {'read (stop)':>12}")
    for frac in (float(x) for x in opts.fractions.split(",")):
        t = first + int(frac * (last - first))
        r = compare(lambda **kw: restore(wal, backend="cpu", **kw), opts.repeat, opts.cold,
                    to_time=t)
        r["fraction"], r["to_time"] = frac, t
        out["targets"].append(r)
        print(f"{f'{frac:.0%} of the log':>24} {r['read_on_s']:10.3f} {r['stop_s']:8.3f} "
              f"{r['speedup']:7.2f}x {r['bytes_read']['stop'] / log_bytes:11.1%}")
    with tempfile.TemporaryDirectory(prefix="gpu_pitr_early_snaps_") as snaps:
        at = first + int(opts.snapshot_at * (last - first))
        save(restore(wal, backend="cpu", to_time=at), Path(snaps) / "snap")
        t = first + int(min(1.0, opts.snapshot_at + 0.05) * (last - first))
        r = compare(lambda **kw: restore(wal, backend="cpu", snapshots=snaps, **kw),
                    opts.repeat, opts.cold, to_time=t)
        r["snapshot_at"], r["to_time"] = opts.snapshot_at, t
        out["from_snapshot"] = r
        label = f"snapshot {opts.snapshot_at:.0%} -> +5%"
        print(f"{label:>24} {r['read_on_s']:10.3f} {r['stop_s']:8.3f} "
              f"{r['speedup']:7.2f}x {r['bytes_read']['stop'] / log_bytes:11.1%}")
    print("\nevery pair gave the same index (ids and vector bits)")
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=1))
    return 0


def _time_span(wal: Path) -> tuple[int, int]:
    """The first and last record stamps (``gpu-pitr inspect``'s per-segment ranges)."""
    from gpu_pitr.format.stats import wal_stats

    doc = wal_stats(wal)
    lows = [s["min_timestamp"] for s in doc["segments"] if s.get("min_timestamp") is not None]
    highs = [s["max_timestamp"] for s in doc["segments"] if s.get("max_timestamp") is not None]
    return min(lows), max(highs)


if __name__ == "__main__":
    sys.exit(main())
