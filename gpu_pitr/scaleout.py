"""Restores on a Dask cluster: one shard of the ids per worker (the ``dask`` extra).

``restore_sharded(client, wal_dir, shards=N, ...)`` runs ``gpu_pitr.restore(wal_dir,
id_shard=(k, N), ...)`` as N tasks, shard k on worker k (round robin over the
workers; another one if that worker goes away). Each shard reads the whole log and
keeps about 1/N of the index (``resolve.idshard``), so an index larger than one
GPU, or one host, restores across several: with ``dask-cuda``'s one worker per GPU
and ``backend="cuda"``, each shard's vectors stay on its worker's device.
``ShardedRestore.gather()`` joins the shards into the index a restore without shards
gives (host memory); ``restore_on_dask`` does both.

WAL_DIR, and a base snapshot given by path, must be readable at the same path on
every worker (a shared file system or a copy); nothing is written on the workers.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

from gpu_pitr.errors import MissingExtraError
from gpu_pitr.resolve.idshard import MAX_SHARDS, merge_reports, merge_shards

# One restore at a time in a worker process: a restore uses every core (and the GPU)
# already, and Numba's fallback threading layer (workqueue, where neither OpenMP nor
# TBB is installed) ends the process when two threads run parallel code at once. A
# worker with several threads, given several shards, runs them one after another.
_ONE_AT_A_TIME = threading.Lock()


def _restore_shard(wal_dir: str, index: int, count: int, kwargs: dict):
    """One shard's restore, on a worker."""
    from gpu_pitr import restore

    with _ONE_AT_A_TIME:
        return restore(wal_dir, id_shard=(index, count), **kwargs)


def _report_of(index):
    return index.report


# RestoredIndex's arrays, as Dask sends them.
_ARRAYS = ("_id_arena", "_id_offs", "_id_lens", "vectors", "_meta_arena", "_meta_offs",
           "_meta_lens")


def _register_with_dask() -> None:
    """Send a ``RestoredIndex`` between Dask processes as its arrays' bytes (vectors on
    a GPU are copied to the host first). Pickled, as Dask sends objects it has no
    serializer for, a 300 MB shard took 1.1-1.2 s from a worker of a local cluster to
    the client, 0.43 s this way (its vectors alone as an array: 0.31 s)."""
    try:
        from distributed.protocol import dask_deserialize, dask_serialize
    except ImportError:
        return
    import numpy as np

    from gpu_pitr.index import RestoredIndex
    from gpu_pitr.report import RestoreReport

    @dask_serialize.register(RestoredIndex)
    def _serialize(index):
        index = index.to_host()
        arrays = [np.ascontiguousarray(getattr(index, name)) for name in _ARRAYS]
        # The report and position as JSON text: Dask's msgpack would hand lists back
        # as tuples.
        header = {"arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
                  "report": json.dumps(index.report.to_dict()),
                  "position": json.dumps(index.position)}
        frames = [memoryview(a.reshape(-1).view(np.uint8)) for a in arrays]
        return header, [*frames, memoryview(bytes(index.pending))]

    @dask_deserialize.register(RestoredIndex)
    def _deserialize(header, frames):
        arrays = [np.frombuffer(f, np.uint8).view(np.dtype(dtype)).reshape(shape)
                  for (dtype, shape), f in zip(header["arrays"], frames, strict=False)]
        index = RestoredIndex(*arrays, RestoreReport.from_dict(json.loads(header["report"])))
        index.position, index.pending = json.loads(header["position"]), bytes(frames[-1])
        return index


_register_with_dask()


def _workers(client) -> list[str]:
    try:
        info = client.scheduler_info(n_workers=-1)  # newer clients list 5 by default
    except TypeError:
        info = client.scheduler_info()
    return sorted(info.get("workers", {}))


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _check_paths(client, paths: list[str]) -> None:
    """A path some worker cannot see as a directory is one error naming it and those
    workers, before any shard starts (on a worker, the restore would say only that
    the directory is not there, which it is, here)."""
    from gpu_pitr.errors import WalError

    for path in paths:
        seen = client.run(_is_dir, path)
        missing = sorted(w for w, ok in seen.items() if not ok)
        if missing:
            where = ("any Dask worker" if len(missing) == len(seen) else
                     f"the Dask worker(s) {', '.join(missing)}")
            raise WalError(f"not a directory on {where}: the log (and a base) must be at "
                           "the same path on every worker", file=path)


@dataclass
class ShardedRestore:
    """The shards of one restore, as Dask futures (each a ``RestoredIndex``)."""

    client: object
    futures: list
    _report: object = field(default=None, repr=False)
    started: float = field(default_factory=time.perf_counter, repr=False)

    def __len__(self) -> int:
        return self.report.ids

    @property
    def report(self):
        """The report of the whole restore (the shards' reports joined: counts summed,
        each stage's time that of the slowest shard). Waits for every shard; raises
        the first shard's error, as the restore without shards would raise it."""
        if self._report is None:
            reports = self.client.gather([self.client.submit(_report_of, f, pure=False)
                                          for f in self.futures])
            self._report = merge_reports(reports)
        return self._report

    def gather(self):
        """The whole index in this process (host memory): equal to the restore without
        shards. Raises a shard's error (a ``WalError`` naming file and byte offset).
        Its report's ``timings`` add ``gather`` (fetching and joining the shards here,
        once all are done) and make ``total`` the time since ``restore_sharded``
        was called."""
        from distributed import wait

        wait(self.futures)
        t = time.perf_counter()
        index = merge_shards(self.client.gather(self.futures))
        now = time.perf_counter()
        index.report.timings["gather"] = round(now - t, 6)
        index.report.timings["total"] = round(now - self.started, 6)
        return index

    def release(self) -> None:
        """Let the workers drop the shards."""
        self.client.cancel(self.futures)
        self.futures = []


def restore_sharded(client, wal_dir, *, shards: int | None = None, **kwargs) -> ShardedRestore:
    """Restore ``wal_dir`` as ``shards`` shards of the ids on ``client``'s workers.

    Args:
        client: a ``distributed.Client``.
        wal_dir: the WAL directory, at a path every worker can read (made absolute
            here, as ``base`` and ``snapshots`` are).
        shards: how many shards (default: one per worker at the time of the call).
        **kwargs: those of ``gpu_pitr.restore`` (``to_time``, ``to_seq``,
            ``exclusive``, ``backend``, ``skip_corrupt``, ``base`` or ``snapshots`` as
            paths, ...), but ``progress`` and ``id_shard``.

    Returns:
        ShardedRestore; the tasks run while the caller goes on.
    """
    import inspect

    from gpu_pitr import restore

    for name in ("progress", "id_shard"):
        if name in kwargs:
            raise ValueError(f"restore_sharded takes no {name}")
    inspect.signature(restore).bind(wal_dir, **kwargs)  # a misspelt one fails here, at once
    # Absolute: a worker's working directory is its own.
    for name in ("base", "snapshots"):
        value = kwargs.get(name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{name} must be a path the workers can read, not {value!r}")
        if value is not None:
            kwargs[name] = os.path.abspath(value)
    started = time.perf_counter()
    wal_dir = os.path.abspath(wal_dir)
    workers = _workers(client)
    _check_paths(client, [wal_dir] + [kwargs[n] for n in ("base", "snapshots")
                                      if kwargs.get(n) is not None])
    count = len(workers) if shards is None else int(shards)
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_SHARDS}"
                         + (" (the cluster has no workers)" if not workers else "")
                         + f", not {count}")
    run = uuid.uuid4().hex[:8]
    futures = []
    for k in range(count):
        where = {"workers": [workers[k % len(workers)]], "allow_other_workers": True} \
            if workers else {}
        futures.append(client.submit(_restore_shard, wal_dir, k, count, kwargs, pure=False,
                                     key=f"gpu-pitr-restore-{run}-shard-{k}-of-{count}",
                                     **where))
    return ShardedRestore(client, futures, started=started)


def restore_on_dask(client, wal_dir, *, shards: int | None = None, **kwargs):
    """``restore_sharded(...).gather()``: the whole index, restored on the cluster."""
    run = restore_sharded(client, wal_dir, shards=shards, **kwargs)
    try:
        return run.gather()
    finally:
        run.release()


def restore_with_scheduler(address: str, wal_dir, *, shards: int | None = None,
                           timeout: str = "30s", **kwargs):
    """``restore_on_dask`` on the cluster whose scheduler is at ``address`` (or whose
    scheduler file is there): what ``gpu-pitr restore --dask-scheduler`` runs."""
    try:
        from distributed import Client
    except ImportError:
        raise MissingExtraError("--dask-scheduler needs Dask: pip install 'gpu-pitr[dask]'"
                                ) from None
    where = {"scheduler_file": address} if os.path.isfile(address) else {"address": address}
    try:
        client = Client(**where, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise OSError(f"cannot reach the Dask scheduler at {address}: {err}") from None
    with client:
        return restore_on_dask(client, wal_dir, shards=shards, **kwargs)
