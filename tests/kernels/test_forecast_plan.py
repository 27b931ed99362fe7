"""The forecast's plan on the device (cachekern.kernels.forecast_plan), which a CUDA graph
branches on, must choose what the eager TeaCache path chooses: the same values (by the step
that computed them) in the same order, the same weights bit for bit (Lagrange, TaylorSeer's
basis, fitted rows), plain reuse (weight 1) where the eager path reuses, across new
generations, repeated times and every order."""

import random
import struct
import zlib

import pytest
import torch

from cachekern.kernels._backend import INTERPRET, triton
from cachekern.kernels.forecast import lagrange_weights, taylor_weights

pytestmark = [pytest.mark.skipif(triton is None, reason="needs Triton"),
              # the interpreter evaluates the untaken branches' divisions by zero too
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


def expected_choice(ring, step, now, order, basis, fitted):
    """What the eager path does on a skipped call (TeaCacheRuntime._skipped, global decisions):
    ("reuse", [labels]) or ("forecast", [labels newest first], [weights])."""
    row = fitted[step] if step < len(fitted) else None
    if row is not None and len(row) <= len(ring):
        return "forecast", [label for label, _ in ring[:len(row)]], list(row)
    if order == 0 or len(ring) == 1:
        return "reuse", [ring[0][0]], None
    entries = ring[:order + 1]
    n = max(m for m in range(1, len(entries) + 1)
            if len({t for _, t in entries[:m]}) == m)
    if n == 1:
        return "reuse", [ring[0][0]], None
    times = [t for _, t in entries[:n]]
    weights = (taylor_weights if basis == "taylor" else lagrange_weights)(times, now)
    return "forecast", [label for label, _ in entries[:n]], weights


def calls_of(rng, n, steps):
    """(step, timestep, computed) of n calls in generations of `steps` steps; times decrease,
    some repeat (as two-call solvers repeat them), and the first step of each computes."""
    out, step, t = [], 0, 1.0
    for _ in range(n):
        if step == steps:
            step, t = 0, 1.0
        computed = step == 0 or rng.random() < 0.35
        out.append((step, t, computed))
        if rng.random() > 0.15:
            t = t - rng.uniform(0.02, 0.12)
        step += 1
    return out


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("basis", ["lagrange", "taylor"])
@pytest.mark.parametrize("step_time", [False, True])
@pytest.mark.parametrize("with_fitted", [False, True])
def test_plan_takes_the_eager_paths_choices(order, basis, step_time, with_fitted):
    from cachekern.kernels import forecast_plan as plan

    rng = random.Random(zlib.crc32(repr((order, basis, step_time, with_fitted)).encode()))
    slots, steps = order + 1, 11
    fitted = [None] * steps
    if with_fitted:
        for s in range(steps):
            if rng.random() < 0.5:
                fitted[s] = [rng.uniform(-1, 2) for _ in range(rng.randint(1, 3))]
    f64 = dict(dtype=torch.float64, device=DEVICE)
    state = torch.zeros(plan.state_size(slots), **f64)
    state[1:1 + slots] = torch.arange(slots, dtype=torch.float64)
    table = torch.zeros(steps, slots, **f64)
    lengths = torch.zeros(steps, **f64)
    for s, row in enumerate(fitted):
        if row is not None and len(row) <= slots:
            table[s, :len(row)] = torch.tensor(row, dtype=torch.float64)
            lengths[s] = len(row)
    weights = torch.full((1, slots), 7.0, dtype=torch.float32, device=DEVICE)
    capture, flags = (torch.zeros(slots, dtype=torch.bool, device=DEVICE) for _ in range(2))
    slot_order = torch.zeros(slots, dtype=torch.int32, device=DEVICE)

    ring, contents = [], [None] * slots       # the eager path's history; what each slot holds
    seen = set()
    for label, (step, t, computed) in enumerate(calls_of(rng, 70, steps)):
        t32 = struct.unpack("f", struct.pack("f", t))[0]    # the record's time: fp32 rounded
        now = float(step) if step_time else t32
        record = torch.tensor([step, t32, float("nan"), 0.0, float(computed)], **f64)
        plan.forecast_plan(record, state, table, lengths, weights, slot_order, capture, flags,
                           order=order, taylor=basis == "taylor", step_time=step_time)
        if step == 0:
            ring = []
        usable = [row if row is not None and len(row) <= slots else None for row in fitted]
        if computed:
            assert int(capture.sum()) == 1 and not flags.any()
            written = int(capture.nonzero())
            contents[written] = label
            ring = [(label, now)] + ring[:slots - 1]
            # The slot written held nothing the history still needs.
            assert sorted(contents[i] for i in range(slots) if contents[i] in
                          {label for label, _ in ring}) == sorted(label for label, _ in ring)
            continue
        assert not capture.any()
        kind, labels, expected = expected_choice(ring, step, now, order, basis, usable)
        seen.add((kind, len(labels)))
        if kind == "reuse":
            expected = [1.0]
        assert int(flags.sum()) == 1 and int(flags.nonzero()) == len(labels) - 1
        assert [contents[a] for a in slot_order.tolist()[:len(labels)]] == labels
        got = weights[0, :len(labels)].tolist()
        assert got == torch.tensor(expected, dtype=torch.float32).tolist()   # bit for bit
        assert weights[0, len(labels):].eq(0).all()
    assert ("reuse", 1) in seen
    if order:
        assert ("forecast", 2) in seen
    if order == 2:
        assert ("forecast", 3) in seen
