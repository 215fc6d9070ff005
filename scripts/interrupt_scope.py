"""Commands stopped at random moments: every one must end as docs/damage.md promises.

The tests stop a command at chosen places (a temp file being written, a callback, a
close); this stops ``python -m gpu_pitr COMMAND`` with SIGINT or SIGTERM at moments
drawn uniformly from ``[--from, --to]`` seconds after its start, and checks each run:

- it exits as the same command run unstopped did (0, nothing on stderr: the signal
  came once it had finished, or during the interpreter's shutdown, and was ignored),
  or 128 + the signal with exactly the one line ``gpu-pitr: interrupted by SIG...;
  outputs not yet complete were removed`` (a command that writes; ``gpu-pitr:
  interrupted by SIG...`` alone from one that only reads or deletes, and from any
  command stopped before it started);
- never a death by a signal (a status below 0: SIGSEGV, or SIGINT after the line),
  a traceback, or another status;
- what the command writes is as its documents promise (``--command``):

  ``restore`` (the default), ``restore-parquet``, ``restore-base`` (``--base SNAP``),
  ``restore-snapshots`` (``--snapshots DIR``): ``OUT`` (``.npz``, ``.parquet``) is the
  previous bytes or the complete new output, no temp file of it is left, and the base
  snapshots are unchanged;
  ``restore-snapshot`` (``restore --format snapshot``), ``snapshot``: the snapshot
  directory is the previous snapshot or the complete new one, both intact (checksums),
  and no temp or aside directory of it is left;
  ``archive`` (into no archive, or one holding the first segments): every copy is a
  whole copy of its segment, nothing else is left in the archive, ``verify`` of it
  finds no damage and every copy's checksums recorded (a stopped run records those of
  the copies it made), and a rerun completes it;
  ``expire`` (``--keep 1`` of three snapshots): it deleted no more than a whole run
  does, snapshots before segments, segments oldest first (what stays is every segment
  from one on), none before the marker was written; no aside or temp file is left;
  ``verify`` of the archive finds no damage, a restore of the archive from the
  snapshots is the complete state, and a rerun ends where a whole run does;
  ``verify``, ``verify-archive`` (copies checked on a pool), ``inspect``: nothing in
  the run's directory changed.

Each run's status and time go to stdout as it ends; a summary table comes last. The
interpreter's fault handler is on (``PYTHONFAULTHANDLER``), so a crash prints every
thread's stack. This found, in the 49th session, over some 1,000 restores on a loaded
2-vCPU VM: a SIGSEGV when the stop landed in llvmlite's object-cache callback, a death
by SIGINT after the line under ``python -m``, and a traceback when it landed in a
thread pool's ``Condition.wait`` (gpu_pitr/interrupts.py says how each is handled now).
Over the other commands (``--command``, some 1,100 runs, counts in docs/damage.md's
interrupt row) it found a traceback and status 1 when the stop landed in Numba's import
of ``numba._devicearray``, whose C code prints the stop and raises an ImportError in
its place (``interrupts.handle_signals`` raises the stop for it now). A finished run's
line says how long after the signal it exited: a command that let a signal by and ran
on would show there.

    python scripts/interrupt_scope.py --runs 200 [--signal SIGTERM] [--mib 120]
    python scripts/interrupt_scope.py --command archive --runs 60 [--mib 16]

The log (synthetic, ``--mib`` MiB (default 120 for ``restore``, 16 for the others),
128 dims, 3 segments, 4 for ``archive`` and ``expire``) and the outputs go in a temp
directory, removed at the end. The command runs first twice, unstopped: the first
compiles what the cache lacks, the second gives the time the moments are drawn within
(``--to``), and both the complete output and the exit (status, stderr) the others are
compared with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from workloads import dir_state  # noqa: E402

from gpu_pitr.synth import write_synthetic_wal  # noqa: E402

PREVIOUS = b"the previous output, which must survive whole"
LOCK, SUMS, MARKER = ".gpu-pitr-archive.lock", ".gpu-pitr-archive.sums", ".gpu-pitr-expired"


def _digest(path: Path) -> str:
    """The restored ids, vectors and metadata of a complete .npz (the report holds
    timings); a partial file fails to load."""
    import numpy as np

    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for key in ("ids", "vectors", "metadata"):
            digest.update(np.ascontiguousarray(z[key]).tobytes())
    return digest.hexdigest()


def _parquet_digest(path: Path) -> str:
    """The rows of a complete .parquet (its schema's metadata, the report, left out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path).replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _index_digest(index) -> str:
    """A restored (or loaded) state's ids, vectors and metadata."""
    import numpy as np

    digest = hashlib.sha256()
    for part in (index.ids, index.vectors, index.metadata_json()):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def _snapshot_digest(path: Path) -> str:
    """A snapshot's state and position, every checksum checked (a partial or damaged
    one raises)."""
    from gpu_pitr import snapshot

    snap = snapshot.load(path)
    return _index_digest(snap.to_index()) + json.dumps(snap.position, sort_keys=True)


def _temps(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*")) + sorted(
        out.parent.glob(f".{out.name}.old-*"))


def _command(wal: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", str(out),
            "--backend", "cpu"]


def _segments(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("wal-*.log"))}


class Scenario:
    """One command: what it writes, set up before each run and checked after it."""

    writes = True  # its line says outputs not yet complete were removed
    segments = 3

    def __init__(self, tmp: Path, mib: int) -> None:
        self.tmp = tmp
        self.wal = tmp / "wal"
        write_synthetic_wal(self.wal, total_bytes=mib << 20, dim=128,
                            segments=self.segments, seed=7)
        self.baseline: tuple[int, str] = (0, "")

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self, k: int) -> None:
        """The state before run ``k``."""

    def complete(self) -> None:
        """Record what the unstopped run (just done) wrote."""

    def check(self, stopped: bool) -> str:
        """What is wrong with the state after a run ('' when nothing)."""
        return ""


class Restore(Scenario):
    """``restore WAL --out OUT.npz``: OUT is the previous bytes or the complete one."""

    suffix = ".npz"

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self.out = tmp / f"OUT{self.suffix}"
        self.whole: str | None = None

    def extra(self) -> list[str]:
        return []

    def command(self) -> list[str]:
        return _command(self.wal, self.out) + self.extra()

    def prepare(self, k: int) -> None:
        self.out.write_bytes(PREVIOUS)

    def digest(self) -> str:
        return _digest(self.out)

    def complete(self) -> None:
        self.whole = self.digest()

    def check(self, stopped: bool) -> str:
        left = _temps(self.out)
        now = self.out.read_bytes() if self.out.exists() else None
        if stopped:
            if now != PREVIOUS:
                return "the previous output was not kept"
        else:
            try:
                whole = now is not None and self.digest() == self.whole
                problem = ""
            except (OSError, ValueError) as err:
                whole, problem = False, str(err)
            if not whole:
                return f"the output is not the complete one {problem!r}"
        return f"temp files left: {left}" if left else ""


class RestoreParquet(Restore):
    suffix = ".parquet"

    def digest(self) -> str:
        return _parquet_digest(self.out)


class _Bases:
    """Snapshots of the log made in-process, and checked unchanged after each run."""

    def _snapshot(self, wal: Path, out: Path, to_seq: int | None) -> None:
        import gpu_pitr
        from gpu_pitr import snapshot

        snapshot.save(gpu_pitr.restore(wal, to_seq=to_seq, backend="cpu"), out)

    def _records(self, wal: Path) -> int:
        import gpu_pitr

        return int(gpu_pitr.restore(wal, backend="cpu").report.records_read)


class _FromSnapshots(Restore, _Bases):
    """A restore that reads snapshots (``flag`` PATH): as ``restore``; PATH unchanged."""

    flag = ""

    def _watch(self, path: Path) -> None:
        self.watched, self.watched_tree = path, dir_state(path)

    def extra(self) -> list[str]:
        return [self.flag, str(self.watched)]

    def check(self, stopped: bool) -> str:
        if dir_state(self.watched) != self.watched_tree:
            return f"{self.watched.name} changed"
        return super().check(stopped)


class RestoreBase(_FromSnapshots):
    """``restore WAL --base SNAP``: as ``restore``; SNAP unchanged."""

    flag = "--base"

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self._snapshot(self.wal, tmp / "base", self._records(self.wal) // 2)
        self._watch(tmp / "base")


class RestoreSnapshots(_FromSnapshots):
    """``restore WAL --snapshots DIR``: as ``restore``; DIR unchanged."""

    flag = "--snapshots"

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        snaps = tmp / "snaps"
        snaps.mkdir()
        n = self._records(self.wal)
        for name, seq in (("s1", n // 3), ("s2", 2 * n // 3)):
            self._snapshot(self.wal, snaps / name, seq)
        self._watch(snaps)


class Snapshot(Scenario, _Bases):
    """``snapshot WAL --out SNAP``: SNAP is the previous snapshot (of an earlier
    target) or the complete new one; no temp or aside directory of it is left."""

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self.out = tmp / "SNAP"
        self.previous_dir = tmp / "previous"
        self._snapshot(self.wal, self.previous_dir, self._records(self.wal) // 3)
        self.previous = _snapshot_digest(self.previous_dir)
        self.whole: str | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gpu_pitr", "snapshot", str(self.wal), "--out",
                str(self.out), "--backend", "cpu"]

    def prepare(self, k: int) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        shutil.copytree(self.previous_dir, self.out)

    def complete(self) -> None:
        self.whole = _snapshot_digest(self.out)

    def check(self, stopped: bool) -> str:
        left = _temps(self.out)
        try:
            now = _snapshot_digest(self.out)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            return f"the snapshot does not load: {err}"
        if now != (self.previous if stopped else self.whole):
            return ("the previous snapshot was not kept" if stopped
                    else "the snapshot is not the complete one")
        return f"temp directories left: {left}" if left else ""


class RestoreSnapshot(Snapshot):
    """``restore WAL --out SNAP --format snapshot``: as ``snapshot``."""

    def command(self) -> list[str]:
        return _command(self.wal, self.out) + ["--format", "snapshot"]


def _archive_wal(wal: Path, archive: Path) -> None:
    from gpu_pitr.archive import archive as run

    result = run(wal, archive)
    if not result.ok:
        raise RuntimeError(f"archive {archive}: {result.to_dict()}")


def _verify_problem(directory: Path, *, unchecked: bool = False) -> str:
    """What ``verify`` finds wrong in ``directory`` ('' when nothing): damage, and with
    ``unchecked``, copies whose checksums were not recorded."""
    from gpu_pitr.verify import verify_wal

    found = verify_wal(directory)
    bad = [p for p in found.problems
           if p.severity == "damage" or (unchecked and p.kind == "archive_unchecked")]
    return "; ".join(f"{p.file}: {p.kind}: {p.what}" for p in bad[:3])


class Archive(Scenario):
    """``archive WAL --out ARCH`` (ARCH missing in even runs, holding the first two
    segments' copies in odd ones)."""

    segments = 4

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self.out = tmp / "ARCH"
        self.sources = _segments(self.wal)
        first = tmp / "first"
        first.mkdir()
        for name in sorted(self.sources)[:2]:
            (first / name).write_bytes(self.sources[name])
        self.template = tmp / "arch-template"
        _archive_wal(first, self.template)
        self.started_empty = False

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gpu_pitr", "archive", str(self.wal), "--out",
                str(self.out)]

    def prepare(self, k: int) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.started_empty = k % 2 == 0
        if not self.started_empty:
            shutil.copytree(self.template, self.out)

    def check(self, stopped: bool) -> str:
        if not self.out.exists():
            return "" if stopped and self.started_empty else "the archive is gone"
        names = sorted(os.listdir(self.out))
        copies = _segments(self.out)
        others = [n for n in names if n not in copies and n not in (LOCK, SUMS)]
        if others:
            return f"left in the archive: {others}"
        if not copies:
            return ("an archive with no copy left behind" if self.started_empty
                    else "the archive's copies are gone")
        cut = [n for n, data in copies.items() if data != self.sources[n]]
        if cut:
            return f"copies that are not their segment: {cut}"
        if not self.started_empty and len(copies) < 2:
            return "copies the archive held are gone"
        if not stopped and copies != self.sources:
            return f"finished, with {len(copies)} of {len(self.sources)} copies"
        problem = _verify_problem(self.out, unchecked=True)
        if problem:
            return f"verify of the archive: {problem}"
        try:
            _archive_wal(self.wal, self.out)
        except Exception as err:  # noqa: BLE001 - the rerun must complete
            return f"the rerun failed: {err}"
        if _segments(self.out) != self.sources:
            return "the rerun did not complete the archive"
        problem = _verify_problem(self.out, unchecked=True)
        return f"verify after the rerun: {problem}" if problem else ""


class Expire(Scenario, _Bases):
    """``expire ARCH --snapshots SNAPS --keep 1``, SNAPS holding three snapshots of the
    archive whose positions are in its second, third and fourth segments."""

    segments = 4
    writes = False

    def __init__(self, tmp: Path, mib: int) -> None:
        import gpu_pitr

        super().__init__(tmp, mib)
        self.arch, self.snaps = tmp / "ARCH", tmp / "SNAPS"
        self.arch_t, self.snaps_t = tmp / "arch-template", tmp / "snaps-template"
        _archive_wal(self.wal, self.arch_t)
        self.snaps_t.mkdir()
        n = self._records(self.arch_t)
        self.names = ["s1", "s2", "s3"]  # log order
        for name, part in zip(self.names, (0.35, 0.6, 0.9), strict=True):
            self._snapshot(self.arch_t, self.snaps_t / name, int(n * part))
        self.sources = _segments(self.arch_t)
        self.whole = _index_digest(gpu_pitr.restore(self.wal, backend="cpu"))
        self.end: dict | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gpu_pitr", "expire", str(self.arch), "--snapshots",
                str(self.snaps), "--keep", "1"]

    def prepare(self, k: int) -> None:
        for path, template in ((self.arch, self.arch_t), (self.snaps, self.snaps_t)):
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(template, path)

    def state(self) -> dict:
        marker = self.arch / MARKER
        return {"snapshots": sorted(os.listdir(self.snaps)),
                "archive": sorted(os.listdir(self.arch)),
                "marker": json.loads(marker.read_text()) if marker.exists() else None}

    def complete(self) -> None:
        self.end = self.state()
        if self.end["snapshots"] != ["s3"]:
            raise RuntimeError(f"the unstopped expire left {self.end}")

    def check(self, stopped: bool) -> str:
        import gpu_pitr
        from gpu_pitr import snapshot
        from gpu_pitr.expire import expire

        now = self.state()
        if not stopped and now != self.end:
            return f"finished, but left {now}, not {self.end}"
        snaps = now["snapshots"]
        if [n for n in snaps if n not in self.names]:
            return f"left in the snapshots' directory: {snaps}"
        # The older ones go newest first (s2, then s1), and all before any segment.
        if snaps not in (["s1", "s2", "s3"], ["s1", "s3"], ["s3"]):
            return f"snapshots left: {snaps}"
        try:
            snapshot.verify(self.snaps / "s3")
        except Exception as err:  # noqa: BLE001
            return f"the snapshot kept is damaged: {err}"
        copies = _segments(self.arch)
        order = sorted(self.sources)
        gone = [n for n in order if n not in copies]
        if gone != order[: len(gone)] or len(gone) == len(order):
            return f"segments deleted: {gone}"
        if [n for n in copies if copies[n] != self.sources[n]]:
            return "a segment changed"
        others = [n for n in now["archive"] if n not in copies and n not in (LOCK, SUMS,
                                                                             MARKER)]
        if others:
            return f"left in the archive: {others}"
        if gone and (snaps != ["s3"] or now["marker"] is None):
            return f"segments deleted before the snapshots or the marker: {now}"
        if now["marker"] is not None and now["marker"] != self.end["marker"]:
            return f"the marker is {now['marker']}"
        problem = _verify_problem(self.arch)
        if problem:
            return f"verify of the archive: {problem}"
        try:
            index = gpu_pitr.restore(self.arch, snapshots=self.snaps, backend="cpu")
        except Exception as err:  # noqa: BLE001
            return f"the archive does not restore from the snapshots: {err}"
        if _index_digest(index) != self.whole:
            return "the archive restored from the snapshots is not the complete state"
        if not expire(self.arch, self.snaps, keep=1).ok:
            return "the rerun failed"
        return "" if self.state() == self.end else f"the rerun left {self.state()}"


class Verify(Scenario):
    """``verify WAL``: nothing in the run's directory changes."""

    writes = False
    words = ("verify",)

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self.target = self.wal
        self.before: dict | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gpu_pitr", *self.words, str(self.target)]

    def prepare(self, k: int) -> None:
        if self.before is None:
            self.before = dir_state(self.tmp)

    def check(self, stopped: bool) -> str:
        return "" if dir_state(self.tmp) == self.before else "the directory changed"


class VerifyArchive(Verify):
    """``verify ARCH``: the copies are checked against their sums on a pool too."""

    def __init__(self, tmp: Path, mib: int) -> None:
        super().__init__(tmp, mib)
        self.target = tmp / "ARCH"
        _archive_wal(self.wal, self.target)


class Inspect(Verify):
    words = ("inspect",)


SCENARIOS = {"restore": Restore, "restore-parquet": RestoreParquet,
             "restore-base": RestoreBase, "restore-snapshots": RestoreSnapshots,
             "restore-snapshot": RestoreSnapshot, "snapshot": Snapshot,
             "archive": Archive, "expire": Expire, "verify": Verify,
             "verify-archive": VerifyArchive, "inspect": Inspect}


def _popen(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd,
                            # Children of a non-interactive shell may inherit SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


class _Timing:
    after = 0.0  # seconds from the signal to the exit of the last run


def _run(scenario: Scenario, k: int, sig: signal.Signals, moment: float) -> tuple[str, str]:
    """One stopped run: (its outcome's name, what was wrong, or '')."""
    scenario.prepare(k)
    proc = _popen(scenario.command(), scenario.tmp)
    time.sleep(moment)
    proc.send_signal(sig)
    sent = time.perf_counter()
    said, err = proc.communicate(timeout=600)
    _Timing.after = time.perf_counter() - sent
    status = proc.returncode
    # (Stopped before the command itself started, as the interpreter imported it, it
    # has written nothing, and says only that.)
    short = f"gpu-pitr: interrupted by {sig.name}\n"
    lines = (short, (f"gpu-pitr: interrupted by {sig.name}; outputs not yet complete "
                     "were removed\n")) if scenario.writes else (short,)
    if status == scenario.baseline[0]:
        if err != scenario.baseline[1]:
            return "finished", f"stderr {err[-2000:]!r}"
        return "finished", scenario.check(stopped=False)
    if status == 128 + sig:
        if err not in lines:
            return "stopped", f"stderr {err[-2000:]!r}"
        if scenario.writes and err == short and said:
            # (archive prints each copy's line as it is made: the command had started)
            return "stopped", f"the line of a command not started, after {said[:200]!r}"
        return "stopped", scenario.check(stopped=True)
    what = f"died by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
    return what, f"stderr {err[-4000:]!r}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", default="restore", choices=sorted(SCENARIOS),
                    help="the command stopped (default restore, to OUT.npz)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    ap.add_argument("--from", dest="lo", type=float, default=0.3,
                    help="earliest moment, seconds after the start (default 0.3)")
    ap.add_argument("--to", dest="hi", type=float, default=None,
                    help="latest moment (default: the unstopped run's time)")
    ap.add_argument("--mib", type=int, default=None,
                    help="the log's size (default 120 for restore, else 16)")
    ap.add_argument("--seed", type=int, default=49)
    args = ap.parse_args(argv)
    sig = signal.Signals[args.signal]
    rng = random.Random(args.seed)
    mib = args.mib if args.mib is not None else (120 if args.command == "restore" else 16)
    with tempfile.TemporaryDirectory(prefix="gpu_pitr-interrupt-") as tmp:
        scenario = SCENARIOS[args.command](Path(tmp), mib)
        for _ in range(2):  # (the first compiles what the cache lacks: not timed)
            scenario.prepare(-1)
            start = time.perf_counter()
            proc = _popen(scenario.command(), scenario.tmp)
            _, err = proc.communicate(timeout=600)
            whole = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"the unstopped {args.command}: status {proc.returncode}, "
                                   f"{err!r}")
        scenario.baseline = (proc.returncode, err)
        scenario.complete()
        hi = args.hi if args.hi is not None else whole
        print(f"unstopped {args.command}: {whole:.2f} s; stopping at {args.lo:.2f}-{hi:.2f} s "
              f"with {sig.name}", flush=True)
        outcomes: Counter = Counter()
        wrong: list[str] = []
        latest = 0.0  # the longest a finished run went on after the signal
        for k in range(args.runs):
            moment = rng.uniform(args.lo, hi)
            what, problem = _run(scenario, k, sig, moment)
            outcomes[what] += 1
            if what == "finished":
                latest = max(latest, _Timing.after)
            print(f"{k:4d} at {moment:5.2f} s: {what}{': ' + problem if problem else ''} "
                  f"(exit {_Timing.after:.2f} s after the signal)", flush=True)
            if problem:
                wrong.append(f"at {moment:.2f} s: {what}: {problem}")
    # A signal the command let by would show as a run that went on long after it, then
    # finished: those that finished should have been exiting already (a few tenths).
    print(f"\nfinished runs exited at most {latest:.2f} s after the signal")
    print(f"\n{'outcome':<24}{'runs':>6}")
    for what, n in sorted(outcomes.items()):
        print(f"{what:<24}{n:>6}")
    print(f"{'not as promised':<24}{len(wrong):>6}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
