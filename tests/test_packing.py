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
from test_restore_properties import _long_log, assert_matches, run_case

from gpu_pitr import errors
from gpu_pitr import pipeline as pl
from gpu_pitr.format.layout import HEADER_SIZE


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
    wl = _long_log(seed=1, n=600, per=(1, 1))
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
    wl = _long_log(seed=seed, n=1500, per=(1, 6), big_every=7)
    rnd = random.Random(seed)
    targets = [{}, {"to_seq": rnd.randrange(400)}, {"to_time": 1000 + rnd.randrange(600)},
               {"to_time": 1000 + rnd.randrange(600), "exclusive": True}]
    for kw in targets:
        run_case(wl, {"allow_incomplete_history": True, **kw}, chunk_bytes)


@pytest.mark.parametrize("damage", ["torn", "bad_header", "bad_record"])
def test_damage_among_small_segments_equals_the_reference(damage):
    """Damage in a segment packed with its neighbours: named where the reference names
    it, with and without skip_corrupt."""
    wl = _long_log(seed=9, n=400, per=(2, 4))
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
