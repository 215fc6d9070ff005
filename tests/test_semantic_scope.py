"""A small, fixed slice of scripts/semantic_scope.py's enumeration, so CI keeps it: every
small log, restored to every target, equals tests/reference.py exactly (the whole
enumeration, ``nice -n 10 python scripts/semantic_scope.py``: 6,139 logs, 109,216
restores, 9-16 minutes on a shared 2-vCPU VM)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import reference

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "semantic_scope.py"
_spec = importlib.util.spec_from_file_location("semantic_scope", _SCRIPT)
semantic_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(semantic_scope)

#: Logs where the rules meet (letters, the index that picks their shape): a record
#: of another dimension in a transaction begun inside another; a seq target inside
#: nested transactions whose writer restarted; a nested batch committed, then aborted.
CASES = [
    (("Ia", "B1", "B2", "Ia2", "C1"), 0),
    (("B1", "Ia", "B2", "Ia2", "C1"), 9),  # (restart before the third record)
    (("B1", "Nest", "C1"), 2),
    (("B1", "Nest", "A1"), 6),
    (("Ia{}", "Ua", "Da"), 4),
    (("Ib", "Bat", "K"), 21),
]


@pytest.mark.parametrize("letters,index", CASES, ids=lambda c: str(c))
def test_small_logs_equal_the_reference(tmp_path, letters, index):
    lines, runs = semantic_scope.check_log(tmp_path, letters, index)
    assert runs
    assert not lines, "\n".join(lines)


def test_a_stride_of_the_enumeration_equals_the_reference(tmp_path):
    """Every 250th log of the default enumeration, one of them on the cuda executor."""
    todo = semantic_scope.logs(5)
    found = []
    for k, index in enumerate(range(0, len(todo), 250)):
        found += semantic_scope.check_log(tmp_path, todo[index], index, cuda=k == 1)[0]
    assert not found, "\n".join(found)


def test_the_enumeration_is_every_log_of_its_tiers():
    todo = semantic_scope.logs(5)
    assert len(todo) == len(set(todo))
    for length, letters in ((1, semantic_scope.LETTERS), (2, semantic_scope.LETTERS),
                            (3, semantic_scope.MID), (4, semantic_scope.CORE),
                            (5, semantic_scope.CORE5)):
        spelled = {x for x in todo if len(x) == length}
        # (pruned: the same log with transactions 1 and 2 swapped is enumerated)
        assert spelled == {x for x in itertools.product(letters, repeat=length)
                           if not semantic_scope._pruned(x, letters)}
        for x in spelled:
            assert set(x) <= set(letters)
    # Every shape is taken by some log of each length of two or more records.
    for length in (2, 5):
        shapes = {s[:2] for i, x in enumerate(todo) if len(x) == length
                  for s in semantic_scope.shapes(length, i, False)}
        assert shapes == {(p, lay) for p in semantic_scope.STAMPS
                          for lay in semantic_scope.LAYOUTS}


def test_a_wrong_answer_is_a_disagreement(tmp_path, monkeypatch):
    """The check is not vacuous: a reference that lost the last id, or stopped a record
    later, disagrees with the restore."""
    real = reference.restore

    def lost_an_id(*args, **kw):
        res = real(*args, **kw)
        if res.ids:
            res.ids, res.vectors, res.metadata = res.ids[:-1], res.vectors[:-1], res.metadata[:-1]
        return res

    monkeypatch.setattr(reference, "restore", lost_an_id)
    lines, _ = semantic_scope.check_log(tmp_path, ("Ia", "B1", "Ib", "C1"), 0)
    assert lines and all("[Ia B1 Ib C1]" in line for line in lines)
