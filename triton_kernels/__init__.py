"""Fused Triton kernels for step caching, each beside its plain-PyTorch reference.

- `modulated_distance` / `modulate`: TeaCache's indicator (modulated input, per-sample L1 change)
- `residual_reuse`: out = x + residual [* scale + shift]
- `residual_capture`: residual = output - x with its per-sample L1 change

Kernels run with Triton on CUDA tensors, in Triton's interpreter on CPU tensors when
TRITON_INTERPRET=1 was set before import, and as the PyTorch reference otherwise. Importing this
package registers the `torch.ops.cachekern.*` custom ops.
"""

from cachekern.triton_kernels import ops  # noqa: F401  (registers torch.ops.cachekern.*)
from cachekern.triton_kernels.modulated_distance import (modulate, modulated_distance,
                                                         torch_modulate, torch_modulated_distance)
from cachekern.triton_kernels.residual_capture import residual_capture, torch_residual_capture
from cachekern.triton_kernels.residual_reuse import residual_reuse, torch_residual_reuse

__all__ = [
    "modulate", "modulated_distance", "residual_reuse", "residual_capture",
    "torch_modulate", "torch_modulated_distance", "torch_residual_reuse", "torch_residual_capture",
]
