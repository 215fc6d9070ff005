"""Bounded-exhaustive damage: every small log, damaged at every byte, against the reference.

scripts/semantic_scope.py visits every small log, undamaged (restarts and a missing
start aside); scripts/fuzz.py and the fuzz tests damage logs at random; nothing damages
small logs exhaustively, where one byte decides between a torn tail, an undecodable
record, a record of another seq or kind, a second header and a wrong magic. This takes
small logs (``semantic_scope``'s letters and shapes, which include two segments, a writer
restarted into a second file or a second header, and a log starting at seq 3) and, in
every segment file: sets each byte to 0x00, to 0xFF, to itself + 1 and - 1 (mod 256);
cuts the file at every length; deletes the file; inserts 12 zero bytes at each record
boundary (appended at the end). Each damaged log (byte-identical ones once) is restored
(backend cpu; chunk sizes the default and 64 bytes in turn, reading on past the stop or
not in turn) to the latest state, to one seq target (a seq of the undamaged log, in turn;
every 4th exclusive) and to one time target (T in 0..3, in turn), each also with
``skip_corrupt`` and, where a restore is refused for incomplete history, with
``allow_incomplete_history``; each is compared with ``tests/reference.py`` by
``semantic_scope.compare`` (the outcome, the error class and the file, offset and seq it
names, ids, vector bits, metadata, the stop, the counters, the skipped, torn tails and
damage after the stop lists; reading on past the stop, every torn tail and every
damage after the stop, where compare lets the restore leave out what lies beyond the
stop). On top of that: every error's ``str(err)`` is one line
naming the file and an offset inside the record (or file) the reference blames, and any
exception that is not a ``WalError`` is a crash. ``skip_corrupt`` changes nothing where
no record is undecodable and no file unreadable, so it is restored only where the
reference's framing finds one (and on every 10th damaged log whatever it holds). Every
200th damaged log is restored on the cuda executor too (the simulator,
``NUMBA_ENABLE_CUDASIM=1``, unless set otherwise).

Which logs (default: 87 logs, 22,905 damaged, 110,310 restores, 9 minutes at nice 10 on
a shared 2-vCPU VM): every log of 0 and 1 records, every 5th of 2 records and every 67th
of 3 (``semantic_scope.logs(3)``, each in the shape ``semantic_scope.shapes`` gives its
index); ``--full``: every log of up to 3 records (hours).

``--warnings``: instead, each damaged log's warnings and what ``strict=True`` refuses
against tests/reference_warnings.py's model (``semantic_scope.compare_warnings``): the
latest state, the seq target and the time target, each with and without
``skip_corrupt`` (and ``allow_incomplete_history`` where the reference refuses for
incomplete history), chunk sizes and reading on past the stop in turn (the default
logs: 23,040 damaged, 138,240 comparisons, each two restores and the model).

Usage: ``nice -n 10 python scripts/damage_scope.py [--full] [--stride2 K] [--stride3 K]
[--offset I] [--cuda-every K] [--warnings] [-v]``; one damaged log again, every restore printed:
``python scripts/damage_scope.py --log 'Ia B1' --shape rise/split/1 --damage
set:wal-0000000005f5e100.log:17:0x00``. Prints each disagreement with its reproducer
and a count; exits 1 if any.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(SCRIPTS), str(SCRIPTS.parent / "tests")]
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import reference  # noqa: E402
import semantic_scope as ss  # noqa: E402
import test_restore_properties as trp  # noqa: E402
import workloads as w  # noqa: E402

from gpu_pitr import errors  # noqa: E402

ZEROS = bytes(12)


# ----------------------------------------------------------------------------- damage
def boundaries(wal: str) -> dict[str, list[int]]:
    """Each segment's record boundaries (after its header, around each record, its end)."""
    out: dict[str, set] = {}
    for item in reference.frame_log(wal):
        if item[0] == "record":
            out.setdefault(item[1], set()).update((item[2], item[3]))
    for name in os.listdir(wal):
        size = os.path.getsize(os.path.join(wal, name))
        out.setdefault(name, set()).update({min(16, size), size})
    return {k: sorted(v) for k, v in out.items()}


def damages(files: dict[str, bytes], bounds: dict[str, list[int]]):
    """(key, damaged files) for every damage of the task, byte-identical ones once.

    A key says what was done: ``set:FILE:POS:0xVV``, ``cut:FILE:LEN``, ``del:FILE``,
    ``zeros:FILE:POS`` (12 zero bytes inserted before byte POS)."""
    seen = {_digest(files)}

    def fresh(new):
        d = _digest(new)
        if d in seen:
            return False
        seen.add(d)
        return True

    for name, data in files.items():
        keys = [f"set:{name}:{pos}:{val:#04x}" for pos, byte in enumerate(data)
                for val in (0x00, 0xFF, (byte + 1) % 256, (byte - 1) % 256)]
        keys += [f"cut:{name}:{n}" for n in range(len(data))]
        keys += [f"del:{name}"] + [f"zeros:{name}:{pos}" for pos in bounds.get(name, ())]
        for key in keys:  # (each built by ``damaged``, as a reproducer's key replays it)
            new = damaged(files, key)
            if fresh(new):
                yield key, new


def damaged(files: dict[str, bytes], key: str) -> dict[str, bytes]:
    """The files ``key`` (one of ``damages``' keys) describes."""
    kind, name, *rest = key.split(":")
    data = files[name]
    if kind == "set":
        pos, val = int(rest[0]), int(rest[1], 16)
        return {**files, name: data[:pos] + bytes([val]) + data[pos + 1 :]}
    if kind == "cut":
        return {**files, name: data[: int(rest[0])]}
    if kind == "del":
        return {k: v for k, v in files.items() if k != name}
    if kind == "zeros":
        pos = int(rest[0])
        return {**files, name: data[:pos] + ZEROS + data[pos:]}
    raise ValueError(f"not a damage key: {key}")


def _digest(files: dict[str, bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(files):
        h.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "little") + files[name])
    return h.digest()


def write_dir(wal: Path, files: dict[str, bytes]) -> None:
    wal.mkdir(exist_ok=True)
    for name in os.listdir(wal):
        if name not in files:
            os.remove(wal / name)
    for name, data in files.items():
        (wal / name).write_bytes(data)


def framed_records(wal: str) -> tuple[list, bool]:
    """The damaged log's decodable records as semantic_scope's ``recs`` (file, offset,
    seq, entry), and whether ``skip_corrupt`` has anything to skip (an undecodable
    record or an unreadable file)."""
    recs, skippable = [], False
    for item in reference.frame_log(wal):
        if item[0] == "bad":
            skippable = True
        elif item[0] == "record":
            try:
                entry, _ = reference.decode_payload(item[5])
            except reference.Undecodable:
                skippable = True
                continue
            recs.append((item[1], item[2], item[4], entry))
    return recs, skippable


# ----------------------------------------------------------------------------- checks
def message_disagrees(err: BaseException, want) -> str | None:
    """A refusal's one line: no newline, the file and an offset inside the record (or
    file, [0, 16)) the reference blames."""
    line = str(err)
    if "\n" in line or "\r" in line:
        return f"message is not one line: {line!r}"
    if want is None or want.file is None:
        return None
    if want.file not in line:
        return f"message does not name {want.file}: {line}"
    end = ss.blamed_end(want)
    offsets = [int(m) for m in re.findall(r"offset (\d+)", line)]
    if not any(want.offset <= o < end for o in offsets):
        return f"message names no offset in [{want.offset}, {end}) of {want.file}: {line}"
    return None


def restore_and_check(wal: str, kw: dict, recs: list, *, backend="cpu", chunk=None,
                      rap=True) -> tuple[str | None, BaseException | None]:
    """semantic_scope.compare, plus the one-line message and crash checks; returns what
    differs (None: nothing) and the exception the restore raised."""
    real, seen, views = w.restore_fast, [], []

    def watched(*args, **kwargs):  # (compare keeps the restore's result to itself)
        try:
            views.append(real(*args, **kwargs))
        except BaseException as e:
            seen.append(e)
            raise
        return views[-1]

    w.restore_fast = watched  # compare calls it as w.restore_fast
    try:
        bad = ss.compare(wal, kw, recs, backend=backend, chunk=chunk, read_after_stop=rap)
    except Exception as e:  # noqa: BLE001  (anything not a WalError: a crash)
        what = "crash" if seen and seen[-1] is e else "the check itself failed"
        return f"{what}: {type(e).__name__}: {e}"[:800], e
    finally:
        w.restore_fast = real
    err = seen[-1] if seen else None
    if bad is None and err is not None:
        bad = message_disagrees(err, reference.restore(wal, **kw).error)
    if bad is None and views and rap:
        bad = after_stop_disagrees(views[-1].report, reference.restore(wal, **kw))
    return bad, err


def after_stop_disagrees(rep: dict, ref) -> str | None:
    """Reading on past the stop, the whole log is read (docs/damage.md): every torn
    tail and every undecodable record or unreadable file after the stop is listed,
    where compare lets the restore leave out what lies beyond the stop."""
    torn = {(os.path.basename(t["file"]), t["offset"], t["bytes_lost"])
            for t in rep["torn_tails"]}
    if torn != set(ref.torn_tails):
        return f"torn_tails {sorted(torn)} != reference {sorted(ref.torn_tails)}"
    try:
        trp._assert_damage_list(rep["damage_after_stop"], ref.damage_after_stop, exact=True)
    except AssertionError as e:
        return f"damage_after_stop: {e}"[:800]
    return None


# ----------------------------------------------------------------------------- scope
def selection(full: bool, stride2: int, stride3: int, offset: int = 0) -> list[tuple[int, tuple]]:
    """(index in ``semantic_scope.logs(3)``, letters) of the logs damaged: every log of
    up to 1 record, every ``stride2``-th of 2 and every ``stride3``-th of 3, from the
    ``offset``-th on (an ``offset`` other than 0: other logs of 2 and 3 records only)."""
    todo = ss.logs(3)
    if full:
        return list(enumerate(todo))
    counts: dict[int, int] = {}
    out = []
    for i, letters in enumerate(todo):
        k = counts.get(len(letters), 0)
        counts[len(letters)] = k + 1
        stride = {2: stride2, 3: stride3}.get(len(letters))
        if stride is None and not offset or stride and k % stride == offset % stride:
            out.append((i, letters))
    return out


class Counter:
    def __init__(self):
        self.variants = 0
        self.restores = 0
        self.cuda = 0
        self.refused = 0  # restores refused with a WalError: their messages checked
        self.found: list[str] = []


def _damaged_logs(root: Path, letters: tuple, shape: tuple, c: Counter,
                  only: str | None = None, every: int = 1):
    """``(key, v, wal, seqs)`` for every damage of one log (``only``: the one with that
    key; ``every``: every K-th damage only), written as ``wal`` in turn: ``v`` its number
    (``c.variants``, counted here), ``seqs`` the undamaged log's seqs (the seq targets)."""
    b, recs0 = ss.build(letters, shape)
    files = {k: bytes(v) for k, v in b.files.items()}
    wal = root / "wal"
    write_dir(wal, files)
    bounds = boundaries(str(wal))
    seqs = [r[2] for r in recs0] or [0]
    variants = damages(files, bounds) if only is None else [(only, damaged(files, only))]
    for key, new in itertools.islice(variants, 0, None, every):
        v = c.variants
        c.variants += 1
        write_dir(wal, new)
        yield key, v, wal, seqs


def check_log(root: Path, letters: tuple, index: int, shape: tuple, c: Counter,
              cuda_every: int = 200, only: str | None = None, verbose: bool = False,
              every: int = 1) -> None:
    """Every damage of one log (``only``: the one with that key; ``every``: every K-th
    damage only), every restore."""
    for key, v, wal, seqs in _damaged_logs(root, letters, shape, c, only, every):
        recs, skippable = framed_records(str(wal))
        seq_t = {"to_seq": seqs[(index + v) % len(seqs)]}
        if v % 4 == 3:
            seq_t["exclusive"] = True
        flag_sets = [{}]
        if skippable or v % 10 == 0 or only:
            flag_sets.append({"skip_corrupt": True})
        runs = []
        for t in ({}, seq_t, {"to_time": v % 4}):
            for flags in flag_sets:
                runs.append({**t, **flags})
        j = 0
        while j < len(runs):
            kw = runs[j]
            chunk = (None, 64)[(v + j) % 2]
            rap = (v + j) % 3 != 2
            bad, err = restore_and_check(str(wal), kw, recs, chunk=chunk, rap=rap)
            c.restores += 1
            c.refused += isinstance(err, errors.WalError)
            if verbose:
                print(f"  {kw} chunk={chunk} rap={rap}: "
                      f"{type(err).__name__ + ': ' + str(err) if err else 'ok'}"
                      f"{' -- ' + bad if bad else ''}")
            if bad:
                c.found.append(_line(letters, shape, key, kw, chunk, rap, "cpu", bad))
            if (isinstance(err, errors.IncompleteHistoryError)
                    or reference.restore(str(wal), **kw).outcome == "IncompleteHistoryError") \
                    and not kw.get("allow_incomplete_history"):
                runs.append({**kw, "allow_incomplete_history": True})
            j += 1
        if cuda_every and (v % cuda_every == 0 or only):
            kw = runs[(v // cuda_every) % len(runs)]
            bad, err = restore_and_check(str(wal), kw, recs, backend="cuda")
            c.cuda += 1
            c.restores += 1
            c.refused += isinstance(err, errors.WalError)
            if verbose:
                print(f"  cuda {kw}: {type(err).__name__ + ': ' + str(err) if err else 'ok'}"
                      f"{' -- ' + bad if bad else ''}")
            if bad:
                c.found.append(_line(letters, shape, key, kw, None, True, "cuda", bad))


def check_warnings_log(root: Path, letters: tuple, index: int, shape: tuple, c: Counter,
                       every: int = 1) -> None:
    """Every damage of one log (``every``: every K-th only), its warnings and ``strict``
    against the model (``--warnings``); ``c.restores`` counts the comparisons."""
    for key, v, wal, seqs in _damaged_logs(root, letters, shape, c, every=every):
        for t in ({}, {"to_seq": seqs[(index + v) % len(seqs)]}, {"to_time": v % 4}):
            for flags in ({}, {"skip_corrupt": True}):
                kw = {**t, **flags}
                if reference.restore(str(wal), **kw).outcome == "IncompleteHistoryError":
                    kw["allow_incomplete_history"] = True
                chunk, rap = (None, 64)[(v + c.restores) % 2], (v + c.restores) % 3 != 2
                bad = ss.compare_warnings(str(wal), kw, chunk=chunk, read_after_stop=rap)
                c.restores += 1
                if bad:
                    c.found.append(_line(letters, shape, key, kw, chunk, rap, "cpu", bad))


def _line(letters, shape, key, kw, chunk, rap, backend, what) -> str:
    return (f"[{' '.join(letters)}] shape={'/'.join(map(str, shape))} damage={key} "
            f"target={kw} backend={backend} chunk_bytes={chunk} read_after_stop={rap}\n"
            f"    {what}\n    again: python scripts/damage_scope.py --log "
            f"'{' '.join(letters)}' --shape {'/'.join(map(str, shape))} --damage {key}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every log of up to 3 records")
    ap.add_argument("--stride2", type=int, default=5, metavar="K",
                    help="every K-th log of 2 records (5)")
    ap.add_argument("--stride3", type=int, default=67, metavar="K",
                    help="every K-th log of 3 records (67)")
    ap.add_argument("--offset", type=int, default=0, metavar="I",
                    help="the logs of 2 and 3 records from the I-th on (another slice)")
    ap.add_argument("--cuda-every", type=int, default=200, metavar="K",
                    help="the cuda executor on every K-th damaged log (0: never)")
    ap.add_argument("--warnings", action="store_true",
                    help="compare the warnings and strict with the model instead")
    ap.add_argument("--log", help="one log: its letters, space-separated")
    ap.add_argument("--shape", help="with --log: STAMPS/LAYOUT/SPLIT, e.g. rise/split/1")
    ap.add_argument("--damage", help="with --log: one damage key; every restore printed")
    ap.add_argument("-v", action="store_true", help="progress every 10 logs")
    args = ap.parse_args(argv)
    if args.log is not None:
        letters = tuple(args.log.split())
        p, lay, k = (args.shape or "rise/one/0").split("/")
        todo = [(0, letters, (p, lay, int(k)))]
    else:
        todo = [(i, x, ss.shapes(len(x), i, False)[0])
                for i, x in selection(args.full, args.stride2, args.stride3, args.offset)]
    c = Counter()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        for n, (index, letters, shape) in enumerate(todo):
            before = len(c.found)
            if args.warnings:
                check_warnings_log(Path(d), letters, index, shape, c)
            else:
                check_log(Path(d), letters, index, shape, c, args.cuda_every, args.damage,
                          verbose=args.damage is not None)
            for line in c.found[before:]:
                print(line, flush=True)
            if args.v and (n + 1) % 10 == 0:
                print(f"... {n + 1}/{len(todo)} logs, {c.variants} damaged, {c.restores} "
                      f"{'comparisons' if args.warnings else 'restores'}, "
                      f"{len(c.found)} disagreements, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
    if args.warnings:
        print(f"warnings: {len(todo)} logs, {c.variants} damaged logs, {c.restores} "
              f"comparisons, {len(c.found)} disagreements, {time.monotonic() - t0:.0f} s")
    else:
        print(f"{len(todo)} logs, {c.variants} damaged logs, {c.restores} restores "
              f"({c.cuda} on cuda; {c.refused} refused, their messages checked), "
              f"{len(c.found)} disagreements, {time.monotonic() - t0:.0f} s")
    return 1 if c.found else 0


if __name__ == "__main__":
    sys.exit(main())
