"""Per-sample sums from per-program partial sums, inside the reduction kernel itself.

Each program of a reduction kernel computes, per sample, a partial sum of two statistics. Two
ways to combine them, both in the same launch:
- deterministic (the default of the public functions): every program stores its partials in a
  [B, 2, P] buffer and counts itself done on a per-sample counter; the program that finishes
  last sums all partials in a fixed order. The same inputs give the same sums bit for bit (reruns
  and ranks agree), and no second kernel is launched.
- atomics: each program adds its partials into a zeroed [2, B] buffer; the order of additions
  varies from run to run, so the last bits may too.

The counters are zero before a launch and the last program sets them back to zero, so one
buffer per (device, stream) serves every launch on that stream without a memset: launches on one
stream run one after another. While a CUDA graph is being captured, each launch gets its own
zeroed counters instead (a memset node in the graph), so a graph never shares counters with
launches outside it.
"""

import torch

from cachekern.triton_kernels._backend import next_power_of_2, tl, triton

_counters = {}


def _counters_for(device: torch.device, batch: int) -> torch.Tensor:
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(batch, dtype=torch.int32, device=device)
        key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    else:
        key = (device.type, device.index)
    counters = _counters.get(key)
    if counters is None or counters.numel() < batch:
        counters = _counters[key] = torch.zeros(max(batch, 8), dtype=torch.int32, device=device)
    return counters


class Reduction:
    """The buffers one reduction launch writes its per-sample sums through."""

    def __init__(self, batch: int, programs: int, device: torch.device, deterministic: bool):
        self.deterministic = deterministic
        self.programs = programs
        if deterministic:
            self.sums = torch.empty((2, batch), dtype=torch.float32, device=device)
            self.partials = torch.empty((batch, 2, programs), dtype=torch.float32, device=device)
            self.counters = _counters_for(device, batch)
        else:
            self.sums = torch.zeros((2, batch), dtype=torch.float32, device=device)
            self.partials = self.counters = self.sums  # unused: the kernel never touches them
        # Reading the partials is the last program's tail: wide steps, few of them.
        self.final_block = min(2048, next_power_of_2(programs))

    def kernel_args(self):
        """(SUMS, PARTIALS, COUNTERS, programs) in the kernels' argument order."""
        return self.sums, self.partials, self.counters, self.programs


if triton is not None:

    @triton.jit
    def publish_sums(SUMS, PARTIALS, COUNTERS, programs, batch, b, pid, first, second,
                     DETERMINISTIC: tl.constexpr, FINAL_BLOCK: tl.constexpr):
        """Combines this program's partial sums of sample b into SUMS[0, b] and SUMS[1, b]."""
        if DETERMINISTIC:
            base = PARTIALS + b * 2 * programs
            tl.store(base + pid, first)
            tl.store(base + programs + pid, second)
            # acq_rel: this program's partials are visible to whichever program counts last,
            # and that program sees every partial stored before the others counted.
            done = tl.atomic_add(COUNTERS + b, 1, sem="acq_rel")
            if done == programs - 1:
                acc_first = tl.zeros([FINAL_BLOCK], dtype=tl.float32)
                acc_second = tl.zeros([FINAL_BLOCK], dtype=tl.float32)
                for start in range(0, programs, FINAL_BLOCK):
                    idx = start + tl.arange(0, FINAL_BLOCK)
                    mask = idx < programs
                    # .cg: read through L2, never a stale line of this SM's L1.
                    acc_first += tl.load(base + idx, mask=mask, other=0.0, cache_modifier=".cg")
                    acc_second += tl.load(base + programs + idx, mask=mask, other=0.0,
                                          cache_modifier=".cg")
                tl.store(SUMS + b, tl.sum(acc_first, axis=0))
                tl.store(SUMS + batch + b, tl.sum(acc_second, axis=0))
                tl.store(COUNTERS + b, 0)  # ready for the next launch on this stream
        else:
            tl.atomic_add(SUMS + b, first)
            tl.atomic_add(SUMS + batch + b, second)
