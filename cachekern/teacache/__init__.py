"""TeaCache (Liu et al., CVPR 2025): per call, skip the whole block stack while the rescaled,
accumulated change of block 0's timestep-modulated input stays under a threshold.

`policy` holds the settings and the decision rule, `runtime` runs one eager call (indicator,
decision, compute or reuse), `graphs` / `conditional_nodes` / `device_decision` the CUDA-graph
path that decides on the device, `coefficients` the published polynomials, `calibrate` fits one
to a model. Imports cachekern.kernels and cachekern.models, never cachekern.block_caching."""

from cachekern.teacache.calibrate import calibrate_teacache
from cachekern.teacache.handle import TeaCacheHandle
from cachekern.teacache.policy import TeaCache
from cachekern.teacache.schedule_search import fit_forecast, search_schedule

__all__ = ["TeaCache", "TeaCacheHandle", "calibrate_teacache", "search_schedule", "fit_forecast"]
