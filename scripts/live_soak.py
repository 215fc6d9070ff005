#!/usr/bin/env python3
"""Soak: the command line beside a live writer and its retention, as an operator runs it.

A writer process appends to a WAL directory (``WalWriter``, an 8 KiB buffer, so records
reach the file in pieces), and the writer's retention deletes all but the newest three
segments every two seconds. Meanwhile an operator loop runs, round after round:
``archive``, ``verify`` of the archive, a ``snapshot`` of the archive every third round,
``restore`` of the archive with ``--snapshots``, and ``verify`` of the live directory.
Every command must exit 0 and ``restore`` must print nothing on stderr; once the
writer has stopped, one more ``archive`` and a ``verify`` of the archive must pass.

Prints a table: rounds, and per command how many runs failed (with the first output of
the first failure). Not a test: it takes as long as it is told, and its result depends
on how fast the host is against the writer (the archive must keep up with rotation).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

WRITER = """
import sys, time
from gpu_pitr.format.writer import WalWriter
from gpu_pitr.format.entries import Delete, Insert
w = WalWriter(sys.argv[1], max_segment_bytes=int(sys.argv[3]), buffer_size=8192)
stop = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < stop:
    if i % 10 == 9:
        w.append(Delete(f"v{(i * 7) % 3000}", int(time.time())))
    else:
        w.append(Insert(f"v{i % 3000}", [float(i)] * 32,
                        {"i": str(i)} if i % 5 == 0 else None, int(time.time())))
    i += 1
    if i % 500 == 0:
        time.sleep(0.05)
w.close()
print(i)
"""


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpu_pitr", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40, help="how long the writer writes")
    ap.add_argument("--segment-bytes", type=int, default=8_000_000,
                    help="the writer's rotation size")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    opts = ap.parse_args()
    root = Path(opts.dir or tempfile.mkdtemp(prefix="gpu_pitr-soak-"))
    wal, arc, snaps = root / "wal", root / "arc", root / "snaps"
    for d in (wal, arc, snaps):
        shutil.rmtree(d, ignore_errors=True)
    wal.mkdir(parents=True)
    snaps.mkdir()
    # Compile (or load) what the commands run before the writer starts: a first run's
    # compiling would otherwise let retention delete segments before archive saw them.
    warm = root / "warm"
    subprocess.run([sys.executable, "-c", WRITER, str(warm), "0.2", "1000000"], check=True,
                   capture_output=True)
    for args in (("archive", warm, "--out", root / "warm-arc", "-q"), ("verify", warm),
                 ("snapshot", warm, "--out", root / "warm-snap", "-q"),
                 ("restore", warm, "--snapshots", snaps, "--out", root / "warm.npz", "-q")):
        _cli(*args)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(wal), str(opts.seconds),
                               str(opts.segment_bytes)], stdout=subprocess.PIPE, text=True)
    done = threading.Event()

    def retention() -> None:  # what oxirs-vec's checkpoint cleanup does
        while not done.wait(2.0):
            for path in sorted(wal.glob("wal-*.log"))[:-3]:
                path.unlink(missing_ok=True)

    threading.Thread(target=retention, daemon=True).start()
    failed: dict[str, list[str]] = {k: [] for k in (
        "archive", "verify archive", "snapshot", "restore", "verify live")}
    rounds = 0
    while writer.poll() is None:
        rounds += 1
        runs = {"archive": _cli("archive", wal, "--out", arc, "-q"),
                "verify archive": _cli("verify", arc)}
        if rounds % 3 == 1:
            runs["snapshot"] = _cli("snapshot", arc, "--out", snaps / f"s{rounds}", "-q")
        runs["restore"] = _cli("restore", arc, "--snapshots", snaps, "--out",
                               root / "o.npz", "-q")
        runs["verify live"] = _cli("verify", wal)
        for name, proc in runs.items():
            if proc.returncode != 0 or (name == "restore" and proc.stderr):
                failed[name].append(f"round {rounds}: rc {proc.returncode}: "
                                    + (proc.stderr or proc.stdout).strip()[:300])
    done.set()
    written = int(writer.stdout.read().strip() or 0)
    final = {"archive": _cli("archive", wal, "--out", arc, "-q"),
             "verify archive": _cli("verify", arc)}
    print(f"{rounds} rounds beside a writer of {written:,} records "
          f"({opts.seconds:g} s, segments of {opts.segment_bytes:,} bytes)")
    print(f"{'command':<22} {'runs failed':>12}")
    for name, fails in failed.items():
        print(f"{name:<22} {len(fails):>12}")
    for name, proc in final.items():
        print(f"{'final ' + name:<22} {'ok' if proc.returncode == 0 else 'FAILED':>12}")
    for name, fails in failed.items():
        if fails:
            print(f"first {name} failure: {fails[0]}")
    if not opts.dir:
        shutil.rmtree(root, ignore_errors=True)
    bad = any(failed.values()) or any(p.returncode for p in final.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
