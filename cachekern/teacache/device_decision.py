"""One CFG branch's TeaCache decision on the device (TeaCache(cuda_graphs=True)): the buffers the
decision kernel (cachekern.kernels.teacache_decision) works on, the policy's constants, and the
hand-over of the branch's state between the host (eager calls) and the device (graphed calls)."""

import torch

from cachekern.kernels import teacache_decision as d
from cachekern.kernels.teacache_decision import teacache_decide

RECORD_FIELDS = d.RECORD_FIELDS


class DeviceDecision:
    """The buffers and constants of one branch's device decision: `state` (float64, see the
    kernel's indices), `record` (the last call's record), and the flags a graph's conditional
    nodes read (`compute`, `skip`: bool scalars; per-sample decisions: `patterns`, one flag per
    pattern p of samples that compute, sample b computing when bit b of p is set, and
    `indices`, each pattern's sample indices on the device)."""

    def __init__(self, policy, polynomial, num_steps, device, batch=1):
        f64 = dict(dtype=torch.float64, device=device)
        self.per_sample = policy.decision == "per_sample"
        self.batch = batch
        self.state = torch.zeros(d.state_size(batch, self.per_sample), **f64)
        self.record = torch.zeros(d.record_size(batch, self.per_sample), **f64)
        self.compute = torch.ones((), dtype=torch.bool, device=device)
        self.skip = torch.zeros((), dtype=torch.bool, device=device)
        self.patterns = self.indices = None
        if self.per_sample:
            self.patterns = torch.zeros(2 ** batch, dtype=torch.bool, device=device)
            self.indices = {p: torch.tensor([b for b in range(batch) if p >> b & 1],
                                            device=device) for p in range(1, 2 ** batch - 1)}
        self.params = torch.tensor([float(policy.threshold)], **f64)
        coefficients = [float(c) for c in polynomial] if polynomial is not None else []
        self.coefficients = torch.tensor(coefficients or [0.0], **f64)
        self.n_coefficients = len(coefficients)
        self.policy = policy
        self.num_steps = num_steps
        # A static schedule (compute_steps) decides instead of the indicator.
        self.schedule = None if policy.compute_steps is None else \
            torch.tensor(policy.compute_steps, dtype=torch.int8, device=device)
        # What a forecast reads and writes (cachekern.teacache.device_forecast); set by the
        # graph that owns the decision.
        self.forecast = None

    def __call__(self, diff_sum, prev_sum, timestep):
        """Decides for this call from the per-sample sums (fp32 [B]; None for a static
        schedule) and the timestep tensor (element 0 is read): updates `state`, writes `record`,
        `compute` and `skip`, then the forecast's plan."""
        policy = self.policy
        compute_last = policy.compute_last_step and self.num_steps is not None
        teacache_decide(diff_sum, prev_sum, timestep, self.state, self.params, self.coefficients,
                        self.n_coefficients, self.record, self.compute, self.skip,
                        warmup_steps=policy.warmup_steps,
                        num_steps=self.num_steps if compute_last else 0,
                        max_skips=policy.max_consecutive_skips or 0,
                        compute_last=compute_last, clamp=policy.clamp, schedule=self.schedule,
                        patterns=self.patterns, batch=self.batch)
        if self.forecast is not None:
            self.forecast(self.record)

    # -- the host's view of the state -----------------------------------------------------------
    def load(self, branch_state):
        """Starts from the host's state of the branch (what eager calls left)."""
        s = branch_state
        per_sample = self.per_sample
        values = [s.last_timestep if s.last_timestep is not None else 0.0, float(s.step),
                  s.accumulated if s.accumulated is not None and not per_sample else 0.0,
                  float(s.skips or 0) if not per_sample else 0.0, float(s.residual is not None),
                  float(s.last_timestep is not None)]
        if per_sample:
            values += [float(a) for a in s.accumulated or [0.0] * self.batch]
            values += [float(k) for k in s.skips or [0] * self.batch]
        # From pinned memory without waiting: the graphed path makes no host synchronisation.
        host = torch.tensor(values, dtype=torch.float64)
        if self.state.is_cuda:
            host = host.pin_memory()
        self.state.copy_(host, non_blocking=True)
        if self.forecast is not None:
            self.forecast.load(branch_state)

    def store(self, branch_state):
        """Hands the state back to the host (a synchronisation: only when an eager call follows
        graphed ones)."""
        values = self.state.tolist()
        s = branch_state
        s.last_timestep = values[d.LAST_TIMESTEP] if values[d.HAS_LAST_TIMESTEP] else None
        s.step = int(values[d.STEP])
        if self.per_sample:
            b, start = self.batch, d.STATE_SIZE
            s.accumulated = values[start:start + b]
            s.skips = [int(k) for k in values[start + b:start + 2 * b]]
        else:
            s.accumulated = values[d.ACCUMULATED]
            s.skips = int(values[d.SKIPS])
        if not values[d.HAS_RESIDUAL]:
            s.residual = None
        if self.forecast is not None:
            self.forecast.store(branch_state)


def record_from_row(row, branch, batch=None):
    """A history record (as TeaCacheRuntime.record writes it) from one logged row; `batch`:
    the row holds per-sample decisions of that many samples (computed is then a list)."""
    if batch is None:
        step, timestep, rel, accumulated, computed = row[:len(RECORD_FIELDS)]
        return dict(step=int(step), branch=branch, timestep=timestep, computed=bool(computed),
                    rel_l1=rel, accumulated=accumulated)
    step, timestep = row[:2]
    rel, accumulated, computed = (row[2 + i * batch:2 + (i + 1) * batch] for i in range(3))
    return dict(step=int(step), branch=branch, timestep=timestep,
                computed=[bool(c) for c in computed], rel_l1=list(rel),
                accumulated=list(accumulated))
