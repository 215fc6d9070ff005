"""WAL format: layout, codec, writer, reader, framing and the shared payload parser."""

# Its modules are reachable as attributes (``gpu_pitr.format.stats.wal_stats``), each
# imported on first use.
_MODULES = frozenset(("codec", "columns", "dump", "entries", "layout", "reader", "segments",
                      "stats", "writer"))


def __getattr__(name: str):
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
