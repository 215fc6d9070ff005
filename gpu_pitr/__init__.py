"""gpu_pitr: point-in-time restore of oxirs-vec write-ahead logs, on the CPU or a GPU."""

from __future__ import annotations

import os as _os

# What ``__getattr__`` gives, typed: to a type checker it was Any. (Not typing's
# TYPE_CHECKING: importing typing would double this import's time; mypy and pyright
# take a variable of that name as well.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from gpu_pitr.index import RestoredIndex as RestoredIndex
    from gpu_pitr.pipeline import plan_restore as plan_restore
    from gpu_pitr.pipeline import restore as restore

# Numba's OpenMP workers spin after every parallel loop by default. A restore runs
# a parallel decode per chunk between serial steps and beside its read, framing
# and apply threads, so on a small machine the spinning takes their cores:
# measured on the 2-core VM (docs/measurements.md), waiting passively cut a 1 GiB
# restore's CPU time by 0.6-1.0 s and its wall time by 0.2-0.45 s. Read once, when
# the OpenMP runtime starts; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["restore", "plan_restore", "RestoredIndex", "__version__"]


def _lazy_modules(package: str, names):
    """A module ``__getattr__`` for ``package``: its modules in ``names`` become
    attributes, each imported on first use (``gpu_pitr.snapshot.save`` after a plain
    ``import gpu_pitr``)."""
    names = frozenset(names)

    def __getattr__(name: str):
        if name in names:
            import importlib

            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    __getattr__.names = names
    return __getattr__


def _lazy_dir(package: str, *names):
    """A module ``__dir__`` for ``package``: its attributes and the ``names`` its
    ``__getattr__`` gives (tab completion in a notebook lists them)."""
    import sys

    def __dir__():
        return sorted({*vars(sys.modules[package]), *names})

    return __dir__


_modules = _lazy_modules(__name__, ("archive", "compat", "diff", "errors", "expire",
                                    "format", "outputs", "report", "resolve", "scaleout",
                                    "snapshot", "verify"))


__dir__ = _lazy_dir(__name__, "restore", "plan_restore", "RestoredIndex", *_modules.names)


def __getattr__(name: str):
    # Lazy: importing gpu_pitr must not compile Numba code or touch a GPU.
    if name == "restore":
        from gpu_pitr.pipeline import restore

        return restore
    if name == "plan_restore":  # (restore --dry-run)
        from gpu_pitr.pipeline import plan_restore

        return plan_restore
    if name == "RestoredIndex":
        from gpu_pitr.index import RestoredIndex

        return RestoredIndex
    return _modules(name)
