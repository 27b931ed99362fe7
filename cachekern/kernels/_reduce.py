"""Per-sample sums from per-program partial sums.

Reduction kernels write, per sample, one partial sum of each statistic per program. Two ways to
combine them:
- deterministic (the default of the public functions): partials go to a [B, 2, P] buffer and a
  second small kernel sums them in a fixed order, so the same inputs give the same sums bit for
  bit (reruns and ranks agree);
- atomics: each program adds its partials into a zeroed [2, B] buffer; the order of the
  additions varies from run to run, so the last bits may too.
"""

import torch

from cachekern.kernels._backend import next_power_of_2, tl, triton


def sums_buffer(batch: int, programs: int, device, deterministic: bool) -> torch.Tensor:
    if deterministic:
        return torch.empty((batch, 2, programs), dtype=torch.float32, device=device)
    return torch.zeros((2, batch), dtype=torch.float32, device=device)


if triton is not None:

    @triton.jit
    def _sum_partials_kernel(PARTIALS, SUMS, batch, programs, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        base = PARTIALS + b * 2 * programs
        first = tl.zeros([BLOCK], dtype=tl.float32)
        second = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, programs, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            mask = idx < programs
            first += tl.load(base + idx, mask=mask, other=0.0)
            second += tl.load(base + programs + idx, mask=mask, other=0.0)
        tl.store(SUMS + b, tl.sum(first, axis=0))
        tl.store(SUMS + batch + b, tl.sum(second, axis=0))


if triton is not None:

    @triton.jit
    def write_partials(SUMS, stride_b, stride_stat, stride_prog, b, pid, first, second,
                       DETERMINISTIC: tl.constexpr):
        """Writes one program's partial sums of sample b (see sums_buffer / write_offsets)."""
        dst = SUMS + b * stride_b + pid * stride_prog
        if DETERMINISTIC:
            tl.store(dst, first)
            tl.store(dst + stride_stat, second)
        else:
            tl.atomic_add(dst, first)
            tl.atomic_add(dst + stride_stat, second)


def finish_sums(buffer: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """The [2, B] per-sample sums from what the reduction kernel wrote into `buffer`."""
    if not deterministic:
        return buffer
    batch, _, programs = buffer.shape
    sums = torch.empty((2, batch), dtype=torch.float32, device=buffer.device)
    # Wide blocks: a FLUX-size call has ~4096 partials per sample, read in one step rather than
    # four dependent ones (this kernel is pure latency; a few µs of a ~25 µs decision).
    block = min(8192, next_power_of_2(programs))
    _sum_partials_kernel[(batch,)](buffer, sums, batch, programs, BLOCK=block,
                                   num_warps=8 if block >= 2048 else 4)
    return sums


def write_offsets(batch: int, programs: int, deterministic: bool):
    """(stride of sample, stride of statistic, stride of program) for the reduction kernel's
    writes into sums_buffer(...)."""
    if deterministic:
        return 2 * programs, programs, 1
    return 1, batch, 0
