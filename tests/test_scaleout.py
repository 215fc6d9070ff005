"""Restores on a Dask cluster (``gpu_pitr.scaleout``, ``restore --dask-scheduler``).

A ``LocalCluster`` of two worker processes runs the shards; the result must equal
the restore in this process exactly, an error in the log must come back as the same
one-line error, and the command line must write the same output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import workloads as w

import gpu_pitr
from gpu_pitr import snapshot
from gpu_pitr.errors import CorruptRecordError, TargetNotReachedError, WalError
from gpu_pitr.scaleout import restore_on_dask, restore_sharded, restore_with_scheduler
from gpu_pitr.synth import write_synthetic_wal

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaleout") / "wal"
    write_synthetic_wal(path, total_bytes=2 << 20, dim=8, seed=11)
    return path


@pytest.mark.parametrize("shards", [None, 1, 3])
def test_the_cluster_restores_what_one_process_does(client, wal, shards):
    stats = gpu_pitr.restore(wal, backend="cpu")
    mid = int(stats.report.last_commit_timestamp) - 5
    for kw in ({}, {"to_time": mid}, {"to_time": mid, "exclusive": True},
               {"to_time": mid - 60, "read_after_stop": False}):
        want = gpu_pitr.restore(wal, backend="cpu", **kw)
        got = restore_on_dask(client, wal, shards=shards, backend="cpu", **kw)
        assert w.index_view(got) == w.index_view(want)
        assert got.report.stop == want.report.stop
        assert (got.report.ids, got.report.inserts, got.report.deletes) == (
            want.report.ids, want.report.inserts, want.report.deletes)
        # (Each shard stopped reading at the stop, at the same record: they agree.)
        assert (got.report.records_read, got.report.read_after_stop) == (
            want.report.records_read, want.report.read_after_stop)
        timings = got.report.timings  # the wall time from the call, the join apart
        assert timings["total"] >= timings["gather"] > 0 and timings["total"] >= max(
            v for k, v in timings.items() if k not in ("total", "gather"))


def test_the_shards_stay_on_the_workers_until_gathered(client, wal):
    run = restore_sharded(client, wal, shards=4, backend="cpu")
    try:
        assert len(run.futures) == 4
        assert len(run) == len(gpu_pitr.restore(wal, backend="cpu"))
        sizes = client.gather([client.submit(len, f) for f in run.futures])
        assert sum(sizes) == len(run) and min(sizes) > 0
        assert run.report.id_shard is None and run.report.ids == len(run)
    finally:
        run.release()


def test_from_a_base_snapshot_on_the_cluster(client, wal, tmp_path):
    part = gpu_pitr.restore(wal, backend="cpu", to_seq=1000)
    snapshot.save(part, tmp_path / "snap")
    want = gpu_pitr.restore(wal, backend="cpu")
    got = restore_on_dask(client, wal, shards=3, backend="cpu", base=tmp_path / "snap")
    assert w.index_view(got) == w.index_view(want) and got.report.base is not None
    with pytest.raises(ValueError, match="path the workers can read"):
        restore_sharded(client, wal, base=snapshot.load(tmp_path / "snap"))
    # --snapshots: every shard picks the same one, passing over a damaged newer one.
    snaps = tmp_path / "snaps"
    snapshot.save(part, snaps / "a")
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=2000), snaps / "b")
    with open(snaps / "b" / "vectors.f32", "r+b") as f:
        f.write(b"\xff")
    want = gpu_pitr.restore(wal, backend="cpu", snapshots=snaps)
    got = restore_on_dask(client, wal, shards=2, backend="cpu", snapshots=snaps)
    assert w.index_view(got) == w.index_view(want)
    assert got.report.base["path"] == want.report.base["path"] == str(snaps / "a")
    assert got.report.message == want.report.message and "is damaged" in got.report.message
    assert got.report.warnings == want.report.warnings


def test_an_error_in_the_log_comes_back_whole(client, tmp_path):
    builder = w.LogBuilder()
    builder.add(w.Ins("a", [1.0], None, 1))
    builder.add_payload(b"\x63")  # variant 99: no entry has that number
    builder.add(w.Ins("b", [2.0], None, 2))
    wal = builder.write(tmp_path / "wal")
    with pytest.raises(CorruptRecordError) as local:
        gpu_pitr.restore(wal)
    with pytest.raises(CorruptRecordError) as remote:
        restore_on_dask(client, wal, shards=2)
    assert (remote.value.file, remote.value.offset, remote.value.seq) == (
        local.value.file, local.value.offset, local.value.seq)
    assert str(remote.value) == str(local.value)


def test_the_command_line_on_a_cluster(client, wal, tmp_path):
    address = client.scheduler.address
    cmd = [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--backend", "cpu", "-q"]
    local = subprocess.run([*cmd, "--out", str(tmp_path / "one.npz")], capture_output=True,
                           text=True)
    assert local.returncode == 0, local.stderr
    remote = subprocess.run([*cmd, "--out", str(tmp_path / "many.npz"), "--dask-scheduler",
                             address, "--shards", "3"], capture_output=True, text=True)
    assert remote.returncode == 0, remote.stderr
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "many.npz") as b:
        for key in ("ids", "vectors", "metadata"):
            assert np.array_equal(a[key], b[key]), key
    usage = subprocess.run([*cmd, "--out", str(tmp_path / "x.npz"), "--shards", "2"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "--shards: needs --dask-scheduler" in usage.stderr


def test_a_scheduler_that_does_not_answer_is_one_line(wal):
    with pytest.raises(OSError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        restore_with_scheduler("tcp://127.0.0.1:9", wal, timeout="1s")


def test_bad_arguments_are_refused(client, wal):
    with pytest.raises(ValueError, match="shards must be"):
        restore_sharded(client, wal, shards=0)
    for name in ("progress", "id_shard"):
        with pytest.raises(ValueError, match=f"takes no {name}"):
            restore_sharded(client, wal, **{name: None})
    with pytest.raises(TypeError, match="to_tme"):
        restore_sharded(client, wal, to_tme=5)
    # At the call, before any shard is submitted (not at gather, from each worker).
    with pytest.raises(ValueError, match="has no time zone"):
        restore_sharded(client, wal, to_time="2026-11-26T10:02")


def test_an_index_travels_as_its_arrays(wal):
    from distributed.protocol import deserialize, serialize

    index = gpu_pitr.restore(wal, backend="cpu", to_seq=1500)
    header, frames = serialize(index)
    assert header["serializer"] == "dask"  # not pickled: see scaleout._register_with_dask
    back = deserialize(header, [bytes(f) for f in frames])
    assert w.index_view(back) == w.index_view(index) and back.vectors.shape == index.vectors.shape
    assert back.report.to_dict() == index.report.to_dict()
    assert (back.position, back.pending) == (index.position, index.pending)


def test_a_path_the_workers_cannot_see_is_named_before_any_shard_runs(client, tmp_path):
    # Missing here too: said so (not blamed on the cluster).
    with pytest.raises(WalError, match="no such directory, here or on any Dask worker") as err:
        restore_sharded(client, tmp_path / "nowhere", shards=2)
    assert err.value.file == str(tmp_path / "nowhere")
    with pytest.raises(WalError, match="no such directory, here or on any"):
        restore_sharded(client, tmp_path, base=tmp_path / "no-snapshot")
    # Here, but on no worker, or not on one: the workers without it are named.
    addresses = sorted(client.scheduler_info()["workers"])
    for blind, said in ((addresses, re.escape("not a directory on any Dask worker: the log "
                                              "(and a base) must be at the same path on "
                                              "every worker")),
                        (addresses[:1], f"the Dask worker\\(s\\) {addresses[0]}:")):
        client.run(lambda: setattr(os.path, "_gpu_pitr_isdir", os.path.isdir), workers=blind)
        client.run(lambda: setattr(os.path, "isdir", lambda p: False), workers=blind)
        try:
            with pytest.raises(WalError, match=said):
                restore_sharded(client, tmp_path, shards=2)
        finally:
            client.run(lambda: setattr(os.path, "isdir", os.path._gpu_pitr_isdir),
                       workers=blind)


def test_a_cluster_without_workers_is_one_error_not_a_wait(wal, tmp_path):
    """Tasks submitted to a cluster with no workers would wait without end (with
    --shards N), or the shard count's ValueError came out as a traceback."""
    from gpu_pitr.scaleout import NoWorkersError

    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as c, \
            distributed.Client(c) as empty:
        for shards in (None, 2):
            with pytest.raises(NoWorkersError, match="^the Dask cluster has no workers: "):
                restore_sharded(empty, wal, shards=shards)
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
             str(tmp_path / "o.npz"), "--dask-scheduler", c.scheduler_address, "--shards",
             "2"], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (1, "gpu-pitr: error: the Dask cluster has no "
                                              "workers: start some (dask worker "
                                              "SCHEDULER_ADDRESS), then run this again\n")
    assert not (tmp_path / "o.npz").exists()


def test_bad_shard_counts_on_the_command_line_are_usage_errors(wal, tmp_path):
    for bad in ("0", "x", "-1", "65537"):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
                               str(tmp_path / "x.npz"), "--dask-scheduler", "tcp://127.0.0.1:9",
                               "--shards", bad], capture_output=True, text=True)
        assert proc.returncode == 2 and "is not a number of shards" in proc.stderr, bad


def test_errors_pickle_whole():
    """What a worker raises comes back with its file, offset and seq (the one-line
    OSErrors failed to unpickle before: their __init__ takes other arguments)."""
    import errno
    import pickle

    from gpu_pitr.errors import FileReadError, FileShrankError, OutputError

    for err in (CorruptRecordError("bad varint", file="/w/wal-1.log", offset=5, seq=3),
                FileReadError("/w/wal-1.log", 7, OSError(errno.EIO, "I/O error")),
                OutputError("/o/x.npz", "npz", OSError(errno.ENOSPC, "full")),
                FileShrankError("/w/wal-1.log", 3, 10)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)
        if isinstance(err, OSError):
            assert (back.errno, back.filename) == (err.errno, err.filename)


def test_relative_paths_are_the_callers(client, wal, monkeypatch):
    # The workers' working directories are their own: paths are made absolute first.
    monkeypatch.chdir(wal.parent)
    got = restore_on_dask(client, wal.name, shards=2, backend="cpu")
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))


def _table_by_id(table):
    """A pyarrow table's columns as Python values, its rows in id order."""
    rows = sorted(zip(table.column("id").to_pylist(), table.column("vector").to_pylist(),
                      table.column("metadata").to_pylist(), strict=True))
    return [(i, np.asarray(v, np.float32).tobytes(), m) for i, v, m in rows]


def test_the_workers_write_a_parquet_dataset(client, wal, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.dataset as ds

    from gpu_pitr.outputs import write_output
    from gpu_pitr.scaleout import DATASET_REPORT

    whole = gpu_pitr.restore(wal, backend="cpu")
    write_output(whole, tmp_path / "one.parquet", "parquet")
    with restore_sharded(client, wal, shards=3, backend="cpu") as run:
        out = run.to_parquet(tmp_path / "many")
    assert run.futures == []  # released
    names = sorted(os.listdir(out))
    assert names == [DATASET_REPORT] + [f"part-0000{k}-of-00003.parquet" for k in range(3)]
    table = ds.dataset(out, format="parquet").to_table()
    assert _table_by_id(table) == _table_by_id(pq.read_table(tmp_path / "one.parquet"))
    def dictionaries(path) -> dict:  # the writer's options, as the file shows them
        group = pq.ParquetFile(path).metadata.row_group(0)
        return {c.path_in_schema: c.has_dictionary_page
                for c in map(group.column, range(group.num_columns))}

    for name in names[1:]:  # ids in UTF-8 byte order within each file
        ids = [i.encode() for i in pq.read_table(out / name).column("id").to_pylist()]
        assert ids == sorted(ids) and ids
        assert dictionaries(out / name) == dictionaries(tmp_path / "one.parquet")
    report = json.loads((out / DATASET_REPORT).read_text())
    for key in w.SHARD_REPORT_KEYS:
        assert report[key] == whole.report.to_dict()[key], key
    assert run.report.timings["total"] >= run.report.timings["write"] > 0
    assert report["timings"] == run.report.timings  # the file has the write's time too
    # The table's schema metadata (any file's) is the whole restore's report, as a
    # .parquet output's is: not a shard's.
    for part in (table, *(pq.read_table(out / name) for name in names[1:])):
        held = json.loads(part.schema.metadata[b"gpu_pitr.report"])
        assert held["id_shard"] is None and held["ids"] == len(whole)
        for key in w.SHARD_REPORT_KEYS:
            assert held[key] == whole.report.to_dict()[key], key
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="released"):
        run.to_parquet(tmp_path / "again")
    with pytest.raises(ValueError, match="the shards were released: nothing to gather"):
        run.gather()


def test_a_shard_without_ids_is_a_file_of_the_same_schema(client, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as ds

    builder = w.LogBuilder()
    builder.add(w.Ins("only", [1.0, -0.0, 3.5], {"k": "v"}, 1))
    wal = builder.write(tmp_path / "wal")
    run = restore_sharded(client, wal, shards=4, backend="cpu")
    try:
        out = run.to_parquet(tmp_path / "ds")
    finally:
        run.release()
    table = ds.dataset(out, format="parquet").to_table()
    assert _table_by_id(table) == [("only", np.float32([1.0, -0.0, 3.5]).tobytes(),
                                    [("k", "v")])]
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 3)


def _entries(path) -> dict:
    """``dir_state`` but the directory's own times (a temp made and removed in it)."""
    return {k: v for k, v in w.dir_state(path).items() if k != "."}


def test_the_dataset_appears_whole_or_not_at_all(client, wal, tmp_path):
    from gpu_pitr.errors import OutputError

    out = tmp_path / "ds"
    run = restore_sharded(client, wal, shards=2, backend="cpu", to_seq=900)
    try:
        run.to_parquet(out)
        first = w.dir_state(out)
        run.to_parquet(out)  # an earlier dataset is replaced
        assert w.dir_state(out).keys() == first.keys()
        # Anything else at OUT is refused before a file is written.
        (out / "notes.txt").write_text("mine")
        (tmp_path / "file").write_text("x")
        before = _entries(tmp_path)
        with pytest.raises(FileExistsError, match="neither empty nor a dataset"):
            run.to_parquet(out)
        with pytest.raises(FileExistsError, match="file: exists and is not a directory"):
            run.to_parquet(tmp_path / "file")
        assert _entries(tmp_path) == before
        (tmp_path / "file").unlink()
        # A worker that fails to write its file (a file-size limit there, as a full disk:
        # EFBIG; Python ignores SIGXFSZ): the error names the file, and the hidden
        # directory goes; OUT is left as it was.
        (out / "notes.txt").unlink()
        before = _entries(tmp_path)
        target = sorted(client.scheduler_info()["workers"])[0]

        def limit(nbytes):  # on the worker: its soft limit, the hard one kept
            import resource

            old = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
            return old[0]

        old = client.run(limit, 4 << 10, workers=[target])[target]
        try:
            with pytest.raises(OutputError, match=r"part-0000\d-of-00002\.parquet: cannot "
                                                  r"write the parquet output: File too large"
                               ) as err:
                run.to_parquet(out)
            # Named as it would have been, not in the hidden directory that is gone.
            assert str(err.value).startswith(str(out)) and (
                ".ds.tmp" not in str(err.value)), str(err.value)
        finally:
            client.run(limit, old, workers=[target])
        assert _entries(tmp_path) == before
    finally:
        run.release()


def test_a_bad_log_writes_no_dataset(client, tmp_path):
    builder = w.LogBuilder()
    builder.add(w.Ins("a", [1.0], None, 1))
    builder.add_payload(b"\x63")
    wal = builder.write(tmp_path / "wal")
    run = restore_sharded(client, wal, shards=2)
    try:
        with pytest.raises(CorruptRecordError):
            run.to_parquet(tmp_path / "ds")
    finally:
        run.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]


def test_the_command_line_writes_on_the_workers(client, wal, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.dataset as ds

    address = client.scheduler.address
    cmd = [sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--backend", "cpu",
           "--to-seq", "1200"]
    one = subprocess.run([*cmd, "-q", "--out", str(tmp_path / "one.parquet")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    many = subprocess.run([*cmd, "--out", str(tmp_path / "many.parquet"), "--dask-scheduler",
                           address, "--shards", "3", "--write-on-workers", "--report-json",
                           str(tmp_path / "report.json")], capture_output=True, text=True)
    assert many.returncode == 0, many.stderr
    assert f"-> {tmp_path / 'many.parquet'} " in many.stdout
    assert _table_by_id(ds.dataset(tmp_path / "many.parquet", format="parquet").to_table()) \
        == _table_by_id(pq.read_table(tmp_path / "one.parquet"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stop"]["seq"] == 1200 and report["ids"] == pq.read_metadata(
        tmp_path / "one.parquet").num_rows
    # Again over the dataset: replaced (a .parquet directory is not refused here).
    again = subprocess.run([*cmd, "-q", "--out", str(tmp_path / "many.parquet"),
                            "--dask-scheduler", address, "--write-on-workers"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for name, extra, why in (
            ("x", ["--dask-scheduler", address, "--format", "npz"], "not --format npz"),
            ("x", [], "--write-on-workers: needs --dask-scheduler"),
            ("x.npz", ["--dask-scheduler", address], "is a .npz name, which does not fit"),
            ("x.faiss", ["--dask-scheduler", address], "is a .faiss name")):
        usage = subprocess.run([*cmd, "--out", str(tmp_path / name), "--write-on-workers",
                                *extra], capture_output=True, text=True)
        assert usage.returncode == 2 and why in usage.stderr, usage.stderr
        assert not (tmp_path / name).exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    taken = subprocess.run([*cmd, "--out", str(tmp_path / "taken"), "--dask-scheduler", address,
                            "--write-on-workers"], capture_output=True, text=True)
    assert taken.returncode == 1 and taken.stderr.count("\n") == 1, taken.stderr
    assert "neither empty nor a dataset" in taken.stderr


def test_the_summary_of_a_dataset_the_workers_wrote(client, wal, tmp_path, capsys):
    """--write-on-workers brings no index back: the summary (which names the
    transactions open at the stop from an index's position when there is one) is
    printed from the report alone, not an AttributeError on the missing index."""
    from gpu_pitr import cli

    out = tmp_path / "ds.parquet"
    assert cli.main(["restore", str(wal), "--backend", "cpu", "--out", str(out),
                     "--dask-scheduler", client.scheduler.address, "--write-on-workers",
                     "--to-seq", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "target: seq 3"
    assert lines[2].startswith("stopped: after ") and ": seq 3" in lines[2]


def test_a_dataset_whose_rename_fails_leaves_the_old_report(client, wal, tmp_path,
                                                            monkeypatch):
    """--write-on-workers --report-json: the old report is set aside just before the
    dataset is renamed into place, and put back when that rename fails. The dataset's
    own report, renamed into its hidden directory first, set the old report aside and
    dropped the means to put it back: the old dataset was kept, its report gone, and
    the error said nothing was left in its place."""
    import errno

    from gpu_pitr import cli, tempfiles

    out, report = tmp_path / "ds.parquet", tmp_path / "report.json"
    base = ["restore", str(wal), "--backend", "cpu", "--out", str(out), "--dask-scheduler",
            client.scheduler.address, "--write-on-workers", "--report-json", str(report),
            "-q"]
    assert cli.main([*base, "--to-seq", "3"]) == 0
    before = report.read_bytes()
    real = os.rename

    def refuse(src, dst):
        if Path(dst) == out:
            raise OSError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(tempfiles.os, "rename", refuse)
    assert cli.main(base) == 1
    monkeypatch.undo()
    assert report.read_bytes() == before  # the old dataset's report, with it
    assert json.loads(before)["stop"]["seq"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.parquet", "report.json"]


def test_a_snapshot_made_on_the_cluster_is_the_one_made_here(client, wal, tmp_path):
    address = client.scheduler.address
    for where, extra in (("here", []), ("cluster", ["--dask-scheduler", address,
                                                    "--shards", "3"])):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "snapshot", str(wal), "--out",
                               str(tmp_path / where), "--to-seq", "1500", "-q", *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    here, there = snapshot.load(tmp_path / "here"), snapshot.load(tmp_path / "cluster")
    assert w.index_view(there.to_index()) == w.index_view(here.to_index())
    assert (there.position, there.pending) == (here.position, here.pending)
    # And a restore from it, on the cluster, is the whole log's.
    got = restore_on_dask(client, wal, shards=2, backend="cpu", base=tmp_path / "cluster")
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(wal, backend="cpu"))


def test_scheduler_files_that_cannot_be_used_are_one_line(wal, tmp_path):
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "dir.json").mkdir()
    for address, why in ((str(tmp_path / "nosuch.json"), "no such Dask scheduler file"),
                         (str(tmp_path / "empty.json"), 'not a Dask scheduler file (no "address"'),
                         (str(tmp_path / "bad.json"), "cannot read the Dask scheduler file"),
                         # there, but a directory: not "no such file"
                         (str(tmp_path / "dir.json"), "a directory, not a Dask scheduler file"),
                         ("sched:87x", "not a Dask scheduler address"),
                         # UCX not installed: Dask's connector class cannot be made
                         ("ucx://127.0.0.1:9", "")):
        proc = subprocess.run([sys.executable, "-m", "gpu_pitr", "restore", str(wal), "--out",
                               str(tmp_path / "x.npz"), "--dask-scheduler", address, "-q"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"gpu-pitr: error: {address}: {why}"), proc.stderr
    assert not (tmp_path / "x.npz").exists()


def test_an_unreadable_scheduler_file_is_named_once(wal, tmp_path, monkeypatch):
    # Its OSError's own text ("[Errno 13] Permission denied: '/path'") named the file a
    # second time, in Python's quotes.
    import errno

    from gpu_pitr import scaleout

    path = tmp_path / "s.json"
    path.write_text("{}")

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(OSError) as got:
        scaleout._connect(str(path), "1s")
    assert str(got.value) == f"{path}: cannot read the Dask scheduler file: Permission denied"


def test_workers_without_pyarrow_are_named_before_a_file_is_written(client, wal, tmp_path):
    from gpu_pitr.errors import MissingExtraError

    # The worker keeps its own function to put back: this process's, sent over, is
    # pickled by name and comes back as the worker's patched one (the worker went on
    # without pyarrow for the rest of the module's tests).
    def hide():
        so = __import__("gpu_pitr.scaleout").scaleout
        so._real_has_pyarrow, so._has_pyarrow = so._has_pyarrow, lambda: False

    def put_back():
        so = __import__("gpu_pitr.scaleout").scaleout
        so._has_pyarrow = so.__dict__.pop("_real_has_pyarrow")

    target = sorted(client.scheduler_info()["workers"])[0]
    client.run(hide, workers=[target])
    try:
        with restore_sharded(client, wal, shards=2, backend="cpu") as run, \
                pytest.raises(MissingExtraError, match=f"worker\\(s\\) {target} have no pyarrow"):
            run.to_parquet(tmp_path / "ds")
    finally:
        client.run(put_back, workers=[target])
    assert list(tmp_path.iterdir()) == []
    assert client.run(lambda: __import__("gpu_pitr.scaleout").scaleout._has_pyarrow(),
                      workers=[target]) == {target: True}


def test_workers_that_cannot_run_cuda_are_named_before_any_shard_runs(client, tmp_path):
    from gpu_pitr.errors import BackendUnavailableError

    builder = w.LogBuilder()
    for i in range(12):
        builder.add(w.Ins(f"id-{i}", [float(i), -0.0], {"k": str(i)} if i % 3 else None, i))
    small = builder.write(tmp_path / "small")
    target = sorted(client.scheduler_info()["workers"])[0]

    def patch(broken: bool):  # on the worker: what cuda_unavailable_reason says there
        mod = __import__("gpu_pitr.executors.device").executors.device
        if broken:
            mod._gpu_pitr_reason = mod.cuda_unavailable_reason
            mod.cuda_unavailable_reason = lambda allow: "CuPy sees no GPU"
        else:
            mod.cuda_unavailable_reason = mod._gpu_pitr_reason

    client.run(patch, True, workers=[target])
    try:
        with pytest.raises(BackendUnavailableError,
                           match=f"backend cuda: the Dask worker\\(s\\) {target} cannot run "
                                 f"the cuda executor \\({target}: CuPy sees no GPU\\)"):
            restore_sharded(client, small, shards=2, backend="cuda")
    finally:
        client.run(patch, False, workers=[target])
    # The simulator on both (as in this suite): the shards run on the cuda executor.
    got = restore_on_dask(client, small, shards=2, backend="cuda")
    assert w.index_view(got) == w.index_view(gpu_pitr.restore(small, backend="cpu"))
    assert got.report.backend == "cuda"


def test_a_taken_out_is_named_as_the_dataset_not_the_report(client, wal, tmp_path):
    from gpu_pitr.scaleout import write_with_scheduler

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    address = client.scheduler.address
    for out, named, why in (
            (tmp_path / "taken", tmp_path / "taken", "is a directory that is neither empty"),
            (tmp_path / "nodir" / "ds", tmp_path / "nodir", "no such directory for the dataset")):
        with pytest.raises(OSError) as err:
            write_with_scheduler(address, wal, out, tmp_path / "r.json", backend="cpu")
        assert str(err.value).startswith(f"{named}: {why}"), str(err.value)  # not r.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_workers_that_die_are_one_line(wal, tmp_path):
    """A worker killed while it runs a shard (out of memory, say): Dask's KilledWorker
    becomes one line (the command line prints OSErrors as one)."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:  # the shard's task ends its process
            c.run(lambda: setattr(__import__("gpu_pitr.scaleout").scaleout, "_restore_shard",
                                  lambda *a: os._exit(1)))
        with pytest.raises(OSError, match=r"Dask workers died running gpu-pitr-restore-.*"
                                          r"\(1 tries, the last on tcp://.*; nothing was "
                                          r"written"):
            restore_with_scheduler(cluster.scheduler_address, wal, backend="cpu")


def test_a_cancelled_task_is_one_line(monkeypatch):
    """A task Dask cancels under us (the scheduler restarted): one line. Dask before
    2024.7 (which the dask extra allows) raises concurrent.futures.CancelledError itself,
    and has no distributed.client.FutureCancelledError, its subclass since."""
    import logging
    from concurrent.futures import CancelledError

    from gpu_pitr import scaleout

    # The scheduler gone: the client, closed after this line, logged its cancelled
    # reconnects as a traceback of 25 lines around it.
    quieted = []

    class Client(contextlib.nullcontext):
        def close(self):
            quieted.append(logging.getLogger("distributed.client").isEnabledFor(
                logging.CRITICAL))

    monkeypatch.setattr(scaleout, "_connect", lambda *args: Client())
    with pytest.raises(OSError, match=r"^Dask cancelled a task of this restore \(key-1\); "
                                      r"nothing was written$"):
        with scaleout._on_cluster("tcp://127.0.0.1:9", "1s"):
            raise CancelledError("key-1")
    assert quieted == [False] and logging.getLogger("distributed.client").isEnabledFor(
        logging.CRITICAL)  # quiet while it closed, and only then


def test_gathers_a_stop_ends_leave_no_traceback(wal, tmp_path):
    """Ctrl-C while the client gathers: closing it ends its waiting tasks with AllExit,
    which asyncio logged as "Task exception was never retrieved" tracebacks around the
    command's one line, whenever they were collected. The command's client drops those,
    and only those."""
    import asyncio
    import gc
    import logging

    from distributed.client import AllExit

    from gpu_pitr import scaleout

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("asyncio")
    log.addHandler(handler)

    async def fails(exc):
        raise exc

    def never_retrieved(exc) -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(fails(exc))
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del task
        gc.collect()

    try:
        with pytest.raises(OSError):  # the command's client: its filter goes on the logger
            with scaleout._on_cluster("tcp://127.0.0.1:9", "1s"):
                pass
        never_retrieved(AllExit())
        assert seen == []
        never_retrieved(ValueError("not Dask's"))  # anything else is still said
        assert len(seen) == 1 and seen[0].startswith("Task exception was never retrieved")
    finally:
        log.removeHandler(handler)
        log.removeFilter(scaleout._drop_all_exit)


def test_workers_running_other_code_are_named_before_any_shard_runs(client, wal):
    """A worker started before an upgrade runs the old code: its shards need not join
    into what this code restores (seen: a warning the new code gives, missing)."""
    from gpu_pitr.scaleout import StaleWorkersError

    address = sorted(client.scheduler_info()["workers"])[0]

    def swap(digest):
        from gpu_pitr import jit

        old = jit.package_digest
        jit.package_digest = lambda: digest
        jit._gpu_pitr_digest = old

    client.run(swap, "0" * 64, workers=[address])
    try:
        with pytest.raises(StaleWorkersError, match=(
                f"^the Dask worker\\(s\\) {address} run other gpu_pitr code than this "
                r"process \(.*source digest 000000000000; here: .*\): restart them")):
            restore_sharded(client, wal, shards=2)
    finally:
        client.run(lambda: setattr(__import__("gpu_pitr.jit").jit, "package_digest",
                                   __import__("gpu_pitr.jit").jit._gpu_pitr_digest),
                   workers=[address])
    assert len(restore_on_dask(client, wal, shards=2)) == len(gpu_pitr.restore(wal))


def test_a_checkout_and_an_installed_package_of_the_same_code_have_one_digest(tmp_path):
    """The digest the workers' code is compared by (and Numba's cache is stamped with)
    names files as they are inside the installed package: kernels/ of a checkout is
    gpu_pitr/kernels/ of a wheel."""
    import shutil

    from gpu_pitr import jit

    root = Path(jit.__file__).resolve().parent
    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    shutil.copytree(root, site / "gpu_pitr", ignore=ignore)
    if not (site / "gpu_pitr" / "kernels").is_dir():
        shutil.copytree(root.parent / "kernels", site / "gpu_pitr" / "kernels", ignore=ignore)
    proc = subprocess.run(
        [sys.executable, "-c", "import gpu_pitr.jit as j; print(j.__file__); "
         "print(j.package_digest())"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, digest = proc.stdout.split()
    assert Path(where).is_relative_to(site) and digest == jit.package_digest()


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_shards_of_different_logs_are_one_line_and_write_nothing(client, wal, tmp_path,
                                                                  listed):
    """A worker with its own copy of WAL_DIR, older than the others' (the docs allow a
    copy): its shards joined with the others' were a state that never existed, and
    --write-on-workers wrote them as a dataset, exit 0 (the join said so as a
    traceback). The shard on that worker fails, naming the segment its copy lacks;
    and where it reads a log of its own all the same (``unlisted``: its restore not
    held to the listing), the shards' reports disagree: one line naming the workers."""
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in sorted(os.listdir(wal))[:-1]:
        (stale / name).write_bytes((wal / name).read_bytes())
    blind = sorted(client.scheduler_info()["workers"])[:1]

    def other_copy(swap, listed):
        from gpu_pitr import scaleout

        if swap:
            scaleout._gpu_pitr_shard = scaleout._restore_shard
            scaleout._restore_shard = lambda d, k, n, kw: scaleout._gpu_pitr_shard(
                str(stale), k, n, kw if listed else {**kw, "log_end": None})
        else:
            scaleout._restore_shard = scaleout._gpu_pitr_shard

    client.run(other_copy, True, listed, workers=blind)
    try:
        if listed:
            said = (rf"^{re.escape(str(stale / sorted(os.listdir(wal))[-1]))}: missing here, "
                    r"\d+ bytes when the log was listed for this restore \(deleted or cut "
                    r"since, or a copy of the log behind the one listed\?\)$")
        else:
            said = (rf"^{re.escape(str(wal))}: the Dask workers read different logs there: "
                    r"shard 1's \w+ is .* \(on tcp://.*\), shard 0's .* \(on tcp://.*\): "
                    "the log must be the same at that path on every worker; nothing was "
                    "written$")
        with pytest.raises((OSError, WalError), match=said) as err:
            restore_on_dask(client, wal, shards=2, backend="cpu")
        if not listed:
            assert f"(on {blind[0]})" in str(err.value)
        with restore_sharded(client, wal, shards=2, backend="cpu") as run:
            with pytest.raises((OSError, WalError), match=said):
                run.to_parquet(tmp_path / "ds")
        assert not (tmp_path / "ds").exists()
    finally:
        client.run(other_copy, False, listed, workers=blind)


def test_a_log_written_to_while_the_shards_read_it_restores_as_listed(client, wal,
                                                                       tmp_path,
                                                                       monkeypatch):
    """Each shard listed the log itself as it started: a writer appending between two
    shards' reads gave shards of two states, which the join refused (before that
    check: joined). The log is listed once for all: every shard reads those segments
    to those lengths, the state as listed, whatever was written meanwhile."""
    import shutil

    from gpu_pitr import scaleout
    from gpu_pitr.format.entries import Insert
    from gpu_pitr.format.writer import WalWriter

    live = tmp_path / "live"
    shutil.copytree(wal, live)
    want = gpu_pitr.restore(live, backend="cpu")
    listed = scaleout._log_end

    def listed_then_written(client, wal_dir):
        end = listed(client, wal_dir)
        with WalWriter(live, created=int(sorted(end)[-1][4:20], 16) + 1) as writer:
            for i in range(50):
                writer.append(Insert(f"late-{i}", [1.0] * 8, None, 2_000_000_000))
        return end

    monkeypatch.setattr(scaleout, "_log_end", listed_then_written)
    got = restore_on_dask(client, live, shards=3, backend="cpu")
    assert w.index_view(got) == w.index_view(want)
    assert len(gpu_pitr.restore(live, backend="cpu")) == len(want) + 50  # written


def test_a_restore_held_to_a_listing_reads_that_log(tmp_path):
    """``log_end``: only the segments listed, to their lengths; a listed segment
    missing or shorter is one line naming it."""
    import shutil

    from gpu_pitr.format.segments import list_segments

    d = tmp_path / "wal"
    write_synthetic_wal(d, total_bytes=1 << 20, dim=8, segments=3, seed=4)
    want = gpu_pitr.restore(d, backend="cpu")
    end = {seg.name: seg.size for seg in list_segments(d)}
    first, *_, last = sorted(end)
    shutil.copy(d / first, d / "wal-7fffffffffffffff.log")  # a later segment
    with open(d / last, "ab") as f:
        f.write(b"\x00" * 100)  # and bytes
    got = gpu_pitr.restore(d, backend="cpu", log_end=end)
    assert w.index_view(got) == w.index_view(want)
    assert got.report.to_dict()["trailing_bytes"] == []
    with pytest.raises(WalError, match=rf"{re.escape(last)}: 1 bytes here, {end[last]} "
                       "bytes when the log was listed for this restore"):
        os.truncate(d / last, 1)
        gpu_pitr.restore(d, backend="cpu", log_end=end)
    with pytest.raises(WalError, match=r"wal-0000000000000001\.log: missing here, 5 bytes"):
        gpu_pitr.restore(d, backend="cpu", log_end={"wal-0000000000000001.log": 5})
    with pytest.raises(ValueError, match="log_end is"):
        gpu_pitr.restore(d, backend="cpu", log_end={first: "5"})



def test_a_server_that_is_not_a_scheduler_is_one_line_not_a_wait(wal):
    """--dask-scheduler at a dashboard's (HTTP) port, or any other: Dask's client waited
    without end for a handshake, or read another protocol's first bytes as a frame's
    length and failed to allocate exabytes ("out of memory ... --chunk-size")."""
    import socket
    import threading
    import time

    talker, silent = socket.socket(), socket.socket()
    for s in (talker, silent):
        s.bind(("127.0.0.1", 0))
        s.listen()

    def talk():
        with contextlib.suppress(OSError):
            conn, _ = talker.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_8.9\r\n" + b"x" * 64)

    threading.Thread(target=talk, daemon=True).start()
    try:
        for server, said in ((talker, "it answers in another protocol"),
                             (silent, "no Dask answer came once connected")):
            address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
            t = time.monotonic()
            with pytest.raises(OSError,
                               match=rf"^{re.escape(address)}: not a Dask scheduler: {said}"):
                restore_with_scheduler(address, wal, timeout="1s")
            assert time.monotonic() - t < 20
    finally:
        talker.close()
        silent.close()


def test_ctrl_c_while_a_dataset_is_written_starts_no_more_parts(client, wal, tmp_path,
                                                                monkeypatch):
    """Ctrl-C during --write-on-workers' writes: the parts being written are waited
    for (the directory goes after them), but the parts not started yet used to start
    then, each writing its whole file into a directory about to go: Ctrl-C took as long
    as the writes. Now they write nothing."""
    import distributed

    hold = distributed.Event("test-hold-the-workers", client=client)
    seen: list = []
    real_wait = distributed.wait

    def wait(parts, timeout=None):
        if not seen:  # the parts queued behind the held threads: Ctrl-C
            seen.append(parts)
            raise KeyboardInterrupt
        hold.set()
        return real_wait(parts, timeout=timeout)

    with restore_sharded(client, wal, shards=3, backend="cpu") as run:
        run.report  # noqa: B018  the shards are restored before the threads are held
        busy = [client.submit(hold.wait, pure=False) for _ in range(4)]  # every thread
        monkeypatch.setattr(distributed, "wait", wait)
        with pytest.raises(KeyboardInterrupt):
            run.to_parquet(tmp_path / "ds")
        assert client.gather(seen[0]) == [-1, -1, -1]  # no part wrote
    assert os.listdir(tmp_path) == []  # nor the dataset, nor its hidden directory
    client.gather(busy)


def test_a_killed_dataset_writes_leftovers_go_with_the_next_write(client, wal, tmp_path):
    """A --write-on-workers restore killed mid-write leaves its hidden directory beside
    OUT (part files, the report, a part's temp file), or the previous dataset set aside
    (killed between its two renames): the next dataset write of OUT removes them. A
    directory only named like a writer's, holding other files, is left alone."""
    from gpu_pitr.scaleout import DATASET_REPORT

    dead = 999_999_999  # no such process
    killed = tmp_path / f".ds.tmp-{dead}-0123abcd"
    aside = tmp_path / f".ds.old-{dead}-4567cdef"
    for d, names in ((killed, ["part-00000-of-00002.parquet", DATASET_REPORT,
                               f".part-00001-of-00002.parquet.tmp-{dead}-89abcdef"]),
                     (aside, ["part-00000-of-00001.parquet", DATASET_REPORT])):
        d.mkdir()
        for name in names:
            (d / name).write_bytes(b"x")
    other = tmp_path / f".ds.tmp-{dead}-fedcba98"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    run = restore_sharded(client, wal, shards=2, backend="cpu", to_seq=900)
    try:
        out = run.to_parquet(tmp_path / "ds")
    finally:
        run.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", other.name])
    assert sorted(os.listdir(out)) == [DATASET_REPORT, "part-00000-of-00002.parquet",
                                       "part-00001-of-00002.parquet"]
    assert os.listdir(other) == ["notes.txt"]


def test_a_handshake_without_a_timeout_takes_dasks_default():
    """``timeout=None`` (Dask's way to say its own default) was added to 5 seconds: a
    TypeError reported as "not a Dask scheduler address this can use: unsupported
    operand type(s)", whatever the address. It is Dask's connect timeout."""
    import socket

    import dask

    from gpu_pitr.scaleout import NotASchedulerError, _handshake

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
                pytest.raises(NotASchedulerError, match="no Dask answer came once connected"):
            _handshake(address, None)


def test_ctrl_c_past_the_wait_for_the_parts_leaves_no_event_set(client, wal, tmp_path,
                                                                 monkeypatch):
    """Ctrl-C during --write-on-workers' writes waits up to 60 s for the parts being
    written. Past that, the stop event was left set on the scheduler for the cluster's
    life (its clear came after the wait), and the parts queued went on waiting to run.
    Now they are cancelled and the event cleared."""
    import distributed

    hold = distributed.Event("test-hold-the-workers-2", client=client)
    names: list[str] = []
    real_event, calls = distributed.Event, []

    def event(name, *args, **kwargs):
        names.append(name)
        return real_event(name, *args, **kwargs)

    def wait(parts, timeout=None):
        calls.append(parts)
        if len(calls) == 1:
            raise KeyboardInterrupt  # while the parts are queued behind held threads
        raise distributed.TimeoutError  # the parts outlast the wait

    with restore_sharded(client, wal, shards=3, backend="cpu") as run:
        run.report  # noqa: B018  the shards are restored before the threads are held
        busy = [client.submit(hold.wait, pure=False) for _ in range(4)]  # every thread
        monkeypatch.setattr(distributed, "Event", event)
        monkeypatch.setattr(distributed, "wait", wait)
        with pytest.raises(KeyboardInterrupt):
            run.to_parquet(tmp_path / "ds")
        monkeypatch.undo()
        assert len(names) == 1 and names[0].startswith("gpu-pitr-stop-")
        assert not real_event(names[0], client=client).is_set()
        assert all(p.cancelled() for p in calls[0])  # none of them will start now
        hold.set()
        client.gather(busy)
    assert os.listdir(tmp_path) == []


def test_strict_fails_on_the_cluster_as_here_and_writes_no_dataset(client, tmp_path):
    """``strict``: each shard reads the whole log, so each finds the log ending before
    the time target; the error comes back whole, and no dataset is written."""
    builder = w.LogBuilder()
    builder.add(w.Ins("a", [1.0], None, 1))
    builder.add(w.Ins("b", [2.0], None, 2))
    wal = builder.write(tmp_path / "wal")
    with pytest.raises(TargetNotReachedError) as local:
        gpu_pitr.restore(wal, to_time=60, strict=True)
    with pytest.raises(TargetNotReachedError) as remote:
        restore_on_dask(client, wal, shards=2, to_time=60, strict=True)
    assert str(remote.value) == str(local.value)
    assert "the log ends before the target" in str(local.value)
    cmd = [sys.executable, "-m", "gpu_pitr", "restore", wal, "--to-time", "60", "--strict",
           "--dask-scheduler", client.scheduler.address, "--write-on-workers",
           "--out", str(tmp_path / "ds")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == f"gpu-pitr: error: {local.value}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal"]
    assert len(restore_on_dask(client, wal, shards=2, to_time=60)) == 2
