"""A small, fixed part of scripts/small_scope.py's enumeration, so CI keeps it: a restore
from snapshots (``snapshots=``, ``base=``, snapshots of restores from snapshots) gives
the whole log's answer, and the dry run predicts the restore, for logs with one damage
(or two) where random tests seldom put it: right where a snapshot's own restore stopped.
The whole enumeration: ``nice -n 10 python scripts/small_scope.py`` (minutes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "small_scope.py"
_spec = importlib.util.spec_from_file_location("small_scope", _SCRIPT)
small_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(small_scope)


def _near_the_start(t: dict) -> bool:
    """Targets at the log's first records (and the end): where the zero-filled records,
    the restarts and the first segment's gap are judged."""
    if "to_position" in t:
        return t["to_position"][1] <= 40
    if "to_seq" in t:
        return t["to_seq"] in (0, 1, 5)
    return not t


#: (log, damage, where, (skip_corrupt, allow_incomplete_history) pairs)
CASES = [
    # (CI, 45th session) Zero-filled records before a log that starts at seq 5: a
    # snapshot at the zero record (seq 0, or its position) was refused past its stop.
    ("late", "zeros12", (0, 0), ((True, False), (True, True))),
    # (review zeroaudit) Two zero-filled records there: a snapshot at the second holds
    # no record of the log either, and a restore from it hid the log's missing start.
    ("late", "zeros24", (0, 0), ((True, False),)),
    ("one", "restart", (0, 1), ((False, False), (True, True))),
    ("two", "zeros12+gone", (1, 0), ((True, False), (True, True))),
    ("two", "expired", (0, False), ((False, False),)),
    ("three", "reopen", (1, 0), ((False, True),)),
]


@pytest.mark.parametrize("name,kind,where,flags", CASES, ids=lambda c: str(c))
def test_snapshots_give_the_whole_logs_answer_and_the_plan_predicts_it(
        tmp_path, name, kind, where, flags):
    lines, runs = small_scope.check_case(tmp_path / "case", name, kind, where,
                                         flag_sets=flags, keep=_near_the_start)
    assert runs
    assert not lines, "\n".join(lines)


def test_the_enumeration_covers_each_damage_at_each_place():
    cases = list(small_scope.cases())
    kinds = {kind for _, kind, _ in cases}
    assert set(small_scope.PLACED) | {"none", "torn", "magic", "gone", "expired"} <= kinds
    # Each placed damage at every slot of every segment: a segment's start (right after
    # its header), between records, its end.
    slots = sum(len(seg) + 1 for segs in small_scope.LOGS.values() for seg in segs)
    assert sum(kind == "zeros12" for _, kind, _ in cases) == slots
