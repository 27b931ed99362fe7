"""cachekern: step caching for diffusion transformers and UNets.

Fused Triton kernels compute the skip signals and apply cached residuals (``cachekern.triton_kernels``);
a C++/CUDA engine keeps cached tensors within a device budget and spills the rest to pinned host
memory (``cachekern.BlockCache``).
"""

from cachekern._version import __version__
from cachekern.block_cache import BlockCache, CapacityError
from cachekern.build_info import build_info

__all__ = ["BlockCache", "CapacityError", "build_info", "__version__"]
