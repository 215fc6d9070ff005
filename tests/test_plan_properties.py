"""Property test: the dry run (``plan_restore``) predicts what the restore then does.

Random WAL directories (tests/workloads.py, damage included) with random targets (time,
seq, transaction, position, latest; exclusive or not), random ``skip_corrupt``,
``allow_incomplete_history``, ``strict`` and ``read_after_stop``, and now and then a
base snapshot (``base`` or ``snapshots``, one of them damaged, the segments before it
deleted as ``expire`` deletes them). Each is planned (the WAL directory left as it was)
and restored; what the plan says must hold of the restore (README, ``--dry-run``;
docs/api.md, ``plan_restore``):

- a plan that raises: the restore raises the same error in the same words, or an error
  only reading finds first (damage before the segment the plan refused; with ``strict``,
  more that the target was not reached);
- a plan that passes: the restore passes, or fails with what only reading finds (a
  damaged record, a seq or transaction the log it reads lacks, a time past its end or
  missing records under ``strict``, a damaged segment header the plan warned a time,
  seq or transaction target may reach);
- where both pass: the same target and base, the report's message but for what reading
  finds, its warnings but for what reading finds (and the plan's own of a header a
  target may stop before, and of a gap ``strict`` may refuse), the files skipped for a
  damaged header, and the log read (segments, bytes) of a restore that reads to the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import workloads as w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import (
    BadSegmentError,
    CorruptRecordError,
    DimensionMismatchError,
    TargetNotFoundError,
    TargetNotReachedError,
    WalError,
)
from gpu_pitr.expire import MARKER_FORMAT, MARKER_NAME
from gpu_pitr.format.dump import wal_records
from gpu_pitr.report import EMPTY_INDEX_NOTE
from gpu_pitr.snapshot.format import read_manifest

SETTINGS = settings(
    max_examples=max(10, int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")) // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)

#: What only reading the log finds, so the plan does not look for it.
READING_ERRORS = (CorruptRecordError, DimensionMismatchError)
#: The report's notes of what reading found (the plan's notes leave them out).
READING_NOTES = ("nothing to restore: no records in the log", EMPTY_INDEX_NOTE)
#: ``strict``'s refusals known before reading (``plan_restore`` raises them).
KNOWN_BEFORE_READING = ("the base snapshot's state alone", "nothing to restore: ",
                        "records are missing from the log the base snapshot")
#: The report's warnings of what only reading finds (``_restore_warnings``).
READING_WARNINGS = (
    "records are missing from the log: the seq jumps",
    "the log ends before the target",
    " left bytes over after the payload, the first at ",
)


TARGET_KEYS = ("to_time", "to_seq", "to_transaction", "to_position", "exclusive")
SEGMENT = re.compile(r"wal-[0-9a-f]{16}\.log")


def _reading_warning(text: str) -> bool:
    """A report's warning of what only reading finds, which the plan does not say."""
    return (text.startswith(READING_WARNINGS[:2]) or READING_WARNINGS[2] in text
            or (text.startswith("seq ") and " occurs " in text)
            or (text.startswith("transaction ") and (
                " begins again later in the log" in text
                or " is still open at the end of the log" in text)))


def _plan_only_warning(text: str) -> bool:
    """The plan's warnings that are no restore's: a damaged header a target may stop
    before, and a file skipped whose records may leave a gap ``strict`` refuses."""
    return ("a restore that has not stopped at its target before this segment" in text
            or "which --strict refuses (the dry run reads none of them" in text)


def _warned_headers(plan: dict) -> set[str]:
    """The files whose damaged header the plan says a restore may or may not reach."""
    return {t.split(": offset 0: ")[0] for t in plan["warnings"]
            if "a restore that has not stopped at its target" in t}


def _is_header_skip(entry: dict) -> bool:
    """A ``skipped`` entry of a whole file (a damaged header), not of records."""
    return entry.get("offset") == 0 and entry.get("seq") is None


@st.composite
def plan_cases(draw, wal: Path, work: w.Workload) -> dict:
    """Restore keyword arguments: ``workloads.targets``' (latest, time, seq, with
    ``skip_corrupt`` and ``allow_incomplete_history``), or a transaction or a position
    (a record's, or a byte that starts none), then ``strict`` and ``read_after_stop``."""
    kind = draw(st.sampled_from(["targets"] * 6 + ["transaction", "position"]))
    if kind == "targets":
        kw = draw(w.targets(work))
    else:
        kw = {"exclusive": draw(st.booleans())}
        if kind == "transaction":
            kw["to_transaction"] = draw(st.integers(0, 5))
        else:
            recs = list(wal_records(wal, limit=40))
            if recs and draw(st.integers(0, 4)):
                r = draw(st.sampled_from(recs))
                kw["to_position"] = f"{r['file']}:{r['offset']}"
            else:
                names = sorted((n for n in work.files if SEGMENT.fullmatch(n)),
                               key=str.encode) or ["wal-0000000000000001.log"]
                kw["to_position"] = f"{draw(st.sampled_from(names))}:{draw(st.integers(0, 60))}"
        w.damage_options(draw, kw)
    kw["strict"] = draw(st.integers(0, 2)) == 0
    kw["read_after_stop"] = draw(st.integers(0, 3)) > 0
    return kw


def _snapshot_of(draw, wal: Path, work: w.Workload, out: Path, under: Path | None
                 ) -> tuple[Path, dict] | None:
    """A snapshot of a random restore of ``wal`` (``under``: from that snapshot), and
    that restore's arguments (None where it fails)."""
    kw = draw(plan_cases(wal, work), label="snapshot target")
    kw.pop("strict")
    kw.pop("read_after_stop")
    try:
        index = gpu_pitr.restore(wal, backend="cpu", base=under, **kw)
    except WalError:
        return None
    snapshot.save(index, out)
    return out, kw


def _bases(draw, wal: Path, work: w.Workload, snaps: Path) -> tuple[dict, list]:
    """``{}``, ``{"base": SNAP}`` or ``{"snapshots": DIR}``: snapshots of random restores
    (the second one now and then from the first), one now and then with a damaged
    checksum, and sometimes the segments before one (or up to it) deleted, as ``expire``
    deletes them, with its marker or without; and the arguments of the restores the
    snapshots were taken of."""
    how = draw(st.sampled_from(["none", "none", "base", "snapshots"]), label="base")
    if how == "none":
        return {}, []
    snaps.mkdir()
    taken: list[tuple[Path, dict]] = []
    for k in range(draw(st.integers(1, 2))):
        under = taken[-1][0] if taken and draw(st.booleans()) else None
        got = _snapshot_of(draw, wal, work, snaps / f"s{k}", under)
        if got is not None:
            taken.append(got)
    if not taken:
        return {}, []
    paths = [t[0] for t in taken]
    if draw(st.integers(0, 2)) == 0:  # expired: the segments before a snapshot gone
        pos = read_manifest(draw(st.sampled_from(paths)))["position"]
        if pos.get("segment"):
            # (Its own segment too, now and then: a base the log must go on from.)
            own = draw(st.booleans())
            names = sorted((n for n in work.files if SEGMENT.fullmatch(n)), key=str.encode)
            gone = [n for n in names if n.encode() < pos["segment"].encode()
                    or (own and n == pos["segment"])]
            for name in gone:
                (wal / name).unlink()
            kept = [n for n in names if n not in gone]
            if gone and kept and draw(st.booleans()):  # and expire's marker says so
                (wal / MARKER_NAME).write_text(json.dumps(
                    {"format": MARKER_FORMAT, "version": 1, "first_kept": kept[0],
                     "last_expired": gone[-1]}))
    names = sorted((n for n in os.listdir(wal) if SEGMENT.fullmatch(n)
                    and (wal / n).is_file()), key=str.encode)
    if names and draw(st.integers(0, 4)) == 0:  # a segment damaged since (its own too)
        seg = wal / draw(st.sampled_from(names))
        data = bytearray(seg.read_bytes())
        how = draw(st.sampled_from(["version", "cut", "zeros"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "version" and len(data) > 4:
            data[4] = 2
        elif how == "cut":
            del data[at:]
        else:
            data[at:at + 12] = bytes(len(data[at:at + 12]))
        seg.write_bytes(bytes(data))
    if draw(st.integers(0, 4)) == 0:  # a damaged snapshot: passed over, or refused
        damaged = draw(st.sampled_from(paths))
        files = sorted(f for f in damaged.iterdir() if f.stat().st_size)
        file = draw(st.sampled_from(files))
        data = bytearray(file.read_bytes())
        # (A fraction of its length: a manifest's length varies, its report's timings.)
        data[draw(st.integers(0, 2**16 - 1)) * len(data) >> 16] ^= 0x20
        file.write_bytes(bytes(data))
    if how == "base":
        return {"base": draw(st.sampled_from(paths))}, [t[1] for t in taken]
    return {"snapshots": snaps}, [t[1] for t in taken]


def _outcome(fn):
    try:
        return fn(), None
    except WalError as err:
        return None, err


def check_plan_predicts_restore(wal: Path, kw: dict, chunk_bytes: int | None = None) -> str:
    """Plan and restore ``wal`` with ``kw`` (the restore in chunks of ``chunk_bytes``);
    assert the plan's promises of the restore. Returns what happened (for the
    statistics hypothesis shows)."""
    before = w.dir_state(wal)
    plan, plan_err = _outcome(lambda: gpu_pitr.plan_restore(wal, **kw))
    assert w.dir_state(wal) == before, "the dry run wrote in the WAL directory"
    got, err = _outcome(lambda: gpu_pitr.restore(wal, backend="cpu", chunk_bytes=chunk_bytes,
                                                 **kw))
    if plan_err is not None:
        # Refused before reading: the restore refuses it alike, unless reading finds
        # damage first (a damaged header is met where reading reaches it) or, strict,
        # more that the target was not reached, named first.
        if err is not None and isinstance(err, READING_ERRORS) and isinstance(
                plan_err, (BadSegmentError, TargetNotReachedError)):
            return "plan refused, reading found damage first"
        assert err is not None, f"the plan raised {plan_err!r}, the restore passed"
        assert type(err) is type(plan_err), (plan_err, err)
        if isinstance(err, TargetNotReachedError):
            assert str(plan_err).split("; also: ")[0] in str(err), (str(plan_err), str(err))
        else:
            assert str(err) == str(plan_err)
            assert (err.file, err.offset, err.seq) == (plan_err.file, plan_err.offset,
                                                       plan_err.seq)
        return f"both refused: {type(err).__name__}"
    if err is not None:
        # What only reading finds.
        if isinstance(err, READING_ERRORS):
            return f"reading found {type(err).__name__}"
        if isinstance(err, TargetNotFoundError):
            # (Where no log is read at all, the plan says so itself.)
            assert "to_seq" in kw or "to_transaction" in kw, (kw, err)
            assert plan["read"]["segments"], (plan, err)
            return "the log lacks the target"
        if isinstance(err, TargetNotReachedError):
            # What reading found first (the plan refuses what is known before it).
            assert kw["strict"], err
            assert not str(err).startswith(KNOWN_BEFORE_READING), (plan, err)
            return "strict: not reached"
        if isinstance(err, BadSegmentError):
            assert err.file in _warned_headers(plan), (plan["warnings"], err)
            return "a header the plan warned of"
        raise AssertionError(f"the plan passed ({plan}), the restore raised {err!r}")
    report = got.report.to_dict()
    base = report["base"]
    assert plan["target"] == report["target"]
    if base is None:
        assert plan["base"] is None, plan["base"]
    else:
        said = plan["base"]
        assert said is not None, base
        assert (said["path"], said["count"], said["dim"]) == (base["path"], base["ids"],
                                                              base["dim"])
        assert {k: said["position"][k] for k in ("segment", "offset", "seq", "timestamp")} \
            == {k: base[k] for k in ("segment", "offset", "seq", "timestamp")}
    # (A note may hold "; " itself: the message is compared whole.)
    said = "; ".join(plan["notes"])
    found = report["message"].removeprefix(said).removeprefix("; ") if said else \
        report["message"]
    assert report["message"].startswith(said) and found in ("", *READING_NOTES), (
        plan["notes"], report["message"])
    assert [t for t in plan["warnings"] if not _plan_only_warning(t)] == [
        t for t in report["warnings"] if not _reading_warning(t)], (
        plan["warnings"], report["warnings"])
    skipped = [s for s in report["skipped"] if _is_header_skip(s)]
    warned = _warned_headers(plan)
    assert plan["skipped"] == [s for s in skipped if s["file"] not in warned], (
        plan["skipped"], report["skipped"])
    assert all(s in skipped for s in plan["skipped"])
    read = (plan["read"]["segments"], plan["read"]["bytes"])
    if kw["read_after_stop"]:
        assert read == (report["segments"], report["bytes_read"]), (plan["read"], report)
    else:
        assert report["segments"] <= read[0] and report["bytes_read"] <= read[1], (
            plan["read"], report)
    return "both restored" + (" from a base" if base else "")


@SETTINGS
@given(data=st.data())
def test_the_dry_run_predicts_the_restore(data, tmp_path):
    work = data.draw(w.workloads(max_steps=20), label="workload")
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # each example its own directory
    wal = Path(work.write(root / "wal"))
    extra = data.draw(st.sampled_from([None] * 8 + ["directory", "dangling link"]),
                      label="named like a segment")
    if extra is not None:  # (the restore warns of the one, skips or refuses the other)
        names = [n for n in work.files if SEGMENT.fullmatch(n)]
        created = int(max(names, default="wal-0000000000000001.log")[4:20], 16)
        at = wal / w.segment_name(max(0, created + data.draw(st.integers(-2, 2))))
        if not at.exists():
            at.mkdir() if extra == "directory" else at.symlink_to(root / "missing")
    try:
        where, taken = _bases(data.draw, wal, work, root / "snaps")
        kw = data.draw(plan_cases(wal, work), label="restore")
        if taken and data.draw(st.booleans()):  # the target a snapshot was taken at
            at = data.draw(st.sampled_from(taken))
            kw = {**{k: v for k, v in kw.items() if k not in TARGET_KEYS},
                  **{k: v for k, v in at.items() if k in TARGET_KEYS}}
        chunk = data.draw(st.sampled_from([None, 64, 1000]), label="chunk_bytes")
        event(check_plan_predicts_restore(wal, {**kw, **where}, chunk))
        event(f"from {next(iter(where), 'the log')}")
    finally:
        shutil.rmtree(root)


def test_the_open_transactions_table_does_not_grow_a_chain_of_closed_ones():
    """The walk's table of open transactions kept every closed transaction's entry
    until the next chunk: a log that begins and commits one id again and again (ids
    reused, as a counter that restarts) made one chain of them, probed by every begin
    (64,000 times in a chunk: 13 s). A closed entry met on the way is now taken over,
    and the table's homes are seeded per process, so ids picked to share a home do
    not."""
    import numpy as np
    from collisions import unfmix

    from gpu_pitr.homes import HOME_SEED, seeded_home
    from gpu_pitr.plan import commit

    n = 1000
    h_txn = np.zeros(4 * n, np.uint64)
    h_slot = np.full(4 * n, -1, np.int64)
    s_txn = np.zeros(n + 1, np.uint64)
    s_open = np.zeros(n + 1, np.bool_)
    seed = HOME_SEED
    for s in range(n):  # begin 7 (not open), then commit 7
        assert commit._find_open(np.uint64(7), s_txn, s_open, h_txn, h_slot, seed) == -1
        s_txn[s], s_open[s] = 7, True
        commit._put_open(np.uint64(7), s, s_open, h_txn, h_slot, seed)
        assert commit._find_open(np.uint64(7), s_txn, s_open, h_txn, h_slot, seed) == s
        s_open[s] = False
    assert np.count_nonzero(h_slot >= 0) == 1  # was 1,000 entries, one chain

    # Ids of one home without the seed (the mix is invertible) spread with it.
    mask = np.uint64(len(h_slot) - 1)
    ids = [unfmix((i << 32) | 5) for i in range(1, n + 1)]
    assert {int(seeded_home(np.uint64(t), mask, np.uint64(0))) for t in ids} == {5}
    assert len({int(seeded_home(np.uint64(t), mask, seed)) for t in ids}) > n // 2

