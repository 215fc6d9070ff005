"""``gpu-pitr inspect --records --id ID`` (``wal_records(..., id=...)``): the history of
one id (pg_waldump ``--relation``/``--block``), equal to the pure-Python reference
(tests/inspect_reference.py's ``id_history``): every Insert, Update and Delete of it and
every Batch with an entry of it at any depth, ids told apart by their exact bytes (ids
whose 64-bit keys collide included), combined with the other filters, damage left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inspect_reference import id_history, id_history_of
from test_cli import T0, cli
from workloads import (
    ID_POOL,
    Abort,
    Batch,
    Begin,
    Commit,
    Del,
    Ins,
    LogBuilder,
    Upd,
    encode_entry,
    f32,
    workloads,
)

from gpu_pitr.format.dump import json_line, record_lines, wal_records, wal_transactions


def listed(wal_dir, ids, **kw) -> list[dict]:
    """``wal_records(id=ids)`` at two piece sizes (a tiny one splits every batch and
    transaction across pieces), the same both times; in ``id_history``'s shape."""
    got = id_history_of(wal_records(wal_dir, id=ids, **kw))
    assert id_history_of(wal_records(wal_dir, id=ids, chunk_bytes=64, **kw)) == got
    return got


def ids_in(wal_dir) -> list[str]:
    """Every id an entry of the log names, at any depth, in first-seen order."""
    seen: dict[str, None] = {}
    for doc in wal_records(wal_dir):
        entry = doc.get("entry", {})
        for e in [entry, *entry.get("entries", ())]:
            if "id" in e:
                seen.setdefault(e["id"])
    return list(seen)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_history_of_an_id_is_the_references(tmp_path_factory, data):
    """Random workloads (nested batches, transactions committed, aborted, open at the
    end and their anomalies, restarts, unicode and NUL ids, damage): one id, several,
    one in no record, each record's transaction and how it ended; then with each other
    filter (AND): a transaction, a time range, a seq range, a limit (which stops the
    first pass early)."""
    wl = data.draw(workloads(), label="workload")
    wal_dir = Path(wl.write(tmp_path_factory.mktemp("ids") / "wal"))
    present = ids_in(wal_dir)
    pool = present + [i for i in ID_POOL if i not in present][:2]
    for each in pool:  # every id of the log, one at a time (a small log: a few)
        assert id_history_of(wal_records(wal_dir, id=each)) == id_history(wal_dir, [each])
    one = data.draw(st.sampled_from(pool), label="id")
    assert listed(wal_dir, one) == id_history(wal_dir, [one])
    several = data.draw(st.lists(st.sampled_from(pool), max_size=4), label="ids")
    assert listed(wal_dir, several) == id_history(wal_dir, several)
    assert listed(wal_dir, tuple(several)) == listed(wal_dir, set(several))
    want = id_history(wal_dir, [one])
    # Each outcome is the one ``inspect --transactions`` gives that transaction.
    rows = [r for r in wal_transactions(wal_dir) if r.get("outcome") not in (None, "anomaly")]
    for d in want:
        if d["transaction"] is not None:
            outcome = d["transaction_outcome"]
            assert any((r["transaction"], r["outcome"], r["end"]) == (
                d["transaction"], outcome["outcome"], outcome["end"]) for r in rows), d
    # The other filters: what they keep of the whole listing, and of the id's records.
    everything = {(d["file"], d["offset"]): d for d in wal_records(wal_dir)}
    for txn in {d["transaction"] for d in want if d["transaction"] is not None}:
        assert listed(wal_dir, one, transaction=txn) == [
            d for d in want if d["transaction"] == txn]
    if want:
        stamps = sorted({everything[d["file"], d["offset"]]["timestamp"] for d in want})
        lo = data.draw(st.sampled_from(stamps), label="since")
        assert listed(wal_dir, one, since=lo, until=lo + 3) == [
            d for d in want if lo <= everything[d["file"], d["offset"]]["timestamp"] <= lo + 3]
        seq = data.draw(st.sampled_from([d["seq"] for d in want]), label="first_seq")
        assert listed(wal_dir, one, first_seq=seq) == [d for d in want if d["seq"] >= seq]
        k = data.draw(st.integers(1, len(want)), label="limit")
        assert listed(wal_dir, one, limit=k) == want[:k]
    # Each record listed whole, as the listing without the filter gives it, plus which
    # of a batch's entries are the id's and how its transaction ended.
    for doc in wal_records(wal_dir, id=one):
        same = everything[doc["file"], doc["offset"]]
        assert {k: v for k, v in doc.items()
                if k not in ("id_entries", "transaction_outcome")} == same
        assert ("id_entries" in doc) == (doc["variant"] == "Batch")
        assert ("transaction_outcome" in doc) == ("transaction" in doc)


def test_ids_whose_keys_collide_stay_apart(tmp_path):
    """Two ids with one 64-bit key (found by construction, tests/fuzzing.py), in top-level
    records and nested batches: each id's history is its own; a prefix, a NUL, a
    combining accent and an empty id are other ids too."""
    from fuzzing import colliding_ids

    from gpu_pitr.format import dump
    from gpu_pitr.format.payload import id_key

    ((x, y),) = colliding_ids(1)
    keys = dump._keys_of(*_arena(x, y))
    assert x != y and keys[0] == keys[1] == id_key(*_arena(x)[:1], 0, len(x.encode()))
    b = LogBuilder()
    b.add(Ins(x, f32(1), {"who": "x"}, T0))                          # 0
    b.add(Ins(y, f32(2), None, T0 + 1))                              # 1
    b.add(Batch([Upd(y, f32(3), None, T0 + 2),
                 Batch([Del(x, T0 + 2), Ins("z", f32(1), None, T0 + 2)], T0 + 2)],
                T0 + 2))                                             # 2: x at entry 2
    b.add(Batch([Upd(y, f32(4), None, T0 + 3)], T0 + 3))             # 3: y only
    b.add(Del(y, T0 + 4))                                            # 4
    for k, other in enumerate(["a", "a\x00", "ab", "", "é", "e\u0301", "日本", "日本語"]):
        b.add(Ins(other, f32(k), None, T0 + 10 + k))                # 5..12
    wal_dir = Path(b.write(tmp_path / "w"))
    assert [(d["seq"], d.get("id_entries")) for d in wal_records(wal_dir, id=x)] == [
        (0, None), (2, [2])]
    assert [(d["seq"], d.get("id_entries")) for d in wal_records(wal_dir, id=y)] == [
        (1, None), (2, [0]), (3, [0]), (4, None)]
    assert [d["seq"] for d in wal_records(wal_dir, id=[x, y])] == [0, 1, 2, 3, 4]
    for k, other in enumerate(["a", "a\x00", "ab", "", "é", "e\u0301", "日本", "日本語"]):
        assert [d["seq"] for d in wal_records(wal_dir, id=other)] == [5 + k], other
        assert listed(wal_dir, other) == id_history(wal_dir, [other])
    assert list(wal_records(wal_dir, id="日")) == []
    assert list(wal_records(wal_dir, id=x[:-1])) == []


def test_an_id_is_looked_up_among_wanted_ids_of_its_key_by_a_binary_search():
    """Ids (and so which ids share a 64-bit key) are chosen by the store's users. An
    entry's id was compared with every wanted id of its key in turn: a log of 64k ids
    of one key, listed with a quarter of them wanted, compared every entry with 16k ids
    (12 s against 0.27 s for random ids). The wanted ids of a key are in byte order, so
    each id is found (or not) in at most ceil(log2(n + 1)) comparisons."""
    from collisions import colliding_ids

    from gpu_pitr.format import dump

    ids = colliding_ids(3000)
    wanted = dump._WantedIds(ids[::2])
    assert len(set(wanted.keys.tolist())) == 1  # one key, all 1,500 of them
    for k, text in enumerate(ids):
        buf = np.frombuffer(text.encode(), np.uint8)
        j, compared = dump._find_wanted(buf, 0, len(buf), wanted.keys, wanted.offsets,
                                        wanted.lengths, wanted.arena)
        assert compared <= 11, (k, compared)  # one by one: up to 1,500
        if k % 2:
            assert j == -1
        else:
            o, n = wanted.offsets[j], wanted.lengths[j]
            assert wanted.arena[o:o + n].tobytes() == buf.tobytes()


def test_entries_after_metadata_and_markers_in_a_batch(tmp_path):
    """The walk skips each entry's vector, metadata (keys and values of every length,
    None) and nested markers by their lengths to reach the ids after them."""
    meta = {"k" * 300: "v" * 70000, "": "", "ключ": "値"}
    b = LogBuilder()
    b.add(Batch([Ins("a", f32(*range(40)), meta, T0), Upd("b", f32(1), None, T0),
                 Begin(3, T0), Batch([Ins("c", f32(1), meta, T0), Commit(3, T0)], T0),
                 Upd("d", f32(2), {"x": "y"}, T0), Del("e", T0)], T0))
    wal_dir = Path(b.write(tmp_path / "w"))
    for k, each in [(0, "a"), (1, "b"), (4, "c"), (6, "d"), (7, "e")]:
        assert [d["id_entries"] for d in wal_records(wal_dir, id=each)] == [[k]], each
    assert list(wal_records(wal_dir, id="f")) == []


def _arena(*ids):
    import numpy as np

    raw = [i.encode() for i in ids]
    lengths = np.array([len(r) for r in raw], np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return np.frombuffer(b"".join(raw), np.uint8).copy(), offsets, lengths


def test_an_id_nested_deeper_than_the_compiled_stack(tmp_path):
    """A batch nested 100 deep (the compiled walk's stack is 64) is walked again with a
    deeper stack: the id at the bottom is found, and one beside it at the top too."""
    deep = Ins("bottom", f32(1, 2), None, T0)
    for _ in range(100):
        deep = Batch([deep], T0)
    b = LogBuilder()
    b.add(Batch([deep, Del("top", T0)], T0))
    b.add(Ins("bottom", f32(3, 4), None, T0 + 1))
    wal_dir = Path(b.write(tmp_path / "w"))
    got = list(wal_records(wal_dir, id="bottom"))
    assert [(d["seq"], d.get("id_entries")) for d in got] == [(0, [100]), (1, None)]
    assert [d["seq"] for d in wal_records(wal_dir, id="top")] == [0]
    assert listed(wal_dir, "bottom") == id_history(wal_dir, ["bottom"])


def test_damage_is_left_out(tmp_path):
    """An undecodable record holds no id that can be read (this one's payload is an
    Insert of the id, cut short), nor do a zero-filled record, a bad header or a torn
    tail: the id filter lists none of them, as the other filters leave out what they
    cannot place; the seq filters still show the undecodable one."""
    b = LogBuilder()
    b.add(Ins("doc-5", f32(1), None, T0))                                 # 0
    b.add_payload(encode_entry(Ins("doc-5", f32(2), None, T0 + 1))[:-3])  # 1: cut
    b.raw(bytes(12))                                                      # zero-filled
    b.add(Del("doc-5", T0 + 2))                                           # 2
    b.add(Ins("doc-5", f32(3), None, T0 + 3))                             # 3: torn below
    wal_dir = Path(b.write(tmp_path / "w"))
    (seg,) = sorted(wal_dir.glob("wal-*.log"))
    seg.write_bytes(seg.read_bytes()[:-5])
    (wal_dir / "wal-ffffffffffffffff.log").write_bytes(b"WALX\x01\x00\x00\x00" + bytes(8))
    kinds = [d.get("damage") for d in wal_records(wal_dir)]
    assert kinds == [None, "undecodable", "zero_filled", None, "torn_tail", "bad_header"]
    assert [d["seq"] for d in wal_records(wal_dir, id="doc-5")] == [0, 2]
    assert [d.get("damage") for d in wal_records(wal_dir, first_seq=1, last_seq=1)] == [
        "undecodable"]


def test_the_argument_forms(tmp_path):
    """One id (str) or an iterable of them; bytes and non-text are a ValueError, not a
    guess; an id no UTF-8 encodes (a lone surrogate) is in no log; no ids keep nothing."""
    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))
    b.add(Ins("ab", f32(1), None, T0))
    wal_dir = Path(b.write(tmp_path / "w"))
    assert [d["seq"] for d in wal_records(wal_dir, id="a")] == [0]
    assert [d["seq"] for d in wal_records(wal_dir, id=iter(["ab", "a"]))] == [0, 1]
    assert list(wal_records(wal_dir, id=[])) == []
    assert list(wal_records(wal_dir, id="\udcff")) == []
    assert [d["seq"] for d in wal_records(wal_dir, id=["\ud800", "ab"])] == [1]
    for bad in (b"a", ["a", 1], [b"a"], 5):
        with pytest.raises(ValueError, match="id"):
            list(wal_records(wal_dir, id=bad))


def test_cli_lists_the_history_and_only_the_ids_entries_of_a_batch(tmp_path):
    """``--id`` implies ``--records`` and repeats; a batch prints the id's entries and how
    many others it holds; ``--json`` keeps the entries whole and says which are the
    id's; each record names its transaction and how it ended, so an update inside one
    aborted shows as discarded, where it shows the Commit's place of one committed."""
    b = LogBuilder()
    b.add(Ins("doc-5", f32(1, 2), {"src": "feed"}, T0))                   # 0
    b.add(Begin(9, T0 + 1))                                               # 1
    b.add(Batch([Upd("doc-6", f32(0, 0), None, T0 + 1),
                 Batch([Upd("doc-5", f32(9, 9), {"src": "BAD"}, T0 + 1),
                        Del("doc-7", T0 + 1)], T0 + 1)], T0 + 1))          # 2: in 9
    b.add(Abort(9, T0 + 2))                                               # 3
    b.add(Del("doc-5", T0 + 3))                                           # 4
    b.add(Begin(10, T0 + 4))
    b.add(Batch([Ins("doc-5", f32(5, 5), None, T0 + 4)], T0 + 4))         # 6: all its own
    b.add(Commit(10, T0 + 5))
    wal_dir = Path(b.write(tmp_path / "w"))
    name = sorted(p.name for p in Path(wal_dir).glob("wal-*.log"))[0]
    proc = cli("inspect", wal_dir, "--id", "doc-5", wal_dir=wal_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = proc.stdout.splitlines()
    assert [line.split(": ")[2] if line.startswith("wal-") else line for line in lines] == [
        "seq 0",
        "seq 2",
        # (under the nested batch that holds it, not as a child of the line above)
        "  2026-11-26T10:00:01Z Batch of 2 entries",
        '    2026-11-26T10:00:01Z Update "doc-5" dim 2 metadata {"src": "BAD"}',
        "  (and 2 other entries: --first-seq 2 --last-seq 2 lists the batch whole)",
        "seq 4",
        "seq 6",
        '  2026-11-26T10:00:04Z Insert "doc-5" dim 2 metadata null']
    assert lines[1] == (f"{name}: offset {lines[1].split(': offset ')[1].split(':')[0]}: "
                        "seq 2: 2026-11-26T10:00:01Z Batch of 2 entries (in transaction 9: "
                        f"aborted at {name}:{_offset_of(wal_dir, 3)}, seq 3: discarded)")
    assert lines[0].endswith("metadata {\"src\": \"feed\"}")  # (in no transaction)
    assert lines[6].endswith(f"Batch of 1 entries (in transaction 10: committed at "
                             f"{name}:{_offset_of(wal_dir, 7)}, seq 7)")
    proc = cli("inspect", wal_dir, "--id", "doc-7", "--id", "doc-6", "--json",
               wal_dir=wal_dir)
    (doc,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert doc["seq"] == 2 and doc["id_entries"] == [0, 3] and doc["transaction"] == 9
    assert doc["transaction_outcome"] == {"outcome": "aborted", "end": {
        "file": name, "offset": _offset_of(wal_dir, 3), "seq": 3, "timestamp": T0 + 2}}
    assert [e["variant"] for e in doc["entry"]["entries"]] == [
        "Update", "Batch", "Update", "Delete"]
    assert [line.split("Z ", 1)[-1] for line in record_lines(doc)[1:]] == [
        'Update "doc-6" dim 2 metadata unchanged', "Batch of 2 entries", 'Delete "doc-7"',
        "  (and 1 other entry: --first-seq 2 --last-seq 2 lists the batch whole)"]
    # Combined with the other filters (AND), and its note when nothing is listed.
    proc = cli("inspect", wal_dir, "--id", "doc-5", "--transaction", "10", wal_dir=wal_dir)
    assert [line.split(": ")[2] for line in proc.stdout.splitlines()
            if line.startswith("wal-")] == ["seq 6"]
    proc = cli("inspect", wal_dir, "--id", "doc-5", "--limit", "1", wal_dir=wal_dir)
    assert len(proc.stdout.splitlines()) == 1 and "--limit 1 reached" in proc.stderr
    proc = cli("inspect", wal_dir, "--records", "--id", "doc-1", wal_dir=wal_dir)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == ('note: no record of id "doc-1" in the log (damage aside: an '
                           "undecodable record names no id)\n")
    proc = cli("inspect", wal_dir, "--id", "doc-5", "--id", "x", "--since",
               "2026-11-26T10:01:00Z", wal_dir=wal_dir)
    assert proc.stderr == 'note: no record of ids "doc-5", "x" passes the other filters\n'
    proc = cli("inspect", wal_dir, "--id=-x", wal_dir=wal_dir)
    assert proc.returncode == 0 and 'id "-x"' in proc.stderr


def _offset_of(wal_dir, seq: int) -> int:
    """The offset of the record with sequence number ``seq`` (one in the log)."""
    (doc,) = wal_records(wal_dir, first_seq=seq, last_seq=seq)
    return doc["offset"]


def test_each_record_says_how_its_transaction_ended(tmp_path):
    """An operator reading one id's history learns which writes ever took effect: each
    record in a transaction says whether that transaction committed (and where, a place
    ``--to-position`` takes), aborted, or was still open at the end of the log
    (discarded as in flight), by SPEC section 3's rules: the record belongs to the
    transaction begun most recently of those open, a Begin of an open id or an end of
    one not open changes nothing, and an id used again is another transaction, which
    ends on its own. Records outside a transaction are their own commit points: no
    outcome. Across rotations, pieces of 64 bytes, with a limit that stops the first
    pass before the log's end, and alongside ``inspect --transactions``."""
    b = LogBuilder()
    b.add(Begin(1, T0))                                                   # 0
    b.add(Ins("d", f32(1), None, T0))                                     # 1: in 1
    b.add(Begin(2, T0 + 1))                                               # 2
    b.add(Upd("d", f32(2), None, T0 + 1))                                 # 3: in 2
    b.add(Begin(1, T0 + 1))                                               # 4: anomaly
    b.add(Del("d", T0 + 1))                                               # 5: still 2's
    b.add(Abort(2, T0 + 2))                                               # 6
    b.add(Abort(7, T0 + 2))                                               # 7: anomaly
    b.add(Upd("d", f32(3), None, T0 + 2))                                 # 8: in 1
    b.new_segment(0x5F5E200)
    b.add(Commit(1, T0 + 3))                                              # 9
    b.add(Del("d", T0 + 4))                                               # 10: none
    b.add(Begin(2, T0 + 5))                                               # 11: 2 again
    b.add(Batch([Ins("x", f32(0), None, T0 + 5), Ins("d", f32(4), None, T0 + 5)],
                T0 + 5))                                                  # 12: in 2 again
    b.add(Commit(2, T0 + 6))                                              # 13
    b.add(Begin(3, T0 + 7))                                               # 14
    b.add(Ins("d", f32(5), None, T0 + 7))                                 # 15: open at end
    wal_dir = Path(b.write(tmp_path / "w"))
    first, second = sorted(p.name for p in wal_dir.glob("wal-*.log"))

    def end(name, seq, stamp):
        return {"file": name, "offset": _offset_of(wal_dir, seq), "seq": seq,
                "timestamp": stamp}

    committed_1 = {"outcome": "committed", "end": end(second, 9, T0 + 3)}
    aborted_2 = {"outcome": "aborted", "end": end(first, 6, T0 + 2)}
    want = [(1, 1, committed_1), (3, 2, aborted_2), (5, 2, aborted_2),
            (8, 1, committed_1), (10, None, None),
            (12, 2, {"outcome": "committed", "end": end(second, 13, T0 + 6)}),
            (15, 3, {"outcome": "open", "end": None})]
    for chunk in (None, 64):
        got = [(d["seq"], d.get("transaction"), d.get("transaction_outcome"))
               for d in wal_records(wal_dir, id="d", chunk_bytes=chunk)]
        assert got == want, chunk
        for k in range(1, len(want) + 1):
            got = [(d["seq"], d.get("transaction"), d.get("transaction_outcome"))
                   for d in wal_records(wal_dir, id="d", chunk_bytes=chunk, limit=k)]
            assert got == want[:k], (chunk, k)
    assert listed(wal_dir, "d") == id_history(wal_dir, ["d"])
    # With the other filters: the outcome is the transaction's, whatever they keep.
    assert [(d["seq"], d["transaction_outcome"]) for d in wal_records(
        wal_dir, id="d", first_seq=4, last_seq=9)] == [(5, aborted_2), (8, committed_1)]
    assert [(d["seq"], d["transaction_outcome"]) for d in wal_records(
        wal_dir, id="d", transaction=1)] == [(1, committed_1), (8, committed_1)]
    # The same ends as inspect --transactions gives those transactions.
    rows = {(r["transaction"], r["begin"]["seq"]): (r["outcome"], r["end"])
            for r in wal_transactions(wal_dir) if r["outcome"] != "anomaly"}
    assert rows[1, 0] == ("committed", committed_1["end"])
    assert rows[2, 2] == ("aborted", aborted_2["end"])
    assert rows[3, 14] == ("open", None)
    # The words: committed with its place, aborted or open as discarded.
    proc = cli("inspect", wal_dir, "--id", "d", wal_dir=wal_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    tails = [line.split(" (", 1)[1] if " (in" in line else None
             for line in proc.stdout.splitlines() if line.startswith("wal-")]
    assert tails == [
        f"in transaction 1: committed at {second}:{_offset_of(wal_dir, 9)}, seq 9)",
        f"in transaction 2: aborted at {first}:{_offset_of(wal_dir, 6)}, seq 6: discarded)",
        f"in transaction 2: aborted at {first}:{_offset_of(wal_dir, 6)}, seq 6: discarded)",
        f"in transaction 1: committed at {second}:{_offset_of(wal_dir, 9)}, seq 9)",
        None,
        f"in transaction 2: committed at {second}:{_offset_of(wal_dir, 13)}, seq 13)",
        "in transaction 3: still open at the end of the log: discarded, in flight)"]
    proc = cli("inspect", wal_dir, "--id", "d", "--json", wal_dir=wal_dir)
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d.get("transaction_outcome") for d in docs] == [w[2] for w in want]
    # Without --id the listing is as before: no outcome, no first pass.
    assert not any("transaction_outcome" in d for d in wal_records(wal_dir))
    assert [line for doc in wal_records(wal_dir, first_seq=15)
            for line in record_lines(doc)][0].endswith("(in transaction 3)")


def test_cli_usage_errors_and_help(tmp_path):
    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))
    wal_dir = Path(b.write(tmp_path / "w"))
    proc = cli("inspect", wal_dir, "--transactions", "--id", "a")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "argument --transactions: not allowed with --id" in proc.stderr.splitlines()[-1]
    proc = cli("inspect", wal_dir, "--snapshots", tmp_path, "--id", "a")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "argument --snapshots: not allowed" in proc.stderr.splitlines()[-1]
    proc = cli("inspect", wal_dir, "--id")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = cli("inspect", wal_dir, "--help")
    assert proc.returncode == 0
    assert "--id ID" in proc.stdout and "pg_waldump --relation" in proc.stdout


def test_cli_refuses_an_id_that_is_not_utf8(tmp_path):
    """Bytes that are not UTF-8 (Python's argv gives them as lone surrogates) match no
    id of any log: a usage error, not an empty listing."""
    import os
    import subprocess
    import sys

    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))
    wal_dir = Path(b.write(tmp_path / "w"))
    proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "inspect", os.fsencode(wal_dir),
                           "--id", b"\xff"], capture_output=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.splitlines()[-1] == (
        b"gpu-pitr inspect: error: argument --id: '\\udcff' is not UTF-8 text: no id in a "
        b"log is this")


def test_the_outcomes_hold_when_the_oldest_segment_goes_between_the_passes(
        tmp_path, monkeypatch):
    """(review diff43) ``--id`` read the log twice (the outcomes, then the listing); it
    still does past ``HOLD_ENTRIES`` held records (here 0: the first record held). A
    writer's retention deletes its oldest segment between them: the outcomes were known
    by begin order, which the second pass counted without that segment's transactions,
    so each record said another's outcome (an insert committed said aborted) or none.
    They are known by where their Begin is, the same in both passes."""
    from gpu_pitr.format import dump

    b = LogBuilder()
    b.add(Begin(1, T0))
    b.add(Ins("x", f32(1), None, T0))
    b.add(Commit(1, T0))
    oldest = b.cur
    b.new_segment(0x5F5E200)
    b.add(Begin(2, T0 + 1))
    b.add(Ins("a", f32(1), None, T0 + 1))
    b.add(Abort(2, T0 + 1))
    b.add(Begin(3, T0 + 2))
    b.add(Upd("a", f32(2), None, T0 + 2))
    b.new_segment(0x5F5E300)  # (3 ends in a later piece: its record is held)
    b.add(Commit(3, T0 + 2))
    wal_dir = Path(b.write(tmp_path / "w"))
    want = [(d["seq"], d["transaction"], d["transaction_outcome"]["outcome"])
            for d in wal_records(wal_dir, id="a")]
    assert want == [(4, 2, "aborted"), (7, 3, "committed")]
    first_pass = dump._outcomes
    calls = []

    def then_retention_deletes(*args, **kwargs):
        out = first_pass(*args, **kwargs)
        calls.append(args)
        (wal_dir / oldest).unlink()
        return out

    monkeypatch.setattr(dump, "_outcomes", then_retention_deletes)
    monkeypatch.setattr(dump, "HOLD_ENTRIES", 0)
    assert [(d["seq"], d["transaction"], d["transaction_outcome"]["outcome"])
            for d in wal_records(wal_dir, id="a")] == want
    assert len(calls) == 1

def _three_segments(tmp_path) -> Path:
    """A log of three segments where the history of id "a" has a record outside any
    transaction (seq 0), records in a transaction that ends in the next segment (1
    committed, 2 aborted), one whose transaction a writer restart left open to the end
    of the log, its id begun again after the restart (an anomaly: the record after it is
    still the old one's), and a record after it outside any transaction."""
    b = LogBuilder()
    b.add(Ins("a", f32(1), None, T0))                                     # 0: none
    b.add(Begin(1, T0))                                                   # 1
    b.add(Ins("a", f32(2), None, T0))                                     # 2: in 1
    b.add(Begin(2, T0 + 1))                                               # 3
    b.add(Upd("a", f32(3), None, T0 + 1))                                 # 4: in 2
    b.new_segment(0x5F5E200)
    b.add(Abort(2, T0 + 2))                                               # 5
    b.add(Del("a", T0 + 2))                                               # 6: in 1
    b.add(Commit(1, T0 + 3))                                              # 7
    b.add(Begin(3, T0 + 4))                                               # 8
    b.add(Batch([Ins("x", f32(0), None, T0 + 4), Ins("a", f32(4), None, T0 + 4)],
                T0 + 4))                                                  # 9: in 3
    b.reopen(0x5F5E300)  # a crash: 3 is never closed; seq restarts in a new segment
    b.add(Begin(3, T0 + 5))                                               # 0: anomaly
    b.add(Upd("a", f32(5), None, T0 + 5))                                 # 1: in the old 3
    b.add(Commit(7, T0 + 6))                                              # 2: anomaly
    return Path(b.write(tmp_path / "w"))


def _counted_reads(monkeypatch, wal_dir: Path) -> tuple[dict, list]:
    """Count the opens of ``wal_dir``'s segment files (a pass over the log opens each
    once) and record, per pass (``dump._parsed_pieces`` call), the segment of each piece
    handed over so far."""
    import os

    from gpu_pitr.format import dump

    opens: dict[str, int] = {}
    passes: list[list[int]] = []
    real_open, real_pieces = os.open, dump._parsed_pieces

    def counting_open(path, *args, **kwargs):
        p = Path(os.fsdecode(path))
        if p.parent == wal_dir:
            opens[p.name] = opens.get(p.name, 0) + 1
        return real_open(path, *args, **kwargs)

    def watched_pieces(*args, **kwargs):
        handed: list[int] = []
        passes.append(handed)
        for item, c in real_pieces(*args, **kwargs):
            handed.append(item.segment)
            yield item, c

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(dump, "_parsed_pieces", watched_pieces)
    return opens, passes


@pytest.mark.parametrize("chunk", [None, 64])
def test_the_history_and_its_outcomes_read_the_log_once(tmp_path, monkeypatch, chunk):
    """``--id`` used to read the whole log twice, a first pass for how each listed
    record's transaction ends: on a log of hundreds of GB, two full reads for one id.
    Now one pass finds the ends as it lists, holding back only the records whose
    transaction has not ended yet (and those after them, to keep the log's order): each
    segment is opened once, and the outcomes are those of the pure-Python reference,
    with a limit too, and a record outside any transaction is handed out before the
    rest of the log is read, while one in a transaction waits for its end."""
    wal_dir = _three_segments(tmp_path)
    names = sorted(p.name for p in wal_dir.glob("wal-*.log"))
    want = id_history(wal_dir, ["a"])
    assert [(d["seq"], d["transaction"], (d["transaction_outcome"] or {}).get("outcome"))
            for d in want] == [(0, None, None), (2, 1, "committed"), (4, 2, "aborted"),
                               (6, 1, "committed"), (9, 3, "open"), (1, 3, "open")]
    opens, passes = _counted_reads(monkeypatch, wal_dir)
    list(wal_records(wal_dir, chunk_bytes=chunk))  # every record: one pass
    once = dict(opens)  # (a tiny piece size opens a file for its header, then its pieces)
    assert len(passes) == 1 and set(once) == set(names)
    opens.clear()
    passes.clear()
    assert id_history_of(wal_records(wal_dir, id="a", chunk_bytes=chunk)) == want
    assert (len(passes), opens) == (1, once)
    for k in range(1, len(want) + 1):
        opens.clear()
        passes.clear()
        got = id_history_of(wal_records(wal_dir, id="a", chunk_bytes=chunk, limit=k))
        assert got == want[:k]
        assert len(passes) == 1 and all(opens[n] <= once[n] for n in opens), k
    # Streaming: the first record is handed out while its segment is the last read;
    # the next one (in transaction 1, which ends in the second segment) only once the
    # piece with its Commit is read.
    passes.clear()
    items = wal_records(wal_dir, id="a", chunk_bytes=chunk)
    assert next(items)["seq"] == 0 and set(passes[0]) == {0}
    assert next(items)["seq"] == 2 and passes[0][-1] == 1
    assert [d["seq"] for d in items] == [4, 6, 9, 1]
    assert len(passes) == 1


def test_records_held_past_the_budget_are_given_their_outcomes_by_a_second_read(
        tmp_path, monkeypatch):
    """What the one pass holds back is bounded (``dump.HOLD_ENTRIES``): a transaction a
    crash left open early in the log holds every later record of the id to the end of
    the log. Past the budget the log is read once more from its start for the outcomes
    (``_outcomes``, the first pass every listing made before), the held records are
    handed out and the listing goes on where it was: the same items, two reads at most,
    and the records before the end of the log handed out before it is reached."""
    from gpu_pitr.format import dump

    b = LogBuilder()
    b.add(Begin(1, T0))
    b.add(Ins("a", f32(1), None, T0))  # 1: in 1, open to the end
    b.add(Commit(9, T0))  # an anomaly: 1 stays open
    for k in range(6):
        b.new_segment(0x5F5E200 + k)
        b.add(Upd("a", f32(k), None, T0 + k))  # in 1 still
        b.add(Begin(10 + k, T0 + k))
        b.add(Ins("a", f32(k), None, T0 + k))  # in 10 + k: committed or aborted below
        b.add((Commit if k % 2 else Abort)(10 + k, T0 + k))
    wal_dir = Path(b.write(tmp_path / "w"))
    names = sorted(p.name for p in wal_dir.glob("wal-*.log"))
    want = id_history(wal_dir, ["a"])
    assert len(want) == 13 and want[0]["transaction_outcome"]["outcome"] == "open"
    everything = list(wal_records(wal_dir, id="a"))  # within the budget: one pass
    calls = []
    first_pass = dump._outcomes

    def counted(*args, **kwargs):
        calls.append(args)
        return first_pass(*args, **kwargs)

    monkeypatch.setattr(dump, "_outcomes", counted)
    monkeypatch.setattr(dump, "HOLD_ENTRIES", 2)
    opens, passes = _counted_reads(monkeypatch, wal_dir)
    list(wal_records(wal_dir))  # every record: one pass
    once = dict(opens)
    opens.clear()
    passes.clear()
    items = wal_records(wal_dir, id="a")
    first = next(items)
    assert len(calls) == 1 and len(passes) == 2  # (the listing's, then the first pass)
    assert passes[0][-1] < len(names) - 1  # handed out before the log's end is read
    assert [first, *items] == everything
    assert id_history_of(everything) == want
    assert opens == {n: 2 * once[n] for n in names}
    for k in range(1, len(want) + 1):
        assert list(wal_records(wal_dir, id="a", limit=k)) == everything[:k]
        assert list(wal_records(wal_dir, id="a", limit=k, chunk_bytes=64)) == everything[:k]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_pass_and_two_give_the_same_items(tmp_path_factory, data):
    """Random workloads (transactions ended, open at the end, their anomalies, restarts
    reusing ids, nested batches, damage): the one-pass listing's items, whole (their
    JSON, key order included), are those of the two-pass one it falls back to
    (``HOLD_ENTRIES`` 0: the first pass's outcomes for every record from the first one
    held on), with each filter combined and a limit, at two piece sizes; and the pure-
    Python reference's history."""
    from gpu_pitr.format import dump

    wl = data.draw(workloads(max_steps=40), label="workload")
    wal_dir = Path(wl.write(tmp_path_factory.mktemp("ids") / "wal"))
    present = ids_in(wal_dir)
    if not present:
        return
    one = data.draw(st.sampled_from(present), label="id")
    several = data.draw(st.lists(st.sampled_from(present), min_size=1, max_size=3),
                        label="ids")
    want = id_history(wal_dir, [one])
    kws = [{"id": one}, {"id": several}]
    if want:
        d = data.draw(st.sampled_from(want), label="record")
        stamp = next(iter(wal_records(wal_dir, first_seq=d["seq"], last_seq=d["seq"])))
        kws += [{"id": one, "first_seq": d["seq"]}, {"id": one, "last_seq": d["seq"]},
                {"id": one, "limit": data.draw(st.integers(1, len(want)), label="limit")},
                {"id": one, "since": stamp.get("timestamp", 0), "limit": 2}]
        if d["transaction"] is not None:
            kws.append({"id": several, "transaction": d["transaction"]})
    for kw in kws:
        for chunk in (None, 64):
            one_pass = [json_line(doc) for doc in wal_records(wal_dir, chunk_bytes=chunk,
                                                              **kw)]
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(dump, "HOLD_ENTRIES", 0)
                two = [json_line(doc) for doc in wal_records(wal_dir, chunk_bytes=chunk,
                                                             **kw)]
            assert one_pass == two, (kw, chunk)
    assert id_history_of(wal_records(wal_dir, id=one)) == want
