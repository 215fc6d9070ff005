"""gpu_pitr: point-in-time restore of oxirs-vec write-ahead logs, on the CPU or a GPU."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["restore", "RestoredIndex", "__version__"]


def __getattr__(name: str):
    # Lazy: importing gpu_pitr must not compile Numba code or touch a GPU.
    if name == "restore":
        from gpu_pitr.pipeline import restore

        return restore
    if name == "RestoredIndex":
        from gpu_pitr.index import RestoredIndex

        return RestoredIndex
    raise AttributeError(name)
