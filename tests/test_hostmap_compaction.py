"""The cpu executor's id and metadata arenas stay O(live bytes), not O(log).

Every metadata map applied and every id re-created appends to an arena; garbage is
squeezed out once the arena passes twice its live bytes (plus a slack, made tiny
here so that small logs compact many times). Results must not change.
"""

from __future__ import annotations

import os

import numpy as np
import workloads as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr.resolve import hostmap


@settings(max_examples=int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")) // 3,
          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compaction_changes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", data.draw(st.sampled_from([0, 7, 64])))
    work = data.draw(w.workloads(damage=False))
    wal = work.write(tmp_path / "wal")
    kw = data.draw(w.targets(work))
    try:
        ref = w.restore_ref(wal, **kw)
    except gpu_pitr.errors.WalError as err:
        ref = type(err)
    try:
        got = w.restore_fast(wal, chunk_bytes=data.draw(st.sampled_from([64, 1000])), **kw)
    except gpu_pitr.errors.WalError as err:
        got = type(err)
    if isinstance(ref, type):
        assert got is ref
    else:
        assert (got.ids, got.vectors, got.metadata) == (ref.ids, ref.vectors, ref.metadata)


def test_arenas_stay_bounded_under_churn(tmp_path, monkeypatch):
    """40 000 metadata updates and re-inserts of 50 ids: the arenas never hold more
    than twice the live bytes plus the slack."""
    slack = 4096
    monkeypatch.setattr(hostmap, "COMPACT_SLACK", slack)
    peak = {"meta": 0, "ids": 0, "live": 0}
    original = hostmap._Shard.compact

    def watch(self):
        original(self)
        live_meta = int(self.row_meta_len[: self.n_rows][
            (self.row_id_len[: self.n_rows] >= 0) & (self.row_meta_off[: self.n_rows] >= 0)
        ].sum())
        live_ids = int(self.row_id_len[: self.n_rows][self.row_id_len[: self.n_rows] >= 0].sum())
        assert self.meta_used <= max(2 * live_meta, slack) + 2 * 4096
        assert self.ids_used <= max(2 * live_ids, slack) + 2 * 4096
        peak["meta"] = max(peak["meta"], self.meta_used)

    monkeypatch.setattr(hostmap._Shard, "compact", watch)
    log = w.LogBuilder()
    for i in range(40_000):
        ident = f"id-{i % 50:04d}"
        if i % 7 == 0 and i < 39_900:
            log.add(w.Del(ident, ts=i))
        else:
            log.add(w.Upd(ident, [float(i)], {"step": str(i), "pad": "x" * 40}, ts=i))
    wal = log.write(tmp_path / "wal")
    got = gpu_pitr.restore(wal, backend="cpu", chunk_bytes=64 << 10)
    assert len(got) == 50 and peak["meta"] > 0
    last = {m["step"] for m in got.metadata}
    assert max(map(int, last)) == 39_999
    assert np.array_equal(got.vectors[:, 0] > 39_000, np.ones(50, bool))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rows_permute_in_place_exactly(data):
    """The in-place row permutation (cycles cut at evenly spaced positions and moved on
    several threads, the rest followed one by one) equals a gather, for permutations
    with one long cycle, many short ones, fixed points, fewer rows than cuts."""
    from gpu_pitr.resolve.hostmap import PERMUTE_CUTS, permute_rows_in_place

    n = data.draw(st.sampled_from([1, 2, 7, PERMUTE_CUTS - 1, PERMUTE_CUTS + 3, 5000]))
    kind = data.draw(st.sampled_from(["random", "one_cycle", "swaps", "identity"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        perm = rng.permutation(n)
    elif kind == "one_cycle":
        order = rng.permutation(n)
        perm = np.empty(n, np.int64)
        perm[order] = np.roll(order, 1)
    elif kind == "swaps":
        perm = np.arange(n)
        for a, b in rng.integers(0, n, (n // 3, 2)):
            perm[[a, b]] = perm[[b, a]]
    else:
        perm = np.arange(n)
    perm = perm.astype(np.int64)
    rows = rng.integers(0, 256, (n, 12), dtype=np.uint8)
    want = rows[perm].copy()
    permute_rows_in_place(rows, perm)
    assert np.array_equal(rows, want)
