"""One CFG branch's forecast on the device (TeaCache(cuda_graphs=True, forecast_order > 0, or
forecast_weights)): the ring of residual slots a graph writes and reads, the plan kernel's
buffers (cachekern.kernels.forecast_plan), and the hand-over of the branch's history between
the host (eager calls: BranchState.residual, .older, .times) and the device (graphed calls).

The slots are the eager history's own tensors where it has them, so a graph takes over a
branch without copying. The graph's conditional bodies are one capture per slot and one
forecast per length (residual_forecast reading the slots in the plan's age order on the
device): the eager path's kernels, in its order of terms, so both give the same bits (a reuse
is a forecast of weight 1, bit for bit residual_reuse).
"""

import torch

from cachekern.kernels import forecast_plan as plan


def forecasts(policy) -> bool:
    """Whether a skipped call may forecast (not only reuse) under `policy`."""
    return policy.forecast_order > 0 or policy.forecast_weights is not None


def ensure_slots(state, count):
    """The branch's `count` slot tensors: its history's tensors first, zeros for the rest
    (allocated once per branch and shape; a new shape starts a new BranchState)."""
    slots = getattr(state, "slots", None)
    if slots is None or len(slots) != count or slots[0].shape != state.residual.shape or \
            slots[0].dtype != state.residual.dtype:
        ring = [state.residual] + list(state.older)
        slots = ring[:count] + [torch.zeros_like(state.residual)
                                for _ in range(count - min(len(ring), count))]
        state.slots = slots
    return slots


class DeviceForecast:
    def __init__(self, policy, slots):
        self.policy = policy
        self.slots = list(slots)
        n = len(self.slots)
        device = self.slots[0].device
        f64 = dict(dtype=torch.float64, device=device)
        self.state = torch.zeros(plan.state_size(n), **f64)
        rows = policy.forecast_weights or []
        self.fitted = torch.zeros((max(len(rows), 1), n), **f64)
        self.fitted_len = torch.zeros(max(len(rows), 1), **f64)
        lengths = set()
        for i, row in enumerate(rows):
            if row is not None and len(row) <= n:    # longer rows never fit the ring
                self.fitted[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
                self.fitted_len[i] = len(row)
                lengths.add(len(row))
        # The forecast lengths that can occur: reuse (1), the basis's (up to order + 1) and the
        # fitted rows'.
        self.lengths = sorted(lengths | set(range(1, policy.forecast_order + 2)))
        self.weights = torch.zeros((1, n), dtype=torch.float32, device=device)
        self.slot_order = torch.zeros(n, dtype=torch.int32, device=device)
        self.capture = torch.zeros(n, dtype=torch.bool, device=device)
        self.forecast = torch.zeros(n, dtype=torch.bool, device=device)

    def __call__(self, record):
        plan.forecast_plan(record, self.state, self.fitted, self.fitted_len, self.weights,
                           self.slot_order, self.capture, self.forecast,
                           order=self.policy.forecast_order,
                           taylor=self.policy.forecast_basis == "taylor",
                           step_time=self.policy.forecast_time == "step")

    def weights_for(self, length, batch):
        """The plan's weights as the eager path passes them: one row, expanded per sample."""
        return self.weights[:, :length].expand(batch, length)

    # -- the host's view of the history --------------------------------------------------------
    def load(self, branch_state):
        """Takes over the branch's history (what eager calls left): a history tensor that is
        not a slot is copied into a free one (stream-ordered, no synchronisation)."""
        ring = [branch_state.residual] + list(branch_state.older) \
            if branch_state.residual is not None else []
        used = []
        for tensor in ring:
            index = next((i for i, s in enumerate(self.slots) if s is tensor), None)
            if index is None or index in used:
                index = next(i for i in range(len(self.slots)) if i not in used and
                             not any(self.slots[i] is t for t in ring))
                self.slots[index].copy_(tensor)
            used.append(index)
        order = used + [i for i in range(len(self.slots)) if i not in used]
        times = [float("nan")] * len(self.slots)
        for index, sample_times in zip(used, branch_state.times):
            times[index] = float(sample_times[0]) if sample_times[0] is not None else float("nan")
        host = torch.tensor([float(len(used))] + [float(i) for i in order] + times,
                            dtype=torch.float64)
        if self.state.is_cuda:
            host = host.pin_memory()
        self.state.copy_(host, non_blocking=True)

    def store(self, branch_state):
        """Hands the history back to the host (a synchronisation, only before an eager call)."""
        values = self.state.tolist()
        n = len(self.slots)
        count = int(values[plan.COUNT])
        order = [int(v) for v in values[1:1 + n]][:count]
        times = values[1 + n:]
        batch = self.slots[0].shape[0]
        branch_state.residual = self.slots[order[0]] if count else None
        branch_state.older = [self.slots[i] for i in order[1:]]
        branch_state.times = [[times[i]] * batch for i in order]
