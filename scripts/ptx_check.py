"""Compile the decode kernels to PTX without a GPU: does the CUDA target still type
and compile the shared payload parser (``gpu_pitr.format.payload``)?

Needs numba-cuda and its NVVM (``pip install 'numba-cuda[cu12]'``), not a driver: the
compute capability a device would report is given instead. Prints each kernel's PTX
size; a typing or compile error is raised as is.

    python scripts/ptx_check.py            # sm_90
    python scripts/ptx_check.py --cc 8.0
"""

from __future__ import annotations

import argparse
import sys
import types as pytypes
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's kernels/


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0")
    cc = tuple(int(x) for x in parser.parse_args(argv).cc.split("."))

    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    from numba import cuda, types

    import kernels.decode as decode

    col = {t: types.Array(t, 1, "C") for t in (types.uint8, types.int64, types.uint64)}
    u8, i64, u64 = col[types.uint8], col[types.int64], col[types.uint64]
    entries = (i64,) * 7 + (u64,)  # e_op .. e_meta_len, e_key
    kernels = {
        "decode_records": (decode.decode_records,
                           (u8, types.int64, i64, i64, u8, i64, u64, u64, i64, i64) + entries),
        "decode_batches": (decode.decode_batches, (u8, i64, i64, i64, i64) + entries),
    }
    for name, (kernel, sig) in kernels.items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        print(f"{name}: {len(ptx)} bytes of PTX for sm_{cc[0]}{cc[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
