"""Block Caching (Wimbauer et al., CVPR 2024): each block reuses its cached residual on the
steps where a recorded profile says it barely changes, on a static schedule, optionally with a
fitted per-channel scale and shift.

`profile` is the data type and its file, `record` records one (cachekern.profile), `schedule`
derives the static schedule, `fit` and `distill` make the scale-shift, `policy` holds the
settings, `handle` runs a patched model, `plot` draws a profile. Imports cachekern.kernels,
cachekern.store and cachekern.models, never cachekern.teacache."""

from cachekern.block_caching.distill import train_scale_shift
from cachekern.block_caching.fit import fit_scale_shift
from cachekern.block_caching.handle import BlockCachingHandle
from cachekern.block_caching.policy import BlockCaching
from cachekern.block_caching.profile import Profile
from cachekern.block_caching.record import profile

__all__ = ["BlockCaching", "BlockCachingHandle", "Profile", "fit_scale_shift", "profile",
           "train_scale_shift"]
