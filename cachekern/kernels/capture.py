"""Capturing a block's residual and its change statistic in one pass:

    residual = output - x                      written once
    diff_sum[b] = sum |residual[b] - prev_residual[b]|      cur_sum[b] = sum |residual[b]|

per sample in fp32, on the residual as stored (rounded to its dtype). diff_sum / cur_sum is Block
Caching's L1_rel (Wimbauer et al., CVPR 2024, Eq. 6, normalised by the current step) and the test
of First-Block-Cache (normalised by the previous step: diff_sum / prev's cur_sum).
"""

from typing import Optional, Tuple

import torch

from cachekern.kernels import _reduce
from cachekern.kernels import _validate as v
from cachekern.kernels._reduce import write_partials
from cachekern.kernels._rounding import EXPLICIT_BF16_ROUNDING, cast_to
from cachekern.kernels._backend import cdiv, tl, triton, use_triton
from cachekern.kernels.reuse import tile_shape

OP = "residual_capture"


# -- reference -----------------------------------------------------------------------------------

def torch_residual_capture(output, x, prev_residual=None, out_dtype=None):
    """(residual, diff_sum[B] or None, cur_sum[B]); sums in fp32 (fp64 for fp64 inputs)."""
    compute = torch.promote_types(output.dtype, torch.float32)
    residual = (output.to(compute) - x.to(compute)).to(out_dtype or output.dtype)
    rf = residual.to(compute)
    cur = rf.abs().flatten(1).sum(1)
    diff = None
    if prev_residual is not None:
        diff = (rf - prev_residual.to(compute)).abs().flatten(1).sum(1)
    return residual, diff, cur


# -- kernel -------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _residual_capture_kernel(
        OUTPUT, stride_ob, stride_or,
        X, stride_xb, stride_xr,
        PREV, stride_pb, stride_pr,
        RES, stride_rb, stride_rr,
        SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog,
        R, C, tiles_c,
        HAS_PREV: tl.constexpr, DETERMINISTIC: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, EXPLICIT_BF16: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = ((pid // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = (pid % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < R)[:, None] & (cols < C)[None, :]
        # All loads are issued before any arithmetic so their latencies overlap.
        o = tl.load(OUTPUT + b * stride_ob + rows[:, None] * stride_or + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        x = tl.load(X + b * stride_xb + rows[:, None] * stride_xr + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if HAS_PREV:
            p = tl.load(PREV + b * stride_pb + rows[:, None] * stride_pr + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
        res = cast_to(o - x, RES.dtype.element_ty, EXPLICIT_BF16)
        tl.store(RES + b * stride_rb + rows[:, None] * stride_rr + cols[None, :], res, mask=mask)
        rf = res.to(tl.float32)
        cur_acc = tl.sum(tl.sum(tl.abs(rf), axis=1), axis=0)
        diff_acc = 0.0
        if HAS_PREV:
            diff_acc = tl.sum(tl.sum(tl.abs(rf - p), axis=1), axis=0)
        write_partials(SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog, b, pid, diff_acc,
                       cur_acc, DETERMINISTIC)


def _flat_or_rows(op, named, batch):
    """[B, 1, M] views when every tensor is contiguous within a sample, else [B, rows, last]."""
    try:
        views = [t.view(batch, 1, -1) for _, t in named]
        if all(t.shape[-1] <= 1 or t.stride(2) == 1 for t in views):
            return views
    except RuntimeError:
        pass
    last = named[0][1].shape[-1]
    return [v.as_rows(op, name, t, batch, last) for name, t in named]


def _launch(out3, x3, prev3, res3, deterministic):
    B, R, C = out3.shape
    block_r, block_c = tile_shape(R, C)
    tiles_c = cdiv(C, block_c)
    programs = cdiv(R, block_r) * tiles_c  # one tile each: many programs hide memory latency
    sums = _reduce.sums_buffer(B, programs, out3.device, deterministic)
    sb, ss, sp = _reduce.write_offsets(B, programs, deterministic)
    has_prev = prev3 is not None
    _residual_capture_kernel[(programs, B)](
        out3, out3.stride(0), out3.stride(1),
        x3, x3.stride(0), x3.stride(1),
        prev3 if has_prev else x3, prev3.stride(0) if has_prev else 0,
        prev3.stride(1) if has_prev else 0,
        res3, res3.stride(0), res3.stride(1),
        sums, sb, ss, sp,
        R, C, tiles_c,
        HAS_PREV=has_prev, DETERMINISTIC=deterministic,
        BLOCK_R=block_r, BLOCK_C=block_c, EXPLICIT_BF16=EXPLICIT_BF16_ROUNDING,
        num_warps=4 if block_r * block_c <= 2048 else 8,
    )
    return _reduce.finish_sums(sums, deterministic)


def residual_capture_sums(output, x, prev_residual, deterministic, out):
    """Kernel entry point behind the public function and the custom op: writes out, returns
    [2, B] fp32 sums (diff, cur); diff is 0 without prev_residual."""
    B = output.shape[0]
    if output.numel() == 0:
        return torch.zeros((2, B), dtype=torch.float32, device=output.device)
    if not use_triton(output):
        res, diff, cur = torch_residual_capture(output, x, prev_residual, out.dtype)
        out.copy_(res)
        return torch.stack([diff if diff is not None else torch.zeros_like(cur), cur]).float()
    named = [("output", output), ("x", x), ("out", out)]
    if prev_residual is not None:
        named.append(("prev_residual", prev_residual))
    views = _flat_or_rows(OP, named, B)
    prev3 = views[3] if prev_residual is not None else None
    return _launch(views[0], views[1], prev3, views[2], deterministic)


def residual_capture(output: torch.Tensor, x: torch.Tensor,
                     prev_residual: Optional[torch.Tensor] = None, *,
                     out: Optional[torch.Tensor] = None, deterministic: bool = True
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``residual = output - x`` plus its per-sample L1 change, in one pass.

    Args:
        output, x: [B, ...] fp32/fp16/bf16 of one shape (a block's output and input).
        prev_residual: the residual stored at the last computed step, or None.
        out: where the residual goes (any float dtype, e.g. fp32 for an fp32 residual stream);
            a new tensor of output's dtype by default.
        deterministic: True (default): a fixed-order two-stage reduction, the same bits every
            run; False: atomics, the last bits may vary from run to run.

    Returns:
        (residual, diff_sum, cur_sum): diff_sum[b] = sum |residual - prev_residual| (None without
        prev_residual), cur_sum[b] = sum |residual|, both fp32 [B].
    """
    v.check_tensor(OP, "output", output)
    v.check_tensor(OP, "x", x)
    if output.dim() < 1:
        raise ValueError(f"{OP}: output must have a batch dimension, got a 0-dim tensor")
    v.check_shape(OP, "x", x, output.shape)
    for name, t in (("prev_residual", prev_residual), ("out", out)):
        if t is not None:
            v.check_tensor(OP, name, t)
            v.check_shape(OP, name, t, output.shape)
    v.check_same_device(OP, "output", output, x=x, prev_residual=prev_residual, out=out)
    for name, t in (("output", output), ("x", x), ("prev_residual", prev_residual), ("out", out)):
        if t is not None:
            v.check_last_dim_contiguous(OP, name, t)
    if out is None:
        out = torch.empty(output.shape, dtype=output.dtype, device=output.device)
    if torch.compiler.is_compiling():
        sums = torch.ops.cachekern.residual_capture_(output, x, prev_residual, bool(deterministic),
                                                     out)
    else:
        sums = residual_capture_sums(output, x, prev_residual, deterministic, out)
    return out, (sums[0] if prev_residual is not None else None), sums[1]
