"""A small, fixed slice of scripts/semantic_scope.py's enumeration, so CI keeps it: every
small log, restored to every target, equals tests/reference.py exactly (the whole
enumeration, ``nice -n 10 python scripts/semantic_scope.py``: 6,139 logs, 109,216
restores, 9-16 minutes on a shared 2-vCPU VM). The other paths that must agree with it
(``--paths``): id shards merged, inspect's document, verify's verdict, the CLI's .npz
and the seed API, on the same logs (all 6,139: shards 336,052 restores in 35 minutes,
inspect 6,139 and verify 6,139 checks in half a minute each, compat 30,789; the cli 123
runs on every 200th log in 3.5 minutes comparing the report's keys but its segments and
bytes, then 64 on 16 logs comparing all; 0 disagreements)."""

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


def test_a_refusal_named_by_a_position_alone_is_compared_at_that_byte(tmp_path):
    """A position target inside a torn tail: the reference names the position, no record
    end (``end`` None); the comparison raised TypeError (review dmgscope)."""
    b, recs = semantic_scope.build(("B1", "Bat", "C1"), ("fall", "one", 0))
    b.truncate("wal-0000000005f5e100.log", 41)
    wal = b.write(tmp_path / "wal")
    kw = {"to_position": "wal-0000000005f5e100.log:31"}
    assert semantic_scope.compare(wal, kw, recs) is None
    want = reference.restore(wal, **kw).error
    assert want is not None and want.end is None and want.offset == 31


def losing_an_id(real):
    """``reference.restore`` made wrong: its answer without the last id."""
    def lost_an_id(*args, **kw):
        res = real(*args, **kw)
        if res.ids:
            res.ids, res.vectors, res.metadata = res.ids[:-1], res.vectors[:-1], res.metadata[:-1]
        return res

    return lost_an_id


def test_a_wrong_answer_is_a_disagreement(tmp_path, monkeypatch):
    """The check is not vacuous: a reference that lost the last id, or stopped a record
    later, disagrees with the restore."""
    real = reference.restore
    monkeypatch.setattr(reference, "restore", losing_an_id(real))
    lines, _ = semantic_scope.check_log(tmp_path, ("Ia", "B1", "Ib", "C1"), 0)
    assert lines and all("[Ia B1 Ib C1]" in line for line in lines)


#: The paths besides the restore, each its own check (the cli: a subprocess a target).
OTHER_PATHS = ("shards", "inspect", "verify", "compat")


@pytest.mark.parametrize("letters,index", CASES, ids=lambda c: str(c))
def test_small_logs_agree_on_every_other_path(tmp_path, letters, index):
    """Shards merged equal the whole restore, inspect equals its reference, verify
    agrees with the reference restore, and the seed API does what SPEC section 5 says."""
    got = semantic_scope.check_paths(tmp_path, letters, index, OTHER_PATHS)
    for path in OTHER_PATHS:
        lines, runs = got[path]
        assert runs, path
        assert not lines, "\n".join(lines)


def test_a_stride_of_the_enumeration_agrees_on_every_other_path(tmp_path):
    """Every 700th log of the default enumeration (the restore's stride is offset from
    this one) on the shards, inspect, verify and compat paths."""
    todo = semantic_scope.logs(5)
    found = []
    for index in range(350, len(todo), 700):
        for lines, _ in semantic_scope.check_paths(tmp_path, todo[index], index,
                                                    OTHER_PATHS).values():
            found += lines
    assert not found, "\n".join(found)


def test_the_cli_writes_what_the_library_restores(tmp_path):
    """``python -m gpu_pitr restore --out x.npz`` equals the library on a few targets of
    one log: a seq inside a transaction restores; latest and transaction 1 fail (the
    commit applies a vector of another length), with one line naming the same record."""
    lines, runs = semantic_scope.check_paths(tmp_path, ("Ia", "B1", "Ia2", "C1"), 0,
                                             ("cli",), cli_every=1)["cli"]
    assert runs == 4
    assert not lines, "\n".join(lines)


def test_a_wrong_verdict_is_a_disagreement(tmp_path):
    """The verify and compat checks are not vacuous: a log written in one segment, said
    to have a writer restart, disagrees; a compat base that is not the log's too."""
    letters = ("Ia", "K", "Ia")
    b, recs = semantic_scope.build(letters, ("rise", "one", 0))
    wal = tmp_path / "wal"
    b.write(wal)
    found, _ = semantic_scope.check_verify(tmp_path, wal, recs, 0, ("rise", "restart", 1), False)
    assert found and "seq_restart" in found[0][3]
    moved = [(f, off, seq, ("checkpoint", 5, e[2]) if e[0] == "checkpoint" else e)
             for f, off, seq, e in recs]
    found, _ = semantic_scope.check_compat(tmp_path, wal, moved, 0, ("rise", "one", 0), False)
    assert found and "compat base" in found[0][3]
