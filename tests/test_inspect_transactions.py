"""``gpu-pitr inspect --transactions`` (gpu_pitr.format.dump.wal_transactions): one row
per transaction, as SPEC section 3's rules make them, equal to the pure-Python reference
(tests/inspect_reference.py) on random logs with nested batches, aborts, anomalies,
transactions open at the end, writer restarts reusing ids, and damage; the filters keep
exactly the rows they name; the command stays read-only and refuses what it cannot mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inspect_reference import comparable
from inspect_reference import wal_transactions as reference
from test_cli import T0, cli, write_damaged_wal
from workloads import (
    Abort,
    Batch,
    Begin,
    Ckpt,
    Commit,
    Del,
    Ins,
    LogBuilder,
    Upd,
    f32,
    garbage_payload,
    workloads,
)

from gpu_pitr.format.dump import transaction_lines, wal_records, wal_transactions
from gpu_pitr.format.stats import wal_stats


def check(wal_dir: Path) -> list[dict]:
    """``wal_transactions`` equals the reference at two piece sizes (a tiny one splits
    transactions, batches and zero runs across pieces), its damage items are
    ``wal_records``' (whole), and its counts are ``inspect``'s; returns the rows."""
    want = reference(wal_dir)
    for chunk in (None, 64):
        got = list(wal_transactions(wal_dir, chunk_bytes=chunk))
        assert comparable(got) == want, chunk
    assert [d for d in got if "damage" in d] == [
        d for d in wal_records(wal_dir) if "damage" in d]
    txns = wal_stats(wal_dir)["transactions"]
    outcomes = [d.get("outcome") for d in got]
    assert outcomes.count("committed") == txns["committed"]
    assert outcomes.count("aborted") == txns["aborted"]
    assert [d["transaction"] for d in got if d.get("outcome") == "open"] == txns["open_at_end"]
    assert [(d["transaction"], d["what"]) for d in got if d.get("outcome") == "anomaly"] == [
        (a["transaction_id"], a["what"]) for a in txns["anomalies"]]
    for doc in got:
        transaction_lines(doc)  # every item prints
    return got


@st.composite
def transaction_logs(draw) -> LogBuilder:
    """A log of interleaved and nested transactions over a few ids (so ids are reused,
    begun while open, and ended while not open), batches nested to depth 4 inside and
    outside them, writer restarts, and damage: undecodable records, zero-filled runs and
    a torn tail."""
    b = LogBuilder(created=T0)
    ts = T0
    created = T0

    def tick() -> int:
        nonlocal ts
        ts += draw(st.integers(-2, 5))
        return ts

    def data(depth: int = 0) -> tuple:
        kind = draw(st.sampled_from(["ins", "upd", "del", "batch"] if depth < 4
                                    else ["ins", "upd", "del"]))
        if kind == "ins":
            return Ins(draw(st.sampled_from("abc")), f32(1, 2), None, tick())
        if kind == "upd":
            return Upd(draw(st.sampled_from("abc")), f32(3, 4), {"k": "v"}, tick())
        if kind == "del":
            return Del(draw(st.sampled_from("abc")), tick())
        entries = [data(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        if draw(st.integers(0, 5)) == 0:  # a marker nested in a batch changes nothing
            entries.append(Commit(draw(st.integers(0, 3)), tick()))
        return Batch(entries, tick())

    steps = draw(st.lists(st.sampled_from(
        ["data"] * 6 + ["begin"] * 3 + ["commit"] * 2 + ["abort", "ckpt", "restart",
                                                          "rotate", "garbage", "zeros"]),
        max_size=40))
    for step in steps:
        if step == "data":
            b.add(data())
        elif step in ("begin", "commit", "abort"):
            marker = {"begin": Begin, "commit": Commit, "abort": Abort}[step]
            b.add(marker(draw(st.integers(0, 3)), tick()))
        elif step == "ckpt":
            b.add(Ckpt(7, tick()))
        elif step == "restart":
            created += 10
            b.reopen(created if draw(st.booleans()) else None)
        elif step == "rotate":
            created += 10
            b.new_segment(created)
        elif step == "garbage":
            b.add_payload(garbage_payload(draw(st.sampled_from(["bad_marker", "truncated",
                                                                "empty"])), b"",
                                          b"\x00" * 3))
        else:
            b.raw(bytes(12 * draw(st.integers(1, 4))))
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(sorted(b.files)))
        if len(b.files[name]) > 16:
            b.truncate(name, draw(st.integers(16, len(b.files[name]) - 1)))
    return b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=transaction_logs())
def test_random_transaction_logs_equal_the_reference(tmp_path_factory, b):
    check(Path(b.write(tmp_path_factory.mktemp("txl") / "wal")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wl=workloads())
def test_random_workloads_equal_the_reference(tmp_path_factory, wl):
    """The project's random workloads: every kind of damage, bad and short files."""
    check(Path(wl.write(tmp_path_factory.mktemp("txw") / "wal")))


def overlapping(rows: list[dict], since: int | None, until: int | None) -> list[dict]:
    """The rows whose span, written out here from the documented rule, meets the range."""
    out = []
    for row in rows:
        if "damage" in row:
            continue
        stamps = [row[k]["timestamp"] for k in ("begin", "end") if row[k] is not None]
        lo, hi = min(stamps), max(stamps)
        if row["outcome"] == "open":
            hi = float("inf")
        if (since is None or hi >= since) and (until is None or lo <= until):
            out.append(row)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=transaction_logs(), data=st.data())
def test_filters_keep_exactly_the_rows_they_name(tmp_path_factory, b, data):
    wal_dir = Path(b.write(tmp_path_factory.mktemp("txf") / "wal"))
    everything = list(wal_transactions(wal_dir))
    since = data.draw(st.one_of(st.none(), st.integers(T0 - 5, T0 + 120)), label="since")
    until = data.draw(st.one_of(st.none(), st.integers(T0 - 5, T0 + 120)), label="until")
    got = list(wal_transactions(wal_dir, since=since, until=until, chunk_bytes=64))
    if since is None and until is None:
        assert got == everything
    else:  # damage has no stamp to place it by: left out
        assert got == overlapping(everything, since, until)
    x = data.draw(st.integers(0, 4), label="transaction")
    assert list(wal_transactions(wal_dir, transaction=x)) == [
        d for d in everything if d.get("transaction") == x]
    n = data.draw(st.integers(0, 6), label="limit")
    assert list(wal_transactions(wal_dir, limit=n)) == everything[:n]


def test_the_damaged_log_row_by_row(tmp_path):
    """Every outcome on a log written by hand: a begin of an open transaction, an abort
    of one not open, an aborted one, damage, and one open at the end of the log, which
    the damage after its Begin is counted against."""
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    first, second = w["first"], w["second"]
    rows = check(wal_dir)

    def at(file, offset, seq, t):
        return {"file": file, "offset": offset, "seq": seq, "timestamp": T0 + t}

    begin5 = at(first, 102, 3, 4)
    assert rows[0] == {"transaction": 5, "outcome": "anomaly",
                       "what": "begin of an open transaction", "open_since": begin5,
                       "begin": at(first, w["begin5_offset"], 4, 5), "end": None,
                       "records": 0, "inserts": 0, "updates": 0, "deletes": 0,
                       "damage_inside": 0}
    assert rows[1] == {"transaction": 5, "outcome": "committed", "begin": begin5,
                       "end": at(first, 166, 6, 7), "records": 1, "inserts": 1,
                       "updates": 0, "deletes": 0, "damage_inside": 0}
    assert rows[2]["outcome"] == "anomaly" and rows[2]["begin"] is None
    assert rows[2]["end"] == at(first, w["abort9_offset"], 7, 8)
    assert (rows[3]["transaction"], rows[3]["outcome"], rows[3]["records"]) == (6, "aborted", 1)
    assert [d["damage"] for d in rows[4:8]] == ["undecodable", "torn_tail", "bad_header",
                                               "torn_tail"]
    assert rows[8] == {"transaction": 7, "outcome": "open", "begin": at(second, 47, 1, 102),
                       "end": None, "records": 0, "inserts": 0, "updates": 0, "deletes": 0,
                       "damage_inside": 3}
    assert len(rows) == 9


@pytest.mark.parametrize("window", [{"since": 0}, {"until": 2**64 - 1}, {"since": -5},
                                    {"until": 2**70}, {"since": 0, "until": 2**64 - 1}])
def test_a_filter_as_wide_as_the_log_still_leaves_the_damage_out(tmp_path, window):
    """A filter given leaves the damage items out, one whose bounds are those of the
    whole range (or past it) too: the rows are all there, their ``damage_inside`` still
    counts, and no item of damage (undecodable records, torn tails, a bad header) is
    listed, whether the compiled walk or the framing found it."""
    wal_dir = tmp_path / "wal"
    write_damaged_wal(wal_dir)
    everything = list(wal_transactions(wal_dir))
    assert {d["damage"] for d in everything if "damage" in d} == {
        "undecodable", "torn_tail", "bad_header"}
    for chunk in (None, 64):
        assert list(wal_transactions(wal_dir, chunk_bytes=chunk, **window)) == [
            d for d in everything if "damage" not in d]


def test_ids_reused_after_a_restart_nested_batches_and_deep_nesting(tmp_path):
    """An id begun again after it ended is a transaction of its own; a batch's entries
    count one by one at every depth (deeper than the compiled parser's stack too) and a
    marker nested in a batch changes nothing; data records belong to the newest open."""
    deep = Del("z", T0)
    for _ in range(100):
        deep = Batch([deep], T0 + 1)
    b = LogBuilder(created=T0)
    b.add(Begin(1, T0))                                                       # seq 0
    b.add(Batch([Ins("a", f32(1), None, T0), Batch([Upd("a", f32(2), None, T0),
                 Commit(1, T0), Del("b", T0)], T0)], T0))                     # 1: in 1
    b.add(Begin(2, T0 + 1))                                                   # 2
    b.add(deep)                                                               # 3: in 2
    b.add(Commit(1, T0 + 2))                                                  # 4
    b.add(Ins("c", f32(1), None, T0 + 2))                                     # 5: in 2
    b.add(Abort(2, T0 + 3))                                                   # 6
    b.reopen(T0 + 100)
    b.add(Begin(1, T0 + 100))                                                 # 0 again
    b.add(Ins("d", f32(1), None, T0 + 101))                                   # 1
    b.add(Commit(1, T0 + 102))                                                # 2
    wal_dir = Path(b.write(tmp_path / "wal"))
    rows = check(wal_dir)
    got = [(r["transaction"], r["outcome"], r["begin"]["seq"], r["end"]["seq"], r["records"],
            r["inserts"], r["updates"], r["deletes"]) for r in rows]
    assert got == [(1, "committed", 0, 4, 1, 1, 1, 1), (2, "aborted", 2, 6, 2, 1, 0, 1),
                   (1, "committed", 0, 2, 1, 1, 0, 0)]
    assert rows[2]["begin"]["file"] != rows[0]["begin"]["file"]
    assert list(wal_transactions(wal_dir, transaction=1)) == [rows[0], rows[2]]
    # The time filter: what overlaps T0+3..T0+100 is the abort of 2 and the second 1.
    assert list(wal_transactions(wal_dir, since=T0 + 3, until=T0 + 100)) == rows[1:]
    assert list(wal_transactions(wal_dir, since=T0 + 103)) == []


def test_many_open_at_once_and_more_events_than_one_buffer(tmp_path):
    """Past the compiled walk's first tables: 300 transactions open at once (its slots
    grow from 64), closed in a shuffled order (the stack of begins drops closed ones
    from below), each with a record of its own; then 3,000 short ones, more rows than
    one event buffer holds (4,096), in one piece."""
    import random

    rnd = random.Random(5)
    b = LogBuilder(created=T0)
    for t in range(300):
        b.add(Begin(t, T0 + t))
        b.add(Ins(f"k{t}", f32(t), None, T0 + t))
    order = list(range(300))
    rnd.shuffle(order)
    for t in order:
        b.add(Del(f"k{t}", T0 + 400))  # the newest open one's
        b.add((rnd.choice(["commit", "abort"]), t, T0 + 400))
    for t in range(3000):
        b.add(Begin(t, T0 + 500 + t))
        b.add(Batch([Upd("u", f32(1), None, T0), Ins("v", f32(2), None, T0)], T0 + 500 + t))
        b.add(Commit(t, T0 + 500 + t))
    wal_dir = Path(b.write(tmp_path / "wal"))
    rows = check(wal_dir)
    assert len(rows) == 3300
    assert sum(r["records"] for r in rows[:300]) == 600
    assert all((r["records"], r["inserts"], r["updates"]) == (1, 1, 1) for r in rows[300:])
    assert list(wal_transactions(wal_dir, transaction=7)) == [
        r for r in rows if r["transaction"] == 7]


def test_a_row_is_where_its_transaction_or_position_target_stops(tmp_path):
    """The row is what an operator gives ``restore --to-transaction X``: its end is the
    record that target stops at (exclusive: just before it, with X in flight), for the
    first use of an id; a later use (an id reused after a restart, seqs numbered from 0
    again) is reached by its end's place, ``--to-position FILE:OFFSET``."""
    import gpu_pitr

    b = LogBuilder(created=T0)
    b.add(Ins("a", f32(1), None, T0))
    b.add(Begin(9, T0 + 1))
    b.add(Begin(4, T0 + 1))
    b.add(Ins("b", f32(2), None, T0 + 2))
    b.add(Commit(9, T0 + 3))
    b.add(Commit(4, T0 + 4))
    b.reopen()  # the same file, seqs from 0 again
    b.add(Begin(9, T0 + 5))
    b.add(Del("a", T0 + 5))
    b.add(Commit(9, T0 + 6))
    wal_dir = Path(b.write(tmp_path / "wal"))
    rows = check(wal_dir)
    assert [r["transaction"] for r in rows] == [9, 4, 9]

    def stop_place(**target):
        stop = gpu_pitr.restore(wal_dir, exclusive=True, **target).report.stop
        return Path(stop["file"]).name, stop["offset"], stop["seq"]

    for row in rows:
        end = (row["end"]["file"], row["end"]["offset"], row["end"]["seq"])
        assert stop_place(to_position=f"{end[0]}:{end[1]}") == end
    for row in rows[:2]:  # the first use of each id
        end = (row["end"]["file"], row["end"]["offset"], row["end"]["seq"])
        assert stop_place(to_transaction=row["transaction"]) == end


def test_only_damage_is_decoded_in_python(tmp_path, monkeypatch):
    """Rows are counted by the compiled pass and NumPy between markers: no record of a
    transaction is decoded one by one (``_record`` is for the damage items only)."""
    from gpu_pitr.format import dump

    decoded = []
    record = dump._record
    monkeypatch.setattr(dump, "_record", lambda item, name, i: decoded.append(i) or
                        record(item, name, i))
    b = LogBuilder(created=T0)
    for t in range(50):
        b.add(Begin(t, T0 + t))
        for i in range(20):
            b.add(Batch([Ins(f"{t}-{i}", f32(1), None, T0 + t)] * 3, T0 + t))
        b.add(Commit(t, T0 + t))
    b.add_payload(b"\xff")
    wal_dir = Path(b.write(tmp_path / "wal"))
    rows = list(wal_transactions(wal_dir, chunk_bytes=256))
    assert [r["inserts"] for r in rows[:50]] == [60] * 50 and rows[50]["damage"] == "undecodable"
    assert len(decoded) == 1


def test_cli_text_json_limit_and_usage(tmp_path):
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    first = w["first"]
    proc = cli("inspect", wal_dir, "--transactions", wal_dir=wal_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"{first}: offset {w['begin5_offset']}: seq 4: 2026-11-26T10:00:05Z: "
                        "anomaly: transaction 5: begin of an open transaction (changes "
                        f"nothing); open since {first}: offset 102: seq 3: 2026-11-26T10:00:04Z")
    assert lines[1:4] == [
        "transaction 5: committed: 1 record, 1 insert, 0 updates, 0 deletes",
        f"  begin: {first}: offset 102: seq 3: 2026-11-26T10:00:04Z",
        f"  end:   {first}: offset 166: seq 6: 2026-11-26T10:00:07Z"]
    assert f"{first}: offset {w['e_offset']}: seq 11: undecodable: " in proc.stdout
    assert lines[-3:] == [
        "transaction 7: open: 0 records, 0 inserts, 0 updates, 0 deletes; 3 damage items "
        "while open (listed above)",
        f"  begin: {w['second']}: offset 47: seq 1: 2026-11-26T10:01:42Z",
        "  end:   none: open at the end of the log (discarded, in flight)"]
    proc = cli("inspect", wal_dir, "--transactions", "--json", wal_dir=wal_dir)
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert docs == list(wal_transactions(wal_dir))
    # The window: the transactions that overlap it (5 began before 10:00:06, ended after).
    proc = cli("inspect", wal_dir, "--transactions", "--json", "--since",
               "2026-11-26T10:00:06Z", "--until", "2026-11-26T10:00:08.5Z", wal_dir=wal_dir)
    assert [(d["transaction"], d["outcome"]) for d in map(json.loads, proc.stdout.splitlines())
            ] == [(5, "committed"), (9, "anomaly")]
    proc = cli("inspect", wal_dir, "--transactions", "--transaction", "5", "--limit", "1")
    assert (proc.returncode, proc.stdout.count("\n")) == (0, 1)
    # It said "more items follow (narrow --since/--until)": which items, and more of
    # what limit, were left to a guess.
    assert proc.stderr == (
        "note: --limit 1 reached: transaction 5 has more rows (its id used again, or an "
        "anomaly of it): raise --limit, or narrow --since/--until to the time wanted (a "
        "transaction whose span from begin to end overlaps them is kept)\n")
    proc = cli("inspect", wal_dir, "--transactions", "--limit", "1")
    assert proc.stderr.startswith("note: --limit 1 reached: more items follow: raise "
                                  "--limit, or narrow --since/--until")
    proc = cli("inspect", wal_dir, "--transactions", "--transaction", "5", "--limit", "2")
    assert proc.stderr == "" and proc.stdout.count("\ntransaction 5: committed") == 1
    # An id the log never names: said on stderr (nothing printed and exit 0 read as "not
    # in this log" only by guessing); one outside the window, said as that.
    proc = cli("inspect", wal_dir, "--transactions", "--transaction", "404")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == ("note: no transaction 404 in the log: no BeginTransaction, "
                           "CommitTransaction or AbortTransaction has its id\n")
    proc = cli("inspect", wal_dir, "--transactions", "--transaction", "5", "--since",
               "2026-11-26T10:01:00Z")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == "note: no transaction 5 overlaps the --since/--until window\n"
    for bad in (["--records"], ["--first-seq", "1"], ["--last-seq", "3"]):
        proc = cli("inspect", wal_dir, "--transactions", *bad, wal_dir=wal_dir)
        assert (proc.returncode, proc.stdout) == (2, ""), bad
        assert proc.stderr.splitlines()[-1] == (
            f"gpu-pitr inspect: error: argument --transactions: not allowed with {bad[0]} "
            "(it lists transactions: select them with --since, --until, --transaction or "
            "--limit)")
    proc = cli("inspect", wal_dir, "--transactions", "--since", "2026-11-26T10:02Z",
               "--until", "2026-11-26T10:01Z")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith("no transaction can be both")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "manifest.json").write_text("{}")
    proc = cli("inspect", snap, "--transactions", wal_dir=snap)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines()[-1].endswith(f"{snap} is a snapshot")
    proc = cli("inspect", tmp_path / "missing", "--transactions")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_the_api_takes_what_wal_records_takes():
    """The same forms of time as ``wal_records`` (its hints say so too), and a limit
    that is not a count is refused as there."""
    import typing
    from datetime import UTC, datetime

    assert str in typing.get_args(typing.get_type_hints(wal_transactions)["since"])
    assert typing.get_type_hints(wal_transactions)["until"] == typing.get_type_hints(
        wal_records)["until"]
    wal_dir = Path(__file__).parent  # no segments here: nothing to list
    for bad in ({"limit": -1}, {"limit": True}, {"since": "10:02"}):
        with pytest.raises(ValueError):
            list(wal_transactions(wal_dir, **bad))
    when = datetime.fromtimestamp(T0, UTC)
    assert list(wal_transactions(wal_dir, since=when, until=f"{T0}.5")) == []


@pytest.mark.parametrize("limit", [0, 1])
def test_limit_zero_and_an_empty_log(tmp_path, limit):
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    assert list(wal_transactions(wal_dir, limit=limit)) == []
    proc = cli("inspect", wal_dir, "--transactions", "--limit", str(limit), wal_dir=wal_dir)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_a_reader_that_stops_early_gets_no_error(tmp_path):
    import subprocess
    import sys

    b = LogBuilder(created=T0)
    for t in range(3000):
        b.add(Begin(t, T0 + t))
        b.add(Ins(f"id{t}", f32(1), None, T0 + t))
        b.add(Commit(t, T0 + t))
    wal_dir = b.write(tmp_path / "wal")
    shell = (f"{sys.executable} -m gpu_pitr inspect {wal_dir} --transactions | head -n 2; "
             "echo rc=${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "transaction 0: committed: 1 record, 1 insert, 0 updates, 0 deletes",
        "  begin: wal-000000006b080320.log: offset 16: seq 0: 2026-11-26T10:00:00Z", "rc=0"]


def test_cli_row_damage_with_a_filter_is_not_said_to_be_listed_above(tmp_path):
    """A filter leaves the damage items out (README): a row's count of damage while it
    was open said "(listed above)" over nothing; it says where to find them instead."""
    wal_dir = tmp_path / "wal"
    w = write_damaged_wal(wal_dir)
    for window in (["--transaction", "7"], ["--since", "2026-11-26T10:01:42Z"]):
        proc = cli("inspect", wal_dir, "--transactions", *window, wal_dir=wal_dir)
        assert (proc.returncode, proc.stderr) == (0, ""), window
        lines = proc.stdout.splitlines()
        assert "undecodable" not in proc.stdout and "listed above" not in proc.stdout
        assert lines[-3:] == [
            "transaction 7: open: 0 records, 0 inserts, 0 updates, 0 deletes; 3 damage "
            "items while open (left out by the filter: inspect --transactions without "
            "one, or verify, lists them)",
            f"  begin: {w['second']}: offset 47: seq 1: 2026-11-26T10:01:42Z",
            "  end:   none: open at the end of the log (discarded, in flight)"], window
