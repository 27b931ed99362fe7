"""Per-sample sums from per-program partial sums.

Reduction kernels write, per sample, one partial sum of each statistic per program. Two ways to
combine them:
- deterministic (the default of the public functions): partials go to a [B, 2, P] buffer and a
  second small kernel sums them in a fixed order, so the same inputs give the same sums bit for
  bit (reruns and ranks agree);
- atomics: each program adds its partials into a zeroed [2, B] buffer; the order of the
  additions varies from run to run, so the last bits may too.

On Hopper and later the second kernel is launched as a programmatic dependent of the first
(PDL): the first lets it launch once all its programs have started, and it waits on the device
for the first's writes, so its launch no longer follows the first kernel's end.
"""

import functools

import torch

from cachekern.triton_kernels._backend import INTERPRET, next_power_of_2, tl, triton

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without programmatic dependent launch
    gdc_launch_dependents = gdc_wait = None

DEPENDENT_LAUNCH = True   # switched off by benchmarks/tune_modulated_distance.py --pdl off


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def dependent_launch(device: torch.device) -> bool:
    """Whether the partial-sum kernel is launched as a programmatic dependent of the kernel
    that writes the partials (CUDA, sm_90 or later, a Triton that has it, not interpreted)."""
    return DEPENDENT_LAUNCH and gdc_wait is not None and device.type == "cuda" and \
        not INTERPRET and _hopper_or_later(device.index if device.index is not None
                                           else torch.cuda.current_device())


def sums_buffer(batch: int, programs: int, device, deterministic: bool) -> torch.Tensor:
    if deterministic:
        return torch.empty((batch, 2, programs), dtype=torch.float32, device=device)
    return torch.zeros((2, batch), dtype=torch.float32, device=device)


if triton is not None:

    @triton.jit
    def _sum_partials_kernel(PARTIALS, SUMS, batch, programs, BLOCK: tl.constexpr,
                             PDL: tl.constexpr):
        if PDL:
            gdc_wait()  # the partials' writer has finished and its writes are visible
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
    def allow_dependent_launch(PDL: tl.constexpr):
        """Called first by a kernel that writes partials: the partial-sum kernel may launch."""
        if PDL:
            gdc_launch_dependents()

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
    pdl = dependent_launch(buffer.device)
    _sum_partials_kernel[(batch,)](buffer, sums, batch, programs, BLOCK=block, PDL=pdl,
                                   num_warps=8 if block >= 2048 else 4, launch_pdl=pdl)
    return sums


def write_offsets(batch: int, programs: int, deterministic: bool):
    """(stride of sample, stride of statistic, stride of program) for the reduction kernel's
    writes into sums_buffer(...)."""
    if deterministic:
        return 2 * programs, programs, 1
    return 1, batch, 0
