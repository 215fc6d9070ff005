"""Damaged and hostile WALs never crash, hang, read out of bounds, allocate by an untrusted
length, merge two ids, or restore anything but what tests/reference.py restores.

Mutated real WALs (tests/fuzzing.py: bit flips, overwrites, truncations, splices,
copied and renamed segments, hostile lengths and payloads) are restored by the fast
path and by the reference, which must agree exactly: the same outcome class (ok or
the same documented error, at the same place), ids, vector bits, metadata, stop point
and report. Bounded and derandomised here; ``scripts/fuzz.py --minutes N`` is the long
campaign, and whatever it finds is saved under tests/fuzz_regressions/ and replayed
by ``test_saved_regressions``.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import fuzzing
import numpy as np
import pytest
import workloads as w
from collisions import colliding_ids
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workloads import LogBuilder

import gpu_pitr
from gpu_pitr import pipeline
from gpu_pitr.format.payload import id_key

ROOT = Path(__file__).resolve().parents[1]


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def picker(data):
    """``pick(n)`` for the mutators, drawn through hypothesis so failures shrink."""

    def pick(n: int) -> int:
        return 0 if n <= 1 else data.draw(st.integers(0, n - 1))

    return pick


def both_skip_settings(files, kw, backend="cpu", chunk_bytes=None, shards=0) -> list[str]:
    return [
        fuzzing.outcome(files, {**kw, "skip_corrupt": skip}, backend, chunk_bytes, not skip,
                        map_all=skip, shards=shards)
        for skip in (False, True)
    ]


# ----------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("name", ["builder", "writer", "deep", "collide", "tiny", "flat"])
def test_seed_wals_restore_like_the_reference(name):
    s = fuzzing.seed(name)
    assert fuzzing.outcome(s.files, {}) == "ok"
    assert len(fuzzing.segment_names(s.files)) >= (1 if name in ("deep", "collide") else 2)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_ids_with_the_same_64_bit_key_stay_apart(tmp_path, backend):
    """Real key collisions, not a patched hash: both ids of each pair are restored."""
    pairs = fuzzing.colliding_ids(2)
    for a, b in pairs:
        key = [id_key(np.frombuffer(x.encode(), np.uint8), 0, len(x.encode())) for x in (a, b)]
        assert a != b and key[0] == key[1]
    s = fuzzing.seed("collide")
    fuzzing.outcome(s.files, {}, backend)
    idx = gpu_pitr.restore(fuzzing.write_files(s.files, tmp_path), backend=backend)
    ids = idx.id_list()
    same = colliding_ids(6)  # and six of one key
    assert ids == sorted([b for _, b in pairs] + [a for a, _ in pairs] + same, key=str.encode)
    vecs = dict(zip(ids, np.asarray(idx.to_host().vectors).tolist(), strict=True))
    for k, (a, b) in enumerate(pairs):
        assert vecs[a] == [k, 4] and vecs[b] == [k, 5]
    assert [vecs[x] for x in same] == [[8, 8], [9, 9], [2, 6], [7, 7], [4, 6], [5, 6]]
    if backend == "cuda":  # the device map is keyed by the 64-bit key: exactness falls back
        assert idx.report.backend == "cpu" and "cuda executor" in idx.report.message


# ----------------------------------------------------------------------------- differential
@pytest.mark.parametrize("chunk_bytes", [None, 64, 4096], ids=["default", "c64", "c4096"])
@fuzz_settings(70)
@given(data=st.data())
def test_mutated_wals_restore_like_the_reference(chunk_bytes, data):
    files, kw, steps = fuzzing.fuzz_input(picker(data))
    note = f"{steps} {kw}"
    shards = data.draw(st.sampled_from([0, 0, 2, 3]), label="id shards")
    assert all(o == "ok" or o in fuzzing.ALLOWED_ERRORS for o in
               both_skip_settings(files, kw, chunk_bytes=chunk_bytes, shards=shards)), note


@fuzz_settings(80)
@given(data=st.data())
def test_hostile_payloads_restore_like_the_reference(data):
    """Huge counts in every counted field, varint markers 251-255, bad UTF-8, nesting to
    3000 levels: each replaces a real record's payload, its length made to agree."""
    files, kw, steps = fuzzing.fuzz_input(picker(data), kind=fuzzing.HOSTILE_PAYLOAD)
    both_skip_settings(files, kw, chunk_bytes=data.draw(st.sampled_from([None, 64])),
                       shards=data.draw(st.sampled_from([0, 2, 3]), label="id shards"))


@fuzz_settings(6)
@given(data=st.data())
def test_mutated_wals_on_the_cuda_executor_restore_like_the_reference(data):
    """The CUDA kernels (in the simulator) on a few small mutated WALs."""
    files, kw, steps = fuzzing.fuzz_input(picker(data), names=["tiny", "collide"])
    both_skip_settings(files, kw, backend="cuda")


def test_saved_regressions(tmp_path):
    """Every input a fuzzing campaign found failing (tests/fuzz_regressions/), replayed as
    it was found, both skip settings; and a case saved here comes back unchanged."""
    files, kw, steps = fuzzing.fuzz_input(random.Random(3).randrange)
    fresh = fuzzing.save_case(files, kw, steps, "round trip", tmp_path, "cpu", 64)
    assert fuzzing.load_case(fresh)[:2] == (files, kw)
    for case in [fresh, *fuzzing.saved_cases()]:
        files, kw, meta = fuzzing.load_case(case)
        both_skip_settings(files, kw, meta["backend"], meta["chunk_bytes"],
                           meta.get("shards", 0))


# ----------------------------------------------------------------------------- bounds, hangs
def test_bounds_checked_run_over_fixed_mutated_inputs(tmp_path):
    """NUMBA_BOUNDSCHECK=1 in a fresh process with an empty Numba cache (so every function
    is compiled with checks; the ``prange`` loops serially, as Numba does not check those):
    a fixed set of mutated inputs and every saved case, within a deadline."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    n = 80
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--inputs", str(n), "--seed",
         "20251126", "--saved", "--cuda-every", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["boundscheck"] is True, "the run was not bounds-checked"
    assert result["failures"] == []
    assert result["inputs"] == n + len(fuzzing.saved_cases())
    assert result["outcomes"].get("ok", 0) > n // 2  # most inputs restore, not all error


def test_campaign_runs_inputs_in_a_worker_and_counts_them(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--minutes", "0.03", "--seed", "5",
         "--cuda-every", "0", "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["inputs"] >= 1 and result["failures"] == []
    assert result["outcomes"]["cpu-inputs"] == result["inputs"]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- memory
def hostile_length_wal() -> dict[str, bytes]:
    """One segment per hostile length, each the last record of its file or followed by
    junk: u32 record lengths, and counts up to 2**64-1 inside payloads."""
    files = {}
    created = fuzzing.SEG0

    def segment(*records: bytes) -> None:
        nonlocal created
        files[w.segment_name(created)] = w.encode_header(created) + b"".join(records)
        created += 1

    good = w.encode_record(0, w.encode_entry(w.Ins("ok", w.f32(1, 2, 3), None, 1)))
    segment(good, struct.pack("<QI", 1, 0xFFFFFFFF))
    segment(struct.pack("<QI", 0, 0xFFFFFFFF) + b"\x00" * 100)
    segment(struct.pack("<QI", 0, 0xFFFFFFF4) + b"\x03\xfc\xff\xff\xff\xff")
    for payload in (
        b"\x00\x01h\xfd" + b"\xff" * 7 + b"\x3f" + b"\x00" * 8,  # vector of 2**62 floats
        b"\x00\x01h\xfd" + b"\xff" * 8 + b"\x00" * 8,  # vector of 2**64-1 floats
        b"\x00\xfc\xff\xff\xff\xffhh",  # id of 2**32-1 bytes
        b"\x02\xfd" + b"\xff" * 8 + b"h\x00",  # delete id of 2**64-1 bytes
        b"\x03\xfd" + b"\xff" * 8 + b"\x02\x01h\x00",  # batch of 2**64-1 entries
        b"\x00\x01h\x00\x01\xfd" + b"\xff" * 8 + b"\x00\x00",  # 2**64-1 metadata pairs
        b"\x03\x01" * 5000 + b"\x02\x01h\x00" + b"\x00" * 5000,  # 5000 nested batches (valid)
    ):
        segment(w.encode_record(0, payload))
    return files


def test_hostile_lengths_allocate_nothing_proportional_to_them(tmp_path):
    """Python-side allocations (NumPy's included) stay small: nothing sized by a length."""
    wal = fuzzing.write_files(hostile_length_wal(), tmp_path / "wal")
    for backend in ("cpu", "cuda"):
        gpu_pitr.restore(wal, backend=backend, skip_corrupt=True, chunk_bytes=1 << 16)
        tracemalloc.start()
        try:
            idx = gpu_pitr.restore(wal, backend=backend, skip_corrupt=True, chunk_bytes=1 << 16)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert idx.id_list() == ["ok"]
        assert len(idx.report.skipped) == 6 and len(idx.report.torn_tails) == 3
        assert peak < 64 << 20, f"{backend}: peak {peak >> 20} MiB"


_RLIMIT_CHILD = """
import resource, sys
import gpu_pitr
wal, warm = sys.argv[1], sys.argv[2]
gpu_pitr.restore(warm, backend="cpu", chunk_bytes=1 << 16)
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmSize"))
limit = size + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
idx = gpu_pitr.restore(wal, backend="cpu", skip_corrupt=True, chunk_bytes=1 << 16)
print(len(idx), len(idx.report.skipped))
"""


def test_hostile_lengths_fit_in_half_a_gib_of_address_space(tmp_path):
    """Allocations inside compiled code are invisible to tracemalloc: cap the address
    space 512 MiB above a warmed-up process, so that even an untouched 4 GiB buffer
    would fail."""
    wal = fuzzing.write_files(hostile_length_wal(), tmp_path / "wal")
    warm = fuzzing.write_files(fuzzing.seed("tiny").files, tmp_path / "warm")
    proc = subprocess.run([sys.executable, "-c", _RLIMIT_CHILD, wal, warm],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1", "6"]


# ----------------------------------------------------------------------------- found by fuzzing
def allocations(monkeypatch) -> list[int]:
    """Sizes of the host buffers a restore allocates (read ring, framing, carried records)."""
    sizes: list[int] = []
    alloc = pipeline._Restore._alloc

    def counted(self, n):
        sizes.append(int(n))
        return alloc(self, n)

    monkeypatch.setattr(pipeline._Restore, "_alloc", counted)
    return sizes


def test_a_record_spanning_many_pieces_is_gathered_not_recopied(tmp_path, monkeypatch):
    """Regression: a record longer than the headroom was copied again with every piece
    that did not complete it, quadratic in its length. One flipped bit in a length (2 GiB
    declared inside a 4 GiB segment) made a restore run for hours; here a 4 MiB record in
    64 KiB pieces allocated 360 MiB where 8 suffice."""
    b = LogBuilder()
    big = np.arange(1 << 20, dtype="<f4")
    b.add(w.Ins("big", big.tobytes(), {"k": "v"}, 1))
    b.add(w.Ins("next", (-big).tobytes(), None, 2))
    b.add(w.Del("nobody", 3))
    files = {n: bytes(d) for n, d in b.files.items()}
    chunk = 64 << 10
    sizes = allocations(monkeypatch)
    assert fuzzing.outcome(files, {}, chunk_bytes=chunk) == "ok"
    ring = sum(s for s in sizes if s == pipeline.HEADROOM + chunk)
    total = sum(len(d) for d in files.values())
    assert sum(sizes) - ring < 3 * total, (sum(sizes) - ring, total)


def test_a_length_past_the_end_of_a_big_file_is_torn_without_reading_on(tmp_path,
                                                                         monkeypatch):
    """Regression: a record whose length runs past the end of its file was carried piece
    by piece to the end of the file before being called a torn tail (the same quadratic
    copy, and the rest of the file in memory)."""
    b = LogBuilder()
    first = b.add(w.Ins("a", w.f32(1), None, 1))
    bad = b.add(w.Ins("b", w.f32(2), None, 2))
    for k in range(20000):
        b.add(w.Ins(f"x{k}", w.f32(k), None, 3))
    data = bytearray(b.files[bad.file])
    struct.pack_into("<I", data, bad.offset + 8, 0xFFFFFFFF)
    wal = fuzzing.write_files({bad.file: bytes(data)}, tmp_path / "wal")
    from gpu_pitr.format import readahead

    framed = []  # the bytes each framing pass was given
    real = readahead.FrameAhead._frame_all

    def counted(self, buf, start, end):
        framed.append(end - start)
        return real(self, buf, start, end)

    monkeypatch.setattr(readahead.FrameAhead, "_frame_all", counted)
    idx = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=4096)
    assert idx.id_list() == ["a"] and first.end == bad.offset
    assert [(Path(t["file"]).name, t["offset"], t["bytes_lost"]) for t in
            idx.report.torn_tails] == [(bad.file, bad.offset, len(data) - bad.offset)]
    assert sum(framed) <= 2 * 4096 < len(data) // 10
    # The rest, not read, counts as read (as a read of the file whole counts it).
    assert idx.report.bytes_read == len(data)
