"""TeaCache's decision taken on the device, so that a CUDA graph can branch on it with no host
read (TeaCache(cuda_graphs=True), cachekern.graphed_step).

One single-program kernel does what `TeaCacheRuntime.decide` and `TeaCache.decide` do on the host
for a global decision: detect a new generation (the timestep went back up), advance the step,
form the relative L1 distance from the per-sample sums, rescale it by the polynomial, accumulate,
compare with the threshold, and write the decision as two flags (compute, skip: the conditions
of the graph's two branches) and the call's record for the host to read later.

The host does this arithmetic in Python floats (IEEE float64, every operation rounded on its
own), and decisions must not depend on where they were taken: the kernel works in float64, sums
the samples in the same order, evaluates the polynomial by the same Horner steps and is launched
with floating-point contraction off (no fused multiply-add), so both give the same bits. All
float parameters travel in a float64 tensor: Triton would pass a Python float as float32.
"""

import torch

from cachekern.triton_kernels._backend import tl, triton

# The branch state the device keeps between calls (float64 vector).
LAST_TIMESTEP, STEP, ACCUMULATED, SKIPS, HAS_RESIDUAL, HAS_LAST_TIMESTEP = range(6)
STATE_SIZE = 6
# One call's record, as the host's history holds it.
RECORD_FIELDS = ("step", "timestep", "rel_l1", "accumulated", "computed")

if triton is not None:

    @triton.jit
    def _decide_kernel(DIFF, PREV, TIMESTEP, STATE, PARAMS, COEF, RECORD, COMPUTE, SKIP,
                       warmup_steps, num_steps, max_skips,
                       BATCH: tl.constexpr, N_COEF: tl.constexpr,
                       COMPUTE_LAST: tl.constexpr, CLAMP: tl.constexpr):
        # The timestep as the host reads it: rounded to float32, then exact in float64.
        t = tl.load(TIMESTEP).to(tl.float32).to(tl.float64)
        last_t = tl.load(STATE + 0)
        step = tl.load(STATE + 1)
        acc = tl.load(STATE + 2)
        skips = tl.load(STATE + 3)
        has_residual = tl.load(STATE + 4) != 0
        has_last = tl.load(STATE + 5) != 0
        threshold = tl.load(PARAMS + 0)

        new_generation = has_last & (t > last_t)
        step = tl.where(new_generation, -1.0, step) + 1.0
        acc = tl.where(new_generation, 0.0, acc)
        skips = tl.where(new_generation, 0.0, skips)
        has_residual = has_residual & (not new_generation)

        # sum() of a Python list: left to right, from the first element.
        diff = tl.load(DIFF).to(tl.float64)
        prev = tl.load(PREV).to(tl.float64)
        for b in tl.static_range(1, BATCH):
            diff = diff + tl.load(DIFF + b).to(tl.float64)
            prev = prev + tl.load(PREV + b).to(tl.float64)
        nan = float("nan")
        rel = tl.where(prev != 0.0, diff / tl.where(prev != 0.0, prev, 1.0), nan)
        rel = tl.where(new_generation, nan, rel)

        forced = new_generation | (not has_residual) | (step < warmup_steps)
        if COMPUTE_LAST:
            forced = forced | (step >= num_steps - 1)
        rel_finite = (rel == rel) & (tl.abs(rel) != float("inf"))

        y = rel
        if N_COEF > 0:
            y = rel * 0.0
            for i in tl.static_range(N_COEF):
                y = y * rel + tl.load(COEF + i)
        if CLAMP:
            y = tl.where(y < 0.0, 0.0, y)
        total = acc + y
        limit_reached = (max_skips > 0) & (skips >= max_skips)
        total_finite = (total == total) & (tl.abs(total) != float("inf"))
        skip = (not forced) & rel_finite & (threshold > 0.0) & (total < threshold) & \
            (not limit_reached) & total_finite

        acc = tl.where(skip, total, 0.0)
        skips = tl.where(skip, skips + 1.0, 0.0)
        tl.store(STATE + 0, t)
        tl.store(STATE + 1, step)
        tl.store(STATE + 2, acc)
        tl.store(STATE + 3, skips)
        tl.store(STATE + 4, tl.where(has_residual | (not skip), 1.0, 0.0))
        tl.store(STATE + 5, 1.0)
        tl.store(RECORD + 0, step)
        tl.store(RECORD + 1, t)
        tl.store(RECORD + 2, rel)
        tl.store(RECORD + 3, acc)
        tl.store(RECORD + 4, tl.where(skip, 0.0, 1.0))
        tl.store(COMPUTE, not skip)
        tl.store(SKIP, skip)


class DeviceDecision:
    """The buffers and constants of one branch's device decision: `state` (STATE_SIZE float64,
    see the indices above), `record` (the last call's RECORD_FIELDS), and the two flags a
    graph's conditional nodes read (`compute`, `skip`: bool scalars)."""

    def __init__(self, policy, polynomial, num_steps, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.state = torch.zeros(STATE_SIZE, **f64)
        self.record = torch.zeros(len(RECORD_FIELDS), **f64)
        self.compute = torch.ones((), dtype=torch.bool, device=device)
        self.skip = torch.zeros((), dtype=torch.bool, device=device)
        self.params = torch.tensor([float(policy.threshold)], **f64)
        coefficients = [float(c) for c in polynomial] if polynomial is not None else []
        self.coefficients = torch.tensor(coefficients or [0.0], **f64)
        self.n_coefficients = len(coefficients)
        self.policy = policy
        self.num_steps = num_steps

    def __call__(self, diff_sum, prev_sum, timestep):
        """Decides for this call from the per-sample sums (fp32 [B]) and the timestep tensor
        (element 0 is read): updates `state`, writes `record`, `compute` and `skip`."""
        if triton is None:
            raise RuntimeError("TeaCache: the device decision needs Triton")
        policy = self.policy
        compute_last = policy.compute_last_step and self.num_steps is not None
        _decide_kernel[(1,)](
            diff_sum, prev_sum, timestep.reshape(-1), self.state, self.params,
            self.coefficients, self.record, self.compute, self.skip,
            policy.warmup_steps, self.num_steps if compute_last else 0,
            policy.max_consecutive_skips or 0,
            BATCH=diff_sum.shape[0], N_COEF=self.n_coefficients,
            COMPUTE_LAST=compute_last, CLAMP=policy.clamp,
            enable_fp_fusion=False)

    # -- the host's view of the state -----------------------------------------------------------
    def load(self, branch_state):
        """Starts from the host's state of the branch (what eager calls left)."""
        s = branch_state
        values = [s.last_timestep if s.last_timestep is not None else 0.0, float(s.step),
                  s.accumulated if s.accumulated is not None else 0.0,
                  float(s.skips or 0), float(s.residual is not None),
                  float(s.last_timestep is not None)]
        # From pinned memory without waiting: the graphed path makes no host synchronisation.
        host = torch.tensor(values, dtype=torch.float64)
        if self.state.is_cuda:
            host = host.pin_memory()
        self.state.copy_(host, non_blocking=True)

    def store(self, branch_state):
        """Hands the state back to the host (a synchronisation: only when an eager call follows
        graphed ones)."""
        values = self.state.tolist()
        s = branch_state
        s.last_timestep = values[LAST_TIMESTEP] if values[HAS_LAST_TIMESTEP] else None
        s.step = int(values[STEP])
        s.accumulated = values[ACCUMULATED]
        s.skips = int(values[SKIPS])
        if not values[HAS_RESIDUAL]:
            s.residual = None


def record_from_row(row, branch):
    """A history record (as TeaCacheRuntime.record writes it) from one logged row."""
    step, timestep, rel, accumulated, computed = row
    return dict(step=int(step), branch=branch, timestep=timestep, computed=bool(computed),
                rel_l1=rel, accumulated=accumulated)


__all__ = ["DeviceDecision", "RECORD_FIELDS", "record_from_row"]
