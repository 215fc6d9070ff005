"""scripts/interrupt_scope.py, run small so CI keeps it: restores stopped at random
moments, each ending as promised (0 and nothing said, or 128 + N and the one line; the
previous output kept or the complete new one; no temp file left). The runs that found
what gpu_pitr/interrupts.py handles now were some 1,000 (the script's docstring)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "interrupt_scope.py"
_spec = importlib.util.spec_from_file_location("interrupt_scope", _SCRIPT)
interrupt_scope = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interrupt_scope)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_restores_stopped_at_random_moments_end_as_promised(capsys, sig):
    assert interrupt_scope.main(["--runs", "3", "--mib", "8", "--signal", sig,
                                 "--seed", "7"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("outcome"):].splitlines()
    counts = {line.rsplit(None, 1)[0]: int(line.rsplit(None, 1)[1]) for line in table[1:]}
    assert counts.pop("not as promised") == 0
    assert sum(counts.values()) == 3 and set(counts) <= {"finished", "stopped"}, out
