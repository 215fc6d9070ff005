"""Bounded-exhaustive check of the warnings of restores FROM A BASE SNAPSHOT.

``scripts/semantic_scope.py --paths warnings`` compares the warnings of restores of a
whole log with tests/reference_warnings.py's model. This does the same for restores from
a snapshot, against tests/reference_base_warnings.py: every small log of that
enumeration (``semantic_scope.logs``, in its warnings shapes: one segment, split in
two, a writer restarted, history from seq 3, seqs missing between two segments), a
snapshot at each place a restore can leave one (each record's position, inclusive and
exclusive; each time 0..3, one exclusive; latest; transaction 1; snapshots at the same
place from the same kind of stop counted once), and from each every target of that
enumeration (``semantic_scope.targets``), restored with and without ``strict``:

- ``base=`` the snapshot, on the log whole and (where the writer's retention could
  delete segments: every one the snapshot covers whole) on the log without them, which
  is a base with no log after it where none is left;
- every other log: ``snapshots=`` a directory of three of its snapshots, one of them
  damaged (its manifest, or a data file, in turn), and one of another log, which the
  restore passes over (the chosen snapshot is compared too);
- the other logs: snapshots of restores that started from the log's earliest snapshot
  (their stored reports carry its count of missing seqs), a third of the targets each;
- every ``--cuda-every``-th log: latest and one seq target from each snapshot on the cuda
  executor (the simulator, ``NUMBA_ENABLE_CUDASIM=1``, unless set otherwise).

The categories of ``report.warnings`` (``reference_warnings.classify``) must be the
model's, and ``strict=True`` must refuse exactly the ones the model says it refuses
(``TargetNotReachedError``) and otherwise return the same warnings; a restore the model
says fails must fail with that error class, strict or not.

Usage: ``nice -n 10 python scripts/base_warnings_scope.py [-n N] [--sample K] [--start I]
[--cuda-every K] [-v]``. Prints each disagreement (letters, shape, the snapshot's target,
the restore's) and the figures (logs, comparisons, disagreements, seconds); exits 1 if
any.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import reference  # noqa: E402
import reference_base_warnings as rbw  # noqa: E402
import reference_warnings as rw  # noqa: E402

from gpu_pitr import errors  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "semantic_scope", Path(__file__).resolve().parent / "semantic_scope.py")
semantic_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(semantic_scope)


def base_targets(recs: list, late: bool) -> list[dict]:
    """The targets a snapshot is taken at: each record's position, inclusive and
    exclusive; each time 0..3 and 2 exclusive; latest; transaction 1."""
    out = [{}]
    for f, off, _, _ in recs:
        out += [{"to_position": f"{f}:{off}"}, {"to_position": f"{f}:{off}", "exclusive": True}]
    out += [{"to_time": t} for t in (0, 1, 2, 3)] + [{"to_time": 2, "exclusive": True}]
    out += [{"to_transaction": 1}]
    flags = {"allow_incomplete_history": True} if late else {}
    return [{**t, **flags} for t in out]


def _restore(wal, **kw):
    import gpu_pitr

    try:
        return gpu_pitr.restore(wal, **kw), None
    except errors.WalError as e:
        return None, e


def judge(want, runs: dict) -> str | None:
    """None where ``runs`` (strict False/True -> (index, error)) agree with the model's
    ``want`` (``BaseVerdict``), else what differs (``semantic_scope.judge_warnings``)."""
    return semantic_scope.judge_warnings(want, runs)


def compare_base(wal_full, wal_run, snap, base, kw: dict, *, present=None, chunk=None,
                 read_after_stop: bool = True, backend: str = "cpu") -> str | None:
    """A restore of ``wal_run`` from the snapshot ``snap`` (of ``base``) with ``kw``
    against ``reference_base_warnings``' model of it (``wal_full``: the whole log)."""
    want = rbw.base_warnings_model(str(wal_full), base, present=present,
                                   read_after_stop=read_after_stop, **kw)
    runs = {strict: _restore(str(wal_run), backend=backend, chunk_bytes=chunk, base=snap,
                             read_after_stop=read_after_stop, strict=strict, **kw)
            for strict in (False, True)}
    return judge(want, runs)


def _position_key(records: list, base) -> tuple:
    """``snapshot.log_order`` of ``base``'s position, as docs/snapshots.md defines it."""
    if base.judged == base.last + 1:
        r = records[base.judged]
        return (True, r[1].encode(), r[2])
    if base.last >= 0:
        r = records[base.last]
        return (True, r[1].encode(), r[3])
    return (False, b"", 0)


def snapshots_model(wal, snaps: list, kw: dict, read_after_stop: bool):
    """``(verdict, chosen path or None)`` of a restore of ``wal`` with ``snapshots=`` a
    directory of ``snaps`` (``(path, Base or None (another log's), damage)``; damage
    None, "manifest" or "data"), docs/snapshots.md's choice: the newest snapshot that
    serves (for a transaction target: whose restore stops where the whole log's does),
    of this log, restored from a complete history unless the restore allows it; a
    damaged one passed over for the next, a warning each (a damaged manifest always, as
    every manifest is read; damaged data when it is tried)."""
    records = rbw._records(wal)
    allow = bool(kw.get("allow_incomplete_history"))
    damaged = sum(d == "manifest" for _, _, d in snaps)
    usable = []
    whole_txn = None
    if "to_transaction" in kw:
        ref = reference.restore(wal, to_transaction=kw["to_transaction"],
                                exclusive=bool(kw.get("exclusive")),
                                allow_incomplete_history=True)
        if ref.error is None:
            whole_txn = next(k for k, r in enumerate(records)
                             if (r[1], r[2]) == (ref.stop["file"], ref.stop["offset"]))
    for path, base, dmg in snaps:
        if dmg == "manifest" or base is None or (base.gap and not allow):
            continue
        err, stop = rbw.stop_from(wal, base, kw)
        if "to_transaction" in kw:
            at = base.last if stop == rbw.AT_BASE else stop
            if whole_txn is not None and err is None and at == whole_txn:
                usable.append((_position_key(records, base), path, base, dmg))
            elif whole_txn is None:
                usable.append((_position_key(records, base), path, base, dmg))
        elif err != "TargetBeforeBaseError":
            usable.append((_position_key(records, base), path, base, dmg))
    usable.sort(key=lambda u: (u[0], u[1]), reverse=True)
    for _, path, base, dmg in usable:
        if dmg == "data":
            damaged += 1
            continue
        want = rbw.base_warnings_model(wal, base, read_after_stop=read_after_stop, **kw)
        if want.error is None:
            want.categories = tuple(sorted([*want.categories,
                                            *["snapshot_damaged"] * damaged]))
        return want, path
    alone = rw.warnings_model(wal, read_after_stop=read_after_stop, **kw)
    cats = tuple(sorted([*alone.categories, *["snapshot_damaged"] * damaged]))
    return rbw.BaseVerdict(alone.error, cats, alone.refused), None


def _damage(snap: Path, how: str) -> None:
    if how == "manifest":
        (snap / "manifest.json").write_bytes(b"{not json")
    else:  # a data file's byte: its checksum no longer holds
        for name in ("vectors.f32", "ids.arrow", "metadata.arrow"):
            p = snap / name
            if p.exists() and p.stat().st_size:
                data = bytearray(p.read_bytes())
                data[len(data) // 2] ^= 0x55
                p.write_bytes(bytes(data))
                return


def _other_log(root: Path, letters: tuple, shape: tuple) -> Path:
    """A snapshot of another log (inserts of one id, one record more than this one, in
    its shape): not of this log."""
    from gpu_pitr import snapshot

    b, _ = semantic_scope.build(("Ib",) * (len(letters) + 1), shape)
    wal = root / "other_wal"
    shutil.rmtree(wal, ignore_errors=True)
    b.write(wal)
    got, err = _restore(str(wal), backend="cpu", allow_incomplete_history=True)
    out = root / "snaps" / "zz_other"
    shutil.rmtree(out, ignore_errors=True)
    snapshot.save(got, out)
    return out


def _line(letters, shape, base_kw, kw, how, chunk, rap, what) -> str:
    return (f"[{' '.join(letters)}] stamps={shape[0]} layout={shape[1]}"
            f"{'@' + str(shape[2]) if shape[2] else ''} base={base_kw} target={kw} {how} "
            f"chunk_bytes={chunk} read_after_stop={rap}\n    {what}")


def check_base_log(root: Path, letters: tuple, index: int, cuda: bool = False
                   ) -> tuple[list[str], int]:
    """Every snapshot of one log, and every target from it (module docstring); returns
    the disagreements and the count of comparisons."""
    from gpu_pitr import snapshot

    found, runs = [], 0
    (shape,) = semantic_scope.warn_shapes(len(letters), index, False)
    wal, recs = semantic_scope._written(root, letters, shape)
    late = shape[1] == "late"
    targets = semantic_scope.targets(recs, index, False)
    seen = {}
    for base_kw in base_targets(recs, late):
        base = rbw.base_of(str(wal), base_kw)
        if base is None:
            continue
        key = (base.last, base.judged, base.txn_answer, base.gap)
        if key in seen:
            continue
        got, err = _restore(str(wal), backend="cpu", **base_kw)
        if err is not None:
            found.append(_line(letters, shape, base_kw, {}, "snapshot", None, True,
                               f"the reference restores it; the library: {err}"))
            continue
        snap = root / "snaps" / f"s{len(seen):02d}"
        shutil.rmtree(snap, ignore_errors=True)
        snapshot.save(got, snap)
        seen[key] = (snap, base, base_kw)
        gone = rbw.deletable(str(wal), base)
        kept = None
        if gone:
            kept = root / "kept"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(wal, kept)
            for name in gone:
                os.remove(kept / name)
        for j, t in enumerate(targets):
            flag_sets = [{"allow_incomplete_history": True}] if late else [{}]
            if late and j % 4 == 0:
                flag_sets.append({})
            for flags in flag_sets:
                kw = {**t, **flags}
                chunk, rap = (None, 64)[(index + j) % 2], (index + j + len(seen)) % 3 != 2
                variants = [(wal, None, "base")]
                if kept is not None:
                    variants.append((kept, sorted(set(os.listdir(kept))), f"base, {gone} gone"))
                for wal_run, present, how in variants:
                    bad = compare_base(wal, wal_run, snap, base, kw, present=present,
                                       chunk=chunk, read_after_stop=rap)
                    runs += 1
                    if bad:
                        found.append(_line(letters, shape, base_kw, kw, how, chunk, rap, bad))
            if cuda and (not t or recs and t == {"to_seq": recs[len(recs) // 2][2]}):
                kw = {**t, **flag_sets[0]}
                bad = compare_base(wal, wal, snap, base, kw, backend="cuda")
                runs += 1
                if bad:
                    found.append(_line(letters, shape, base_kw, kw, "base cuda", None, True,
                                       bad))
    if index % 2 == 0 and len(seen) >= 2:
        found_s, runs_s = _check_snapshots(root, letters, index, shape, wal, targets, seen)
        found += found_s
        runs += runs_s
    if index % 2 == 1 and len(seen) >= 2:
        found_c, runs_c = _check_chains(root, letters, index, shape, wal, targets, seen)
        found += found_c
        runs += runs_c
    shutil.rmtree(root / "snaps", ignore_errors=True)
    return found, runs


def _check_chains(root, letters, index, shape, wal, targets, seen) -> tuple[list, int]:
    """Snapshots of restores that themselves started from the log's earliest snapshot:
    each restores as the snapshot of the same target from the log alone does (its
    stored report counts the seqs missing behind it, its base's included)."""
    from gpu_pitr import snapshot

    found, runs = [], 0
    made = sorted(seen.values(), key=lambda m: (m[1].last, m[1].judged))
    first = made[0][0]
    for k, (_, base, base_kw) in enumerate(made[1:]):
        got, err = _restore(str(wal), backend="cpu", base=first, **base_kw)
        if err is not None:  # (a target before the first snapshot's position)
            continue
        snap = root / "snaps" / f"chain{k:02d}"
        shutil.rmtree(snap, ignore_errors=True)
        snapshot.save(got, snap)
        for j, t in enumerate(targets):
            if (j + k) % 3:
                continue
            kw = {**t, **({"allow_incomplete_history": True} if shape[1] == "late" else {})}
            rap = (index + j) % 3 != 2
            bad = compare_base(wal, wal, snap, base, kw, read_after_stop=rap)
            runs += 1
            if bad:
                found.append(_line(letters, shape, base_kw, kw, f"chained from {made[0][2]}",
                                   None, rap, bad))
    return found, runs


def _check_snapshots(root, letters, index, shape, wal, targets, seen) -> tuple[list, int]:
    """``snapshots=`` a directory of three of the log's snapshots (one damaged) and one
    of another log."""
    import gpu_pitr

    found, runs = [], 0
    made = list(seen.values())
    picks = [made[(index // 2 + k) % len(made)] for k in range(min(3, len(made)))]
    picks = list({str(p[0]): p for p in picks}.values())
    d = root / "snaps" / "dir"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    snaps = []
    how = ("manifest", "data")[(index // 2) % 2]
    for k, (snap, base, _) in enumerate(picks):
        dst = d / f"snap{k}"
        shutil.copytree(snap, dst)
        dmg = how if k == (index // 2) % len(picks) else None
        if dmg:
            _damage(dst, dmg)
        snaps.append((str(dst), base, dmg))
    other = _other_log(root, letters, shape)
    shutil.move(str(other), d / "zz_other")
    snaps.append((str(d / "zz_other"), None, None))
    late = shape[1] == "late"
    for j, t in enumerate(targets):
        kw = {**t, **({"allow_incomplete_history": True} if late and j % 4 else {})}
        rap = (index + j) % 3 != 2
        want, path = snapshots_model(str(wal), snaps, kw, rap)
        out = {}
        for strict in (False, True):
            try:
                out[strict] = (gpu_pitr.restore(str(wal), backend="cpu", snapshots=d,
                                                read_after_stop=rap, strict=strict, **kw), None)
            except errors.WalError as e:
                out[strict] = (None, e)
        runs += 1
        bad = judge(want, out)
        got = out[False][0]
        if bad is None and got is not None:
            used = (got.report.base or {}).get("path")
            if used != path:
                bad = f"started from {used}, the model's choice is {path}: {got.report.message}"
        if bad:
            found.append(_line(letters, shape, [s[2] or "ok" for s in snaps], kw,
                               "snapshots", None, rap, bad))
    return found, runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=4, help="longest log (4)")
    ap.add_argument("--sample", type=int, default=1, metavar="K", help="every K-th log only")
    ap.add_argument("--start", type=int, default=0, metavar="I", help="from the I-th log on")
    ap.add_argument("--cuda-every", type=int, default=50, metavar="K",
                    help="the cuda executor on every K-th log (0: never)")
    ap.add_argument("-v", action="store_true", help="progress every 100 logs")
    args = ap.parse_args(argv)
    todo = semantic_scope.logs(args.n)
    t0, seen, runs, total = time.monotonic(), 0, 0, 0
    with tempfile.TemporaryDirectory() as d:
        for index in range(args.start, len(todo), args.sample):
            cuda = bool(args.cuda_every) and index % args.cuda_every == 0
            lines, k = check_base_log(Path(d), todo[index], index, cuda)
            runs += k
            total += len(lines)
            for line in lines:
                print(line, flush=True)
            seen += 1
            if args.v and seen % 100 == 0:
                print(f"... {seen} logs ({index + 1}/{len(todo)}), {runs} comparisons, "
                      f"{total} disagreements, {time.monotonic() - t0:.0f} s", flush=True)
    print(f"base warnings: {seen} logs, {runs} comparisons, {total} disagreements, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
