"""A small, fixed slice of scripts/damage_scope.py, so CI keeps it: small logs damaged at
every byte (set to 0x00, 0xFF, +1, -1), cut at every length, a file deleted, 12 zero
bytes inserted at a record boundary, each restored to the latest state, a seq and a time
target, with and without ``skip_corrupt``, equal to tests/reference.py exactly, every
error one line naming the file and an offset inside the record blamed, no crash (the
whole enumeration, ``nice -n 10 python scripts/damage_scope.py``: 87 logs, 22,905
damaged logs, 110,310 restores, 9 minutes on a shared 2-vCPU VM)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import reference
import workloads as w

from gpu_pitr import errors

_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(_SCRIPTS))  # (damage_scope imports semantic_scope)
_spec = importlib.util.spec_from_file_location("damage_scope", _SCRIPTS / "damage_scope.py")
damage_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(damage_scope)

SEG = "wal-0000000005f5e100.log"
SEG2 = "wal-0000000005f5e10a.log"  # (the second segment: 10 seconds later)

#: (letters, shape, every K-th damage): a transaction split over two segments; a
#: nested batch after a writer restart into a second file; a log starting at seq 3.
CASES = [
    (("B1", "Ia", "C1"), ("rise", "split", 2), 9),
    (("Ia", "Nest"), ("zigzag", "restart", 1), 9),
    (("Ia2", "Bat"), ("fall", "late", 0), 9),
]

#: Single damages where the rules meet: a length byte that makes the record run past
#: the file (a torn tail before a second segment), a seq byte turning the first record
#: into seq 1 (incomplete history), a variant byte making an Insert an Update or a
#: Delete, the magic broken, the first segment deleted, zeros after the header.
SINGLE = [
    (("Ia", "B1"), ("rise", "split", 1), f"set:{SEG}:24:0xff"),
    (("Ia", "B1"), ("rise", "split", 1), f"set:{SEG}:16:0x01"),
    (("Ia", "B1"), ("rise", "split", 1), f"set:{SEG}:28:0x01"),
    (("Ia", "B1"), ("rise", "split", 1), f"set:{SEG}:28:0x02"),
    (("Ia", "B1"), ("rise", "split", 1), f"set:{SEG2}:0:0x00"),
    (("Ia", "B1"), ("rise", "split", 1), f"del:{SEG}"),
    (("B1", "Ia", "C1"), ("flat", "one", 0), f"zeros:{SEG}:16"),
    (("B1", "Ia", "C1"), ("flat", "one", 0), f"cut:{SEG}:40"),
]


@pytest.mark.parametrize("letters,shape,every", CASES, ids=lambda c: str(c))
def test_damaged_small_logs_equal_the_reference(tmp_path, letters, shape, every):
    c = damage_scope.Counter()
    damage_scope.check_log(tmp_path, letters, 0, shape, c, cuda_every=0, every=every)
    assert c.variants > 10 and c.restores >= 3 * c.variants
    assert not c.found, "\n".join(c.found)


@pytest.mark.parametrize("letters,shape,key", SINGLE, ids=lambda c: str(c))
def test_single_damages_equal_the_reference(tmp_path, letters, shape, key):
    c = damage_scope.Counter()
    damage_scope.check_log(tmp_path, letters, 0, shape, c, cuda_every=0, only=key)
    assert c.variants == 1 and c.restores >= 6
    assert not c.found, "\n".join(c.found)


def test_one_damage_on_the_cuda_executor(tmp_path):
    c = damage_scope.Counter()
    damage_scope.check_log(tmp_path, ("Ia", "B1", "Ib"), 0, ("rise", "one", 0), c,
                           only=f"set:{SEG}:44:0xff")
    assert c.cuda == 1
    assert not c.found, "\n".join(c.found)


def test_every_damage_is_enumerated_once_and_replays_from_its_key():
    files = {SEG: bytes(range(16, 40)), SEG2: b"WALV"}
    bounds = {SEG: [16, 24], SEG2: [4]}
    seen = {}
    for key, new in damage_scope.damages(files, bounds):
        assert damage_scope.damaged(files, key) == new, key
        seen[key] = new
    kinds = {}
    for key in seen:
        kinds.setdefault(key.split(":")[0], []).append(key)
    # bytes 16..39: 0x00, 0xFF, +1, -1 each, all different and none the original
    assert len([k for k in kinds["set"] if SEG in k]) == 4 * 24
    assert len(kinds["cut"]) == 24 + 4  # every length short of the whole
    assert sorted(kinds["del"]) == [f"del:{SEG}", f"del:{SEG2}"]
    assert sorted(kinds["zeros"]) == [f"zeros:{SEG}:16", f"zeros:{SEG}:24", f"zeros:{SEG2}:4"]
    digests = {damage_scope._digest(v) for v in seen.values()}
    assert len(digests) == len(seen) and damage_scope._digest(files) not in digests


def test_a_wrong_answer_or_a_crash_is_a_disagreement(tmp_path, monkeypatch):
    """The check is not vacuous: a reference that lost an id, a restore that raises
    something not a WalError, and a message of two lines are each caught."""
    from test_semantic_scope import losing_an_id

    log = (("Ia", "Ib"), 0, ("rise", "one", 0))
    with monkeypatch.context() as m:
        m.setattr(reference, "restore", losing_an_id(reference.restore))
        c = damage_scope.Counter()
        damage_scope.check_log(tmp_path, *log, c, cuda_every=0, only=f"set:{SEG}:57:0x41")
        assert c.found and "assert_matches" in c.found[0] and "--damage set:" in c.found[0]

    def crashes(*args, **kw):
        raise IndexError("out of range")

    with monkeypatch.context() as m:
        m.setattr(w, "restore_fast", crashes)
        c = damage_scope.Counter()
        damage_scope.check_log(tmp_path, *log, c, cuda_every=0, only=f"cut:{SEG}:30")
        assert c.found and all("crash: IndexError: out of range" in x for x in c.found)

    want = reference.RefError("CorruptRecordError", SEG, 16, 30, 0)
    two_lines = errors.CorruptRecordError("x", file=SEG, offset=20)
    two_lines.args = ("a\nb",)
    assert "one line" in damage_scope.message_disagrees(two_lines, want)
    outside = errors.CorruptRecordError("bad", file=SEG, offset=30, seq=0)
    assert "no offset in [16, 30)" in damage_scope.message_disagrees(outside, want)
    inside = errors.CorruptRecordError("bad", file=SEG, offset=29, seq=0)
    assert damage_scope.message_disagrees(inside, want) is None
    # A position target no whole record starts at: the reference names that byte only.
    at = reference.RefError("TargetNotFoundError", SEG, 31)
    here = errors.TargetNotFoundError("position target", file=SEG, offset=31)
    assert damage_scope.message_disagrees(here, at) is None
    there = errors.TargetNotFoundError("position target", file=SEG, offset=16)
    assert "no offset in [31, 32)" in damage_scope.message_disagrees(there, at)


def test_damaged_small_logs_warn_as_the_model_says(tmp_path, monkeypatch):
    """``--warnings``: a slice of one log's damages, their warnings and strict's refusals
    against tests/reference_warnings.py's model; and the check is not vacuous: a restore
    that drops its warnings disagrees."""
    from gpu_pitr import pipeline

    log = (("Ia", "B1", "Ia"), 0, ("rise", "split", 1))
    c = damage_scope.Counter()
    damage_scope.check_warnings_log(tmp_path, *log, c, every=40)
    assert c.variants > 5 and c.restores == 6 * c.variants
    assert not c.found, "\n".join(c.found)
    real = pipeline._restore_warnings

    def silent(*args, **kw):
        real(*args, **kw)
        return []

    monkeypatch.setattr(pipeline, "_restore_warnings", silent)
    c = damage_scope.Counter()
    damage_scope.check_warnings_log(tmp_path, *log, c, every=40)
    assert c.found and "--damage" in c.found[0]
