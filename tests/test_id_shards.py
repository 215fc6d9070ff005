"""Restores of one shard of the ids (``id_shard``), and the shards merged back.

Every shard reads the whole log and applies only its own ids' entries; merged, the
shards must equal the restore without shards exactly (ids, vector bits, metadata,
stop point, the report's counts), and a restore that fails must fail the same way
in every shard (the same error class, file, offset and seq). Random workloads with
damage, transactions and batches, random targets and chunk sizes; both executors
(cuda under the simulator); from a base snapshot too.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import workloads as w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import DimensionMismatchError
from gpu_pitr.resolve.idshard import IdShard, id_shard_mask, merge_shards
from gpu_pitr.resolve.idsort import span_keys

SETTINGS = settings(
    max_examples=int(os.environ.get("GPU_PITR_PROPERTY_EXAMPLES", "150")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)


@SETTINGS
@given(data=st.data())
def test_random_workloads_cpu(data, tmp_path_factory):
    work = data.draw(w.workloads())
    wal = work.write(tmp_path_factory.mktemp("wal"))
    kw = data.draw(w.targets(work))
    count = data.draw(st.sampled_from([2, 3, 7]))
    chunk = data.draw(st.sampled_from([64, 1000, None]))
    w.check_shards_equal_whole(wal, count, backend="cpu", chunk_bytes=chunk, **kw)


@settings(SETTINGS, max_examples=max(5, SETTINGS.max_examples // 5))
@given(data=st.data())
def test_random_workloads_cuda(data, tmp_path_factory):
    work = data.draw(w.workloads(max_steps=15))
    wal = work.write(tmp_path_factory.mktemp("wal"))
    kw = data.draw(w.targets(work))
    w.check_shards_equal_whole(wal, data.draw(st.sampled_from([2, 3])), backend="cuda", **kw)


@settings(SETTINGS, max_examples=max(5, SETTINGS.max_examples // 3))
@given(data=st.data(), backend=st.sampled_from(["cpu", "cuda"]))
def test_random_workloads_from_a_base_snapshot(data, backend, tmp_path_factory):
    work = data.draw(w.workloads(max_steps=20))
    root = tmp_path_factory.mktemp("based")
    wal = work.write(root / "wal")
    kw_a = data.draw(w.targets(work))
    a, err = w.outcome(lambda: gpu_pitr.restore(wal, backend=backend, **kw_a))
    assume(err is None)
    snap = root / "snap"
    shutil.rmtree(snap, ignore_errors=True)
    snapshot.save(a, snap)
    flags = {k: kw_a[k] for k in ("skip_corrupt", "allow_incomplete_history") if k in kw_a}
    kw_b = {**data.draw(st.one_of(st.just(kw_a), st.just({}))), **flags}
    w.check_shards_equal_whole(wal, data.draw(st.sampled_from([2, 3])), backend=backend,
                             base=snap, **kw_b)


def _ids_in_shards(count: int, want: list[int]) -> list[str]:
    """An id for each shard index in ``want`` (shard of ``count``)."""
    out = []
    for k in want:
        for i in range(10_000):
            ident = f"id-{k}-{i}"
            raw = np.frombuffer(ident.encode(), np.uint8)
            key = span_keys(raw, np.zeros(1, np.int64), np.array([len(raw)], np.int64))
            if id_shard_mask(key, IdShard(k, count))[0]:
                out.append(ident)
                break
    return out


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_dimension_mismatch_fails_every_shard_at_the_same_record(tmp_path, backend):
    # Shard 1's only vector differs from shard 0's earlier one: alone, shard 1 would
    # take its length as the dimension and restore without a word.
    a, b = _ids_in_shards(2, [0, 1])
    builder = w.LogBuilder()
    builder.add(w.Ins(a, [1.0, 2.0], None, 1))
    builder.add(w.Ins(b, [1.0, 2.0, 3.0], None, 2))
    wal = builder.write(tmp_path / "wal")
    assert w.check_shards_equal_whole(wal, 2, backend=backend) == "error"
    with pytest.raises(DimensionMismatchError):
        gpu_pitr.restore(wal, backend=backend, id_shard=(1, 2))


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_shard_with_no_ids_has_the_dimension_of_the_index(tmp_path, backend):
    a, = _ids_in_shards(2, [0])
    builder = w.LogBuilder()
    builder.add(w.Ins(a, [1.0, 2.0, 3.0], None, 1))
    wal = builder.write(tmp_path / "wal")
    empty = gpu_pitr.restore(wal, backend=backend, id_shard=(1, 2))
    assert len(empty) == 0 and empty.vectors.shape == (0, 3) and empty.report.dim == 3
    assert w.check_shards_equal_whole(wal, 2, backend=backend) == "equal"


def test_shards_of_the_synthetic_log_split_the_ids_evenly(tmp_path):
    from gpu_pitr.synth import write_synthetic_wal

    write_synthetic_wal(tmp_path / "wal", total_bytes=3 << 20, dim=8, seed=3)
    assert w.check_shards_equal_whole(tmp_path / "wal", 4, backend="cpu") == "equal"
    sizes = [len(gpu_pitr.restore(tmp_path / "wal", backend="cpu", id_shard=(k, 4)))
             for k in range(4)]
    assert max(sizes) < 1.15 * min(sizes), sizes


@pytest.mark.parametrize("bad", [(2, 2), (-1, 2), (0, 0), (0, 1 << 17), ("0", 2), (0.5, 2),
                                 (1,), 3])
def test_bad_id_shards_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="id_shard"):
        gpu_pitr.restore(tmp_path, id_shard=bad)


def test_one_shard_of_one_is_the_whole_index(tmp_path):
    builder = w.LogBuilder()
    builder.add(w.Ins("x", [1.0], None, 1))
    wal = builder.write(tmp_path / "wal")
    index = gpu_pitr.restore(wal, id_shard=(0, 1))
    assert index.report.id_shard is None and index.id_list() == ["x"]


def test_a_shard_is_not_a_snapshot_and_merging_needs_every_shard(tmp_path):
    builder = w.LogBuilder()
    for i in range(20):
        builder.add(w.Ins(f"id{i}", [float(i)], None, i))
    wal = builder.write(tmp_path / "wal")
    shards = [gpu_pitr.restore(wal, id_shard=(k, 3)) for k in range(3)]
    with pytest.raises(ValueError, match="shard 0 of 3"):
        snapshot.save(shards[0], tmp_path / "snap")
    with pytest.raises(ValueError, match="every shard"):
        merge_shards(shards[:2])
    with pytest.raises(ValueError, match="every shard"):
        merge_shards([shards[0], shards[0], shards[2]])
    merged = merge_shards(shards)
    snapshot.save(merged, tmp_path / "snap")  # the merged state is one
    again = gpu_pitr.restore(wal, base=tmp_path / "snap")
    assert again.id_list() == merged.id_list() == sorted(f"id{i}" for i in range(20))


def test_shards_of_different_restores_are_not_merged(tmp_path):
    """Shard 0 at latest and shard 1 at an earlier time joined into a state that never
    existed (and said target latest); shards of two logs failed in NumPy's reshape."""
    builder = w.LogBuilder()
    for i in range(20):
        builder.add(w.Ins(f"id{i:02d}abcd", [float(i)], None, i))
    wal = builder.write(tmp_path / "wal")
    other = w.LogBuilder()  # as many bytes (4 less of id, 4 more of vector)
    for i in range(20):
        other.add(w.Ins(f"id{i:02d}", [float(i), 1.0], None, i))
    wal2 = other.write(tmp_path / "wal2")
    latest = [gpu_pitr.restore(wal, id_shard=(k, 2)) for k in range(2)]
    early = [gpu_pitr.restore(wal, id_shard=(k, 2), to_time=9) for k in range(2)]
    two = [gpu_pitr.restore(wal2, id_shard=(k, 2)) for k in range(2)]
    with pytest.raises(ValueError, match="shards of one restore: shard 1's target"):
        merge_shards([latest[0], early[1]])
    with pytest.raises(ValueError, match="shards of one restore: .*dimensions \\[1, 2\\]"):
        merge_shards([latest[0], two[1]])
    assert merge_shards(early).id_list() == [f"id{i:02d}abcd" for i in range(10)]
