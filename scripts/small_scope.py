"""Exhaustive small-scope check: a restore from snapshots gives the whole log's answer,
and the dry run (``plan_restore``) predicts the restore.

Random tests (tests/test_to_position.py, tests/test_plan_properties.py) seldom draw the
corner cases of damage next to a snapshot's position (CI drew one: a zero-filled record
that was itself a snapshot's stop). This enumerates them instead: small logs (1-3
segments, 4-5 records, a transaction committed or aborted; one starting at seq 5)
times one damage at every place (zero-filled records of 12, 24, 30 or 5 bytes, a second
header, a writer reopened, a seq restart or gap, an impossible length, an undecodable
payload, each at a segment's start, between two records or at its end; zeros and then
a restart at one place; a torn tail inside each record; a wrong magic on each segment;
the first segment deleted before, or after the snapshots were taken, zeros at a later
segment's place too), times ``skip_corrupt`` x ``allow_incomplete_history``, times
every target (each record or damage position inclusive and exclusive, each seq and 0,
each timestamp inclusive and exclusive, transactions 1 and 2, latest). Each target's
whole-log restore is snapshotted when it succeeds (one snapshot a state and stop);
then every target is restored with ``snapshots=`` (it must give the whole log's
answer, as ``test_random_snapshots_give_the_whole_logs_answer`` compares), with
``base=`` each snapshot (or be refused: later than the target, a gap), and with
``snapshots=`` of the restores from snapshots (a second generation), reading on past
the stop or not, in small chunks or not; every restore is checked against its plan
(``test_plan_properties.check_plan_predicts_restore``).

Usage: ``nice -n 10 python scripts/small_scope.py [--full] [--only LOG[:KIND]]
[--sample K] [-v]``. The default run leaves out targets that name the same stop as
another (a seq one record carries: its position), ``allow_incomplete_history`` where
no restore met a gap without it, and pairs each target with the snapshot taken at it
and a stride of the others; ``--full``: everything, every pair, both chunk sizes with
both ``read_after_stop``. Prints each disagreement and a count; exits 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import test_plan_properties as tpp  # noqa: E402
import workloads as w  # noqa: E402
from workloads import Abort, Begin, Commit, Del, Ins, LogBuilder, Upd, encode_header  # noqa: E402

import gpu_pitr  # noqa: E402
from gpu_pitr import errors, snapshot  # noqa: E402
from gpu_pitr.expire import MARKER_FORMAT, MARKER_NAME  # noqa: E402

#: The logs damage is placed in: segments of (entry) records, stamped 1, 2, ...
LOGS = {
    "one": [[Ins("a", [1.0], ts=1), Begin(1, ts=2), Ins("b", [2.0], ts=3), Commit(1, ts=4),
             Del("a", ts=5)]],
    "two": [[Ins("a", [1.0], ts=1), Begin(1, ts=2)],
            [Ins("b", [2.0], ts=3), Abort(1, ts=4), Ins("c", [3.0], ts=5)]],
    "three": [[Ins("a", [1.0], ts=1)], [Begin(1, ts=2), Upd("a", [2.0], ts=3)],
              [Commit(1, ts=4), Ins("c", [3.0], ts=5)]],
    # (History before it gone: the log starts at seq 5.)
    "late": [[Ins("a", [1.0], ts=1), Begin(1, ts=2), Commit(1, ts=3), Ins("b", [2.0], ts=4)]],
}
#: The first seq of a log, where not 0.
FIRST_SEQ = {"late": 5}
#: Damage put between two records (or at a segment's start or end).
PLACED = ("zeros12", "zeros24", "zeros30", "zeros5", "header", "reopen", "restart", "gap",
          "badlen", "garbage")
#: Two damages at one place (``a>b``: a, then b).
TWICE = ("zeros12>restart", "zeros12>reopen", "zeros12>gap")
CREATED = 0x5F5E100


def cases(logs=LOGS):
    """Every (log name, damage kind, where): ``where`` a slot (0: a segment's start, right
    after its header; k: after its k-th record) for placed damage, a record's index and
    cut for a torn tail, a segment's index for a wrong magic."""
    for name, segs in logs.items():
        yield name, "none", None
        for kind in PLACED:
            for k, recs in enumerate(segs):
                for slot in range(len(recs) + 1):
                    yield name, kind, (k, slot)
        for k, recs in enumerate(segs):
            for r in range(len(recs)):
                for cut in ("header", "payload"):
                    yield name, "torn", (k, r, cut)
            yield name, "magic", k
        if len(segs) > 1:
            yield name, "gone", 0
        for k in range(len(segs) - 1):  # (deleted after the snapshots were taken)
            for marker in (False, True):
                yield name, "expired", (k, marker)
        for kind in TWICE:  # (two at one place: zeros, then the writer restarted)
            for k, recs in enumerate(segs):
                for slot in range(len(recs) + 1):
                    yield name, kind, (k, slot)
        for then in ("gone", "expired") if len(segs) > 1 else ():
            # (Two at once: zero-filled records, the first segment deleted.)
            for k, recs in enumerate(segs[1:], 1):
                for slot in range(len(recs) + 1):
                    yield name, f"zeros12+{then}", (k, slot)


def build(name: str, kind: str, where) -> tuple[dict, list, list]:
    """The files of a case, the positions (file, offset) of its records and damage, and
    its seqs."""
    kind, _, then = kind.partition("+")
    if then == "gone":
        files, marks, seqs = build(name, kind, where)
        del files[min(files, key=str.encode)]
        return files, [m for m in marks if m[0] in files], seqs
    b = LogBuilder(created=CREATED, first_seq=FIRST_SEQ.get(name, 0))
    marks, seqs = [], []
    segs = LOGS[name]
    for k, recs in enumerate(segs):
        if k:
            b.new_segment(CREATED + 10 * k)
        for slot in range(len(recs) + 1):
            for one in kind.split(">") if where == (k, slot) else ():
                if one not in PLACED:
                    continue
                marks.append((b.cur, len(b.files[b.cur])))
                if one.startswith("zeros"):
                    at = b.raw(bytes(int(one[5:])))
                    # (each zero record is a position: a snapshot at the second one
                    # holds no record of the log either)
                    marks += [(b.cur, at + 12 * j) for j in range(1, int(one[5:]) // 12)]
                elif one == "header":
                    b.raw(encode_header(CREATED + 10 * k))
                elif one == "reopen":
                    b.reopen()
                elif one == "restart":
                    b.seq = 0
                elif one == "gap":
                    b.seq += 2
                elif one == "badlen":
                    b.raw(struct.pack("<QI", b.seq, 0xFFFFFFF0))
                else:
                    seqs.append(b.add_payload(b"\xff\x07").seq)
            if slot < len(recs):
                r = b.add(recs[slot])
                marks.append((r.file, r.offset))
                seqs.append(r.seq)
                if kind == "torn" and where[:2] == (k, slot):
                    b.truncate(r.file, r.offset + 5 if where[2] == "header" else r.end - 1)
    files = {n: bytes(d) for n, d in b.files.items()}
    names = sorted(files, key=str.encode)
    if kind == "magic":
        files[names[where]] = b"WALX" + files[names[where]][4:]
    elif kind == "gone":
        del files[names[where]]
    marks = [m for m in marks if m[0] in files and m[1] < len(files[m[0]])]
    return files, sorted(set(marks), key=lambda m: (m[0].encode(), m[1])), seqs


def targets(name: str, marks: list, seqs: list, full: bool = True) -> list[dict]:
    """Every target of a case (see the module's docstring). Not ``full``: those that
    name the same stop as another left out (a seq that one record carries, its
    position; an exclusive time T, the inclusive T - 1), and transaction 2 (absent)
    inclusive only."""
    out = [{}]
    stamps = sorted({e[-1] for seg in LOGS[name] for e in seg})
    numbers = sorted(set(seqs) | {0})
    if not full:
        numbers = [n for n in numbers if n == 0 or seqs.count(n) > 1] + [max(seqs) + 1]
    for exclusive in (False, True):
        out += [{"to_position": m, "exclusive": exclusive} for m in marks]
        out += [{"to_seq": n, "exclusive": exclusive} for n in numbers]
        out += [{"to_time": t, "exclusive": exclusive}
                for t in (stamps if full or not exclusive else stamps[:1])]
        out += [{"to_transaction": x, "exclusive": exclusive}
                for x in ((1, 2) if full or not exclusive else (1,))]
    return out


def _gapped(got) -> bool:
    """A restore that met a gap in the history (refused, or a snapshot passed over for
    one): ``allow_incomplete_history`` changes it."""
    return isinstance(got[1], errors.IncompleteHistoryError) or (
        got[1] is None and "allow-incomplete-history" in got[0].report.message)


def _restore(wal, **kw):
    return w.outcome(lambda: gpu_pitr.restore(wal, backend="cpu", **kw))


def _plan_disagrees(wal, kw: dict, chunk, got) -> str | None:
    """``check_plan_predicts_restore``'s verdict of the plan of ``kw`` against the
    restore already run (``got``, an ``outcome`` pair): None, or the assertion."""
    real = gpu_pitr.restore

    def ran(*_, **__):
        if got[1] is not None:
            raise got[1]
        return got[0]

    gpu_pitr.restore = ran
    try:
        tpp.check_plan_predicts_restore(Path(wal), {"strict": False, "read_after_stop": True,
                                                    **kw}, chunk)
    except AssertionError as err:
        return f"plan: {err!s}"[:600]
    finally:
        gpu_pitr.restore = real
    return None


def _past(snap: Path, whole) -> bool:
    """The snapshot covers the whole log's stop: a base past a transaction target, which
    only reading the log after it tells (it finds no Begin there, or damage first)."""
    if whole[1] is not None or whole[0].report.stop["reason"] != "target":
        return False
    pos, stop = snapshot.load(snap, verify=False).position, whole[0].report.stop
    if pos.get("segment") is None:
        return False
    return (os.path.basename(stop["file"]).encode(), stop["offset"]) < (
        pos["segment"].encode(), pos["offset"])


def _covered(snap: Path, err) -> bool:
    """The whole log's error ``err`` (None: it restored) is at or before the snapshot's
    position, or nowhere in the log: a base past damage (taken with --skip-corrupt) or a
    gap the whole log fails at restores where it fails. Past the position, the restore
    from the base reads the same place, and must fail as the whole log does (a base of
    zero-filled records alone that hid the log's missing start restored)."""
    if err is None:
        return False
    pos = snapshot.load(snap, verify=False).position
    if err.offset is None or pos.get("segment") is None:
        return True
    return (os.path.basename(err.file or "").encode(), err.offset) <= (
        pos["segment"].encode(), pos["offset"])


def _expire(wal: Path, upto: int, marker: bool) -> None:
    """Delete the segments ``0..upto`` as ``expire`` does (its marker, or not)."""
    names = sorted((n for n in os.listdir(wal) if n.startswith("wal-")), key=str.encode)
    for n in names[:upto + 1]:
        (wal / n).unlink()
    if marker:
        (wal / MARKER_NAME).write_text(json.dumps({
            "format": MARKER_FORMAT, "version": 1, "first_kept": names[upto + 1],
            "last_expired": names[upto]}))


def _gap_allowed(kind: str, got, want: tuple, now: tuple | None) -> bool:
    """Expired segments: an error, or a restore that warns of the gap it crossed, need
    not give the full log's answer (one that says nothing of a gap must), nor one that
    gives the answer of the log left (``now``: snapshots passed over, the log alone
    read; deleted without expire's marker, it cannot tell)."""
    if not kind.endswith("expired"):
        return False
    return got[1] is not None or w.restore_answer(got) == now or any(
        t.startswith("incomplete history") for t in got[0].report.warnings)


def _show(out) -> str:
    idx, err = out
    if err is not None:
        return f"{type(err).__name__}: {err}"
    return f"ok {w.restore_answer(out)[1][0]} stop={idx.report.stop}"


def check_case(root: Path, name: str, kind: str, where, full: bool = False,
               stride: int = 11, flag_sets=((False, False), (False, True), (True, False),
                                            (True, True)), keep=None, chain: bool = True
               ) -> tuple[list[str], int]:
    """Run one case; returns its disagreements (one line each) and the restores run.
    ``flag_sets``: the (skip_corrupt, allow_incomplete_history) pairs; ``keep``: which
    targets to restore (a predicate; all of them by default); ``chain``: snapshots of the
    restores from snapshots, a second generation, checked too."""
    files, marks, seqs = build(name, kind, where)
    wal = root / "wal"
    shutil.rmtree(root, ignore_errors=True)
    w.Workload(files).write(wal)
    found, runs, gapped = [], 0, set()
    for skip, allow in flag_sets:
        if allow and not full and (skip, False) in flag_sets and skip not in gapped:
            continue  # (no gap met without it: allowing one changes nothing)
        flags = {"skip_corrupt": skip, "allow_incomplete_history": allow}
        snaps = root / f"snaps{skip:d}{allow:d}"
        chained = root / f"chained{skip:d}{allow:d}"
        snaps.mkdir()
        chained.mkdir()
        ts = [t for t in targets(name, marks, seqs, full) if keep is None or keep(t)]
        whole, taken, keys = [], [], set()
        for k, t in enumerate(ts):
            got = _restore(wal, **t, **flags)
            whole.append(got)
            runs += 1
            gapped |= {skip} if _gapped(got) else set()
            bad = _plan_disagrees(wal, {**t, **flags}, None, got)
            if bad:
                found.append((t, {}, bad, got, None))
            key = got[1] is None and (repr(got[0].position), repr(got[0].report.stop),
                                       "to_transaction" in t and repr(t))
            if key and key not in keys:  # (one snapshot of each state and stop)
                keys.add(key)
                snapshot.save(got[0], snaps / f"s{k:03d}")
                taken.append(k)
        now = {}  # (expired: the answers of the log left)
        if kind.endswith("expired"):  # the segments before a snapshot's deleted since
            _expire(wal, *(where if kind == "expired" else (0, False)))
            now = {k: w.restore_answer(_restore(wal, **t, **flags)) for k, t in enumerate(ts)}
        for k, t in enumerate(ts):
            want = w.restore_answer(whole[k])
            for rap in (True, False):
                for chunk in (None, 64) if full else (None if rap else 64,):
                    how = {"snapshots": snaps, "read_after_stop": rap, "chunk_bytes": chunk}
                    got = _restore(wal, **how, **t, **flags)
                    runs += 1
                    gapped |= {skip} if _gapped(got) else set()
                    if w.restore_answer(got) != want and not _gap_allowed(
                            kind, got, want, now.get(k)):
                        found.append((t, how, "snapshots= differs", got, whole[k]))
                    key = chain and rap and got[1] is None and got[0].report.base and (
                        repr(got[0].position), repr(got[0].report.stop),
                        "to_transaction" in t and repr(t))
                    if key and key not in keys:  # (a snapshot of a restore from one)
                        keys.add(key)
                        snapshot.save(got[0], chained / f"c{k:03d}")
                    bad = (chunk is None or not full) and _plan_disagrees(
                        wal, {**t, **flags, "snapshots": snaps, "read_after_stop": rap},
                        chunk, got)
                    if bad:
                        found.append((t, how, bad, got, None))
                for j, s in enumerate(taken):
                    if not (full or s == k or (j + k) % stride == 0):
                        continue
                    how = {"base": snaps / f"s{s:03d}", "read_after_stop": rap,
                           "snapshot_of": ts[s]}
                    got = _restore(wal, base=how["base"], read_after_stop=rap, **t, **flags)
                    runs += 1
                    gapped |= {skip} if _gapped(got) else set()
                    # (A transaction's place is known only from the log: a base
                    # past it finds no Begin after it, TargetNotFoundError.)
                    refused = isinstance(got[1], (errors.TargetBeforeBaseError,
                                                  errors.IncompleteHistoryError)) or (
                        "to_transaction" in t and got[1] is not None
                        and _past(snaps / f"s{s:03d}", whole[k]))
                    if not refused and not (got[1] is None and _covered(
                            snaps / f"s{s:03d}", whole[k][1])) \
                            and w.restore_answer(got) != want \
                            and not _gap_allowed(kind, got, want, now.get(k)):
                        found.append((t, how, "base= differs", got, whole[k]))
                    bad = _plan_disagrees(wal, {**t, **flags, "base": how["base"],
                                                "read_after_stop": rap}, None, got)
                    if bad:
                        found.append((t, how, bad, got, None))
        for k, t in enumerate(ts if chain else ()):
            # Snapshots of restores from snapshots serve as the whole log too.
            for rap, chunk in ((True, None), (False, 64)):
                how = {"snapshots": chained, "read_after_stop": rap, "chunk_bytes": chunk}
                got = _restore(wal, **how, **t, **flags)
                runs += 1
                want = w.restore_answer(whole[k])
                if w.restore_answer(got) != want and not _gap_allowed(
                        kind, got, want, now.get(k)):
                    found.append((t, how, "snapshots= (chained) differs", got, whole[k]))
                bad = _plan_disagrees(wal, {**t, **flags, "snapshots": chained,
                                            "read_after_stop": rap}, chunk, got)
                if bad:
                    found.append((t, how, bad, got, None))
        if kind.endswith("expired"):
            shutil.rmtree(wal)
            w.Workload(files).write(wal)
    lines = []
    for t, how, what, got, whole_out in found:
        how = {k: (v.name if isinstance(v, Path) else v) for k, v in how.items()}
        line = f"[{name} {kind} {where}] {what}: target={t} {how}\n    got:   {_show(got)}"
        if whole_out is not None:
            line += f"\n    whole: {_show(whole_out)}"
        lines.append(line)
    return lines, runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every target x snapshot pair")
    ap.add_argument("--only", help="a log name (one, two, three), or log:kind")
    ap.add_argument("--reverse", action="store_true", help="the cases last to first")
    ap.add_argument("--sample", type=int, default=1, metavar="K",
                    help="every K-th case only (a pass of a few minutes: K=8)")
    ap.add_argument("-v", action="store_true", help="print each case as it runs")
    args = ap.parse_args(argv)
    todo = [c for c in cases() if not args.only
            or ":".join(map(str, c[:2])).startswith(args.only)]
    todo = (todo[::-1] if args.reverse else todo)[::args.sample]
    t0, total, runs = time.monotonic(), 0, 0
    with tempfile.TemporaryDirectory() as d:
        for n, case in enumerate(todo):
            lines, k = check_case(Path(d) / "case", *case, full=args.full)
            runs += k
            total += len(lines)
            if args.v:
                print(f"{n + 1}/{len(todo)} {case}: {k} restores, {len(lines)} "
                      f"disagreements, {time.monotonic() - t0:.0f} s", flush=True)
            for line in lines:
                print(line, flush=True)
    print(f"{len(todo)} cases, {runs} restores, {total} disagreements, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
