"""Applying a cached residual in one pass:

    out = x + residual                         (TeaCache / First-Block-Cache skip path)
    out = x + (residual * scale + shift)       (Block Caching's scale-shift, per sample, per channel)

Channels are the last dimension for DiT tokens [B, N, C] (channel_dim=-1) and dimension 1 for
UNet maps [B, C, H, W] (channel_dim=1). Computed in fp32 and rounded once to the output dtype,
so the plain form is bitwise what ``x + residual`` gives in PyTorch for same-dtype inputs.
``out=x`` works in place.
"""

from typing import Optional

import torch

from cachekern.kernels import _validate as v
from cachekern.kernels._rounding import EXPLICIT_BF16_ROUNDING, cast_to
from cachekern.kernels._backend import cdiv, next_power_of_2, tl, triton, use_triton

OP = "residual_reuse"


# -- reference -----------------------------------------------------------------------------------

def _channel_view(t, x, channel_dim):
    """scale/shift [B, C] or [C] shaped to broadcast against x along channel_dim."""
    shape = [1] * x.dim()
    if t.dim() == 2:
        shape[0] = t.shape[0]
    shape[channel_dim] = t.shape[-1]
    return t.reshape(shape)


def torch_residual_reuse(x, residual, scale=None, shift=None, channel_dim=-1, out_dtype=None):
    compute = torch.promote_types(x.dtype, torch.float32)
    r = residual.to(compute)
    if scale is not None:
        r = r * _channel_view(scale.to(compute), x, channel_dim)
    if shift is not None:
        r = r + _channel_view(shift.to(compute), x, channel_dim)
    return (x.to(compute) + r).to(out_dtype or x.dtype)


# -- kernel -------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _residual_reuse_kernel(
        X, stride_xb, stride_xr,
        RES, stride_rb, stride_rr,
        SCALE, stride_sb,
        SHIFT, stride_hb,
        OUT, stride_ob, stride_or,
        R, C, tiles_c,
        HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
        CHANNEL_IS_ROW: tl.constexpr,  # UNet maps viewed as [B, C, H*W]: one channel per row
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, EXPLICIT_BF16: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = ((pid // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = (pid % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < R
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + b * stride_xb + rows[:, None] * stride_xr + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        r = tl.load(RES + b * stride_rb + rows[:, None] * stride_rr + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if HAS_SCALE:
            if CHANNEL_IS_ROW:
                s = tl.load(SCALE + b * stride_sb + rows, mask=row_ok, other=0.0).to(tl.float32)
                r = r * s[:, None]
            else:
                s = tl.load(SCALE + b * stride_sb + cols, mask=col_ok, other=0.0).to(tl.float32)
                r = r * s[None, :]
        if HAS_SHIFT:
            if CHANNEL_IS_ROW:
                h = tl.load(SHIFT + b * stride_hb + rows, mask=row_ok, other=0.0).to(tl.float32)
                r = r + h[:, None]
            else:
                h = tl.load(SHIFT + b * stride_hb + cols, mask=col_ok, other=0.0).to(tl.float32)
                r = r + h[None, :]
        tl.store(OUT + b * stride_ob + rows[:, None] * stride_or + cols[None, :],
                 cast_to(x + r, OUT.dtype.element_ty, EXPLICIT_BF16), mask=mask)


def tile_shape(rows: int, cols: int, elements: int = 4096):
    """(BLOCK_R, BLOCK_C) covering about `elements` per program for a [rows, cols] matrix."""
    block_r = max(1, min(next_power_of_2(rows), elements // min(next_power_of_2(cols), 1024)))
    block_c = min(next_power_of_2(cols), elements // block_r)
    return block_r, block_c


def _launch(x3, r3, scale, shift, out3, channel_is_row):
    B, R, C = x3.shape
    block_r, block_c = tile_shape(R, C)
    tiles_c = cdiv(C, block_c)
    grid = (cdiv(R, block_r) * tiles_c, B)
    _residual_reuse_kernel[grid](
        x3, x3.stride(0), x3.stride(1),
        r3, r3.stride(0), r3.stride(1),
        scale if scale is not None else x3, v.batch_stride(scale),
        shift if shift is not None else x3, v.batch_stride(shift),
        out3, out3.stride(0), out3.stride(1),
        R, C, tiles_c,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, CHANNEL_IS_ROW=channel_is_row,
        BLOCK_R=block_r, BLOCK_C=block_c, EXPLICIT_BF16=EXPLICIT_BF16_ROUNDING,
        num_warps=4 if block_r * block_c <= 2048 else 8,
    )


# -- host functions ------------------------------------------------------------------------------

def _normalize_channel_dim(op, x, channel_dim):
    if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
        raise TypeError(f"{op}: channel_dim must be an int, got {type(channel_dim).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{op}: x must have a batch and a channel dimension, got shape "
                         f"{tuple(x.shape)}")
    dim = channel_dim % x.dim() if -x.dim() <= channel_dim < x.dim() else None
    if dim not in (1, x.dim() - 1):
        raise ValueError(f"{op}: channel_dim must be -1 (tokens [B, N, C]) or 1 (maps [B, C, H, W]) "
                         f"for x of shape {tuple(x.shape)}, got {channel_dim}")
    return dim


def _views(op, dim, *named):
    """[B, R, C'] views of the named tensors: channel-last [B, rows, C] or channel-first
    [B, C, spatial]; without scale/shift a flat [B, 1, M] view when every tensor allows it."""
    x = named[0][1]
    B = x.shape[0]
    if dim == x.dim() - 1:
        return [v.as_rows(op, name, t, B, x.shape[-1]) for name, t in named], False
    spatial = x[0, 0].numel() if x.numel() else 0
    return [v.as_rows(op, name, t, B, spatial) for name, t in named], True


def residual_reuse_into(x, residual, scale, shift, channel_dim, out):
    if x.numel() == 0:
        return
    dim = channel_dim % x.dim()
    if not use_triton(x):
        out.copy_(torch_residual_reuse(x, residual, scale, shift, dim, out.dtype))
        return
    (x3, r3, o3), channel_is_row = _views(OP, dim, ("x", x), ("residual", residual), ("out", out))
    _launch(x3, r3, scale, shift, o3, channel_is_row)


def residual_reuse(x: torch.Tensor, residual: torch.Tensor, scale: Optional[torch.Tensor] = None,
                   shift: Optional[torch.Tensor] = None, *, channel_dim: int = -1,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x + residual``, or ``x + residual * scale + shift`` per sample per channel, in one pass.

    Args:
        x: [B, ...] fp32/fp16/bf16; the dimensions after the batch must collapse into
            [rows, C] (channel_dim=-1) or [C, spatial] (channel_dim=1) without a copy.
        residual: same shape as x, any of the three float dtypes.
        scale, shift: [B, C] or [C], or None.
        channel_dim: -1 for DiT tokens [B, N, C], 1 for UNet maps [B, C, H, W].
        out: where to write (x itself for in place); a new tensor of x's dtype by default.
    """
    v.check_tensor(OP, "x", x)
    v.check_tensor(OP, "residual", residual)
    v.check_shape(OP, "residual", residual, x.shape)
    dim = _normalize_channel_dim(OP, x, channel_dim)
    if out is not None:
        v.check_tensor(OP, "out", out)
        v.check_shape(OP, "out", out, x.shape)
    v.check_same_device(OP, "x", x, residual=residual, out=out)
    v.check_per_sample_channels(OP, "scale", scale, x.shape[0], x.shape[dim], x.device)
    v.check_per_sample_channels(OP, "shift", shift, x.shape[0], x.shape[dim], x.device)
    _views(OP, dim, ("x", x), ("residual", residual), ("out", out if out is not None else x))
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if torch.compiler.is_compiling():
        torch.ops.cachekern.residual_reuse_(x, residual, scale, shift, dim, out)
    else:
        residual_reuse_into(x, residual, scale, shift, dim, out)
    return out
