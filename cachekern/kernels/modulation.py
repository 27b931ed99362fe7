"""TeaCache's indicator in one pass: the timestep-modulated input and its L1 change per sample.

    m = norm(x) * (1 + scale) + shift          norm: LayerNorm without affine, or RMSNorm
    diff_sum[b] = sum |m[b] - prev[b]|         prev_sum[b] = sum |prev[b]|

over x[B, N, D] (any N and D, a strided batch dimension allowed), accumulated in fp32 per sample,
optionally writing m (the next step's prev, and block 0's norm1 output on a computed step). The
distance uses m rounded to the dtype it is stored in, so it measures exactly the change between
what is stored from step to step. No full-size temporaries: x and prev are read once, m written once.

References: TeaCache (Liu et al., arXiv 2411.19108) Eq. 4; the per-sample split lets a caller
decide per sample or per CFG half, and all-reduce the two partial sums across ranks.
"""

from typing import Optional, Tuple

import torch

from cachekern.kernels import _reduce
from cachekern.kernels import _validate as v
from cachekern.kernels._reduce import write_partials
from cachekern.kernels._rounding import EXPLICIT_BF16_ROUNDING, cast_to
from cachekern.kernels._backend import cdiv, next_power_of_2, tl, triton, use_triton

NORMS = {"layer": 0, "rms": 1}

OP = "modulated_distance"


# -- reference (tests, and the fallback where Triton cannot run) -----------------------------------

def torch_modulate(x, scale, shift, norm="layer", eps=1e-6, out_dtype=None):
    """m = norm(x) * (1 + scale) + shift, computed in fp32 (fp64 for fp64 inputs), in out_dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    if norm == "layer":
        xf = torch.nn.functional.layer_norm(xf, (x.shape[-1],), eps=eps)
    else:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if scale is not None:
        s = scale.to(compute)
        xf = xf * (1 + (s[:, None, :] if s.dim() == 2 else s))
    if shift is not None:
        h = shift.to(compute)
        xf = xf + (h[:, None, :] if h.dim() == 2 else h)
    return xf.to(out_dtype or x.dtype)


def torch_modulated_distance(x, prev, scale, shift, norm="layer", eps=1e-6, out_dtype=None):
    """(m, diff_sum[B], prev_sum[B]): the plain PyTorch form of the fused kernel. Sums are fp32
    (fp64 for fp64 inputs, which is how the tests build their oracle)."""
    m = torch_modulate(x, scale, shift, norm, eps, out_dtype)
    compute = torch.promote_types(m.dtype, torch.float32)
    p = prev.to(compute)
    return m, (m.to(compute) - p).abs().flatten(1).sum(1), p.abs().flatten(1).sum(1)


# -- kernel -------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _modulated_distance_kernel(
        X, stride_xb, stride_xn,
        PREV, stride_pb, stride_pn,
        SCALE, stride_sb,
        SHIFT, stride_hb,
        OUT, stride_ob, stride_on,
        SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog,
        N, D, eps,
        NORM: tl.constexpr,  # 0: LayerNorm, 1: RMSNorm (constexpr so the branch compiles away)
        HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
        HAS_PREV: tl.constexpr, WRITE_OUT: tl.constexpr, DETERMINISTIC: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_CHUNKS: tl.constexpr,
        EXPLICIT_BF16: tl.constexpr,
    ):
        """A tile of BLOCK_N rows per program. When the row is one tile (NUM_CHUNKS == 1), x and
        prev are loaded once, up front. Otherwise the row is walked in chunks of BLOCK_D
        columns: pass 1 reads x for the row statistics, pass 2 reads x again (from L2) with
        prev, and writes m; the chunk loops are unrolled so independent loads overlap."""
        pid = tl.program_id(0)
        # int64: B * N * D exceeds 2**31 at video sizes (Wan-14B 720p: 3.9e8 per sample).
        b = tl.program_id(1).to(tl.int64)
        rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = rows < N
        x_rows = X + b * stride_xb + rows[:, None] * stride_xn
        p_rows = PREV + b * stride_pb + rows[:, None] * stride_pn
        # Pass 1. Sums are shifted by each row's first element, so the variance does not
        # cancel catastrophically when a row's mean is large against its spread.
        pivot = tl.load(X + b * stride_xb + rows * stride_xn, mask=row_ok, other=0.0).to(tl.float32)
        if NUM_CHUNKS == 1:
            # The whole row in one tile: x and prev are loaded together, before the statistics.
            # TeaCache writes m over prev (out_modulated=prev); chunk by chunk, the compiler
            # cannot move the next chunk's prev load above this chunk's store to a pointer that
            # may alias it, and every chunk waits out a full memory latency (76.9 µs instead of
            # 28.0 at FLUX size on an H200, benchmarks/RESULTS.md).
            cols = tl.arange(0, BLOCK_D)
            whole_mask = row_ok[:, None] & (cols < D)[None, :]
            x_whole = tl.load(x_rows + cols[None, :], mask=whole_mask, other=0.0).to(tl.float32)
            if HAS_PREV:
                p_whole = tl.load(p_rows + cols[None, :], mask=whole_mask, other=0.0).to(tl.float32)
        s1 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for chunk in tl.static_range(NUM_CHUNKS):
            start = chunk * BLOCK_D
            cols = start + tl.arange(0, BLOCK_D)
            mask = row_ok[:, None] & (cols < D)[None, :]
            if NUM_CHUNKS == 1:
                x = x_whole
            else:
                x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            if NORM == 0:
                d = tl.where(mask, x - pivot[:, None], 0.0)
                s1 += d
                s2 += d * d
            else:
                s2 += x * x
        if NORM == 0:
            # x - mean is formed as (x - pivot) - shifted_mean: x - pivot is exact, while the
            # mean itself, rounded to fp32 near a large value, would be off by half an ulp of it.
            shifted_mean = tl.sum(s1, axis=1) / D
            var = tl.maximum(tl.sum(s2, axis=1) / D - shifted_mean * shifted_mean, 0.0)
            center = pivot
        else:
            var = tl.sum(s2, axis=1) / D
            shifted_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
            center = tl.zeros([BLOCK_N], dtype=tl.float32)
        rstd = tl.rsqrt(var + eps)
        # Pass 2.
        diff_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        prev_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for chunk in tl.static_range(NUM_CHUNKS):
            start = chunk * BLOCK_D
            cols = start + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            mask = row_ok[:, None] & col_ok[None, :]
            if NUM_CHUNKS == 1:
                x = x_whole
                if HAS_PREV:
                    p = p_whole
            else:
                x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                if HAS_PREV:
                    p = tl.load(p_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = ((x - center[:, None]) - shifted_mean[:, None]) * rstd[:, None]
            if HAS_SCALE:
                scale = tl.load(SCALE + b * stride_sb + cols, mask=col_ok, other=0.0)
                y = y * (1.0 + scale.to(tl.float32))[None, :]
            if HAS_SHIFT:
                shift = tl.load(SHIFT + b * stride_hb + cols, mask=col_ok, other=0.0)
                y = y + shift.to(tl.float32)[None, :]
            # The stored value is what the next step compares against: measure that one.
            m = cast_to(y, OUT.dtype.element_ty, EXPLICIT_BF16)
            if WRITE_OUT:
                tl.store(OUT + b * stride_ob + rows[:, None] * stride_on + cols[None, :], m,
                         mask=mask)
            if HAS_PREV:
                # Masked lanes would contribute |shift|: zero them. NaN or Inf in real lanes
                # propagates into the sums.
                diff_acc += tl.where(mask, tl.abs(m.to(tl.float32) - p), 0.0)
                prev_acc += tl.abs(p)
        if HAS_PREV:
            write_partials(SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog, b, pid,
                           tl.sum(tl.sum(diff_acc, axis=1), axis=0),
                           tl.sum(tl.sum(prev_acc, axis=1), axis=0), DETERMINISTIC)


if triton is not None:

    @triton.jit
    def _modulated_distance_rows_kernel(
        X, stride_xb, stride_xn,
        PREV, stride_pb, stride_pn,
        SCALE, stride_sb,
        SHIFT, stride_hb,
        OUT, stride_ob, stride_on,
        SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog,
        N, D, eps, tiles,
        NORM: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
        HAS_PREV: tl.constexpr, WRITE_OUT: tl.constexpr, DETERMINISTIC: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
        EXPLICIT_BF16: tl.constexpr,
    ):
        """Whole rows on a persistent grid: program pid walks the tiles of BLOCK_N rows pid,
        pid + programs, ..., and Triton software-pipelines the walk (STAGES): the next tiles'
        x and prev are fetched asynchronously into shared memory while this tile is reduced,
        modulated and stored. The bytes in flight then cost no registers, which is what held
        the one-tile-per-program kernel back at FLUX size (few resident programs, each waiting
        out its loads; benchmarks/RESULTS.md). One pair of partial sums per program."""
        pid = tl.program_id(0)
        programs = tl.num_programs(0)
        b = tl.program_id(1).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        if HAS_SCALE:
            one_plus_scale = 1.0 + tl.load(SCALE + b * stride_sb + cols, mask=col_ok,
                                           other=0.0).to(tl.float32)
        if HAS_SHIFT:
            shift = tl.load(SHIFT + b * stride_hb + cols, mask=col_ok, other=0.0).to(tl.float32)
        diff_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        prev_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for tile in tl.range(pid, tiles, programs, num_stages=STAGES):
            rows = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask = (rows < N)[:, None] & col_ok[None, :]
            x = tl.load(X + b * stride_xb + rows[:, None] * stride_xn + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            if HAS_PREV:
                p = tl.load(PREV + b * stride_pb + rows[:, None] * stride_pn + cols[None, :],
                            mask=mask, other=0.0).to(tl.float32)
            if NORM == 0:
                # Two passes over the row in registers. x - mean is exact; what is left in the
                # centred row is the mean's own rounding (~1e-7 of the mean), below what a
                # 16-bit m can show. For fp32 outputs a second mean removes it, so a row whose
                # mean is large against its spread keeps fp32 precision; 16-bit outputs skip
                # that round of reductions.
                mean = tl.sum(x, axis=1) / D
                centred = tl.where(mask, x - mean[:, None], 0.0)
                if OUT.dtype.element_ty == tl.float32:
                    centred = tl.where(mask, centred - (tl.sum(centred, axis=1) / D)[:, None],
                                       0.0)
                var = tl.sum(centred * centred, axis=1) / D
            else:
                centred = x
                var = tl.sum(x * x, axis=1) / D
            y = centred * tl.rsqrt(var + eps)[:, None]
            if HAS_SCALE:
                y = y * one_plus_scale[None, :]
            if HAS_SHIFT:
                y = y + shift[None, :]
            # The stored value is what the next step compares against: measure that one.
            m = cast_to(y, OUT.dtype.element_ty, EXPLICIT_BF16)
            if WRITE_OUT:
                tl.store(OUT + b * stride_ob + rows[:, None] * stride_on + cols[None, :], m,
                         mask=mask)
            if HAS_PREV:
                # NaN or Inf in real lanes propagates into the sums; masked lanes add nothing.
                diff_acc += tl.sum(tl.where(mask, tl.abs(m.to(tl.float32) - p), 0.0), axis=1)
                prev_acc += tl.sum(tl.abs(p), axis=1)
        if HAS_PREV:
            write_partials(SUMS, sums_stride_b, sums_stride_stat, sums_stride_prog, b, pid,
                           tl.sum(diff_acc, axis=0), tl.sum(prev_acc, axis=0), DETERMINISTIC)


CHUNK = 1024  # columns per chunk when the row is walked in chunks
WHOLE_ROW = 8192  # in place, rows up to this wide (every model's; Wan-14B: 5120) are one tile
# In place, rows up to this wide take the pipelined persistent kernel (FLUX, HunyuanVideo:
# 3072), with these defaults from benchmarks/tune_modulated_distance.py on an H200. Wider rows
# (Wan-14B: 5120) keep one whole-row tile per program: their pipeline stages would not fit in
# shared memory at two programs per SM.
PIPELINED_ROW = 4096
PIPELINED = dict(block_n=2, num_warps=4, stages=3, programs_per_sm=2)
_INTERPRETED_SMS = 3  # the interpreter has no SMs; a few programs still walk several tiles each


def _multiprocessors(device) -> int:
    if device.type != "cuda":
        return _INTERPRETED_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(x, prev, scale, shift, norm_id, eps, out, deterministic, *, block_d=None,
            block_n=None, num_warps=None, pipelined=None, stages=None, programs_per_sm=None):
    """Runs the kernel; returns the [2, B] sums (or None without prev). Kernel, tile shape and
    grid can be overridden for tuning (benchmarks/tune_modulated_distance.py)."""
    B, N, D = x.shape
    width = next_power_of_2(D)
    aliased = prev is not None and out is not None and \
        out.untyped_storage().data_ptr() == prev.untyped_storage().data_ptr()
    if pipelined is None:
        pipelined = aliased and width <= PIPELINED_ROW and block_d is None
    if pipelined:
        return _launch_pipelined(x, prev, scale, shift, norm_id, eps, out, deterministic,
                                 block_n or PIPELINED["block_n"],
                                 num_warps or PIPELINED["num_warps"],
                                 stages or PIPELINED["stages"],
                                 programs_per_sm or PIPELINED["programs_per_sm"])
    if block_d is None:
        # Writing m over prev (TeaCache's call) needs whole rows: chunk by chunk the loads wait
        # on the stores (see the kernel). With separate buffers, chunks of 1024 are faster (the
        # masked lanes of a power-of-two row tile cost more than they save). Both measured on
        # an H200 (benchmarks/tune_modulated_distance.py, RESULTS.md).
        block_d = width if aliased and width <= WHOLE_ROW else min(width, CHUNK)
    num_warps = num_warps or 4
    block_n = block_n or max(1, min(64, CHUNK // block_d))  # narrow rows: several per program
    programs = cdiv(N, block_n)  # one tile each: many programs hide memory latency
    return _run(_modulated_distance_kernel, programs, (), x, prev, scale, shift, norm_id, eps,
                out, deterministic, BLOCK_N=block_n, BLOCK_D=block_d,
                NUM_CHUNKS=cdiv(D, block_d), num_warps=num_warps)


def _launch_pipelined(x, prev, scale, shift, norm_id, eps, out, deterministic, block_n,
                      num_warps, stages, programs_per_sm):
    B, N, D = x.shape
    tiles = cdiv(N, block_n)
    programs = min(tiles, max(1, programs_per_sm * _multiprocessors(x.device) // B))
    return _run(_modulated_distance_rows_kernel, programs, (tiles,), x, prev, scale, shift,
                norm_id, eps, out, deterministic, BLOCK_N=block_n, BLOCK_D=next_power_of_2(D),
                STAGES=stages, num_warps=num_warps)


def _run(kernel, programs, extra_args, x, prev, scale, shift, norm_id, eps, out, deterministic,
         **tile):
    """Launches either kernel over (programs, B) with the arguments they share; returns the
    [2, B] sums (or None without prev)."""
    B, N, D = x.shape
    has_prev = prev is not None
    sums = _reduce.sums_buffer(B, programs, x.device, deterministic) if has_prev else None
    sb, ss, sp = _reduce.write_offsets(B, programs, deterministic)
    write_out = out is not None
    if not write_out:
        out = x  # never written (WRITE_OUT is False); only gives the kernel a dtype to round to
    kernel[(programs, B)](
        x, x.stride(0), x.stride(1),
        prev if has_prev else x, prev.stride(0) if has_prev else 0, prev.stride(1) if has_prev else 0,
        scale if scale is not None else x, v.batch_stride(scale),
        shift if shift is not None else x, v.batch_stride(shift),
        out, out.stride(0), out.stride(1),
        sums if has_prev else x, sb, ss, sp,
        N, D, eps, *extra_args,
        NORM=norm_id, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_PREV=has_prev, WRITE_OUT=write_out, DETERMINISTIC=deterministic,
        EXPLICIT_BF16=EXPLICIT_BF16_ROUNDING, **tile,
    )
    return _reduce.finish_sums(sums, deterministic) if has_prev else None


# -- host functions ------------------------------------------------------------------------------

def _validate(op, x, prev, scale, shift, norm, eps, out):
    v.check_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must have shape [B, N, D], got {tuple(x.shape)}")
    v.check_last_dim_contiguous(op, "x", x)
    B, N, D = x.shape
    if norm not in NORMS:
        raise ValueError(f"{op}: norm must be 'layer' or 'rms', got {norm!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    for name, t in (("prev", prev), ("out_modulated", out)):
        if t is not None:
            v.check_tensor(op, name, t)
            v.check_shape(op, name, t, x.shape)
            v.check_last_dim_contiguous(op, name, t)
    v.check_same_device(op, "x", x, prev=prev, out_modulated=out)
    v.check_per_sample_channels(op, "scale", scale, B, D, x.device)
    v.check_per_sample_channels(op, "shift", shift, B, D, x.device)


def modulated_distance_sums(x, prev, scale, shift, norm, eps, out_modulated, deterministic):
    """The kernel entry point behind the public function and the custom op: [2, B] fp32 sums."""
    B, N, D = x.shape
    if B == 0 or N == 0 or D == 0:
        if out_modulated is not None and out_modulated.numel():
            out_modulated.copy_(torch_modulate(x, scale, shift, norm, eps, out_modulated.dtype))
        return torch.zeros((2, B), dtype=torch.float32, device=x.device)
    if use_triton(x):
        return _launch(x, prev, scale, shift, NORMS[norm], float(eps), out_modulated, deterministic)
    m, diff, prev_sum = torch_modulated_distance(
        x, prev, scale, shift, norm, eps, out_modulated.dtype if out_modulated is not None else None)
    if out_modulated is not None:
        out_modulated.copy_(m)
    return torch.stack([diff, prev_sum]).to(torch.float32)


def modulate_into(x, scale, shift, norm, eps, out):
    """Writes m = norm(x) * (1 + scale) + shift into out."""
    if x.numel() == 0:
        return
    if use_triton(x):
        _launch(x, None, scale, shift, NORMS[norm], float(eps), out, False)
    else:
        out.copy_(torch_modulate(x, scale, shift, norm, eps, out.dtype))


def modulated_distance(x: torch.Tensor, prev: torch.Tensor, scale: Optional[torch.Tensor],
                       shift: Optional[torch.Tensor], *, norm: str = "layer", eps: float = 1e-6,
                       out_modulated: Optional[torch.Tensor] = None,
                       deterministic: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample L1 change of the modulated input, in one pass over x.

    Args:
        x: [B, N, D] fp32/fp16/bf16, last dimension contiguous (the batch may be strided).
        prev: [B, N, D], the previous step's modulated input.
        scale, shift: [B, D] or [D]; None to leave out (RMSNorm-only families pass shift=None).
        norm: "layer" (LayerNorm without affine) or "rms" (RMSNorm).
        eps: the norm's epsilon.
        out_modulated: [B, N, D]; when given, m is written there (it may be prev itself).
        deterministic: True (default): a fixed-order two-stage reduction, so the same inputs give
            the same sums bit for bit (reruns and ranks decide alike); it also measured faster than
            atomics on an H200 (benchmarks/RESULTS.md). False: atomics, last bits may vary.

    Returns:
        (diff_sum, prev_sum): fp32 [B]; ``diff_sum[b] / prev_sum[b]`` is TeaCache's relative L1.
        NaN or Inf anywhere in a sample makes its sums NaN or Inf, never 0.
    """
    _validate(OP, x, prev, scale, shift, norm, eps, out_modulated)
    if prev is None:
        raise ValueError(f"{OP}: prev is required; use modulate() for the first step")
    if torch.compiler.is_compiling():
        sums = torch.ops.cachekern.modulated_distance(x, prev, scale, shift, norm, float(eps),
                                                      out_modulated, bool(deterministic))
    else:
        sums = modulated_distance_sums(x, prev, scale, shift, norm, eps, out_modulated,
                                       deterministic)
    return sums[0], sums[1]


def modulate(x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], *,
             norm: str = "layer", eps: float = 1e-6,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """m = norm(x) * (1 + scale) + shift alone (the first step, where there is no prev yet)."""
    _validate("modulate", x, None, scale, shift, norm, eps, out)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if torch.compiler.is_compiling():
        torch.ops.cachekern.modulate_(x, scale, shift, norm, float(eps), out)
    else:
        modulate_into(x, scale, shift, norm, eps, out)
    return out
