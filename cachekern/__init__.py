"""cachekern: step caching for diffusion transformers and UNets.

    handle = cachekern.patch(pipe, cachekern.TeaCache(threshold=0.3))

The layers, from the bottom: ``cachekern.kernels`` (fused Triton kernels), ``cachekern.store``
(the block cache: device budget, pinned host tier), ``cachekern.models`` (what each model family
looks like), the two methods ``cachekern.teacache`` and ``cachekern.block_caching``, and
``cachekern.patching`` on top. Importing cachekern does not load Triton: the kernels load with the
first patched model.
"""

import warnings

from cachekern._version import __version__
from cachekern.block_caching import (BlockCaching, BlockCachingHandle, Profile, fit_scale_shift,
                                     profile, train_scale_shift)
from cachekern.build_info import build_info
from cachekern.patching import Handle, patch, patched, unpatch
from cachekern.store import BlockCache, CapacityError
from cachekern.teacache import TeaCache, TeaCacheHandle, calibrate_teacache, fit_forecast, search_schedule
from cachekern.tune import TuneResult, load_tuned, tune

__all__ = ["BlockCache", "BlockCaching", "BlockCachingHandle", "CapacityError", "Handle",
           "Profile", "TeaCache", "TeaCacheHandle", "build_info", "calibrate_teacache", "search_schedule", "fit_forecast",
           "fit_scale_shift", "patch", "patched", "profile", "train_scale_shift", "unpatch",
           "TuneResult", "load_tuned", "tune", "__version__"]


def __getattr__(name):
    if name == "CacheHandle":     # the name of TeaCacheHandle before 0.2
        warnings.warn("cachekern.CacheHandle is deprecated; it is cachekern.TeaCacheHandle",
                      DeprecationWarning, stacklevel=2)
        return TeaCacheHandle
    raise AttributeError(f"module 'cachekern' has no attribute {name!r}")
