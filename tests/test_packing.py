"""Small segments are packed into one chunk (pipeline ``_pack``): the result, the
report and the errors stay those of tests/reference.py, and the chunks are few.

Every chunk costs a decode, a plan and an apply call whatever its size, so 5,000
one-record segments were 5,000 chunks (2 s against the reference's 0.1 s).
"""

from __future__ import annotations

import random
import tempfile

import pytest
import reference
import workloads as w
from test_restore_properties import assert_matches, run_case

from gpu_pitr import errors
from gpu_pitr import pipeline as pl
from gpu_pitr.format.layout import HEADER_SIZE


def _small_segments(seed: int, n: int, per: tuple[int, int], big_every: int = 0) -> w.Workload:
    """``n`` records in segments of ``per`` records each (a random count in that range),
    every kind, transactions open across segments, writer restarts; with ``big_every``,
    every so many segments one of 400 records (longer than a small chunk)."""
    rnd = random.Random(seed)
    created = 1_700_000_000
    b = w.LogBuilder(created=created)
    ids = [f"id{i}" for i in range(60)]
    open_tx: list[int] = []
    ts, left, segs = 1000, rnd.randint(*per), 0
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
            b.add(w.Upd(rnd.choice(ids), vec, None, ts))
        elif r < 0.70:
            b.add(w.Del(rnd.choice(ids), ts))
        elif r < 0.76:
            b.add(w.Batch([w.Ins(rnd.choice(ids), vec, None, ts), w.Del(rnd.choice(ids), ts)],
                          ts))
        elif r < 0.85 or not open_tx:
            open_tx.append(k)
            b.add(w.Begin(k, ts))
        else:
            tx = open_tx.pop(rnd.randrange(len(open_tx)))
            b.add((w.Commit if rnd.random() < 0.8 else w.Abort)(tx, ts))
    return w.Workload(files={name: bytes(data) for name, data in b.files.items()})


class _Chunks:
    """Counts the chunks a restore processes."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        chunk = pl._Restore._chunk

        def counted(run, first, n):
            self.count += 1
            return chunk(run, first, n)

        monkeypatch.setattr(pl._Restore, "_chunk", counted)


def test_one_record_segments_are_packed_into_few_chunks(monkeypatch, tmp_path):
    wl = _small_segments(seed=1, n=600, per=(1, 1))
    wl.write(tmp_path)
    chunks = _Chunks(monkeypatch)
    got = w.restore_fast(tmp_path)
    ref = reference.restore(tmp_path)
    assert got.ids == ref.ids and got.vectors == ref.vectors
    assert len(wl.files) == 600
    # 600 segments of ~40 bytes: one chunk for all (the old loop: one a segment)
    assert chunks.count <= 2, chunks.count
    # with a small chunk size, packing stops at it: more chunks, each under the size
    chunks.count = 0
    small = w.restore_fast(tmp_path, chunk_bytes=2048)
    assert small.ids == ref.ids and small.vectors == ref.vectors
    framed = sum(len(data) - HEADER_SIZE for data in wl.files.values())
    assert framed // 2048 <= chunks.count <= framed // (2048 - 64) + 1


@pytest.mark.parametrize("chunk_bytes", [None, 1000, 4096])
@pytest.mark.parametrize("seed", range(4))
def test_small_segments_equal_the_reference_at_every_target(seed, chunk_bytes):
    """Packed chunks end at every kind of place: a stop point inside them, a big
    segment after small ones (flushed first), transactions carried across."""
    wl = _small_segments(seed=seed, n=1500, per=(1, 6), big_every=7)
    rnd = random.Random(seed)
    targets = [{}, {"to_seq": rnd.randrange(400)}, {"to_time": 1000 + rnd.randrange(600)},
               {"to_time": 1000 + rnd.randrange(600), "exclusive": True}]
    for kw in targets:
        run_case(wl, {"allow_incomplete_history": True, **kw}, chunk_bytes)


@pytest.mark.parametrize("damage", ["torn", "bad_header", "bad_record"])
def test_damage_among_small_segments_equals_the_reference(damage):
    """Damage in a segment packed with its neighbours: named where the reference names
    it, with and without skip_corrupt."""
    wl = _small_segments(seed=9, n=400, per=(2, 4))
    names = sorted(wl.files)
    victim = names[len(names) // 2]
    data = bytearray(wl.files[victim])
    if damage == "torn":
        data = data[:-3]  # a torn tail in a segment that is not the last
    elif damage == "bad_header":
        data[0] ^= 0xFF
    else:
        data[HEADER_SIZE + 12] = 255  # the first record's payload: a bad marker
    files = {**wl.files, victim: bytes(data)}
    for skip in (False, True):
        for chunk_bytes in (None, 512):
            with tempfile.TemporaryDirectory() as d:
                w.Workload(files=files).write(d)
                ref = reference.restore(d, skip_corrupt=skip, allow_incomplete_history=True)
                got, err = None, None
                try:
                    got = w.restore_impl(d, chunk_bytes=chunk_bytes, skip_corrupt=skip,
                                         allow_incomplete_history=True)
                except errors.WalError as e:
                    err = e
                assert_matches(ref, got, err)
