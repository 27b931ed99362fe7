"""Fused Triton kernels for step caching, each beside its plain-PyTorch reference.

- `modulated_distance` / `modulate`: TeaCache's indicator (modulated input, per-sample L1 change)
- `residual_reuse`: out = x + residual [* scale + shift]
- `residual_forecast`: out = x + sum_k w_k * history_k [+ bias] (extrapolated or fitted forecasts)
- `residual_capture`: residual = output - x with its per-sample L1 change

Kernels run with Triton on CUDA tensors, in Triton's interpreter on CPU tensors when
TRITON_INTERPRET=1 was set before import, and as the PyTorch reference otherwise. Importing this
package registers the `torch.ops.cachekern.*` custom ops. TeaCache's on-device decision
(`teacache_decision`) is imported on its own, by the CUDA-graph path only.
"""

from cachekern.kernels import ops  # noqa: F401  (registers torch.ops.cachekern.*)
from cachekern.kernels.modulation import (modulate, modulated_distance, torch_modulate,
                                          torch_modulated_distance)
from cachekern.kernels.capture import residual_capture, torch_residual_capture
from cachekern.kernels.forecast import (lagrange_weights, residual_forecast, taylor_weights,
                                        torch_residual_forecast)
from cachekern.kernels.reuse import residual_reuse, torch_residual_reuse

__all__ = [
    "modulate", "modulated_distance", "residual_reuse", "residual_forecast", "residual_capture",
    "lagrange_weights", "taylor_weights", "torch_modulate", "torch_modulated_distance", "torch_residual_reuse",
    "torch_residual_forecast", "torch_residual_capture",
]
