"""The kernels as `torch.library` custom ops (namespace ``cachekern``) with fake implementations,
so `torch.compile` traces around them instead of breaking the graph.

In eager mode the public functions call the kernels directly (the dispatcher adds host overhead
for nothing there); under `torch.compile` they call these ops. Both run the same code.
"""

from typing import List, Optional

import torch

from cachekern.kernels.modulation import modulate_into, modulated_distance_sums
from cachekern.kernels.capture import residual_capture_sums
from cachekern.kernels.forecast import residual_forecast_into
from cachekern.kernels.reuse import residual_reuse_into


@torch.library.custom_op("cachekern::modulated_distance", mutates_args=("out_modulated",))
def modulated_distance_op(x: torch.Tensor, prev: torch.Tensor, scale: Optional[torch.Tensor],
                          shift: Optional[torch.Tensor], norm: str, eps: float,
                          out_modulated: Optional[torch.Tensor],
                          deterministic: bool) -> torch.Tensor:
    """Returns the [2, B] fp32 sums (diff_sum, prev_sum); writes m into out_modulated if given."""
    return modulated_distance_sums(x, prev, scale, shift, norm, eps, out_modulated, deterministic)


@modulated_distance_op.register_fake
def _(x, prev, scale, shift, norm, eps, out_modulated, deterministic):
    return x.new_empty((2, x.shape[0]), dtype=torch.float32)


@torch.library.custom_op("cachekern::modulate_", mutates_args=("out",))
def modulate_op(x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                norm: str, eps: float, out: torch.Tensor) -> None:
    modulate_into(x, scale, shift, norm, eps, out)


@modulate_op.register_fake
def _(x, scale, shift, norm, eps, out):
    return None


@torch.library.custom_op("cachekern::residual_reuse_", mutates_args=("out",))
def residual_reuse_op(x: torch.Tensor, residual: torch.Tensor, scale: Optional[torch.Tensor],
                      shift: Optional[torch.Tensor], channel_dim: int, out: torch.Tensor) -> None:
    residual_reuse_into(x, residual, scale, shift, channel_dim, out)


@residual_reuse_op.register_fake
def _(x, residual, scale, shift, channel_dim, out):
    return None


@torch.library.custom_op("cachekern::residual_capture_", mutates_args=("out",))
def residual_capture_op(output: torch.Tensor, x: torch.Tensor,
                        prev_residual: Optional[torch.Tensor], deterministic: bool,
                        out: torch.Tensor) -> torch.Tensor:
    """Writes output - x into out; returns the [2, B] fp32 sums (diff_sum, cur_sum)."""
    return residual_capture_sums(output, x, prev_residual, deterministic, out)


@residual_capture_op.register_fake
def _(output, x, prev_residual, deterministic, out):
    return output.new_empty((2, output.shape[0]), dtype=torch.float32)


@torch.library.custom_op("cachekern::residual_forecast_", mutates_args=("out",))
def residual_forecast_op(x: Optional[torch.Tensor], history: List[torch.Tensor],
                         weights: torch.Tensor,
                         bias: Optional[torch.Tensor], channel_dim: int, out: torch.Tensor,
                         slot_order: Optional[torch.Tensor] = None) -> None:
    residual_forecast_into(x, history, weights, bias, channel_dim, out, slot_order)


@residual_forecast_op.register_fake
def _(x, history, weights, bias, channel_dim, out, slot_order=None):
    return None
