"""Compile the decode and resolve kernels to PTX without a GPU: does the CUDA target still type
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # its first paragraph
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0")
    cc = tuple(int(x) for x in parser.parse_args(argv).cc.split("."))

    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    import numpy as np
    from numba import cuda, from_dtype, types

    import kernels.decode as decode
    import kernels.resolve as resolve
    from gpu_pitr.format.columns import ENTRY_COLUMNS, RECORD_COLUMNS

    def col(dtype):
        return types.Array(from_dtype(np.dtype(dtype)), 1, "C")

    def records(*names):
        return tuple(col(RECORD_COLUMNS[name]) for name in names)

    buf = col(np.uint8)
    entries = tuple(col(dtype) for dtype in ENTRY_COLUMNS.values())  # e_op .. e_key
    i64 = col(np.int64)
    kernels = {
        "decode_records": (decode.decode_records, (buf, types.int64) + records(
            "off", "length", "status", "kind", "ts", "aux", "nent", "stop") + entries),
        "decode_batches": (decode.decode_batches, (buf, col(np.int64)) + records(
            "off", "length", "efirst") + entries),
        # The resolve kernels, with the argument types CudaExecutor.apply passes.
        "expand_entries": (resolve.expand_entries, (i64,) * 5),
        "check_run_ids": (resolve.check_run_ids, (buf,) + (i64,) * 6),
        "check_prior_ids": (resolve.check_prior_ids, (buf,) + (i64,) * 4 + (buf,) + (i64,) * 3),
        "resolve_runs": (resolve.resolve_runs, (i64,) * 6 + (col(np.bool_),) + (i64,) * 3
                         + (types.Array(types.int64, 2, "C"),)),
        "scatter_vectors": (resolve.scatter_vectors, (buf, i64, i64,
                                                      types.Array(types.uint32, 2, "C"),
                                                      types.int64)),
        "copy_spans": (resolve.copy_spans, (buf, i64, i64, buf, i64)),
    }
    for name, (kernel, sig) in kernels.items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        print(f"{name}: {len(ptx)} bytes of PTX for sm_{cc[0]}{cc[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
