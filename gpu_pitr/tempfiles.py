"""Clean-up of the temp files that a killed writer of an output left behind.

An output ``DEST`` is written to ``.DEST.tmp-<pid>-<8 hex>`` beside it, then renamed
onto it (``gpu_pitr.outputs.atomic_files``). A writer killed before the rename
(SIGKILL, power loss) leaves its temp file behind; the next successful write of the
same ``DEST`` removes those whose writer process is gone.
"""

from __future__ import annotations

import os
import re
import secrets
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
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return []
    return remove_stale_entries(entries, re.escape(dest.name))


def temp_path(dest: Path) -> Path:
    """A new temp name beside ``dest``: ``.<name>.tmp-<pid>-<8 hex>`` (what
    ``temp_pattern`` matches)."""
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def temp_pattern(name_pattern: str) -> re.Pattern:
    """The names ``atomic_files`` gives the temp files of the destinations whose names
    match ``name_pattern`` (a regular expression): group 1 is the destination's name,
    group 2 the writer's pid."""
    return re.compile(rf"\.({name_pattern})\.tmp-(\d+)-[0-9a-f]{{8}}")


def dead_writers(entries, pattern: re.Pattern):
    """``(entry, match)`` for each of ``entries`` whose name ``pattern`` matches whole and
    whose writer, the pid in the match's group 2, no longer runs on this host."""
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is not None and not pid_alive(int(match.group(2))):
            yield entry, match


def remove_stale_entries(entries, name_pattern: str) -> list[Path]:
    """``remove_stale_temps`` for every destination named by ``name_pattern``, among
    ``entries`` (``os.DirEntry`` of one directory)."""
    removed = []
    for entry, _ in dead_writers(entries, temp_pattern(name_pattern)):
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
