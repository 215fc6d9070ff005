"""What README's Python API section and docs/api.md name is reachable after a plain
``import gpu_pitr``, and that import stays light: no Numba, no compiled code, no GPU package."""

from __future__ import annotations

import subprocess
import sys

NAMED = [
    "gpu_pitr.restore", "gpu_pitr.plan_restore", "gpu_pitr.RestoredIndex",
    "gpu_pitr.snapshot.save", "gpu_pitr.snapshot.window",
    "gpu_pitr.snapshot.load", "gpu_pitr.snapshot.verify", "gpu_pitr.archive.archive",
    "gpu_pitr.archive.ArchiveError", "gpu_pitr.expire.expire", "gpu_pitr.expire.ExpireError",
    "gpu_pitr.errors.WalError", "gpu_pitr.diff.diff", "gpu_pitr.errors.TargetNotReachedError",
    "gpu_pitr.errors.OutputError", "gpu_pitr.errors.MissingExtraError",
    "gpu_pitr.format.stats.wal_stats", "gpu_pitr.format.dump.wal_records",
    "gpu_pitr.format.dump.wal_transactions",
    "gpu_pitr.format.writer.WalWriter", "gpu_pitr.compat.PointInTimeRestore",
    "gpu_pitr.snapshot.format.SnapshotError", "gpu_pitr.verify.verify_wal",
    "gpu_pitr.outputs.write_output", "gpu_pitr.outputs.FORMATS",
    # docs/api.md's too
    "gpu_pitr.scaleout.restore_sharded", "gpu_pitr.scaleout.restore_on_dask",
    "gpu_pitr.resolve.idshard.merge_shards", "gpu_pitr.diff.DiffResult",
    "gpu_pitr.verify.Verification", "gpu_pitr.report.RestoreReport",
]


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_light():
    out = _run("import sys, gpu_pitr; print(sorted(m for m in ('numba', 'cupy', 'pyarrow', "
               "'gpu_pitr.pipeline') if m in sys.modules))")
    assert out.strip() == "[]"


def test_every_name_the_readme_gives_is_reachable_after_import_gpu_pitr():
    code = "import gpu_pitr\n" + "".join(f"assert callable({n}) or {n}\n" for n in NAMED)
    _run(code)
