"""Deprecated: the kernels' former import path; they are `cachekern.kernels`. Importing this
module, or one of its former submodules, warns and hands out the new modules."""

import sys
import warnings

from cachekern import kernels
from cachekern.kernels import capture, modulation, ops, reuse
from cachekern.kernels import *  # noqa: F401,F403  (the former names, re-exported)

warnings.warn("cachekern.triton_kernels is deprecated; import cachekern.kernels instead",
              DeprecationWarning, stacklevel=2)

# The former submodule names, so that `from cachekern.triton_kernels.residual_reuse import ...`
# keeps working.
for _old, _new in (("modulated_distance", modulation), ("residual_capture", capture),
                   ("residual_reuse", reuse), ("ops", ops)):
    sys.modules[f"{__name__}.{_old}"] = _new

__all__ = kernels.__all__
