"""Bounded-exhaustive check of restore semantics: every small log against the reference.

The property tests (tests/test_restore_properties.py) draw random logs, and
scripts/small_scope.py places damage next to snapshot positions in 5 fixed logs; neither
visits every small log, where the rules of SPEC section 3 meet each other (a seq target
inside a transaction begun inside another, an abort of a transaction whose records have
another dimension, a nested batch as a transaction's last record...). This enumerates
them: every sequence of 0..N entries (N=5; 6 with ``--full``), each length spelled
with the letters of its tier (``TIERS``): up to 2 with all 17 of ``LETTERS`` (inserts of
two ids, with metadata absent, ``{}`` or not empty; updates of a present and a missing
id; deletes of a present and an absent id; an insert of another dimension;
Begin/Commit/Abort of transaction 1, Begin/Commit of 2; a batch of two entries; a
nested batch; a batch holding markers; a checkpoint), 3 with 13 of them (``MID``), 4
with 6 (``CORE``: where transactions, their nesting, aborts and the dimension meet) and
5 with 5 (``CORE5``); ``--full``: 3 with all, 4 with ``MID``, 5 and 6 with ``CORE``
(hours). Symmetric duplicates are pruned: a log whose first transaction marker names
transaction 2 is the log with 1 and 2 swapped, which is enumerated when its letters are
in the tier.

Each log is written in one of several shapes, taken in turn from its index (``--full``:
every shape): stamps from {1, 2, 3} rising with ties, flat, falling, or zigzag; one
segment, two segments split before some record, two with the writer reopened there
(seq back to 0, so seqs repeat), or a log starting at seq 3 (history missing). Every
target is restored (latest; each seq inclusive, an absent one, one seq exclusive; each
time T in 0..3 inclusive and one T in 1..3 exclusive, in turn; transactions 1 and 2
inclusive, 1 exclusive; where seqs repeat, each record's position, inclusive or
exclusive in turn; ``--full``: every exclusive one) with ``gpu_pitr.restore`` (backend
cpu, chunk sizes in turn the default and 64 bytes, which splits transactions across
chunks, reading on past the stop or not; ``--full``: both sizes) and with
``tests/reference.py``, and the two must agree exactly
(``test_restore_properties.assert_matches``: the outcome, error class and place, ids,
vector bits, metadata, the stop point, the counters; here too the stop's record kind,
the index's size, ``last_commit_timestamp``, the record every error names, a missing
target's kind of message, and, reading stopped at the target, ``records_read``). A log
with a restart or a missing start is also restored with ``skip_corrupt`` and
``allow_incomplete_history``. Every 50th log is restored on the cuda executor too (the
simulator, ``NUMBA_ENABLE_CUDASIM=1``, unless set otherwise), latest and one seq
target.

The other paths that must agree, on the same logs (``--paths``, default ``restore``):
``shards``, each target restored as 2 or 3 shards of the ids (in turn) and joined by
``merge_shards``, equal to the restore without shards exactly (a refusal: every shard
refuses at the same record); ``inspect``, ``wal_stats`` equal to
tests/inspect_reference.py's document; ``verify``, its verdict agreeing with the
reference restore of latest (``check_verify`` says what "agree" is); ``cli``, on every
``--cli-every``-th log (200), ``python -m gpu_pitr restore --out x.npz`` of a few
targets equal to the library's restore, or exit 1 with one line naming the record the
library's error names; ``compat``, the seed API doing what SPEC section 5 says;
``warnings``, the categories of ``report.warnings`` and what ``strict=True`` refuses
equal to tests/reference_warnings.py's model, each log in one of the restore's layouts
or "gap" (seqs missing between two segments) in turn (``check_warnings``).

Usage: ``nice -n 10 python scripts/semantic_scope.py [--full] [-n N] [--sample K]
[--start I] [--cuda-every K] [--paths P,...] [--cli-every K] [-v]``. Prints each
disagreement with the log that shows it (letters, shape, target) and each path's
figures (logs, runs, disagreements, seconds); exits 1 if any.
"""

from __future__ import annotations

import argparse
import itertools
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
import test_restore_properties as trp  # noqa: E402
import workloads as w  # noqa: E402
from workloads import Abort, Batch, Begin, Ckpt, Commit, Del, Ins, LogBuilder, Upd  # noqa: E402

from gpu_pitr import errors  # noqa: E402

#: The entries logs are spelled with: name -> entry at a timestamp.
LETTERS = {
    "Ia": lambda t: Ins("a", [1.0], None, t),
    "Ia{}": lambda t: Ins("a", [2.0], {}, t),
    "Ib": lambda t: Ins("b", [3.0], {"k": "v"}, t),
    "Ua": lambda t: Upd("a", [4.0], None, t),
    "Da": lambda t: Del("a", t),
    "Db": lambda t: Del("b", t),
    "Ia2": lambda t: Ins("a", [5.0, 6.0], None, t),  # another dimension
    "B1": lambda t: Begin(1, t),
    "C1": lambda t: Commit(1, t),
    "A1": lambda t: Abort(1, t),
    "B2": lambda t: Begin(2, t),
    "C2": lambda t: Commit(2, t),
    "Bat": lambda t: Batch([Ins("b", [7.0], None, t), Del("a", t)], t),
    "Nest": lambda t: Batch([Batch([Upd("a", [8.0], {"n": "1"}, t)], t),
                             Ins("b", [-0.0], {}, t)], t),
    "K": lambda t: Ckpt(0, t),
    "Ub": lambda t: Upd("b", [9.0], {"u": "1"}, t),  # of a missing id, with metadata
    # Markers nested in a batch carry no data (docs/semantics.md): its insert applies.
    "BatM": lambda t: Batch([Begin(1, t), Ins("a", [10.0], None, t), Abort(1, t)], t),
}
#: The letters of longer logs: every log of up to ``length`` records is spelled with
#: the first tier that reaches it (longer ones: the last tier).
MID = ("Ia", "Ia{}", "Ib", "Ua", "Da", "Ia2", "B1", "C1", "A1", "B2", "C2", "Bat", "Nest")
CORE = ("Ia", "Ia2", "B1", "C1", "A1", "B2")
CORE5 = ("Ia", "Ia2", "B1", "C1", "A1")
TIERS = ((2, tuple(LETTERS)), (3, MID), (4, CORE), (5, CORE5))
FULL_TIERS = ((3, tuple(LETTERS)), (4, MID), (6, CORE))
#: Swapping transactions 1 and 2 (a letter absent: the swapped log is not spelled).
SWAP = {"B1": "B2", "B2": "B1", "C1": "C2", "C2": "C1", "A1": None}
STAMPS = ("rise", "flat", "fall", "zigzag")
LAYOUTS = ("one", "split", "restart", "one", "split", "late")
CREATED = 0x5F5E100


def _pruned(letters: tuple, alphabet) -> bool:
    """The log with transactions 1 and 2 swapped is enumerated instead."""
    marks = [x for x in letters if x in SWAP]
    if not marks or marks[0][1] != "2":
        return False
    return all(SWAP.get(x, x) in alphabet for x in letters)


def alphabet_of(length: int, tiers=TIERS) -> tuple:
    return next((a for most, a in tiers if length <= most), tiers[-1][1])


def logs(n: int, tiers=TIERS) -> list[tuple]:
    """Every log of 0..``n`` letters, each length spelled with its tier's letters,
    symmetric duplicates left out."""
    out = [()]  # (a segment of no records: an empty index, not an error)
    for length in range(1, n + 1):
        alphabet = alphabet_of(length, tiers)
        out += [x for x in itertools.product(alphabet, repeat=length) if not _pruned(x, alphabet)]
    return out


def stamp(pattern: str, i: int, n: int) -> int:
    """The timestamp of record ``i`` of ``n``, in {1, 2, 3}."""
    if pattern == "rise":
        return 1 + 3 * i // n
    if pattern == "flat":
        return 2
    if pattern == "fall":
        return 3 - 3 * i // n
    return (2, 1, 3)[i % 3]


def shapes(n: int, index: int, full: bool) -> list[tuple]:
    """The shapes a log of ``n`` records is written in: (stamps, layout, split before
    record k)."""
    every = [(p, lay, k) for p in STAMPS for lay in dict.fromkeys(LAYOUTS)
             for k in (range(1, n) if lay in ("split", "restart") else (0,))]
    if full:
        return every
    lay = LAYOUTS[(index // len(STAMPS)) % len(LAYOUTS)]
    if n <= 1 and lay in ("split", "restart"):
        lay = "one"
    k = 1 + (index // 24) % (n - 1) if lay in ("split", "restart") else 0
    return [(STAMPS[index % len(STAMPS)], lay, k)]


def build(letters: tuple, shape: tuple) -> tuple[LogBuilder, list]:
    """The log, and its records: (file, offset, seq, entry)."""
    pattern, layout, split = shape
    b = LogBuilder(created=CREATED, first_seq=3 if layout == "late" else 0)
    recs = []
    for i, x in enumerate(letters):
        if i == split and layout == "split":
            b.new_segment(CREATED + 10)
        elif i == split and layout == "gap":  # a segment lost between: seqs jump by 4
            b.new_segment(CREATED + 10)
            b.seq += 3
        elif i == split and layout == "restart":
            b.reopen(CREATED + 10)
        entry = LETTERS[x](stamp(pattern, i, len(letters)))
        r = b.add(entry)
        recs.append((r.file, r.offset, r.seq, entry))
    return b, recs


def _written(root: Path, letters: tuple, shape: tuple) -> tuple[Path, list]:
    """The log written afresh as ``root/wal``, and its records (``build``)."""
    b, recs = build(letters, shape)
    wal = root / "wal"
    shutil.rmtree(wal, ignore_errors=True)
    b.write(wal)
    return wal, recs


def targets(recs: list, index: int, full: bool) -> list[dict]:
    seqs = [r[2] for r in recs]
    if not recs:
        return [{}, {"to_seq": 0}, {"to_time": 0}, {"to_time": 0, "exclusive": True},
                {"to_transaction": 1}]
    out = [{}]
    out += [{"to_seq": s} for s in dict.fromkeys(seqs)] + [{"to_seq": max(seqs) + 1}]
    pick = range(len(recs)) if full else (index % len(recs),)
    out += [{"to_seq": s, "exclusive": True} for s in dict.fromkeys(seqs[k] for k in pick)]
    out += [{"to_time": t} for t in (0, 1, 2, 3)]
    # (exclusive T selects what inclusive T - 1 does: one a log, in turn)
    out += [{"to_time": t, "exclusive": True} for t in ((1, 2, 3) if full else (1 + index % 3,))]
    out += [{"to_transaction": 1}, {"to_transaction": 2}, {"to_transaction": 1, "exclusive": True}]
    if len(set(seqs)) < len(seqs):  # seqs repeat: a record's position is its only name
        for k, (f, off, _, _) in enumerate(recs):
            for exclusive in (False, True) if full else ((k + index) % 2 == 1,):
                out.append({"to_position": f"{f}:{off}", "exclusive": exclusive})
    if full:
        out += [{"to_transaction": 2, "exclusive": True}]
    return out


def compare(wal: str, kw: dict, recs: list, *, backend: str = "cpu", chunk=None,
            read_after_stop: bool = True) -> str | None:
    """None where the restore and the reference agree, else what differs."""
    ref = reference.restore(wal, **kw)
    got, err = None, None
    try:
        view = w.restore_fast(wal, backend=backend, chunk_bytes=chunk,
                              read_after_stop=read_after_stop, **kw)
        got = view
    except errors.WalError as e:
        err = e
    try:
        trp.assert_matches(ref, got, err)
    except AssertionError as e:
        return f"assert_matches: {e!s}"[:800]
    if err is not None:
        return _error_disagrees(ref.error, err, kw, recs)
    rep = got.report
    if rep["backend"] != backend:
        return f"ran on {rep['backend']}: {rep['message']}"
    if rep["ids"] != len(ref.ids):
        return f"report ids {rep['ids']} != {len(ref.ids)}"
    if ref.stop["reason"] == "target" and ref.stop.get("timestamp") is not None:
        at = [r[3] for r in recs if (r[0], r[1]) == (ref.stop["file"], ref.stop["offset"])]
        kind = type(w.to_project_entry(at[0])).__name__  # (named as the Rust variant)
        if rep["stop"].get("record") != kind:
            return f"stop record {rep['stop'].get('record')} != {kind}"
    if rep["last_commit_timestamp"] != ref.last_commit_timestamp:
        return (f"last_commit_timestamp {rep['last_commit_timestamp']} != reference "
                f"{ref.last_commit_timestamp}")
    if not read_after_stop and rep["records_read"] != ref.records_read:
        return f"records_read {rep['records_read']} != reference {ref.records_read}"
    return None


def blamed_end(want) -> int:
    """The end of the bytes a reference refusal blames: its record's; a refusal it names
    by a position alone (no record ends there: a position target inside a torn tail)
    blames that byte (review dmgscope)."""
    return want.end if want.end is not None else want.offset + 1


def _error_disagrees(want, err, kw: dict, recs: list) -> str | None:
    """What a refusal gets wrong beyond its class: the record it names (every error
    that names one), or its kind of message (a target not found)."""
    if want.file is not None and (
            os.path.basename(err.file or "") != want.file or err.offset is None
            or not want.offset <= err.offset < blamed_end(want) or err.seq != want.seq):
        return f"error place: wanted {want}, got {type(err).__name__}: {err}"
    if not isinstance(err, errors.TargetNotFoundError):
        return None
    if "to_seq" in kw:
        words = f"no record has sequence number {kw['to_seq']}"
    elif "to_transaction" in kw:
        x, opener = kw["to_transaction"], None
        for r in recs:  # (no end of X closes it: the Begin that opened it is open still)
            if r[3][0] == "begin" and r[3][1] == x and opener is None:
                opener = r
        words = (f"transaction {x} never begins" if opener is None else
                 f"transaction {x} never ends: it begins at {opener[0]} offset {opener[1]}"
                 f" (seq {opener[2]})")
    else:
        return None
    return None if words in str(err) else f"message: wanted '{words}', got: {err}"


def check_log(root: Path, letters: tuple, index: int, full: bool = False,
              cuda: bool = False) -> tuple[list[str], int]:
    """Every target of every shape of one log; returns the disagreements and the count
    of restores."""
    found, runs = [], 0
    for shape in shapes(len(letters), index, full):
        wal, recs = _written(root, letters, shape)
        late, restarted = shape[1] == "late", shape[1] == "restart"
        flag_sets = [{}]
        if late:
            flag_sets = [{"allow_incomplete_history": True}]
        for j, t in enumerate(targets(recs, index, full)):
            runs_of = []
            for flags in flag_sets:
                chunks = (None, 64) if full else ((None, 64)[(index + j) % 2],)
                runs_of += [(flags, c, (index + j) % 3 != 2) for c in chunks]
            if (late or restarted) and (not t or j % 4 == 0):
                runs_of.append(({"skip_corrupt": True, "allow_incomplete_history": True},
                                None, True))
                if late:
                    runs_of.append(({}, 64, True))
            for flags, chunk, rap in runs_of:
                kw = {**t, **flags}
                bad = compare(str(wal), kw, recs, chunk=chunk, read_after_stop=rap)
                runs += 1
                if bad:
                    found.append(_line(letters, shape, kw, chunk, rap, "cpu", bad))
            if cuda and (not t or recs and t == {"to_seq": recs[len(recs) // 2][2]}):
                kw = {**t, **flag_sets[0]}
                bad = compare(str(wal), kw, recs, backend="cuda")
                runs += 1
                if bad:
                    found.append(_line(letters, shape, kw, None, True, "cuda", bad))
    return found, runs


#: The layouts of the warnings path: the restore's, and "gap", two segments with
#: seqs missing between them (a segment lost: records missing inside the log).
WARN_LAYOUTS = ("one", "split", "restart", "late", "gap")


def warn_shapes(n: int, index: int, full: bool) -> list[tuple]:
    """The shapes of a log of ``n`` records on the warnings path (``shapes``, with
    ``WARN_LAYOUTS``): one a log, in turn; ``--full``: every one."""
    every = [(p, lay, k) for p in STAMPS for lay in WARN_LAYOUTS
             for k in (range(1, n) if lay in ("split", "restart", "gap") else (0,))]
    if full:
        return every
    lay = WARN_LAYOUTS[(index // len(STAMPS)) % len(WARN_LAYOUTS)]
    if n <= 1 and lay in ("split", "restart", "gap"):
        lay = "one"
    k = 1 + (index // 20) % (n - 1) if lay in ("split", "restart", "gap") else 0
    return [(STAMPS[index % len(STAMPS)], lay, k)]


def compare_warnings(wal: str, kw: dict, *, chunk=None, read_after_stop: bool = True
                     ) -> str | None:
    """None where the restore's warnings, told apart by category
    (``reference_warnings.classify``), and what ``strict=True`` does agree with
    tests/reference_warnings.py's model, else what differs: each category once, none
    the model does not owe; strict refuses (``TargetNotReachedError``) exactly the
    categories the model says it refuses, else returns the same warnings; a restore
    that fails fails alike with strict."""
    import reference_warnings as rw

    import gpu_pitr

    want = rw.warnings_model(wal, read_after_stop=read_after_stop, **kw)
    runs = {}
    for strict in (False, True):
        try:
            runs[strict] = (gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk,
                                             read_after_stop=read_after_stop, strict=strict,
                                             **kw), None)
        except errors.WalError as e:
            runs[strict] = (None, e)
    return judge_warnings(want, runs)


def judge_warnings(want, runs: dict) -> str | None:
    """None where ``runs`` (strict False/True -> (index, error)) agree with a model's
    ``want`` (its ``error``, ``categories`` and ``refused``: ``reference_warnings``' or
    ``reference_base_warnings``' verdict), else what differs (``compare_warnings``'
    rules)."""
    import reference_warnings as rw

    (got, err), (sgot, serr) = runs[False], runs[True]
    if want.error is not None:
        bad = [f"{'strict ' if s else ''}restored" if e is None else
               f"{'strict ' if s else ''}{type(e).__name__}: {e}"
               for s, (_, e) in runs.items()
               if e is None or type(e).__name__ != want.error.cls]
        return f"model fails with {want.error.cls}; " + "; ".join(bad) if bad else None
    if err is not None:
        return f"model restores; restore raised {type(err).__name__}: {err}"[:1200]
    kinds = [rw.classify(t) for t in got.report.warnings]
    if sorted(kinds) != list(want.categories):
        return (f"warnings {sorted(kinds)} != model {list(want.categories)}: "
                f"{got.report.warnings}")[:1500]
    if want.refused:
        if not isinstance(serr, errors.TargetNotReachedError):
            return (f"strict: wanted TargetNotReachedError of {list(want.refused)}, got "
                    + ("a restore" if serr is None else f"{type(serr).__name__}: {serr}"))
        named = rw.refused_categories(serr.what)
        if sorted(named) != list(want.refused):
            return f"strict refused {named} != model {list(want.refused)}: {serr}"[:1200]
    elif serr is not None:
        return f"strict raised {type(serr).__name__}: {serr}; model refuses nothing"[:1200]
    elif sgot.report.warnings != got.report.warnings:
        return f"strict warnings {sgot.report.warnings} != {got.report.warnings}"[:1200]
    return None


def check_warnings(root: Path, letters: tuple, index: int, full: bool = False
                   ) -> tuple[list[str], int]:
    """Every target of the log in its warnings shape (``warn_shapes``), restored with
    and without ``strict`` (``compare_warnings``); chunk size and reading on past the
    stop in turn, as ``check_log``. A log whose history starts past seq 0 is restored
    with ``allow_incomplete_history`` (and, every fourth target, without: the error,
    strict or not). Returns the disagreements and the count of comparisons."""
    found, runs = [], 0
    for shape in warn_shapes(len(letters), index, full):
        wal, recs = _written(root, letters, shape)
        late = shape[1] == "late"
        for j, t in enumerate(targets(recs, index, full)):
            flag_sets = [{"allow_incomplete_history": True}] if late else [{}]
            if late and j % 4 == 0:
                flag_sets.append({})
            if shape[1] == "restart" and j % 4 == 0:
                flag_sets.append({"skip_corrupt": True})
            for flags in flag_sets:
                chunk, rap = (None, 64)[(index + j) % 2], (index + j) % 3 != 2
                kw = {**t, **flags}
                bad = compare_warnings(str(wal), kw, chunk=chunk, read_after_stop=rap)
                runs += 1
                if bad:
                    found.append(_line(letters, shape, kw, chunk, rap, "warnings", bad))
    return found, runs


#: The paths the enumeration can check (``--paths``); the default is ``restore``.
PATHS = ("restore", "shards", "inspect", "verify", "cli", "compat", "warnings")


def check_paths(root: Path, letters: tuple, index: int, paths=("restore",),
                full: bool = False, cuda: bool = False,
                cli_every: int = 200) -> dict[str, tuple[list[str], int]]:
    """Each path of ``paths`` on one log: its disagreements and its count of runs."""
    out = {}
    if "restore" in paths:
        out["restore"] = check_log(root, letters, index, full, cuda)
    if "warnings" in paths:
        out["warnings"] = check_warnings(root, letters, index, full)
    others = [p for p in paths if p not in ("restore", "warnings")]
    if not others:
        return out
    for p in others:
        out[p] = ([], 0)
    for shape in shapes(len(letters), index, full):
        wal, recs = _written(root, letters, shape)
        for p in others:
            if p == "cli" and (not cli_every or index % cli_every):
                continue
            found, runs = _CHECKS[p](root, wal, recs, index, shape, full)
            out[p] = (out[p][0] + [_line(letters, shape, kw, chunk, rap, p, what)
                                   for kw, chunk, rap, what in found], out[p][1] + runs)
    return out


def _runs(recs: list, index: int, shape: tuple, full: bool) -> list[tuple]:
    """(target and flags, chunk size, read_after_stop) for each restore of a path that
    takes the restore's targets: each target once, its chunk and reading in turn."""
    flags = {"allow_incomplete_history": True} if shape[1] == "late" else {}
    return [({**t, **flags}, (None, 64)[(index + j) % 2], (index + j) % 3 != 2)
            for j, t in enumerate(targets(recs, index, full))]


def check_shards(root, wal, recs, index, shape, full) -> tuple[list, int]:
    """Each target restored as 2 or 3 shards of the ids (in turn), merged with the
    library's ``merge_shards``, equals the restore without shards exactly; a refusal
    refuses every shard alike (``workloads.check_shards_equal_whole``)."""
    found, runs = [], 0
    for j, (kw, chunk, rap) in enumerate(_runs(recs, index, shape, full)):
        count = (2, 3)[(index + j) % 2]
        try:
            w.check_shards_equal_whole(str(wal), count, backend="cpu", chunk_bytes=chunk,
                                       read_after_stop=rap, **kw)
        except AssertionError as e:
            found.append((kw, chunk, rap, f"{count} shards: {e!s}"[:800]))
        runs += 1 + count
    return found, runs


def check_inspect(root, wal, recs, index, shape, full) -> tuple[list, int]:
    """``wal_stats`` (``gpu-pitr inspect --json``) equals tests/inspect_reference.py's
    document, its JSON text and its printed table, at the default piece size and 64
    bytes in turn (``--full``: both)."""
    import inspect_reference

    chunks = (None, 64) if full else ((None, 64)[index % 2],)
    try:
        inspect_reference.assert_same_stats(str(wal), chunks)
    except AssertionError as e:
        return [({}, chunks, True, f"inspect: {e!s}"[:800])], len(chunks)
    return [], len(chunks)


def check_verify(root, wal, recs, index, shape, full) -> tuple[list, int]:
    """What ``verify_wal`` says of the log agrees with the reference restore of latest.

    These logs are all a writer's (no damage): verify must find no damage, and its
    notices must be the ones the log's shape and the reference predict
    (docs/damage.md): ``seq_restart`` where the writer reopened and only there;
    ``incomplete_history`` iff the log starts past seq 0, which is iff the restore
    refuses it (``IncompleteHistoryError``); and the restore fails for any other reason
    only with ``DimensionMismatchError`` where a ``dim_change`` notice is at or before
    the record it names (a restore may apply records of one length where the record
    that changed it was aborted: no notice is owed a restore that succeeds). Its record
    count is the log's.
    """
    import inspect_reference

    from gpu_pitr import verify

    chunk = 64 if index % 2 else verify.DEFAULT_CHUNK_BYTES
    v = verify.verify_wal(str(wal), chunk_bytes=chunk)
    ref = reference.restore(str(wal))
    kinds = [p.kind for p in v.problems]
    bad = []
    if not v.clean:
        bad.append(f"damage: {[p.line() for p in v.problems if p.severity == 'damage']}")
    if v.records != len(recs):
        bad.append(f"records {v.records} != {len(recs)}")
    if ("seq_restart" in kinds) != (shape[1] == "restart"):
        bad.append(f"seq_restart notices {kinds.count('seq_restart')} in a "
                   f"{shape[1]} layout")
    refused = ref.error is not None and ref.error.cls == "IncompleteHistoryError"
    if ("incomplete_history" in kinds) != refused:
        bad.append(f"incomplete_history notice {'incomplete_history' in kinds}, reference "
                   f"{ref.error}")
    if ref.error is not None and not refused:
        e = ref.error
        where = {(r[0], r[1]): k for k, r in enumerate(recs)}
        at = where.get((e.file, e.offset))
        notes = [where.get((os.path.basename(p.file or ""), p.offset)) for p in v.problems
                 if p.kind == "dim_change"]
        if e.cls != "DimensionMismatchError" or at is None or not any(
                k is not None and k <= at for k in notes):
            bad.append(f"reference fails with {e.cls} at {e.file}:{e.offset}, verify's "
                       f"dim_change notices at records {notes}")
    # Its transaction notices are the reference's anomalies (a restore that read the
    # whole log) and inspect's transactions open at the end; its dim_change notices, the
    # records with a vector of another length than the one before it in log order.
    whole = reference.restore(str(wal), allow_incomplete_history=True)
    if whole.error is None:
        mine = [(os.path.basename(p.file), p.offset) for p in v.problems
                if p.kind in ("txn_begin_open", "txn_end_not_open")]
        if mine != [a[:2] for a in whole.anomalies]:
            bad.append(f"transaction notices at {mine}, reference anomalies {whole.anomalies}")
    opened = sorted(p.extra["transaction_id"] for p in v.problems
                    if p.kind == "txn_open_at_end")
    if opened != sorted(inspect_reference.wal_stats(str(wal))["transactions"]["open_at_end"]):
        bad.append(f"transactions open at the end {opened}, inspect's differ")
    dims, last = [], None
    for k, r in enumerate(recs):
        lengths = [len(e[2]) for e in _flat(r[3]) if e[0] in ("insert", "update")]
        if any(last is not None and n != last for n in lengths) or (
                lengths and len(set(lengths)) > 1):
            dims.append(k)
        last = lengths[-1] if lengths else last
    where = {(r[0], r[1]): k for k, r in enumerate(recs)}
    noted = [where.get((os.path.basename(p.file), p.offset)) for p in v.problems
             if p.kind == "dim_change"]
    if noted != dims:
        bad.append(f"dim_change notices at records {noted}, wanted {dims}")
    if bad:
        return [({}, chunk, True, "verify: " + "; ".join(bad)
                 + f"\n    verify said: {v.lines()}")], 1
    return [], 1


def _flat(entry) -> list:
    """A record's entries, batches opened (nested ones too)."""
    if entry[0] != "batch":
        return [entry]
    return [x for sub in entry[1] for x in _flat(sub)]


def _cli_args(kw: dict, rap: bool) -> list[str]:
    args = []
    for key, value in kw.items():
        if key in ("exclusive", "allow_incomplete_history", "skip_corrupt"):
            if value:
                args.append("--" + key.replace("_", "-"))
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args + ([] if rap else ["--stop-reading-at-target"])


def check_cli(root, wal, recs, index, shape, full) -> tuple[list, int]:
    """``python -m gpu_pitr restore WAL --out x.npz`` on a few targets (latest, a seq in
    the middle, one exclusive T, transaction 1) equals the library's restore, loaded
    with ``allow_pickle=False``: ids, vector bits, metadata, the report's stop and
    counts; where the library refuses, it exits 1 with one stderr line naming the same
    file and offset."""
    import json
    import subprocess

    import numpy as np

    import gpu_pitr

    runs_all = _runs(recs, index, shape, full)
    picks = [r for r in runs_all if not {k: v for k, v in r[0].items()
                                         if k != "allow_incomplete_history"}]
    if recs:
        mid = recs[len(recs) // 2][2]
        picks += [r for r in runs_all if r[0].get("to_seq") == mid][:1]
    picks += [r for r in runs_all if "to_time" in r[0] and r[0].get("exclusive")][:1]
    picks += [r for r in runs_all if r[0].get("to_transaction") == 1
              and not r[0].get("exclusive")][:1]
    found = []
    out = root / "x.npz"
    for kw, _, rap in picks:
        got, err = w.outcome(lambda kw=kw, rap=rap: gpu_pitr.restore(
            str(wal), backend="cpu", read_after_stop=rap, **kw))
        out.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out", str(out),
             "--backend", "cpu", "--quiet", *_cli_args(kw, rap)],
            capture_output=True, text=True, timeout=600)
        bad = None
        if err is not None:
            lines = proc.stderr.splitlines()
            if proc.returncode == 0 or len(lines) != 1 or "Traceback" in proc.stderr:
                bad = f"library: {err}; cli exit {proc.returncode}: {proc.stderr!r}"
            elif err.file is not None and (
                    os.path.basename(err.file) not in lines[0]
                    or (err.offset is not None and f"offset {err.offset}" not in lines[0])):
                bad = f"library: {err}; cli: {lines[0]}"
            elif out.exists():
                bad = f"library: {err}; cli wrote {out.name}"
        elif proc.returncode != 0:
            bad = f"library restored, cli exit {proc.returncode}: {proc.stderr!r}"
        else:
            with np.load(out, allow_pickle=False) as npz:
                host = got.to_host()
                vecs = np.asarray(host.vectors, dtype="<f4")
                rep = json.loads(str(npz["report"]))
                want = host.report.to_dict()
                if list(npz["ids"]) != host.id_list():
                    bad = f"ids {list(npz['ids'])} != {host.id_list()}"
                elif (npz["vectors"].astype("<f4").tobytes() != vecs.tobytes()
                      or (len(vecs) and npz["vectors"].shape != vecs.shape)):
                    bad = f"vectors {npz['vectors']!r} != {vecs!r}"
                elif [json.loads(m) for m in npz["metadata"]] != list(host.metadata):
                    bad = f"metadata {list(npz['metadata'])} != {list(host.metadata)}"
                else:
                    diff = {k: (rep.get(k), want[k]) for k in w.SHARD_REPORT_KEYS
                            if rep.get(k) != want[k]}
                    if diff:
                        bad = f"report differs: {diff}"[:800]
        if bad:
            found.append((kw, None, rap, f"cli: {bad}"[:800]))
    return found, len(picks)


def check_compat(root, wal, recs, index, shape, full) -> tuple[list, int]:
    """The seed API (SPEC section 5) for each T in 0..4: ``find_base_checkpoint`` is the
    top-level Checkpoint with the greatest timestamp <= T (the first of a tie), and
    ``replay_wal_to_timestamp`` every top-level record stamped <= T that is not a
    Checkpoint or marker, in log order, batches whole, aborted ones too; with that
    base, only records whose seq is greater than its ``sequence_number``. Compared as
    encoded bytes."""
    from gpu_pitr.compat import PointInTimeRestore
    from gpu_pitr.format.codec import encode_entry

    found, runs = [], 0
    for t in range(5):
        pit = PointInTimeRestore(t, wal)
        base = pit.find_base_checkpoint()
        ckpts = [r for r in recs if r[3][0] == "checkpoint" and r[3][2] <= t]
        best = max(ckpts, key=lambda r: r[3][2], default=None)  # (max: the first of a tie)
        want_base = None if best is None else (best[3][1], best[3][2])
        got_base = None if base is None else (base.sequence_number, base.timestamp)
        if got_base != want_base:
            found.append(({"to_time": t}, None, True, f"compat base {got_base} != {want_base}"))
        for b in (None, base) if base is not None else (None,):
            got = [bytes(encode_entry(e)) for e in pit.replay_wal_to_timestamp(b)]
            want = [w.encode_entry(r[3]) for r in recs
                    if r[3][0] not in ("checkpoint", "begin", "commit", "abort")
                    and r[3][-1] <= t and (b is None or r[2] > b.sequence_number)]
            runs += 1
            if got != want:
                found.append(({"to_time": t, "base": got_base}, None, True,
                              f"compat replay: {len(got)} entries, wanted {len(want)}"))
    return found, runs


_CHECKS = {"shards": check_shards, "inspect": check_inspect, "verify": check_verify,
           "cli": check_cli, "compat": check_compat}


def _line(letters, shape, kw, chunk, rap, backend, what) -> str:
    return (f"[{' '.join(letters)}] stamps={shape[0]} layout={shape[1]}"
            f"{'@' + str(shape[2]) if shape[2] else ''} target={kw} backend={backend} "
            f"chunk_bytes={chunk} read_after_stop={rap}\n    {what}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="N=6, every shape, both chunk sizes, every exclusive seq")
    ap.add_argument("-n", type=int, default=None, help="longest log (5; 6 with --full)")
    ap.add_argument("--sample", type=int, default=1, metavar="K", help="every K-th log only")
    ap.add_argument("--start", type=int, default=0, metavar="I", help="from the I-th log on")
    ap.add_argument("--cuda-every", type=int, default=50, metavar="K",
                    help="the cuda executor on every K-th log (0: never)")
    ap.add_argument("--paths", default="restore", metavar="P,...",
                    help=f"the paths to check, of {','.join(PATHS)} (default: restore)")
    ap.add_argument("--cli-every", type=int, default=200, metavar="K",
                    help="the cli path on every K-th log only (0: never)")
    ap.add_argument("-v", action="store_true", help="progress every 500 logs")
    args = ap.parse_args(argv)
    paths = tuple(p for p in args.paths.split(",") if p)
    if not paths or set(paths) - set(PATHS):
        ap.error(f"--paths: each of {','.join(PATHS)}, got {args.paths!r}")
    n = args.n or (6 if args.full else 5)
    todo = logs(n, FULL_TIERS if args.full else TIERS)
    t0, seen = time.monotonic(), 0
    figures = {p: [0, 0, 0, 0.0] for p in paths}  # logs, runs, disagreements, seconds
    with tempfile.TemporaryDirectory() as d:
        for index in range(args.start, len(todo), args.sample):
            letters = todo[index]
            cuda = bool(args.cuda_every) and index % args.cuda_every == 0
            for p in paths:
                started = time.monotonic()
                lines, k = check_paths(Path(d), letters, index, (p,), args.full, cuda,
                                       args.cli_every)[p]
                fig = figures[p]
                fig[0] += bool(k)
                fig[1] += k
                fig[2] += len(lines)
                fig[3] += time.monotonic() - started
                for line in lines:
                    print(line, flush=True)
            seen += 1
            if args.v and seen % 500 == 0:
                print(f"... {seen} logs ({index + 1}/{len(todo)}), "
                      + "; ".join(f"{p}: {f[1]} runs, {f[2]} disagreements"
                                  for p, f in figures.items())
                      + f", {time.monotonic() - t0:.0f} s", flush=True)
    for p, (logs_, runs, total, secs) in figures.items():
        what = "restores" if p == "restore" else "runs"
        print(f"{p}: {logs_} logs, {runs} {what}, {total} disagreements, {secs:.0f} s")
    return 1 if any(f[2] for f in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
