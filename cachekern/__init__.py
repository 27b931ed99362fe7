"""cachekern: step caching for diffusion transformers and UNets.

Fused Triton kernels compute the skip signals and apply cached residuals (``cachekern.triton_kernels``);
a C++/CUDA engine keeps cached tensors within a device budget and spills the rest to pinned host
memory (``cachekern.BlockCache``).
"""

from cachekern._version import __version__
from cachekern.block_cache import BlockCache, CapacityError
from cachekern.build_info import build_info
from cachekern.calibration import calibrate_teacache
from cachekern.handle import CacheHandle
from cachekern.patching import patch, patched, unpatch
from cachekern.policies import BlockCaching, TeaCache
from cachekern.profiling import Profile, profile

__all__ = ["BlockCache", "BlockCaching", "CacheHandle", "CapacityError", "Profile", "TeaCache",
           "build_info", "calibrate_teacache", "patch", "patched", "profile", "unpatch",
           "__version__"]
