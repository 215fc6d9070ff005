"""scripts/cache_scope.py, run small so CI keeps it: on the probe of tests/test_jit_cache.py
(``--work frame``: a compile of seconds, not the restore's minute), processes SIGKILLed at
random moments and at random cache writes, on a cold cache and after an edit (and its
undoing), two at once, an old and a new copy at once (two paths, and one symlink switched
between them), and a damaged cache file of each kind: every process that ran to the end
printed the answer of the source it imported, with status 0 and nothing on stderr."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cache_scope.py"
_spec = importlib.util.spec_from_file_location("cache_scope", _SCRIPT)
cache_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cache_scope)


def test_every_process_runs_the_code_of_the_source_it_imported(capsys):
    status = cache_scope.main(["--work", "frame", "--rounds", "1", "--kills", "2",
                               "--procs", "2", "--damage", "empty,garbage,flipped",
                               "--seed", "3"])
    out = capsys.readouterr().out
    assert status == 0, out
    table = out[out.index("scenario  "):].splitlines()
    counts = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in table[1:-1]}
    assert set(counts) == {"setup", "kill", "edit", "concurrent", "damage"}, out
    assert all(wrong == 0 for _right, _killed, wrong in counts.values()), out
    # (A process may end before its kill: its moment came late, or it had fewer writes.)
    assert sum(counts["kill"]) == 3 and counts["damage"][0] >= 12, out
