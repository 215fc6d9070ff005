"""The per-record loops compile without Numba's reference counting (gpu_pitr.jit).

With reference counting, each call into a helper that takes arrays (the payload
parser is a chain of them) counts references up and down with atomic instructions:
the decode step took twice as long. The check reads the compiled LLVM IR of each
loop after a restore has used it; the same Python function compiled with Numba's
defaults is the control, and must show the calls the check looks for.
"""

from __future__ import annotations

import pytest
from numba import njit

import gpu_pitr
from gpu_pitr import snapshot, synth
from gpu_pitr.executors import cpu
from gpu_pitr.format import frame, statwalk
from gpu_pitr.jit import NO_REFCOUNTS
from gpu_pitr.plan import commit
from gpu_pitr.resolve import hostmap

LOOPS = {
    "frame": frame._frame,
    "decode": cpu._decode_records,
    "decode_block": cpu._decode_block,
    "plan": commit._walk,
    "apply": hostmap._apply,
    "seed": hostmap._seed,
    "inspect": statwalk._parse,
}
REFCOUNTING = ("@NRT_incref", "@NRT_decref")


def _calls_refcounting(llvm_ir: str) -> bool:
    return any(f"call void {name}" in llvm_ir for name in REFCOUNTING)


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    """The argument types each loop had in a real restore."""
    wal = tmp_path_factory.mktemp("wal")
    synth.write_synthetic_wal(wal, total_bytes=1 << 20, dim=8, segments=2, seed=3)
    full = gpu_pitr.restore(wal, backend="cpu")
    assert len(full) > 0
    # From a base snapshot: the rows the log names move in through hostmap._seed.
    snap = tmp_path_factory.mktemp("snap") / "half"
    snapshot.save(gpu_pitr.restore(wal, backend="cpu", to_seq=full.report.records_read
                                   // 2), snap)
    based = gpu_pitr.restore(wal, backend="cpu", base=snap)
    assert based.id_list() == full.id_list()
    assert sum(statwalk.scan_stats(wal)["records_by_variant"].values()) > 0
    # Pieces of one decode block (under 1,024 records) decode on the calling thread.
    small = tmp_path_factory.mktemp("small")
    synth.write_synthetic_wal(small, total_bytes=16 << 10, dim=8, segments=1, seed=3)
    assert len(gpu_pitr.restore(small, backend="cpu")) > 0
    sigs = {step: list(f.signatures) for step, f in LOOPS.items()}
    assert all(sigs.values()), sigs
    return sigs


def _llvm(py_func, options: dict, sig) -> str:
    # Compiled afresh: Numba has no IR to show for code loaded from its cache.
    fresh = njit(**{k: v for k, v in options.items() if k not in ("cache", "nopython")})(py_func)
    fresh.compile(sig)
    return fresh.inspect_llvm(sig)


@pytest.mark.skipif(not NO_REFCOUNTS, reason="this Numba has no _nrt option")
@pytest.mark.parametrize("step", sorted(LOOPS))
def test_the_loop_holds_no_reference_counting(signatures, step):
    loop = LOOPS[step]
    assert loop.targetoptions.get("_nrt") is False, loop.targetoptions
    for sig in signatures[step]:
        assert not _calls_refcounting(_llvm(loop.py_func, loop.targetoptions, sig)), step


def test_the_check_sees_reference_counting_where_it_is(signatures):
    # The control: the decode loop with Numba's default options, on the same types.
    loop = LOOPS["decode"]
    options = {k: v for k, v in loop.targetoptions.items() if k != "_nrt"}
    assert _calls_refcounting(_llvm(loop.py_func, options, signatures["decode"][0]))


@pytest.mark.parametrize("step", ["frame", "decode", "apply", "seed"])
def test_the_loop_loads_ahead(signatures, step):
    # The framing walk, the decode, apply and the base rows' move-in issue
    # llvm.prefetch for bytes they reach later (gpu_pitr.jit.prefetch); a refactor
    # that drops the hint would show here, not in any result.
    loop = LOOPS[step]
    for sig in signatures[step]:
        assert "@llvm.prefetch" in _llvm(loop.py_func, loop.targetoptions, sig), step
