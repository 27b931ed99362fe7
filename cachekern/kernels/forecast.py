"""Forecasting a residual from its history in one pass:

    out = x + sum_k weights[b, k, c] * history[k] + bias[b, c]        (k < K <= 3)

`weights` is per sample ([B, K]) or per sample and channel ([B, K, C]); `bias` is [B, C], [C]
or None. Polynomial extrapolation in the sampler's time gives per-sample weights (the Lagrange
basis at the current time, `lagrange_weights`); a fitted forecast gives per-channel ones and a
bias (K = 1 is Block Caching's scale-shift). Computed in fp32 and rounded once, reading x and the
K history tensors once: the history stays where it is (a ring of separate tensors, no stacking).
"""

import math
from typing import Optional, Sequence

import torch

from cachekern.kernels import _validate as v
from cachekern.kernels._backend import cdiv, tl, triton, use_triton
from cachekern.kernels._rounding import EXPLICIT_BF16_ROUNDING, cast_to
from cachekern.kernels.reuse import _channel_view, _normalize_channel_dim, _views, tile_shape

OP = "residual_forecast"
MAX_HISTORY = 3


def lagrange_weights(times: Sequence[float], t: float) -> list:
    """The weights w_k with sum_k w_k f(times[k]) = p(t), p the polynomial of degree
    len(times) - 1 through the points: extrapolation to t of values known at `times`."""
    times = [float(s) for s in times]
    if not times or len(set(times)) != len(times) or not all(map(math.isfinite, times)):
        raise ValueError(f"times: expected distinct finite values, got {times}")
    weights = []
    for k, tk in enumerate(times):
        w = 1.0
        for j, tj in enumerate(times):
            if j != k:
                w *= (t - tj) / (tk - tj)
        weights.append(w)
    return weights


def taylor_weights(times: Sequence[float], t: float) -> list:
    """The weights of TaylorSeer's extrapolation (arXiv 2503.06923, as diffusers computes it):
    a Taylor series at the newest point, y0 + d·D1 + d²/2·D2 with d = t − times[0], whose
    derivatives are recursive differences each divided by the newest spacing only. Through
    three points it damps the curvature that the interpolating polynomial (lagrange_weights)
    extrapolates in full; through one or two points both are the same."""
    times = [float(s) for s in times]
    if not 1 <= len(times) <= 3 or len(set(times)) != len(times) or \
            not all(map(math.isfinite, times)):
        raise ValueError(f"times: expected 1 to 3 distinct finite values, got {times}")
    if len(times) < 3:
        return lagrange_weights(times, t)
    t0, t1, t2 = times
    d, h0, h1 = t - t0, t0 - t1, t1 - t2
    c = d * d / 2 / h0          # D2 = ((y0 - y1)/h0 - (y1 - y2)/h1) / h0
    return [1 + d / h0 + c / h0, -d / h0 - c / h0 - c / h1, c / h1]


# -- reference -----------------------------------------------------------------------------------

def _weights_view(weights, x, channel_dim):
    """weights [B, K] or [B, K, C] -> K tensors broadcasting against x."""
    views = []
    for k in range(weights.shape[1]):
        w = weights[:, k]
        if w.dim() == 1:
            views.append(w.reshape([-1] + [1] * (x.dim() - 1)))
        else:
            views.append(_channel_view(w, x, channel_dim))
    return views


def torch_residual_forecast(x, history, weights, bias=None, channel_dim=-1, out_dtype=None):
    """x None: the forecast alone (of a quantity that is not a residual, e.g. an output)."""
    like = history[0] if x is None else x
    compute = torch.promote_types(like.dtype, torch.float32)
    views = _weights_view(weights.to(compute), like, channel_dim)
    r = sum(w * h.to(compute) for w, h in zip(views, history))
    if bias is not None:
        r = r + _channel_view(bias.to(compute), like, channel_dim)
    return (r if x is None else x.to(compute) + r).to(out_dtype or like.dtype)


# -- kernel -------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _load_tile(P, b, stride_b, rows, stride_r, cols, mask):
        return tl.load(P + b * stride_b + rows[:, None] * stride_r + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)

    @triton.jit
    def _channel_vector(P, b, stride_b, index, ok, CHANNEL_IS_ROW: tl.constexpr):
        """A per-channel vector at this tile's channels, shaped to broadcast over the tile."""
        values = tl.load(P + b * stride_b + index, mask=ok, other=0.0).to(tl.float32)
        # One return statement: Triton compiles the constexpr branch taken, then the rest.
        if CHANNEL_IS_ROW:
            shaped = values[:, None]
        else:
            shaped = values[None, :]
        return shaped

    @triton.jit
    def _residual_forecast_kernel(
        X, stride_xb, stride_xr,
        H0, stride_h0b, stride_h0r,
        H1, stride_h1b, stride_h1r,
        H2, stride_h2b, stride_h2r,
        W, stride_wb, stride_wk, stride_wc,
        BIAS, stride_bb,
        OUT, stride_ob, stride_or,
        SLOT_ORDER,
        R, C, tiles_c,
        K: tl.constexpr, HAS_X: tl.constexpr, HAS_BIAS: tl.constexpr,
        CHANNEL_IS_ROW: tl.constexpr, SLOTTED: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, EXPLICIT_BF16: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = ((pid // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = (pid % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < R
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        # The channel index of the tile's weights: a row (UNet maps) or a column (tokens).
        if CHANNEL_IS_ROW:
            channel, channel_ok = rows, row_ok
        else:
            channel, channel_ok = cols, col_ok
        if SLOTTED:
            # H0..H2 are slots of one layout; SLOT_ORDER names the slot of each term, on the
            # device (a CUDA graph's forecast reads the history in its age order without
            # moving it).
            s0 = tl.load(SLOT_ORDER + 0)
            G0 = tl.where(s0 == 0, H0, tl.where(s0 == 1, H1, H2))
            G1 = G0
            G2 = G0
            if K > 1:
                s1 = tl.load(SLOT_ORDER + 1)
                G1 = tl.where(s1 == 0, H0, tl.where(s1 == 1, H1, H2))
            if K > 2:
                s2 = tl.load(SLOT_ORDER + 2)
                G2 = tl.where(s2 == 0, H0, tl.where(s2 == 1, H1, H2))
            H0 = G0
            H1 = G1
            H2 = G2
        h0 = _load_tile(H0, b, stride_h0b, rows, stride_h0r, cols, mask)
        r = h0 * _channel_vector(W, b, stride_wb, channel * stride_wc, channel_ok, CHANNEL_IS_ROW)
        if K > 1:
            h1 = _load_tile(H1, b, stride_h1b, rows, stride_h1r, cols, mask)
            r += h1 * _channel_vector(W + stride_wk, b, stride_wb, channel * stride_wc,
                                      channel_ok, CHANNEL_IS_ROW)
        if K > 2:
            h2 = _load_tile(H2, b, stride_h2b, rows, stride_h2r, cols, mask)
            r += h2 * _channel_vector(W + 2 * stride_wk, b, stride_wb, channel * stride_wc,
                                      channel_ok, CHANNEL_IS_ROW)
        if HAS_BIAS:
            r += _channel_vector(BIAS, b, stride_bb, channel, channel_ok, CHANNEL_IS_ROW)
        if HAS_X:
            r = _load_tile(X, b, stride_xb, rows, stride_xr, cols, mask) + r
        tl.store(OUT + b * stride_ob + rows[:, None] * stride_or + cols[None, :],
                 cast_to(r, OUT.dtype.element_ty, EXPLICIT_BF16), mask=mask)


def _launch(x3, h3, weights, bias, out3, channel_is_row, slot_order=None, terms=None):
    has_x = x3 is not None
    x3 = x3 if has_x else h3[0]       # unused pointer: never read
    terms = len(h3) if terms is None else terms
    B, R, C = x3.shape
    block_r, block_c = tile_shape(R, C)
    tiles_c = cdiv(C, block_c)
    padded = list(h3) + [h3[0]] * (MAX_HISTORY - len(h3))   # unused pointers: never read
    w_c = weights.stride(2) if weights.dim() == 3 else 0
    _residual_forecast_kernel[(cdiv(R, block_r) * tiles_c, B)](
        x3, x3.stride(0), x3.stride(1),
        padded[0], padded[0].stride(0), padded[0].stride(1),
        padded[1], padded[1].stride(0), padded[1].stride(1),
        padded[2], padded[2].stride(0), padded[2].stride(1),
        weights, weights.stride(0), weights.stride(1), w_c,
        bias if bias is not None else x3, v.batch_stride(bias),
        out3, out3.stride(0), out3.stride(1),
        slot_order if slot_order is not None else weights,
        R, C, tiles_c,
        K=terms, HAS_X=has_x, HAS_BIAS=bias is not None, CHANNEL_IS_ROW=channel_is_row,
        SLOTTED=slot_order is not None,
        BLOCK_R=block_r, BLOCK_C=block_c, EXPLICIT_BF16=EXPLICIT_BF16_ROUNDING,
        num_warps=4 if block_r * block_c <= 2048 else 8,
    )


# -- host functions ------------------------------------------------------------------------------

def residual_forecast_into(x, history, weights, bias, channel_dim, out, slot_order=None):
    if out.numel() == 0:
        return
    dim = channel_dim % out.dim()
    if not use_triton(out):
        if slot_order is not None:
            history = [history[int(i)] for i in slot_order[:weights.shape[1]].tolist()]
        out.copy_(torch_residual_forecast(x, history, weights, bias, dim, out.dtype))
        return
    named = [(f"history[{k}]", h) for k, h in enumerate(history)] + [("out", out)]
    views, channel_is_row = _views(OP, dim, *([("x", x)] if x is not None else []), *named)
    x3 = views.pop(0) if x is not None else None
    _launch(x3, views[:-1], weights, bias, views[-1], channel_is_row, slot_order,
            weights.shape[1])


def _check_weights(weights, batch, k, channels, device):
    v.check_tensor(OP, "weights", weights, dtypes=(torch.float32,))
    if tuple(weights.shape) not in ((batch, k), (batch, k, channels)):
        raise ValueError(f"{OP}: weights must have shape ({batch}, {k}) or ({batch}, {k}, "
                         f"{channels}) (per sample, or per sample and channel), got "
                         f"{tuple(weights.shape)}")
    if weights.device != device:
        raise ValueError(f"{OP}: weights is on {weights.device} but the data is on {device}")
    if weights.dim() == 3 and channels > 1 and weights.stride(2) != 1:
        raise ValueError(f"{OP}: weights must be contiguous in its channel dimension")


def residual_forecast(x: Optional[torch.Tensor], history: Sequence[torch.Tensor],
                      weights: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                      channel_dim: int = -1, out: Optional[torch.Tensor] = None,
                      slot_order: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + sum_k weights[:, k] * history[k] (+ bias)``, per sample (and channel), in one pass.

    Args:
        x: [B, ...] fp32/fp16/bf16, collapsing into [rows, C] (channel_dim=-1) or [C, spatial]
            (channel_dim=1) without a copy; None for the forecast alone (a forecast of outputs,
            not residuals), in history[0]'s dtype.
        history: 1 to 3 tensors of x's shape (any of the three float dtypes), e.g. the last
            computed residuals.
        weights: fp32 [B, K] (per sample) or [B, K, C] (per sample and channel).
        bias: [B, C] or [C], or None.
        channel_dim: -1 for DiT tokens [B, N, C], 1 for UNet maps [B, C, H, W].
        out: where to write (x itself for in place); a new tensor of x's dtype by default.
        slot_order: history as slots of one dtype and layout, and an int32 tensor on their
            device naming the slot of each of the K terms (term k reads
            history[slot_order[k]]): the order is read on the device, so a CUDA graph can
            forecast from a ring whose age order changes from call to call. K may then be
            fewer than len(history).
    """
    history = list(history) if isinstance(history, (list, tuple)) else history
    if not isinstance(history, list) or not 1 <= len(history) <= MAX_HISTORY:
        raise ValueError(f"{OP}: history must be a list of 1 to {MAX_HISTORY} tensors, got "
                         f"{history if not isinstance(history, list) else len(history)!r}")
    v.check_tensor(OP, "history[0]", history[0])
    given_x = x is not None
    if given_x:
        v.check_tensor(OP, "x", x)
    else:
        x = history[0]     # the shape, device and output dtype; not read
    for k, h in enumerate(history):
        v.check_tensor(OP, f"history[{k}]", h)
        v.check_shape(OP, f"history[{k}]", h, x.shape)
    dim = _normalize_channel_dim(OP, x, channel_dim)
    if out is not None:
        v.check_tensor(OP, "out", out)
        v.check_shape(OP, "out", out, x.shape)
    v.check_same_device(OP, "x", x, out=out, **{f"history_{k}": h for k, h in enumerate(history)})
    terms = len(history)
    if slot_order is not None:
        terms = weights.shape[1] if isinstance(weights, torch.Tensor) and weights.dim() >= 2 \
            else 0
        if not isinstance(slot_order, torch.Tensor) or slot_order.dtype != torch.int32 or \
                slot_order.dim() != 1 or slot_order.device != x.device or \
                not 1 <= terms <= min(len(history), slot_order.shape[0]):
            raise ValueError(f"{OP}: slot_order must be an int32 vector on {x.device} with at "
                             f"least one entry per term (weights' second dimension, at most "
                             f"len(history)), got {slot_order!r}")
        if any(h.dtype != history[0].dtype or h.stride() != history[0].stride()
               for h in history):
            raise ValueError(f"{OP}: with slot_order the history tensors are slots of one "
                             f"dtype and layout")
    _check_weights(weights, x.shape[0], terms, x.shape[dim], x.device)
    v.check_per_sample_channels(OP, "bias", bias, x.shape[0], x.shape[dim], x.device)
    named = [("x", x)] + [(f"history[{k}]", h) for k, h in enumerate(history)]
    _views(OP, dim, *named, ("out", out if out is not None else x))
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    x = x if given_x else None
    if torch.compiler.is_compiling():
        torch.ops.cachekern.residual_forecast_(x, history, weights, bias, dim, out, slot_order)
    else:
        residual_forecast_into(x, history, weights, bias, dim, out, slot_order)
    return out
