"""resolve stage of the restore pipeline."""

from gpu_pitr import _lazy_dir, _lazy_modules

# ``gpu_pitr.resolve.idshard.merge_shards`` (docs/api.md) after a plain ``import gpu_pitr``.
__getattr__ = _lazy_modules(__name__, ("hostmap", "idshard", "idsort"))
__dir__ = _lazy_dir(__name__, *__getattr__.names)
