"""The block cache: tensors kept between denoising steps within a device-memory budget, the rest
in pinned host memory. It stores tensors by key and knows nothing of models or policies; the
engine is the native extension `cachekern.store._C`, or a pure-Python one with the same
behaviour when the extension cannot be loaded."""

from cachekern.store.block_cache import BlockCache
from cachekern.store.errors import CapacityError

__all__ = ["BlockCache", "CapacityError"]
