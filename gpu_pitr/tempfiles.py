"""Clean-up of the temp files that a killed writer of an output left behind.

An output ``DEST`` is written to ``.DEST.tmp-<pid>-<8 hex>`` beside it, then renamed
onto it (``gpu_pitr.outputs.atomic_files``). A writer killed before the rename
(SIGKILL, power loss) leaves its temp file behind; the next successful write of the
same ``DEST`` removes those whose writer process is gone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temp files of ``dest`` whose writer process no longer runs.

    Only regular files named as ``atomic_files`` names them, for this ``dest``, are
    touched; a temp of a live process (this one included) is left alone. The pid
    is checked on this host only: a temp written over a shared file system by
    another host's live process would be taken for stale, so keep such outputs
    out of shared directories. Best effort: a file that cannot be removed stays.

    Returns:
        The paths removed.
    """
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    removed = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (or cannot be told apart from one)."""
    if pid <= 0:
        return True  # 0 and negatives name process groups, never a writer
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process; or no pid at all: not a name we wrote
    return True
