"""``gpu-pitr inspect --records`` (gpu_pitr.format.dump): every record in log order, with
its damage, equal to what the pure-Python reader and codec find; the filters keep
exactly the records they name; the command stays read-only and quiet under ``| head``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inspect_reference import decoded_records
from test_cli import T0, cli, write_damaged_wal
from workloads import Batch, Ins, LogBuilder, f32, workloads

from gpu_pitr.format.codec import PayloadError, decode_entry
from gpu_pitr.format.dump import record_lines, wal_records
from gpu_pitr.format.reader import scan_wal


def expected(wal_dir: Path) -> list[dict]:
    """The items ``wal_records`` lists, from the pure-Python reader and codec."""
    out = []
    for scan in scan_wal(wal_dir):
        name = scan.path.name
        if scan.bad_header is not None:
            out.append({"file": name, "offset": scan.bad_header.offset, "seq": None,
                        "damage": "bad_header"})
        for rec in scan.records:
            item = {"file": name, "offset": rec.offset, "seq": rec.seq}
            try:
                entry, used = decode_entry(rec.payload)
            except PayloadError:
                out.append({**item, "damage": "undecodable"})
                continue
            item.update(length=len(rec.payload), timestamp=entry.timestamp,
                        variant=type(entry).__name__, trailing_bytes=len(rec.payload) - used)
            out.append(item)
        if scan.torn_tail is not None:
            out.append({"file": name, "offset": scan.torn_tail.offset, "seq": None,
                        "damage": "torn_tail"})
    return out


def summary(items) -> list[dict]:
    keys = ("file", "offset", "seq", "damage", "length", "timestamp", "variant",
            "trailing_bytes")
    return [{k: doc[k] for k in keys if k in doc} for doc in items]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Path, dict]:
    wal_dir = tmp_path_factory.mktemp("records") / "wal"
    return wal_dir, write_damaged_wal(wal_dir)


@pytest.mark.parametrize("chunk", [None, 64])
def test_every_record_and_damage_in_log_order(damaged, chunk):
    wal_dir, w = damaged
    items = list(wal_records(wal_dir, chunk_bytes=chunk))
    assert summary(items) == expected(wal_dir)
    by_seq = {(d["file"], d["seq"]): d for d in items if d["seq"] is not None}
    batch = by_seq[(w["first"], 1)]
    assert batch["entry"] == {"count": 2, "entries": [
        {"depth": 1, "variant": "Insert", "timestamp": T0 + 2, "id": "b", "dim": 1,
         "metadata": None},
        {"depth": 1, "variant": "Delete", "timestamp": T0 + 2, "id": "a"}]}
    assert by_seq[(w["first"], 2)]["entry"] == {"sequence_number": 1}
    assert by_seq[(w["first"], 3)]["entry"] == {"transaction_id": 5}
    assert "unknown variant 99" in by_seq[(w["first"], 11)]["what"]
    assert by_seq[(w["first"], 12)]["trailing_bytes"] == 3
    assert by_seq[(w["second"], 0)]["entry"] == {"id": "g", "dim": 1, "metadata": {"m": "n"}}
    torn = [d for d in items if d.get("damage") == "torn_tail"]
    assert [(d["file"], d["offset"], d["bytes"]) for d in torn] == [
        (w["second"], w["torn_offset"], 7), (w["empty"], 0, 0)]


def test_filters_keep_exactly_the_records_they_name(damaged):
    wal_dir, w = damaged
    everything = expected(wal_dir)
    records = [d for d in everything if "damage" not in d]
    for lo, hi in [(T0 + 2, T0 + 6), (T0 + 100, None), (None, T0 + 1), (T0 + 500, None)]:
        got = summary(wal_records(wal_dir, since=lo, until=hi))
        assert got == [d for d in records if (lo is None or d["timestamp"] >= lo)
                       and (hi is None or d["timestamp"] <= hi)], (lo, hi)
    # By seq: undecodable records keep their place; a bad header or a torn tail has no seq.
    got = summary(wal_records(wal_dir, first_seq=1, last_seq=11))
    assert got == [d for d in everything if d["seq"] is not None and 1 <= d["seq"] <= 11]
    assert [d["seq"] for d in got if "damage" in d] == [11]  # undecodable, in its place
    assert summary(wal_records(wal_dir, limit=3)) == everything[:3]
    assert list(wal_records(wal_dir, limit=0)) == []


def test_filters_take_every_form_of_a_time_and_any_integer_bounds(damaged):
    """``since``/``until`` take what ``to_time`` takes (ISO text, datetimes, decimal
    seconds, a fraction narrowing to the whole seconds inside); a bound outside the u64
    range is the range's end (still a filter: what it cannot place is left out), or
    an empty range."""
    from datetime import UTC, datetime

    wal_dir, w = damaged
    want = summary(wal_records(wal_dir, since=T0 + 2, until=T0 + 6))
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731
    for lo, hi in [(iso(T0 + 2), iso(T0 + 6)), (datetime.fromtimestamp(T0 + 2, UTC), str(T0 + 6)),
                   (f"{T0 + 1}.5", f"{T0 + 6}.9"), (T0 + 1.25, T0 + 6.5)]:
        assert summary(wal_records(wal_dir, since=lo, until=hi)) == want, (lo, hi)
    records = [d for d in summary(wal_records(wal_dir)) if "damage" not in d]
    assert summary(wal_records(wal_dir, since=-5, until=2**70)) == records
    assert list(wal_records(wal_dir, since=2**64)) == []
    assert list(wal_records(wal_dir, until=-1)) == []
    assert list(wal_records(wal_dir, last_seq=-1)) == []
    everything = summary(wal_records(wal_dir))
    by_seq = [d for d in everything if d["seq"] is not None]  # damage with a seq kept
    assert summary(wal_records(wal_dir, first_seq=-3, last_seq=2**65)) == by_seq
    for bad in ({"since": "10:02"}, {"until": "2026-11-26T10:02:00"}, {"first_seq": 1.5}):
        with pytest.raises((ValueError, TypeError)):
            list(wal_records(wal_dir, **bad))


def test_nesting_deeper_than_the_compiled_stack(tmp_path):
    b = LogBuilder()
    deep = Ins("x", f32(1, 2), None, 7)
    for depth in range(200):
        deep = Batch([deep], 100 + depth)
    b.add(deep)
    b.add(Ins("y", f32(3, 4), None, 400))
    wal_dir = b.write(tmp_path / "wal")
    items = list(wal_records(wal_dir))
    assert [d["timestamp"] for d in items] == [299, 400]
    flat = items[0]["entry"]["entries"]
    assert [e["depth"] for e in flat] == list(range(1, 201))
    assert flat[-1] == {"depth": 200, "variant": "Insert", "timestamp": 7, "id": "x",
                        "dim": 2, "metadata": None}
    lines = record_lines(items[0])
    assert len(lines) == 201 and lines[-1] == " " * 400 + (
        '1970-01-01T00:00:07Z Insert "x" dim 2 metadata null')
    assert [d["timestamp"] for d in wal_records(wal_dir, since=300)] == [400]
    assert [d["timestamp"] for d in wal_records(wal_dir, until=299)] == [299]


def test_a_transaction_filter_leaves_out_an_undecodable_record_nested_deep(tmp_path):
    """``--transaction X`` leaves damage out, an undecodable record between X's Begin
    and its Commit included (no transaction can be read from it): one nested deeper than
    the compiled parser's stack, whose first parse says only "too deep", was listed all
    the same, given X by that parse's guess that it was a data record."""
    from workloads import Begin, Commit, encode_entry

    deep = Ins("x", f32(1, 2), None, T0 + 2)
    for _ in range(100):
        deep = Batch([deep], T0 + 2)
    b = LogBuilder()
    b.add(Begin(9, T0))                                  # seq 0
    b.add(Ins("a", f32(1), None, T0 + 1))                # 1: in 9
    b.add_payload(encode_entry(deep)[:-3])               # 2: undecodable, past the stack
    b.add_payload(encode_entry(Ins("b", f32(1), None, T0 + 2))[:-3])  # 3: undecodable
    b.add(deep)                                          # 4: in 9, past the stack
    b.add(Commit(9, T0 + 3))                             # 5
    wal_dir = b.write(tmp_path / "w")
    assert [d.get("damage") for d in wal_records(wal_dir)] == [
        None, None, "undecodable", "undecodable", None, None]
    for chunk in (None, 64):
        got = [(d["seq"], d.get("damage"), d.get("transaction"))
               for d in wal_records(wal_dir, transaction=9, chunk_bytes=chunk)]
        assert got == [(0, None, None), (1, None, 9), (4, None, 9), (5, None, None)]
    # The seq filters, which do keep damage, show it.
    assert [d["seq"] for d in wal_records(wal_dir, first_seq=0, last_seq=5)] == list(range(6))


def test_deep_nesting_prints_text_linear_in_depth(tmp_path):
    # Each level indented two more spaces made the text of a batch nested d deep d * d
    # bytes: a 500 KB record nested 100,000 deep printed 10 GB, all of it held in memory.
    from gpu_pitr.format import entries as E
    from gpu_pitr.format.writer import WalWriter

    depth = 1100
    deep = E.Insert("x", [1.0], None, 7)
    for level in range(depth):
        deep = E.Batch([deep], 100 + level)
    with WalWriter(tmp_path / "wal", created=T0) as w:
        w.append(deep)
    (doc,) = wal_records(tmp_path / "wal")
    lines = record_lines(doc)
    assert len(lines) == depth + 1
    # Linear in the depth: past 256 levels the indentation stops growing (2 * 1100
    # spaces before).
    assert max(map(len, lines[1:])) <= 2 * 256 + 80
    assert lines[256].startswith(" " * 512 + "1970")
    assert lines[257].startswith(" " * 512 + "(depth 257) 1970")
    assert lines[-1] == " " * 512 + (
        '(depth 1100) 1970-01-01T00:00:07Z Insert "x" dim 1 metadata null')


def test_cli_text_json_lines_and_usage(damaged, tmp_path):
    wal_dir, w = damaged
    proc = cli("inspect", wal_dir, "--records", wal_dir=wal_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert lines[0] == (f'{w["first"]}: offset 16: seq 0: 2026-11-26T10:00:01Z Insert "a" '
                        "dim 1 metadata null")
    assert lines[1].endswith("Batch of 2 entries")
    assert lines[2] == '  2026-11-26T10:00:02Z Insert "b" dim 1 metadata null'
    assert lines[3] == '  2026-11-26T10:00:02Z Delete "a"'
    assert f"{w['first']}: offset {w['e_offset']}: seq 11: undecodable: " in proc.stdout
    assert "(+3 trailing bytes)" in proc.stdout
    assert record_lines({"file": "f", "offset": 1, "seq": 2, "timestamp": 0, "variant": "Update",
                         "trailing_bytes": 0, "entry": {"id": "u", "dim": 1, "metadata": None}}
                        ) == ['f: offset 1: seq 2: 1970-01-01T00:00:00Z Update "u" dim 1 '
                              "metadata unchanged"]
    assert f"{w['second']}: offset {w['torn_offset']}: torn tail, 7 bytes lost" in lines
    assert f"{w['bad']}: offset 0: bad header: " in proc.stdout
    # Filters imply --records; --json prints one document per line.
    proc = cli("inspect", wal_dir, "--json", "--since", "2026-11-26T10:01:41Z",
               wal_dir=wal_dir)
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(d["file"], d["seq"], d["variant"]) for d in docs] == [
        (w["second"], 0, "Insert"), (w["second"], 1, "BeginTransaction")]
    proc = cli("inspect", wal_dir, "--first-seq", "2", "--last-seq", "3", "--limit", "1")
    assert [line.split(": ")[2] for line in proc.stdout.splitlines()] == ["seq 2"]
    # More items than the limit: said on stderr; exactly the limit's worth: nothing said.
    assert proc.stderr == ("note: --limit 1 reached: more items follow (narrow the filters, "
                           "or page on with --first-seq)\n")
    proc = cli("inspect", wal_dir, "--first-seq", "2", "--last-seq", "3", "--limit", "2")
    assert len(proc.stdout.splitlines()) == 2 and proc.stderr == ""
    for bad in (["--since", "yesterday"], ["--limit", "-1"], ["--first-seq", "x"]):
        proc = cli("inspect", wal_dir, *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, bad
    # Filters no record can pass are a mistake in the command, not an empty log.
    for bad, said in ((["--since", "2026-11-26T10:02Z", "--until", "2026-11-26T10:01Z"],
                       "is later than --until"),
                      (["--first-seq", "5", "--last-seq", "4"], "is larger than --last-seq")):
        proc = cli("inspect", wal_dir, *bad)
        assert (proc.returncode, proc.stdout) == (2, ""), bad
        assert said in proc.stderr.splitlines()[-1]
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "manifest.json").write_text("{}")
    proc = cli("inspect", snap, "--records", wal_dir=snap)
    assert (proc.returncode, proc.stdout) == (2, "")
    line = proc.stderr.splitlines()[-1]  # after argparse's usage
    assert line.startswith("gpu-pitr inspect: error: --records lists the records of a WAL "
                           "directory; ")
    assert line.endswith(f"{snap} is a snapshot"), line


def test_a_reader_that_stops_early_gets_no_error(tmp_path):
    b = LogBuilder()
    for i in range(3000):
        b.add(Ins(f"id{i}", f32(i, 1, 2, 3), {"k": "v" * 40}, i))
    wal_dir = b.write(tmp_path / "wal")
    shell = (f"{sys.executable} -m gpu_pitr inspect {wal_dir} --records | head -n 2; "
             "echo rc=${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1] == "rc=0"
    assert len(proc.stdout.splitlines()) == 3


def test_ctrl_c_stops_a_long_listing_with_one_line(tmp_path):
    import signal

    from gpu_pitr.synth import write_synthetic_wal

    wal = tmp_path / "wal"
    write_synthetic_wal(wal, total_bytes=8 << 20, dim=8, segments=2, seed=3)
    proc = subprocess.Popen([sys.executable, "-m", "gpu_pitr", "inspect", str(wal), "--records"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("wal-")  # listing: tens of thousands to go
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert (proc.returncode, err) == (130, "gpu-pitr: interrupted by SIGINT\n")


def expected_transactions(wal_dir: Path) -> list[int | None]:
    """For every decodable record in log order: the transaction it belongs to (data
    records only), from the pure-Python reader and codec and the SPEC's rule
    (``inspect_reference.decoded_records``)."""
    return [owner for *_, owner in decoded_records(wal_dir)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_data_record_names_the_transaction_it_belongs_to(tmp_path_factory, data):
    """A record in a transaction takes effect at its commit, with the commit's time: the
    listing says which transaction, in every chunking and under a seq filter (the
    transactions begun before the first record listed still count)."""
    wl = data.draw(workloads(), label="workload")
    wal_dir = Path(wl.write(tmp_path_factory.mktemp("txn") / "wal"))
    want = expected_transactions(wal_dir)
    for chunk in (None, 64):
        got = [doc.get("transaction") for doc in wal_records(wal_dir, chunk_bytes=chunk)
               if "damage" not in doc]
        assert got == want
    records = [doc for doc in wal_records(wal_dir) if "damage" not in doc]
    if records:
        k = data.draw(st.integers(0, len(records) - 1), label="first listed")
        seq = records[k]["seq"]
        got = [(doc["seq"], doc.get("transaction")) for doc in
               wal_records(wal_dir, first_seq=seq, last_seq=seq, chunk_bytes=64)
               if "damage" not in doc]
        assert got == [(r["seq"], t) for r, t in zip(records, want, strict=True)
                       if r["seq"] == seq]


def test_records_are_made_as_they_are_listed(tmp_path, monkeypatch):
    """The listing makes each record's dict as it is asked for, not a whole piece (up to
    a chunk: 16 MiB of small records, 800,000 dicts, 0.7 GB) before the first one."""
    from gpu_pitr.format import dump

    made = []
    record = dump._record

    def counted(item, name, i):
        made.append(i)
        return record(item, name, i)

    monkeypatch.setattr(dump, "_record", counted)
    b = LogBuilder()
    for i in range(500):
        b.add(Ins(f"id{i}", f32(1), None, T0 + i))
    b.write(tmp_path / "w")
    docs = wal_records(tmp_path / "w")
    assert next(docs)["seq"] == 0
    assert len(made) == 1
    assert sum(1 for _ in docs) == 499 and len(made) == 500


def test_transactions_closed_newest_first_or_overlapping_keep_the_lookup_small(
        tmp_path, monkeypatch):
    """Which transaction a record is in is found without walking the closed ones: a log
    closing 300 transactions newest first, one record in each (looking the newest up as
    the last key of a dict walked past every key deleted from its end: quadratic, 14 s
    at 200,000), then 300 that overlap (each committed after the next one began), and
    ids begun again after a close. The begins held stay within twice the open ones."""
    from workloads import Begin, Commit, Del

    from gpu_pitr.format import dump

    most = []
    walk = dump._txn_walk

    def stepped(i, n, *args):
        # One record a call, to see the stack (``state[_TOP]`` entries of ``begun``)
        # after each; ``wal_records``' walk lists nothing, so no events are lost.
        open_txns, state = args[9], args[14]
        while i < n:
            i, m, more_room = walk(i, i + 1, *args)
            assert m == 0
            if more_room:  # (a Begin with no slot free: the tables grown, then walked)
                return i, 0, True
            most.append((int(state[dump._TOP]), len(open_txns)))
        return n, 0, False

    monkeypatch.setattr(dump, "_txn_walk", stepped)
    b = LogBuilder()
    for t in range(300):
        b.add(Begin(t, T0))
    for t in reversed(range(300)):
        b.add(Del("x", T0))
        b.add(Commit(t, T0))
    b.add(Begin(1000, T0))
    for t in range(1001, 1300):
        b.add(Begin(t, T0))
        b.add(Del("y", T0))
        b.add(Commit(t - 1, T0))
        b.add(Del("z", T0))
    for step in (Begin(5, T0), Begin(6, T0), Commit(5, T0), Begin(5, T0), Del("a", T0),
                 Commit(5, T0), Del("b", T0), Commit(6, T0), Del("c", T0)):
        b.add(step)
    b.write(tmp_path / "w")
    want = expected_transactions(tmp_path / "w")
    assert want[-5:] == [5, None, 6, None, 1299]  # (1299 is still open)
    for chunk in (None, 64):
        most.clear()
        got = [doc.get("transaction") for doc in wal_records(tmp_path / "w",
                                                             chunk_bytes=chunk)]
        assert got == want
        assert len(most) == len(want)
        assert max(held - 2 * n_open for held, n_open in most) <= 64


def test_the_listing_marks_records_in_a_transaction(tmp_path):
    from workloads import Begin, Commit

    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))
    b.add(Begin(7, T0 + 1))
    b.add(Ins("b", f32(2), None, T0 + 2))
    b.add(Commit(7, T0 + 60))
    b.write(tmp_path / "w")
    lines = [line for doc in wal_records(tmp_path / "w") for line in record_lines(doc)]
    assert [line.endswith("(in transaction 7)") for line in lines] == [False, False, True, False]


def test_a_window_within_one_second_is_not_called_backwards(tmp_path):
    """--since 10:01:40.5 --until 10:01:40.7 holds no whole second (records are stamped
    in whole seconds), so it is still a usage error, but --since is not later than
    --until: the line must not say it is."""
    proc = cli("inspect", tmp_path, "--since", "2026-11-26T10:01:40.5Z",
               "--until", "2026-11-26T10:01:40.7Z")
    assert (proc.returncode, proc.stdout) == (2, "")
    line = proc.stderr.splitlines()[-1]
    assert "later than" not in line and "no whole second" in line, line


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.integers(0, 6), st.integers(0, 300))),
                max_size=1000))
def test_the_open_transactions_stack_says_what_the_ordered_dict_said(ops):
    """The compiled walk's stack of begins (closed ones popped) against the
    insertion-ordered dict it replaced: the transaction a data record after every Begin,
    Commit or Abort (of ids open or not, begun again, closed below an open one) belongs
    to is the newest open one, and the stack stays within twice the open ones and 64.
    Columns made here, not a log: each op a marker record, then a Delete."""
    import numpy as np

    from gpu_pitr.format import dump
    from gpu_pitr.format.layout import BEGIN_TRANSACTION, COMMIT_TRANSACTION, DELETE
    from gpu_pitr.format.payload import OK

    n = 2 * len(ops)
    kind = np.full(n, DELETE, np.int64)
    kind[0::2] = [BEGIN_TRANSACTION if begin else COMMIT_TRANSACTION for begin, _ in ops]
    aux = np.zeros(n, np.uint64)
    aux[0::2] = [txn for _, txn in ops]
    status = np.full(n, OK, np.uint8)
    ts, seq = np.zeros(n, np.uint64), np.arange(n, dtype=np.uint64)
    foff = 16 + 20 * np.arange(n, dtype=np.int64)
    zero, data = np.zeros(n, np.bool_), np.zeros((n, 4), np.int64)
    txns = dump._Transactions(listing=False)
    owned, owner = np.zeros(n, np.bool_), np.zeros(n, np.uint64)
    begun_at = np.zeros((n, 2), np.int64)

    def step(i):  # walk record i, the tables grown as the walk asks
        while True:
            nxt, m, more_room = dump._txn_walk(
                i, i + 1, 0, status, kind, aux, ts, seq, foff, zero, data, txns.open,
                txns.slot_u, txns.slot_i, txns.free, txns.begun, txns.state, txns.bounds,
                txns.ev_i, txns.ev_u, owned, owner, begun_at)
            assert m == 0
            if not more_room:
                assert nxt == i + 1
                return
            txns._grow()

    model: dict[int, None] = {}
    for k, (begin, txn) in enumerate(ops):
        if begin:
            model.setdefault(txn)
        else:
            model.pop(txn, None)
        step(2 * k)
        step(2 * k + 1)
        newest = next(reversed(model)) if model else None
        assert (int(owner[2 * k + 1]) if owned[2 * k + 1] else None) == newest
        assert txns.state[dump._TOP] <= 2 * len(model) + 65


def test_a_transaction_filter_lists_its_markers_and_the_records_inside_it(tmp_path):
    """An operator who found a bad bulk load (``(in transaction 9)``) needs its first
    and last records, the targets before and after it, without paging through it:
    ``--transaction X`` (pg_waldump's ``--xid``) keeps X's top-level markers and the
    records the listing marks ``(in transaction X)``, and nothing else: not another
    transaction's, not a record of X's id begun again after it ended, not a marker
    nested in a batch (which changes no transaction), not a zero-filled record."""
    from workloads import Abort, Begin, Commit

    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))
    b.add(Begin(9, T0 + 1))                    # seq 1
    b.add(Ins("bad-1", f32(2), None, T0 + 1))  # 2: in 9
    b.add(Begin(4, T0 + 2))                    # 3: 4 is now the newest open
    b.add(Ins("other", f32(2), None, T0 + 2))  # 4: in 4, not 9
    b.add(Abort(4, T0 + 3))                    # 5
    b.add(Batch([Ins("bad-2", f32(3), None, T0 + 3), Commit(9, T0 + 3)], T0 + 3))  # 6: in 9
    b.add(Commit(9, T0 + 30))                  # 7: its commit
    b.add(Ins("after", f32(4), None, T0 + 31))  # 8: after it
    b.raw(bytes(12))                           # a zero-filled record: in no transaction
    b.add(Begin(9, T0 + 40))                   # 9: the id again: listed (a marker of 9)
    b.add(Ins("again", f32(5), None, T0 + 41))  # 10: in this 9 too (the id is all it names)
    b.write(tmp_path / "w")
    for chunk in (None, 64):
        got = [(doc["seq"], doc["variant"], doc.get("transaction"))
               for doc in wal_records(tmp_path / "w", transaction=9, chunk_bytes=chunk)]
        assert got == [(1, "BeginTransaction", None), (2, "Insert", 9), (6, "Batch", 9),
                       (7, "CommitTransaction", None), (9, "BeginTransaction", None),
                       (10, "Insert", 9)]
    assert [d["seq"] for d in wal_records(tmp_path / "w", transaction=4)] == [3, 4, 5]
    assert [d["seq"] for d in wal_records(tmp_path / "w", transaction=9, last_seq=7,
                                          limit=3)] == [1, 2, 6]
    assert list(wal_records(tmp_path / "w", transaction=5)) == []
    assert list(wal_records(tmp_path / "w", transaction=1 << 64)) == []
    proc = cli("inspect", tmp_path / "w", "--transaction", "4", wal_dir=tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(": ")[2] for line in proc.stdout.splitlines()] == [
        "seq 3", "seq 4", "seq 5"]
    assert proc.stdout.splitlines()[1].endswith("(in transaction 4)")
    proc = cli("inspect", tmp_path / "w", "--transaction", "-1")
    assert proc.returncode == 2
    assert "argument --transaction: '-1' is not a transaction id" in proc.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_transaction_filter_keeps_what_the_listing_marks(tmp_path_factory, data):
    """On random workloads: ``transaction=X`` lists exactly the records the whole
    listing gives ``transaction`` X and the top-level markers carrying X, in order."""
    wl = data.draw(workloads(), label="workload")
    wal_dir = Path(wl.write(tmp_path_factory.mktemp("txnf") / "wal"))
    records = [doc for doc in wal_records(wal_dir) if "damage" not in doc]
    ids = {doc["entry"]["transaction_id"] for doc in records
           if "transaction_id" in doc["entry"]}
    for x in sorted(ids)[:4]:
        want = [doc["seq"] for doc in records if doc.get("transaction") == x
                or doc["entry"].get("transaction_id") == x]
        for chunk in (None, 64):
            assert [doc["seq"] for doc in wal_records(wal_dir, transaction=x,
                                                      chunk_bytes=chunk)] == want
