"""WAL format: layout, codec, writer, reader, framing and the shared payload parser."""

from gpu_pitr import _lazy_dir, _lazy_modules

__getattr__ = _lazy_modules(__name__, ("codec", "columns", "dump", "entries", "layout",
                                       "reader", "segments", "stats", "writer"))
__dir__ = _lazy_dir(__name__, *__getattr__.names)
