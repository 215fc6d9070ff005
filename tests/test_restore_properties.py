"""Property tests: the fast restore (CPU backend) equals tests/reference.py exactly.

Random WAL directories (tests/workloads.py) with random targets; the two must agree on
the outcome (error class, file, offset inside the bad record), the restored ids, vector
bytes and metadata, the stop point, and the report's counters, torn tails and skips.
Until ``gpu_pitr.restore`` exists this compares the reference with itself (a smoke test
of the generators).
"""

from __future__ import annotations

import os
import tempfile

import pytest
import reference
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_pitr import errors

CASES = st.data()
SETTINGS = settings(
    max_examples=int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _base(path) -> str | None:
    return None if path is None else os.path.basename(str(path))


def _pos(entry: dict) -> tuple:
    return (_base(entry["file"]), entry["offset"])


def _assert_damage_list(got: list[dict], ref: list[tuple], exact: bool) -> None:
    """Each reported entry lies inside a distinct reference entry (file, [offset, end), seq);
    with ``exact`` every reference entry is reported."""
    remaining = list(ref)
    for g in got:
        f, off, seq = _base(g["file"]), g["offset"], g.get("seq")
        # A run of zero-filled records is one entry: each of its records, 12 bytes apart.
        for k in range(g.get("records", 1)):
            at = off + k * 12
            hit = [r for r in remaining if r[0] == f and r[1] <= at < r[3] and r[2] == seq]
            assert hit, f"reported {g} (record {k}) is not reference damage {ref}"
            remaining.remove(hit[0])
    if exact:
        assert not remaining, f"not reported: {remaining}"


def assert_matches(ref: reference.RefResult, got: w.View | None, err: Exception | None):
    if ref.error is not None:
        e = ref.error
        assert err is not None, f"expected {e.cls} at {e.file}:{e.offset}, restore succeeded"
        assert type(err).__name__ == e.cls, f"expected {e.cls} ({e}), got {err!r}"
        if e.cls in ("CorruptRecordError", "DimensionMismatchError", "BadSegmentError"):
            assert _base(err.file) == e.file, (err, e)
            assert err.offset is not None and e.offset <= err.offset < e.end, (err, e)
        if e.cls in ("CorruptRecordError", "DimensionMismatchError"):
            assert err.seq == e.seq, (err, e)
        return
    assert err is None, f"reference restored fine (stop {ref.stop}), fast path raised {err!r}"
    assert got.ids == ref.ids
    assert got.vectors == ref.vectors
    assert got.metadata == ref.metadata
    if ref.ids:
        assert got.dim == ref.dim

    rep = got.report
    stop = dict(rep["stop"])
    stop["file"] = _base(stop.get("file"))
    assert {k: stop.get(k) for k in ref.stop} == ref.stop
    for key in (
        "commit_points_applied",
        "inserts",
        "updates",
        "updates_of_missing",
        "deletes",
        "deletes_of_missing",
    ):
        assert rep[key] == getattr(ref, key), key
    assert rep["transactions"] == {
        "committed": ref.committed,
        "aborted": ref.aborted,
        "in_flight_discarded": ref.in_flight_discarded,
    }
    assert sorted(_pos(a) for a in rep["anomalies"]) == sorted(a[:2] for a in ref.anomalies)
    # damage up to the stop point must be reported exactly; the fast path may or may not
    # look at files beyond the stop
    torn = {(_base(t["file"]), t["offset"], t["bytes_lost"]) for t in rep["torn_tails"]}
    ref_torn = set(ref.torn_tails)
    assert {t for t in torn if ref.pos_reached(t[0], t[1])} == {
        t for t in ref_torn if ref.pos_reached(t[0], t[1])
    }
    assert torn <= ref_torn
    # damage entries may name the record's first byte or the byte at fault inside it
    _assert_damage_list(rep["skipped"], ref.skipped, exact=True)
    _assert_damage_list(rep["damage_after_stop"], ref.damage_after_stop, exact=False)
    trailing = {(_base(t["file"]), t["offset"]) for t in rep["trailing_bytes"]}
    ref_trailing = {t[:2] for t in ref.trailing_bytes}
    assert {t for t in trailing if ref.pos_reached(*t)} == ref_trailing


def run_case(wl: w.Workload, kw: dict, chunk_bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        wl.write(d)
        before = w.dir_state(d)
        ref = reference.restore(d, **kw)
        got, err = None, None
        try:
            got = w.restore_impl(d, chunk_bytes=chunk_bytes, **kw)
        except errors.WalError as e:
            err = e
        assert w.dir_state(d) == before, "the WAL directory was modified"
    assert_matches(ref, got, err)


@pytest.mark.parametrize("chunk_bytes", [None, 64, 1000], ids=["default", "c64", "c1000"])
@SETTINGS
@given(data=CASES)
def test_fast_restore_equals_reference(chunk_bytes, data):
    wl = data.draw(w.workloads(), label="workload")
    kw = data.draw(w.targets(wl), label="target")
    run_case(wl, kw, chunk_bytes)


@SETTINGS
@given(data=CASES)
def test_undamaged_latest_equals_reference(data):
    """Clean logs restored to the end: the common case, with more steps."""
    wl = data.draw(w.workloads(max_steps=60, damage=False), label="workload")
    run_case(wl, {"allow_incomplete_history": True}, None)


def _long_log(seed: int, n: int, per: tuple[int, int] | None = None,
              big_every: int = 0) -> w.Workload:
    """``n`` records of every kind (transactions, batches, deletes, reused ids), more
    than the decode's blocks of 1,024 records: the hypothesis workloads above are short.
    With ``per``, in segments of that many records each (a random count in the range;
    now and then a writer restart, seq back to 0), and with ``big_every``, every so many
    segments one of 400 records."""
    import random

    rnd = random.Random(seed)
    created = 0x5F5E100
    b = w.LogBuilder(created=created)
    ids = [f"id{i}" for i in range(300)]
    open_tx: list[int] = []
    ts = 1000
    left, segs = (rnd.randint(*per), 0) if per else (n, 0)
    for k in range(n):
        if left == 0:
            segs += 1
            created += 1
            if rnd.random() < 0.05:
                b.reopen(created)  # seq back to 0, in a file of its own
            else:
                b.new_segment(created)
            left = 400 if big_every and segs % big_every == 0 else rnd.randint(*per)
        left -= 1
        ts += rnd.randint(-1, 2)
        r = rnd.random()
        vec = [float(k), float(rnd.randint(-5, 5))]
        if r < 0.40:
            b.add(w.Ins(rnd.choice(ids), vec, rnd.choice([None, {"k": str(k)}]), ts))
        elif r < 0.55:
            b.add(w.Upd(rnd.choice(ids), vec, rnd.choice([None, {}]), ts))
        elif r < 0.70:
            b.add(w.Del(rnd.choice(ids), ts))
        elif r < 0.78:
            b.add(w.Batch([w.Ins(rnd.choice(ids), vec, None, ts), w.Del(rnd.choice(ids), ts)],
                          ts))
        elif r < 0.86 or not open_tx:
            tx = k
            open_tx.append(tx)
            b.add(w.Begin(tx, ts))
        else:
            tx = open_tx.pop(rnd.randrange(len(open_tx)))
            b.add((w.Commit if rnd.random() < 0.8 else w.Abort)(tx, ts))
    return w.Workload(files={name: bytes(data) for name, data in b.files.items()})


@pytest.mark.parametrize("chunk_bytes", [None, 4096])
def test_logs_longer_than_a_decode_block_equal_the_reference(chunk_bytes):
    wl = _long_log(seed=5, n=5000)
    for kw in ({}, {"to_time": 1000 + 2000}, {"to_seq": 1023}, {"to_seq": 1024,
                                                                 "exclusive": True},
               {"to_seq": 4097}):
        run_case(wl, kw, chunk_bytes)
