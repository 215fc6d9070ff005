"""Transaction targets (``to_transaction``, ``--to-transaction``): PostgreSQL's
``recovery_target_xid`` with ``recovery_target_inclusive``.

The target is the first CommitTransaction or AbortTransaction of X, in log order, that
closes an open X; inclusive it is applied (a seq target at its record's seq gives the
same), exclusive the restore stops just before it. Checked against tests/reference.py
on random logs (damage, restarts, anomalies), against the seq target where seqs are
unique, on both executors, and by hand for the cases around it: an abort, a begin
twice, a stray end, an id reused after a writer restart, X never ended or never begun,
base snapshots, the command line and the report.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import workloads as w
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import Undecodable, decode_payload, frame_log
from test_restore_properties import SETTINGS, run_case

import gpu_pitr
from gpu_pitr import errors, snapshot
from gpu_pitr.cli import main


def _markers(wal_dir) -> list[tuple]:
    """The log's transaction records in log order: (kind, id, seq)."""
    out = []
    for item in frame_log(wal_dir):
        if item[0] != "record":
            continue
        try:
            entry, _ = decode_payload(item[5])
        except Undecodable:
            continue
        if entry[0] in ("begin", "commit", "abort"):
            out.append((entry[0], entry[1], item[4]))
    return out


def _closing_seq(wal_dir, txn: int) -> int | None:
    """The seq of the record that is transaction ``txn``'s target (SPEC section 3's open
    set, as the reference keeps it), or None."""
    open_ = set()
    for kind, tx, seq in _markers(wal_dir):
        if kind == "begin":
            open_.add(tx)
        elif tx in open_:
            if tx == txn:
                return seq
            open_.discard(tx)
    return None


@st.composite
def _txn_targets(draw, wl: w.Workload) -> dict:
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        ids = sorted({tx for _, tx, _ in _markers(d)})
    kw = {"to_transaction": draw(st.sampled_from(ids + [2**64 - 1] if ids else [0, 7]))}
    kw["exclusive"] = draw(st.booleans())
    return w.damage_options(draw, kw)


@pytest.mark.parametrize("chunk_bytes", [None, 64], ids=["default", "c64"])
@SETTINGS
@given(data=st.data())
def test_random_logs_equal_the_reference(chunk_bytes, data):
    wl = data.draw(w.workloads(), label="workload")
    kw = data.draw(_txn_targets(wl), label="target")
    run_case(wl, kw, chunk_bytes)


@st.composite
def _transaction_logs(draw) -> w.LogBuilder:
    """Logs of interleaved transactions, their anomalies included (a begin of an open
    id, an end of one not open), over segments, with seqs unique (no restart)."""
    b = w.LogBuilder(created=draw(st.integers(1, 2**40)))
    created = int(b.cur[4:20], 16)
    open_: list[int] = []
    ts = 1000
    for _ in range(draw(st.integers(1, 30))):
        ts += draw(st.integers(-2, 3))
        step = draw(st.sampled_from(["data"] * 4 + ["begin", "begin", "end", "end", "rotate"]))
        if step == "data":
            ident = draw(st.sampled_from("abcdef"))
            b.add(draw(st.sampled_from([w.Ins(ident, [float(ts)], {"t": str(ts)}, ts),
                                        w.Upd(ident, [-float(ts)], None, ts),
                                        w.Del(ident, ts)])))
        elif step == "begin":
            tx = draw(st.integers(0, 6))
            b.add(w.Begin(tx, ts))
            if tx not in open_:
                open_.append(tx)
        elif step == "end":
            tx = draw(st.sampled_from(open_)) if open_ and draw(st.integers(0, 4)) else (
                draw(st.integers(0, 6)))
            b.add(draw(st.sampled_from([w.Commit, w.Commit, w.Abort]))(tx, ts))
            if tx in open_:
                open_.remove(tx)
        else:
            created += draw(st.integers(1, 50))
            b.new_segment(created)
    return b


@w.CUDA_SETTINGS
@given(data=st.data())
def test_equals_the_seq_target_of_its_record_on_both_executors(data):
    """Where seqs are unique, X's target is the seq target of the record that ends it,
    inclusive and exclusive, whole report and all; the cuda executor agrees."""
    log = data.draw(_transaction_logs(), label="log")
    with tempfile.TemporaryDirectory() as d:
        log.write(d)
        ids = sorted({tx for kind, tx, _ in _markers(d) if _closing_seq(d, tx) is not None})
        assume(ids)
        txn = data.draw(st.sampled_from(ids), label="txn")
        exclusive = data.draw(st.booleans(), label="exclusive")
        common = dict(exclusive=exclusive, chunk_bytes=data.draw(st.sampled_from([None, 64])))
        closing = _closing_seq(d, txn)
        want = w.target_outcome(d, backend="cpu", to_seq=closing, **common)
        # X begun again after its first end (a Begin while X is closed) is warned of:
        # a later use, which the seq target has no word for.
        again, open_ = 0, False
        for kind, tx, seq in _markers(d):
            if tx == txn and seq > closing:
                again += kind == "begin" and not open_
                open_ = kind == "begin"
        for backend in ("cpu", "cuda"):
            got = w.target_outcome(d, backend=backend, to_transaction=txn, **common)
            if got[0] == "ok":
                said = [x for x in got[2]["warnings"]
                        if x.startswith(f"transaction {txn} begins again later")]
                assert len(said) == (again > 0), said
                if said:
                    assert f"({again} more use" in said[0]
                got[2]["warnings"] = [x for x in got[2]["warnings"] if x not in said]
            assert got == want, backend


def _log(*entries, restart_before=()) -> w.LogBuilder:
    b = w.LogBuilder()
    for k, e in enumerate(entries):
        if k in restart_before:
            b.reopen()
        b.add(e)
    return b


def _ids(wal, **kw) -> list[str]:
    return gpu_pitr.restore(wal, backend="cpu", **kw).id_list()


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_an_aborted_transaction_is_a_target(tmp_path, backend):
    wal = _log(w.Ins("a", [1.0], None, 1), w.Begin(5, 2), w.Ins("x", [2.0], None, 3),
               w.Begin(6, 3), w.Ins("y", [3.0], None, 3), w.Abort(6, 4),
               w.Ins("b", [4.0], None, 5), w.Abort(5, 6), w.Ins("c", [5.0], None, 7)
               ).write(tmp_path)
    inc = gpu_pitr.restore(wal, backend=backend, to_transaction=5)
    assert inc.id_list() == ["a"]
    assert inc.report.stop["record"] == "AbortTransaction" and inc.report.stop["seq"] == 7
    assert inc.report.transactions == {"committed": 0, "aborted": 2, "in_flight_discarded": 0}
    exc = gpu_pitr.restore(wal, backend=backend, to_transaction=5, exclusive=True)
    assert exc.id_list() == ["a"] and exc.report.stop["seq"] == 7
    # Stopped before X's abort: X is in flight there, and its abort is not counted.
    assert exc.report.transactions == {"committed": 0, "aborted": 1, "in_flight_discarded": 1}


def test_a_begin_of_an_open_transaction_is_an_anomaly_not_a_new_one(tmp_path):
    wal = _log(w.Begin(5, 1), w.Ins("x", [1.0], None, 1), w.Begin(5, 2),
               w.Ins("y", [2.0], None, 2), w.Commit(5, 3), w.Ins("z", [3.0], None, 4)
               ).write(tmp_path)
    got = gpu_pitr.restore(wal, backend="cpu", to_transaction=5)
    assert got.id_list() == ["x", "y"] and got.report.stop["seq"] == 4
    assert [a["offset"] for a in got.report.anomalies] and len(got.report.anomalies) == 1
    assert _ids(wal, to_transaction=5, exclusive=True) == []


def test_an_end_of_a_transaction_not_open_is_not_the_target(tmp_path):
    """A Commit of X before X begins closes nothing (an anomaly, SPEC section 3): the
    target is the later one that closes X."""
    wal = _log(w.Ins("a", [1.0], None, 1), w.Commit(5, 2), w.Ins("b", [2.0], None, 3),
               w.Begin(5, 4), w.Ins("x", [3.0], None, 5), w.Commit(5, 6),
               w.Ins("c", [4.0], None, 7)).write(tmp_path)
    got = gpu_pitr.restore(wal, backend="cpu", to_transaction=5)
    assert got.id_list() == ["a", "b", "x"] and got.report.stop["seq"] == 5
    assert len(got.report.anomalies) == 1 and got.report.anomalies[0]["seq"] == 1
    assert _ids(wal, to_transaction=5, exclusive=True) == ["a", "b"]


def test_an_id_reused_after_a_restart_targets_its_first_end(tmp_path):
    """Seqs and transaction ids both repeat after a writer restart: the first record in
    log order that ends X is the target (a seq target would take the first record of
    that seq, which is another record here)."""
    wal = _log(w.Ins("a", [1.0], None, 1), w.Begin(1, 2), w.Ins("x", [2.0], None, 3),
               w.Commit(1, 4), w.Ins("b", [3.0], None, 5),
               # the writer reopened: seq 0 again, and ids from 1 again
               w.Ins("c", [4.0], None, 6), w.Begin(1, 7), w.Ins("y", [5.0], None, 8),
               w.Commit(1, 9), w.Ins("d", [6.0], None, 10), restart_before=(5,)
               ).write(tmp_path)
    first = gpu_pitr.restore(wal, backend="cpu", to_transaction=1,
                             allow_incomplete_history=True)
    assert first.id_list() == ["a", "x"]
    assert first.report.stop["seq"] == 3 and first.report.stop["offset"] > 0
    assert _ids(wal, to_transaction=1, exclusive=True) == ["a"]


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_an_id_reused_later_is_warned_of(tmp_path, backend):
    """The runbook's case: the bad ingest is the second use of X (ids repeat after a
    writer restart), and --to-transaction X stops at the first, long before it. As a seq
    target met twice, the restore says so and names the way to the later one; it did
    not, and the older state came back with exit 0 and no word."""
    b = _log(w.Ins("a", [1.0], None, 1), w.Begin(1, 2), w.Ins("x", [2.0], None, 3),
             w.Commit(1, 4), w.Ins("b", [3.0], None, 5))
    b.reopen()  # the writer restarted: seq 0 again, and ids from 1 again
    b.add(w.Ins("c", [4.0], None, 6))
    again = b.add(w.Begin(1, 7))
    b.add(w.Ins("y", [5.0], None, 8))
    b.add(w.Commit(1, 9))
    wal = b.write(tmp_path)
    # (chunk_bytes=64: a piece a record, the later Begin read pieces after the stop)
    for exclusive, chunk in ((False, None), (True, None), (True, 64)):
        got = gpu_pitr.restore(wal, backend=backend, to_transaction=1, exclusive=exclusive,
                               allow_incomplete_history=True, chunk_bytes=chunk)
        assert got.id_list() == (["a"] if exclusive else ["a", "x"])
        stop = got.report.stop
        (warning,) = [x for x in got.report.warnings if "begins again" in x]
        assert warning == (
            f"transaction 1 begins again later in the log (1 more use, the first at "
            f"{Path(again.file).name} offset {again.offset} (seq {again.seq}): a writer "
            f"restarted uses ids again): the restore stopped at the end of the first use, "
            f"{Path(stop['file']).name} offset {stop['offset']}; `gpu-pitr inspect "
            f"{wal} --transactions --transaction 1` lists every use, and --to-position "
            "FILE:OFFSET from a later one's `end:` line reaches it")
    # Reading ended at the stop: the later use is not known, and not guessed at.
    quiet = gpu_pitr.restore(wal, backend=backend, to_transaction=1, read_after_stop=False,
                             allow_incomplete_history=True)
    assert not [x for x in quiet.report.warnings if "begins again" in x]


def test_an_id_used_once_is_not_warned_of(tmp_path):
    wal = _log(w.Ins("a", [1.0], None, 1), w.Begin(1, 2), w.Ins("x", [2.0], None, 3),
               w.Commit(1, 4), w.Begin(2, 5), w.Commit(2, 6)).write(tmp_path)
    assert gpu_pitr.restore(wal, backend="cpu", to_transaction=1).report.warnings == []


def test_a_transaction_never_ended_is_an_error_naming_its_begin(tmp_path):
    b = _log(w.Ins("a", [1.0], None, 1), w.Ins("b", [1.0], None, 1))
    begin = b.add(w.Begin(9, 2))
    b.add(w.Ins("x", [2.0], None, 3))
    wal = b.write(tmp_path)
    for backend in ("cpu", "cuda"):
        for exclusive in (False, True):
            with pytest.raises(errors.TargetNotFoundError) as err:
                gpu_pitr.restore(wal, backend=backend, to_transaction=9, exclusive=exclusive)
            assert err.value.file == str(tmp_path)
            assert (f"transaction 9 never ends: it begins at {begin.file} offset "
                    f"{begin.offset} (seq 2) and is still open at the end of the log"
                    ) in str(err.value)


def test_a_transaction_whose_end_was_skipped_says_so(tmp_path):
    """Its CommitTransaction undecodable, skipped with skip_corrupt: X is still open at
    the end of the log, and the error names what was skipped (the end may be there)."""
    b = _log(w.Ins("a", [1.0], None, 1))
    b.add(w.Begin(9, 2))
    b.add(w.Ins("x", [2.0], None, 3))
    bad = b.add_payload(bytes([99, 9, 0]))  # no such variant: the Commit, damaged
    b.add(w.Ins("b", [2.0], None, 5))
    wal = b.write(tmp_path)
    skipped = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True).report.skipped
    assert [(s["file"], s["seq"]) for s in skipped] == [(f"{tmp_path}/{bad.file}", bad.seq)]
    with pytest.raises(errors.TargetNotFoundError) as err:
        gpu_pitr.restore(wal, backend="cpu", to_transaction=9, skip_corrupt=True)
    assert str(err.value).endswith(
        "(in flight: no CommitTransaction or AbortTransaction closes it); --skip-corrupt "
        f"skipped 1 damaged record or file (the first at {bad.file} offset "
        f"{skipped[0]['offset']}): its end may be among them")


def test_a_transaction_whose_begin_was_skipped_says_so(tmp_path):
    """(review walk43) Its BeginTransaction undecodable, skipped with skip_corrupt: the
    error said X never begins, "an archive not brought up to date, or another store's
    log?", and not a word of what --skip-corrupt passed over, where its begin is."""
    b = _log(w.Ins("a", [1.0], None, 1))
    bad = b.add_payload(bytes([99, 9, 2]))  # no such variant: the Begin, damaged
    b.add(w.Ins("x", [2.0], None, 3))
    b.add(w.Commit(9, 4))
    wal = b.write(tmp_path)
    skipped = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True).report.skipped
    with pytest.raises(errors.TargetNotFoundError) as err:
        gpu_pitr.restore(wal, backend="cpu", to_transaction=9, skip_corrupt=True)
    assert "transaction 9 never begins in the log" in str(err.value)
    assert str(err.value).endswith(
        "; --skip-corrupt skipped 1 damaged record or file (the first at "
        f"{bad.file} offset {skipped[0]['offset']}): its begin may be among them")


def test_a_transaction_never_begun_is_an_error_naming_a_stray_end(tmp_path):
    wal = _log(w.Ins("a", [1.0], None, 1), w.Begin(3, 2), w.Commit(3, 3)).write(tmp_path)
    with pytest.raises(errors.TargetNotFoundError,
                       match="transaction 4 never begins in the log: no BeginTransaction "
                       r"has its id; the log ends with wal-.*\.log \(\d+ bytes\): an "
                       "archive not brought up to date, or another store's log\\?$") as err:
        gpu_pitr.restore(wal, backend="cpu", to_transaction=4)
    assert err.value.file == str(tmp_path)
    b = _log(w.Ins("a", [1.0], None, 1))
    stray = b.add(w.Abort(4, 2))
    wal = b.write(tmp_path / "stray")
    with pytest.raises(errors.TargetNotFoundError,
                       match=f"; the AbortTransaction at {stray.file} offset {stray.offset} "
                       r"\(seq 1\) closes no open transaction \(an anomaly\); the log "
                       "ends with "):
        gpu_pitr.restore(wal, backend="cpu", to_transaction=4)


@pytest.mark.parametrize("kw, match", [
    ({"to_transaction": 1, "to_seq": 1}, "at most one of"),
    ({"to_transaction": 1, "to_time": 1}, "at most one of"),
    ({"to_transaction": -1}, "outside"),
    ({"to_transaction": 2**64}, "outside"),
    ({"to_transaction": True}, "must be an integer"),
    ({"to_transaction": "5"}, "must be an integer"),
])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        gpu_pitr.restore(tmp_path, **kw)


def test_the_shards_together_equal_the_whole(tmp_path):
    wal = _log(w.Ins("a", [1.0], None, 1), w.Begin(2, 2), w.Ins("b", [2.0], None, 3),
               w.Ins("c", [2.0], None, 3), w.Commit(2, 4), w.Del("a", 5)).write(tmp_path)
    for exclusive in (False, True):
        assert w.check_shards_equal_whole(wal, 3, to_transaction=2,
                                          exclusive=exclusive) == "equal"


# ---------------------------------------------------------------- base snapshots
def _snapshots_at(wal, snaps: Path, seqs) -> Path:
    """A directory of snapshots ``s<N>``, one restored to each seq N of ``seqs``."""
    snaps.mkdir()
    for seq in seqs:
        snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=seq), snaps / f"s{seq}")
    return snaps


def _snapshot_log(tmp_path):
    """Transaction 7 open across two snapshots' positions, 8 inside the log after."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(w.Begin(7, 2))
    b.add(w.Ins("x", [2.0], None, 3))  # seq 2
    b.add(w.Ins("b", [3.0], None, 4))  # seq 3
    b.add(w.Commit(7, 5))  # seq 4
    b.add(w.Begin(8, 6))
    b.add(w.Ins("y", [4.0], None, 7))
    b.add(w.Commit(8, 8))  # seq 7
    b.add(w.Ins("c", [5.0], None, 9))
    wal = b.write(tmp_path / "wal")
    snaps = _snapshots_at(wal, tmp_path / "snaps", (1, 2, 6))
    return wal, snaps


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_base_before_the_target_gives_the_whole_logs_answer(tmp_path, backend):
    wal, snaps = _snapshot_log(tmp_path)
    for txn in (7, 8):
        for exclusive in (False, True):
            kw = dict(backend=backend, to_transaction=txn, exclusive=exclusive)
            whole = gpu_pitr.restore(wal, **kw)
            for base in ("s1", "s2") + (("s6",) if txn == 8 else ()):
                got = gpu_pitr.restore(wal, base=snaps / base, **kw)
                assert w.index_view(got) == w.index_view(whole), (txn, exclusive, base)
                assert got.report.stop == whole.report.stop


@SETTINGS
@given(data=st.data())
def test_random_snapshots_give_the_whole_logs_answer(data):
    """``snapshots=`` with a transaction target gives what the whole log gives, for
    snapshots at random targets of random damaged logs (restarts, ids reused, markers
    nested in batches), X drawn from the log's ids, inclusive or exclusive, any chunk
    size, reading on past the stop or not; and the shards of it join to the whole."""
    # Random damaged logs, or dense ones of interleaved transactions (ids used again
    # and again: snapshots between two uses of X, stray ends around them).
    dense = data.draw(st.integers(0, 3), label="dense") > 0
    wl = data.draw(_transaction_logs() if dense else w.workloads(), label="log")
    with tempfile.TemporaryDirectory() as d:
        wal = wl.write(os.path.join(d, "wal"))
        ids = sorted({tx for _, tx, _ in _markers(wal)}) or [0]
        flags = dict(skip_corrupt=data.draw(st.booleans()),
                     allow_incomplete_history=data.draw(st.booleans()))
        snaps = os.path.join(d, "snaps")
        os.mkdir(snaps)
        n = sum(1 for _ in frame_log(wal))
        for k in range(data.draw(st.integers(1, 4), label="snapshots")):
            at = data.draw(w.targets(wl) if isinstance(wl, w.Workload) else st.builds(
                dict, to_seq=st.integers(0, n)), label="snapshot target")
            at.update(flags)
            made, err = w.outcome(lambda at=at: gpu_pitr.restore(wal, backend="cpu", **at))
            if err is None:
                snapshot.save(made, os.path.join(snaps, f"s{k}"))
        kw = dict(to_transaction=data.draw(st.sampled_from(ids), label="txn"),
                  exclusive=data.draw(st.booleans()), backend="cpu", **flags)
        whole = w.outcome(lambda: gpu_pitr.restore(wal, **kw))
        got = w.outcome(lambda: gpu_pitr.restore(
            wal, snapshots=snaps, chunk_bytes=data.draw(st.sampled_from([64, 200, None])),
            read_after_stop=data.draw(st.booleans()), **kw))
        assert w.restore_answer(got) == w.restore_answer(whole), (
            str(got[1]), str(whole[1]), got[0] and got[0].report.message)
        if data.draw(st.integers(0, 4), label="shards") == 0:
            w.check_shards_equal_whole(wal, 2, snapshots=snaps, **kw)


def test_snapshots_choose_the_newest_where_the_transaction_is_open(tmp_path):
    wal, snaps = _snapshot_log(tmp_path)
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=7)
    assert f"started from snapshot {snaps / 's2'}" in got.report.message
    assert ("1 snapshot passed over: transaction 7 ends before it (the target, its first "
            "end that closes it, is at wal-") in got.report.message
    assert got.id_list() == ["a", "b", "x"]
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=8)
    assert f"started from snapshot {snaps / 's6'}" in got.report.message
    assert got.id_list() == ["a", "b", "x", "y"]


@pytest.mark.parametrize("exclusive", [False, True])
def test_snapshots_pass_over_those_after_a_transaction_open_at_none(tmp_path, exclusive):
    """The usual bad ingest: a short transaction begun and ended between two snapshots,
    open at neither. The newer one is past it (the restore from it would find no end of
    X): the older one serves, as the log's markers of X show before the restore."""
    wal, _ = _snapshot_log(tmp_path)
    snaps = _snapshots_at(wal, tmp_path / "between", (0, 4, 8))
    for txn, start, passed in ((7, "s0", 2), (8, "s4", 1)):
        kw = dict(backend="cpu", to_transaction=txn, exclusive=exclusive)
        got = gpu_pitr.restore(wal, snapshots=snaps, **kw)
        assert f"started from snapshot {snaps / start}" in got.report.message
        assert f"{passed} snapshot{'s' if passed > 1 else ''} passed over: transaction " \
            f"{txn} ends before" in got.report.message
        whole = gpu_pitr.restore(wal, **kw)
        assert w.index_view(got) == w.index_view(whole)
        assert got.report.stop == whole.report.stop


def test_snapshots_between_two_uses_of_an_id_are_passed_over(tmp_path):
    """An id used again after a writer restart: the target is its first end in log
    order; a snapshot between the two uses would find the second: passed over."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(w.Begin(7, 2))
    b.add(w.Ins("x", [2.0], None, 3))
    b.add(w.Commit(7, 4))  # seq 3: the target
    b.add(w.Ins("b", [3.0], None, 5))  # seq 4
    b.add(w.Begin(7, 6))
    b.add(w.Del("x", 7))
    b.add(w.Commit(7, 8))
    wal = b.write(tmp_path / "wal")
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=4), snaps / "between")
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=7)
    assert got.id_list() == ["a", "x"] and got.report.stop["seq"] == 3
    # The note said "ends before it, or no record after it ends it": a record after it
    # does end 7 (its second use). It names the end that is the target instead.
    stop = got.report.stop
    assert got.report.base is None and (
        "1 snapshot passed over: transaction 7 ends before it (the target, its first end "
        f"that closes it, is at {Path(stop['file']).name} offset {stop['offset']})"
        ) in got.report.message


def test_snapshots_passed_over_as_no_end_closes_the_transaction_say_so(tmp_path):
    """Only a stray end of X (closing nothing) in the log: no snapshot serves, and the
    note says why, not that X ends before them."""
    from gpu_pitr.format.segments import list_segments

    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(w.Commit(4, 2))  # seq 1: closes nothing
    b.add(w.Ins("b", [2.0], None, 3))
    wal = b.write(tmp_path / "wal")
    snaps = _snapshots_at(wal, tmp_path / "snaps", (0, 2))
    snap, notes, _ = snapshot.choose(snaps, {"to_transaction": 4},
                                     segments=list_segments(wal))
    assert snap is None
    assert notes[0] == ("2 snapshots passed over: no record ends transaction 4 while it is "
                        "open, as the log's markers of it show from the log's start and "
                        "from them (each end closes nothing: an anomaly)")


@pytest.mark.parametrize("stray", [w.Commit, w.Abort])
def test_a_stray_end_before_the_snapshots_does_not_pass_them_over(tmp_path, stray):
    """An end of X while X is not open (an anomaly, not the target) early in the log:
    the snapshots after it, at whose positions X is open or before its Begin, still
    serve, and the newest is started from (every one was passed over: the whole log
    was read)."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(stray(7, 2))  # seq 1: closes nothing
    b.add(w.Ins("b", [2.0], None, 3))  # seq 2
    b.add(w.Begin(7, 4))  # seq 3
    b.add(w.Ins("x", [3.0], None, 5))  # seq 4, inside 7
    b.add(w.Ins("c", [4.0], None, 6))  # seq 5, inside 7
    b.add(w.Commit(7, 7))  # seq 6: the target
    b.add(w.Ins("d", [5.0], None, 8))
    wal = b.write(tmp_path / "wal")
    snaps = _snapshots_at(wal, tmp_path / "snaps", (0, 2, 4))
    for exclusive in (False, True):
        kw = dict(backend="cpu", to_transaction=7, exclusive=exclusive)
        got = gpu_pitr.restore(wal, snapshots=snaps, **kw)
        assert f"started from snapshot {snaps / 's4'}" in got.report.message
        assert "passed over" not in got.report.message
        whole = gpu_pitr.restore(wal, **kw)
        assert w.index_view(got) == w.index_view(whole)
        assert got.report.stop == whole.report.stop and whole.report.stop["seq"] == 6


@SETTINGS
@given(data=st.data())
def test_snapshots_are_kept_exactly_where_their_restore_stops_as_the_whole_log(data):
    """On logs of interleaved transactions (stray ends, begins of open ids, ids used
    again), with snapshots at random seqs: a snapshot is kept for X exactly when the
    restore from it (``base=``) stops at the record the restore of the whole log stops
    at; ``snapshots=`` starts from the newest of those. Where the whole log's restore
    fails, every snapshot is kept if no record ends X (the newest says why), else none
    (the log alone names the stray end)."""
    from gpu_pitr.format.segments import list_segments
    from gpu_pitr.snapshot.format import read_manifest

    log = data.draw(_transaction_logs(), label="log")
    with tempfile.TemporaryDirectory() as d:
        wal = log.write(os.path.join(d, "wal"))
        markers = _markers(wal)
        ids = sorted({tx for _, tx, _ in markers}) or [0]
        # Mostly an id with a stray end (the case passed over before), where there is one.
        open_, stray = set(), set()
        for kind, tx, _ in markers:
            if kind == "begin":
                open_.add(tx)
            elif tx in open_:
                open_.discard(tx)
            else:
                stray.add(tx)
        if stray and data.draw(st.integers(0, 3), label="stray id") > 0:
            ids = sorted(stray)
        n = sum(1 for item in frame_log(wal) if item[0] == "record")
        snaps = os.path.join(d, "snaps")
        os.mkdir(snaps)
        for seq in sorted(data.draw(st.sets(st.integers(0, n), min_size=1, max_size=5),
                                    label="snapshot seqs")):
            made, err = w.outcome(lambda seq=seq: gpu_pitr.restore(wal, backend="cpu",
                                                                   to_seq=seq))
            if err is None:
                snapshot.save(made, os.path.join(snaps, f"s{seq:03d}"))
        txn = data.draw(st.sampled_from(ids), label="txn")
        kw = dict(to_transaction=txn, exclusive=data.draw(st.booleans()), backend="cpu")
        whole = w.outcome(lambda: gpu_pitr.restore(wal, **kw))
        paths = snapshot.snapshot_dirs(snaps)
        manifests = {p: read_manifest(p) for p in paths}
        usable = sorted(((snapshot.log_order(manifests[p]["position"]), p) for p in paths),
                        reverse=True)
        kept, _ = snapshot._before_transaction_end(usable, manifests, txn,
                                                   list_segments(wal), [])
        kept = [p for _, p in kept]
        if whole[1] is not None:
            ends = any(kind != "begin" for kind, tx, _ in markers if tx == txn)
            assert kept == ([] if ends else [p for _, p in usable]), (kept, whole[1])
            return
        serves = [p for _, p in usable if w.restore_answer(w.outcome(
            lambda p=p: gpu_pitr.restore(wal, base=p, **kw))) == w.restore_answer(whole)]
        assert kept == serves, (txn, markers)
        got = gpu_pitr.restore(wal, snapshots=snaps, **kw)
        assert w.restore_answer((got, None)) == w.restore_answer(whole)
        if serves:
            assert f"started from snapshot {serves[0]}\n" in got.report.message + "\n"
        else:
            assert got.report.base is None


def test_a_base_past_the_target_fails_after_the_read_naming_it(tmp_path):
    """Where a transaction ended is known only from the log: a base past it finds no
    record ending it after its position, and says the base may be why."""
    wal, snaps = _snapshot_log(tmp_path)
    later = tmp_path / "later"  # 7 is open at neither: the newest is tried
    later.mkdir()
    (snaps / "s6").rename(later / "s6")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=8), later / "s8")
    with pytest.raises(errors.TargetNotFoundError,
                       match="transaction 7 never begins in the log after the base "
                       "snapshot's position .*the base is past the target"):
        gpu_pitr.restore(wal, backend="cpu", to_transaction=7, base=later / "s6")
    # --snapshots passes both over (the log's markers of 7 are before them): the log.
    got = gpu_pitr.restore(wal, backend="cpu", to_transaction=7, snapshots=later)
    assert got.report.base is None and "2 snapshots passed over" in got.report.message
    assert w.index_view(got) == w.index_view(
        gpu_pitr.restore(wal, backend="cpu", to_transaction=7))


def test_snapshots_and_a_transaction_the_log_never_names(tmp_path):
    """No record of the log names X: ``--snapshots`` has read the log's markers of X, so
    the error is the whole log's. It advised an older snapshot or the log alone (the
    base "past the target"), which fail the same way. A base named with ``--base`` keeps
    the advice (only the log after it was read)."""
    wal, snaps = _snapshot_log(tmp_path)
    last = sorted(Path(wal).glob("wal-*.log"))[-1]
    whole = ("transaction 9 never begins in the log: no BeginTransaction has its id; the "
             f"log ends with {last.name} ({last.stat().st_size:,} bytes): an archive not "
             "brought up to date, or another store's log?")
    for kw in ({}, {"snapshots": snaps}):
        with pytest.raises(errors.TargetNotFoundError) as err:
            gpu_pitr.restore(wal, backend="cpu", to_transaction=9, **kw)
        assert str(err.value) == f"{wal}: {whole}"
    with pytest.raises(errors.TargetNotFoundError, match="the base is past the target"):
        gpu_pitr.restore(wal, backend="cpu", to_transaction=9, base=snaps / "s6")


def test_a_snapshot_taken_at_the_target_is_its_answer(tmp_path):
    """``snapshot --to-transaction X`` stops just after X's end: restoring to X from it
    gives its state (no record after it ends X)."""
    wal, snaps = _snapshot_log(tmp_path)
    for exclusive in (False, True):
        at = gpu_pitr.restore(wal, backend="cpu", to_transaction=8, exclusive=exclusive)
        snapshot.save(at, tmp_path / f"at{exclusive}")
        got = gpu_pitr.restore(wal, backend="cpu", to_transaction=8, exclusive=exclusive,
                               base=tmp_path / f"at{exclusive}")
        assert w.index_view(got) == w.index_view(at)
        assert got.report.stop["seq"] == 7


# ---------------------------------------------------------------- command line
def test_cli_restores_to_a_transaction_and_reports_it(tmp_path, capsys):
    wal, _ = _snapshot_log(tmp_path)
    out, report = tmp_path / "o.npz", tmp_path / "r.json"
    assert main(["restore", wal, "--to-transaction", "7", "--backend", "cpu",
                 "--out", str(out), "--report-json", str(report)]) == 0
    said = capsys.readouterr().out
    assert "target: transaction 7\n" in said
    assert "stopped: after CommitTransaction wal-" in said
    doc = json.loads(report.read_text())
    assert doc["target"] == {"kind": "transaction", "value": 7, "exclusive": False}
    assert doc["stop"]["seq"] == 4 and doc["ids"] == 3
    assert main(["restore", wal, "--to-transaction", "7", "--exclusive", "--backend", "cpu",
                 "--out", str(out), "--report-json", str(report)]) == 0
    said = capsys.readouterr().out
    assert "target: transaction 7, exclusive\n" in said and "stopped: before Commit" in said
    assert json.loads(report.read_text())["ids"] == 1
    snap = tmp_path / "snap"
    assert main(["snapshot", wal, "--to-transaction", "8", "--backend", "cpu", "--quiet",
                 "--out", str(snap)]) == 0
    assert snapshot.load(snap).manifest["report"]["target"]["kind"] == "transaction"


@pytest.mark.parametrize("args", [
    ["--to-transaction", "1", "--to-seq", "1"],
    ["--to-transaction", "1", "--to-time", "1"],
    ["--to-transaction", "1", "--latest"],
    ["--to-transaction", "-1"],
    ["--to-transaction", "x"],
    ["--to-transaction", str(2**64)],
])
def test_cli_usage_errors(tmp_path, capsys, args):
    wal, _ = _snapshot_log(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["restore", wal, "--out", str(tmp_path / "o.npz"), *args])
    assert exit_.value.code == 2
    assert not (tmp_path / "o.npz").exists()


def test_cli_error_when_no_record_ends_it(tmp_path, capsys):
    wal, _ = _snapshot_log(tmp_path)
    assert main(["restore", wal, "--to-transaction", "9", "--backend", "cpu",
                 "--out", str(tmp_path / "o.npz")]) == 1
    err = capsys.readouterr().err.splitlines()
    last = sorted(Path(wal).glob("wal-*.log"))[-1]
    assert err == [f"gpu-pitr: error: {wal}: transaction 9 never begins in the log: "
                   f"no BeginTransaction has its id; the log ends with {last.name} "
                   f"({last.stat().st_size:,} bytes): an archive not brought up to date, or "
                   "another store's log?"]


def test_stop_reading_at_the_target(tmp_path):
    """``read_after_stop=False`` reads up to the record that ends X (exclusive: that
    record too, as an exclusive seq target's), and gives the same index."""
    b = _log(w.Ins("a", [1.0], None, 1), w.Begin(4, 2), w.Ins("x", [2.0], None, 3))
    end = b.add(w.Commit(4, 4))
    for k in range(50):
        b.add(w.Ins(f"later{k}", [3.0], None, 5))
    wal = b.write(tmp_path)
    for exclusive in (False, True):
        whole = gpu_pitr.restore(wal, backend="cpu", to_transaction=4, exclusive=exclusive)
        early = gpu_pitr.restore(wal, backend="cpu", to_transaction=4, exclusive=exclusive,
                                 read_after_stop=False)
        assert w.index_view(early) == w.index_view(whole)
        assert early.report.records_read == 4 and early.report.bytes_read == end.end
        assert whole.report.records_read == 54


def _begin_then_a_rotation(tmp_path, reused: bool):
    """A log whose transaction 7 begins in its first segment (seq 0: Ins a; Begin 7; Ins
    x) and commits in the next (Ins y, inside 7, seq 3; Commit 7, seq 4: the target; Ins
    c); ``reused``: 7 used again after (Begin 7; Del x; Commit 7, seq 8). Returns the
    WAL directory and the first segment's name (which the tests delete)."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(w.Begin(7, 2))
    b.add(w.Ins("x", [2.0], None, 3))  # seq 2
    first = b.cur
    b.new_segment(0x5F5E200)
    b.add(w.Ins("y", [3.0], None, 4))  # seq 3, inside 7
    b.add(w.Commit(7, 5))  # seq 4: the target
    b.add(w.Ins("c", [4.0], None, 6))
    if reused:
        b.add(w.Begin(7, 7))
        b.add(w.Del("x", 8))
        b.add(w.Commit(7, 9))  # seq 8: the second use's end
    return b.write(tmp_path / "wal"), first


@pytest.mark.parametrize("reused", [False, True], ids=["once", "reused"])
def test_snapshots_serve_a_transaction_begun_in_expired_history(tmp_path, reused):
    """The Begin is in a segment the writer deleted: the log holds only the Commit, and
    the snapshot at whose position the transaction is open serves (its pending
    transactions count as begun). ``reused``: X is used again after that Commit; the
    snapshot knows what the log no longer says: its Commit is X's first end (the
    target), not a stray one, and the snapshot serves (following X's markers from the
    log's start alone would call that Commit stray and pass the snapshot over for the
    second use, or fail the restore as the log's history is incomplete)."""
    wal, first = _begin_then_a_rotation(tmp_path, reused)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=3), snaps / "open")
    whole = gpu_pitr.restore(wal, backend="cpu", to_transaction=7)
    (tmp_path / "wal" / first).unlink()
    got = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=7)
    assert f"started from snapshot {snaps / 'open'}" in got.report.message
    assert w.index_view(got) == w.index_view(whole) and got.id_list() == ["a", "x", "y"]
    assert got.report.stop["seq"] == 4


@pytest.mark.parametrize("reused", [False, True], ids=["none", "other"])
def test_a_snapshot_before_a_begin_the_log_no_longer_holds_is_passed_over(tmp_path, reused):
    """Where the log's markers of X and a snapshot disagree: its Begin was in a segment
    since deleted, after an older snapshot (7 not open there) and before a newer one
    (7 open). With --allow-incomplete-history (the older one's segment is gone too) both
    can start a restore, but from the older one X's Commit closes nothing: it would find
    no end of X (``none``), or, X used again, stop at that second use's end (``other``).
    Passed over, saying which; the newer one serves, as the whole log did."""
    wal, first = _begin_then_a_rotation(tmp_path, reused)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for seq in (0, 3):
        snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=seq), snaps / f"s{seq}")
    kw = [dict(backend="cpu", to_transaction=7, exclusive=exclusive)
          for exclusive in (False, True)]
    wholes = [gpu_pitr.restore(wal, **k) for k in kw]
    (tmp_path / "wal" / first).unlink()
    for k, whole in zip(kw, wholes, strict=True):
        got = gpu_pitr.restore(wal, snapshots=snaps, allow_incomplete_history=True, **k)
        assert got.report.message == "1 snapshot passed over: " + (
            "a restore from it would stop at another end of transaction 7 than the target "
            f"({Path(whole.report.stop['file']).name} offset {whole.report.stop['offset']})"
            if reused else
            "a restore from it would find no record that ends transaction 7 while it is "
            "open") + f"; started from snapshot {snaps / 's3'}"
        assert w.index_view(got) == w.index_view(whole) and got.report.stop == whole.report.stop
        assert got.id_list() == (["a"] if k["exclusive"] else ["a", "x", "y"])
        # What the note says of the older one is what the restore from it does.
        older = w.outcome(lambda k=k: gpu_pitr.restore(
            wal, base=snaps / "s0", allow_incomplete_history=True, **k))
        if reused:
            assert older[0].report.stop["seq"] == 8
        else:
            assert isinstance(older[1], errors.TargetNotFoundError)


def test_a_transaction_nowhere_in_the_log_names_where_the_log_ends(tmp_path):
    """--snapshots on an archive not brought up to date (or another store's log): the
    marker pass found no record of X and no snapshot has it open; the error is the whole
    log's, naming where the log ends, not that the base snapshot may be past the
    target."""
    wal, snaps = _snapshot_log(tmp_path)
    last = sorted(Path(wal).glob("wal-*.log"))[-1]
    with pytest.raises(errors.TargetNotFoundError) as err:
        gpu_pitr.restore(wal, backend="cpu", snapshots=snaps, to_transaction=99)
    assert str(err.value) == (
        f"{wal}: transaction 99 never begins in the log: no BeginTransaction has its id; "
        f"the log ends with {last.name} ({last.stat().st_size:,} bytes): an archive not "
        "brought up to date, or another store's log?")
    # Open at a snapshot but never ended: the restore's own words (where it was open).
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], None, 1))
    b.add(w.Begin(5, 2))
    b.add(w.Ins("x", [2.0], None, 3))
    wal2 = b.write(tmp_path / "open")
    (tmp_path / "snaps2").mkdir()
    snapshot.save(gpu_pitr.restore(wal2, backend="cpu", to_seq=2), tmp_path / "snaps2" / "s")
    with pytest.raises(errors.TargetNotFoundError, match="transaction 5 never ends: it was "
                       "open at the base snapshot's position"):
        gpu_pitr.restore(wal2, backend="cpu", snapshots=tmp_path / "snaps2", to_transaction=5)


def test_a_base_that_ends_the_transaction_reports_the_stop_as_the_whole_log(tmp_path):
    """``restore --base SNAP --to-transaction X`` where SNAP was written with the same
    target stops at the base: its report's stop names the record kind and stamp, as the
    restore of the whole log's does (the summary said "after record", stamp unknown)."""
    b = w.LogBuilder()
    b.add(w.Ins("a", [1.0], ts=10))
    b.add(w.Begin(7, ts=11))
    b.add(w.Ins("b", [2.0], ts=12))
    b.add(w.Commit(7, ts=13))
    b.add(w.Ins("c", [3.0], ts=14))
    d = tmp_path / "wal"
    b.write(d)
    whole = gpu_pitr.restore(d, backend="cpu", to_transaction=7)
    snap = snapshot.save(whole, tmp_path / "snap")
    got = gpu_pitr.restore(d, backend="cpu", base=snap, to_transaction=7)
    assert got.report.stop == whole.report.stop
    assert got.report.stop["record"] == "CommitTransaction"
    assert got.report.stop["timestamp"] == 13


def test_the_wrong_directory_with_snapshots_names_the_directory(tmp_path):
    """The runbook's wrong directory (``/backup`` for ``/backup/arch``) with --snapshots
    or --base: no segment at all, so no pass finds X; the error advised an older
    snapshot or the log alone ("the base is past the target"), which fail the same way.
    It is the whole log's line, ending with the directory that has segments."""
    wal, snaps = _snapshot_log(tmp_path)
    # (Of the whole log: a snapshot whose segment went on after it is refused as
    # incomplete history first, a directory with no segment being a gone segment.)
    snapshot.save(gpu_pitr.restore(wal, backend="cpu"), snaps / "s8")
    for kw in ({"snapshots": snaps}, {"base": snaps / "s8"}):
        with pytest.raises(errors.TargetNotFoundError) as err:
            gpu_pitr.restore(tmp_path, backend="cpu", to_transaction=7, exclusive=True,
                             **kw)
        assert str(err.value) == (
            f"{tmp_path}: transaction 7 never begins in the log: no BeginTransaction has "
            f"its id; no wal-<16 hex digits>.log files in {tmp_path}, but {wal} has some: "
            "is that the WAL directory?"), kw
