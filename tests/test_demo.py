"""The quick start's main job, ``scripts/demo.py`` (what ``./scripts/demo`` runs in its
venv), works end to end and restores the same index three ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def test_the_demo_runs_and_every_restore_agrees():
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # inspect, the records from 10:02 on (the bad ingest), the restore, the rows read back
    assert "Delete" in out and "junk-0" in out
    assert "stopped: before Delete" in out
    rows = [line.split()[0] for line in out.split("read back with numpy.load")[1].splitlines()[1:7]]
    assert rows == ["doc-1", "doc-2", "doc-4", "doc-5", "doc-6", "doc-7"]
    assert "from the snapshot: the same index" in out
    assert "2 new, 0 grown, 0 unchanged; 0 problems" in out
    assert "from the archive: the same index" in out
