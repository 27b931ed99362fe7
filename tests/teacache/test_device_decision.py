"""TeaCache's decision on the device (cachekern.teacache.device_decision and its kernel, cachekern.kernels.teacache_decision), which CUDA graphs
branch on, must take the host's decisions bit for bit: the same records and the same state,
across warm-up, thresholds, polynomials, clamping, skip limits, the forced last step, a new
generation (the timestep going back up), NaN and zero sums; per-sample decisions too, with the
flag of the pattern of samples that compute."""

import math
import random
import struct
import zlib
from types import SimpleNamespace

import pytest
import torch

from cachekern import TeaCache
from cachekern.teacache.coefficients import PUBLISHED
from cachekern.teacache.device_decision import DeviceDecision, record_from_row
from cachekern.teacache.runtime import BranchState, TeaCacheRuntime
from cachekern.kernels._backend import INTERPRET, triton

pytestmark = pytest.mark.skipif(triton is None, reason="needs Triton")
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


def bits(x):
    return struct.pack("<d", x)


def calls_of(rng, batch, n):
    """n calls: fp32 per-sample sums and a decreasing timestep that restarts once; some sums
    NaN, some prev sums zero."""
    out, t = [], 1.0
    for i in range(n):
        if i == n // 2:
            t = 1.0                                    # a new generation
        diff = [rng.uniform(0.0, 0.4) for _ in range(batch)]
        prev = [rng.uniform(0.5, 1.5) for _ in range(batch)]
        if rng.random() < 0.08:
            diff[rng.randrange(batch)] = math.nan
        if rng.random() < 0.05:
            prev = [0.0] * batch
        out.append((diff, prev, t))
        t -= rng.uniform(0.01, 0.1)
    return out


def host_records(policy, polynomial, num_steps, calls):
    runtime = SimpleNamespace(policy=policy, polynomial=polynomial)
    state, records = BranchState(), []
    for diff, prev, t in calls:
        values = torch.tensor([t] + diff + prev, dtype=torch.float32).tolist()
        r = TeaCacheRuntime.decide(runtime, state, values, True, torch.tensor(t), len(diff),
                                   num_steps)
        if r["compute"][0]:
            state.residual = torch.zeros(1)  # a computed call leaves a residual
        records.append(dict(step=r["step"], branch="b", timestep=r["timestep"],
                            computed=r["compute"][0], rel_l1=r["rel_l1"],
                            accumulated=r["accumulated"]))
    return records, state


def device_records(policy, polynomial, num_steps, calls):
    decision = DeviceDecision(policy, polynomial, num_steps, DEVICE)
    decision.load(BranchState())
    records = []
    for diff, prev, t in calls:
        f32 = dict(dtype=torch.float32, device=DEVICE)
        decision(torch.tensor(diff, **f32), torch.tensor(prev, **f32),
                 torch.tensor([t, t], dtype=torch.bfloat16 if t == 1.0 else torch.float32,
                              device=DEVICE))
        records.append(record_from_row(decision.record.tolist(), "b"))
        assert decision.compute.item() == records[-1]["computed"] != decision.skip.item()
    return records, decision


POLICIES = [
    dict(threshold=0.3, coefficients=None),
    dict(threshold=0.6, coefficients="flux", clamp=True),
    dict(threshold=0.6, coefficients="flux", warmup_steps=2, max_consecutive_skips=1),
    dict(threshold=0.0, coefficients=None),
    dict(threshold=1e9, coefficients=[1.3, -0.7, 0.05], compute_last_step=False),
    dict(threshold=0.03, coefficients=[1.3, -0.7, 0.05], clamp=True),   # dips below 0
    dict(threshold=0.03, coefficients=[1.3, -0.7, 0.05]),
    dict(threshold=0.25, coefficients="mochi", warmup_steps=0),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("settings", POLICIES)
def test_device_decisions_equal_the_hosts_bit_for_bit(batch, settings):
    settings = dict(settings)
    key = settings.pop("coefficients")
    polynomial = PUBLISHED.get(key, key) if isinstance(key, str) else key
    policy = TeaCache(coefficients=None, **settings)
    rng = random.Random(zlib.crc32(repr((batch, settings, "global")).encode()))
    calls = calls_of(rng, batch, 24)
    num_steps = 12
    expected, host_state = host_records(policy, polynomial, num_steps, calls)
    got, decision = device_records(policy, polynomial, num_steps, calls)
    assert [r["computed"] for r in got] == [r["computed"] for r in expected]
    for g, e in zip(got, expected):
        assert g["step"] == e["step"] and g["computed"] == e["computed"]
        for name in ("timestep", "rel_l1", "accumulated"):
            assert bits(g[name]) == bits(e[name]) or (math.isnan(g[name]) and math.isnan(e[name])), \
                (name, g, e)
    if 0 < policy.threshold < 1e9:
        assert 0 < sum(not r["computed"] for r in got) < len(got)   # the test decides both ways
    back = BranchState()
    back.residual = torch.zeros(1)
    decision.store(back)
    assert (back.step, back.skips, back.last_timestep) == \
        (host_state.step, host_state.skips, host_state.last_timestep)
    assert bits(back.accumulated) == bits(host_state.accumulated)


def same_float(a, b):
    return bits(a) == bits(b) or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("settings", POLICIES)
def test_per_sample_device_decisions_equal_the_hosts_bit_for_bit(batch, settings):
    """Per-sample decisions: each sample's record and state, and the flag of the pattern of
    samples that compute (the graph's branch), as the host decides them."""
    settings = dict(settings)
    key = settings.pop("coefficients")
    polynomial = PUBLISHED.get(key, key) if isinstance(key, str) else key
    policy = TeaCache(coefficients=None, decision="per_sample", **settings)
    rng = random.Random(zlib.crc32(repr((batch, settings)).encode()))
    # Samples that change at different rates, so that they decide differently.
    calls = [([d * (0.5 + b) for b, d in enumerate(diff)], prev, t)
             for diff, prev, t in calls_of(rng, batch, 24)]
    num_steps = 12
    runtime = SimpleNamespace(policy=policy, polynomial=polynomial)
    host = BranchState()
    decision = DeviceDecision(policy, polynomial, num_steps, DEVICE, batch)
    decision.load(BranchState())
    patterns_seen = set()
    for diff, prev, t in calls:
        values = torch.tensor([t] + diff + prev, dtype=torch.float32).tolist()
        want = TeaCacheRuntime.decide(runtime, host, values, True, torch.tensor(t), batch,
                                      num_steps)
        if any(want["compute"]):
            host.residual = torch.zeros(1)
        f32 = dict(dtype=torch.float32, device=DEVICE)
        decision(torch.tensor(diff, **f32), torch.tensor(prev, **f32),
                 torch.tensor([t], dtype=torch.float32, device=DEVICE))
        got = record_from_row(decision.record.tolist(), "b", batch)
        assert got["step"] == want["step"] and same_float(got["timestep"], want["timestep"])
        assert got["computed"] == want["compute"]
        for name in ("rel_l1", "accumulated"):
            assert all(same_float(g, w) for g, w in zip(got[name], want[name])), (name, got, want)
        pattern = sum(1 << b for b, c in enumerate(want["compute"]) if c)
        patterns_seen.add(pattern)
        flags = decision.patterns.tolist()
        assert flags == [p == pattern for p in range(2 ** batch)]
        assert decision.compute.item() == all(want["compute"])
        assert decision.skip.item() == (not all(want["compute"]))
    if 0 < policy.threshold < 1e9 and batch > 1:
        assert any(0 < p < 2 ** batch - 1 for p in patterns_seen), patterns_seen   # mixed
    back = BranchState()
    back.residual = torch.zeros(1)
    decision.store(back)
    assert (back.step, back.skips) == (host.step, host.skips)
    assert all(same_float(a, b) for a, b in zip(back.accumulated, host.accumulated))
    again = DeviceDecision(policy, polynomial, num_steps, DEVICE, batch)
    again.load(back)                     # and back onto the device unchanged
    assert torch.equal(again.state, decision.state)


def test_state_round_trips_through_load_and_store():
    state = BranchState()
    state.step, state.accumulated, state.skips, state.last_timestep = 4, 0.125, 2, 0.5
    state.residual = torch.zeros(1)
    decision = DeviceDecision(TeaCache(), None, None, DEVICE)
    decision.load(state)
    back = BranchState()
    back.residual = torch.zeros(1)
    decision.store(back)
    assert (back.step, back.accumulated, back.skips, back.last_timestep) == (4, 0.125, 2, 0.5)
    assert back.residual is not None


@pytest.mark.parametrize("decision_kind,batch", [("global", 1), ("per_sample", 2)])
@pytest.mark.parametrize("schedule", [[True, False, False, True, False, True],
                                      [True, True, False] * 5])
def test_a_static_schedule_decides_on_the_device_as_on_the_host(schedule, decision_kind, batch):
    per_sample = decision_kind == "per_sample"
    policy = TeaCache(compute_steps=schedule, forecast_order=0 if per_sample else 1,
                      decision=decision_kind)
    rng = random.Random(len(schedule))
    calls = calls_of(rng, 1, 20)          # a new generation at call 10; steps past the list
    runtime = SimpleNamespace(policy=policy, polynomial=None)
    state, expected = BranchState(), []
    decision = DeviceDecision(policy, None, None, DEVICE, batch)
    decision.load(BranchState())
    got = []
    for diff, prev, t in calls:
        values = torch.tensor([t], dtype=torch.float32).tolist()
        r = TeaCacheRuntime.decide(runtime, state, values, False, torch.tensor(t), batch, None)
        if r["compute"][0]:
            state.residual = torch.zeros(1)
        expected.append((r["step"], r["compute"] if per_sample else r["compute"][0],
                         bits(r["timestep"])))
        decision(None, None, torch.tensor([t], dtype=torch.float32, device=DEVICE))
        row = record_from_row(decision.record.tolist(), "b", batch if per_sample else None)
        got.append((row["step"], row["computed"], bits(row["timestep"])))
        if per_sample:
            assert all(math.isnan(v) for v in row["rel_l1"]) and row["accumulated"] == [0.0] * 2
            computed = row["computed"][0]
            assert decision.patterns.tolist() == [computed, False, False, not computed][::-1]
        else:
            assert math.isnan(row["rel_l1"]) and row["accumulated"] == 0.0
    assert got == expected
    computed = [c[0] if per_sample else c for _, c, _ in got]
    assert 0 < sum(not c for c in computed) < len(got)


def test_the_forecast_history_round_trips_through_load_and_store():
    from cachekern.teacache.device_forecast import DeviceForecast, ensure_slots

    policy = TeaCache(forecast_order=2)
    state = BranchState()
    older = torch.randn(2, 5, 3, device=DEVICE)
    state.residual, state.older = torch.randn(2, 5, 3, device=DEVICE), [older]
    state.times = [[0.5, 0.5], [0.75, 0.75]]
    slots = ensure_slots(state, 3)
    assert slots[0] is state.residual and slots[1] is older and slots[2].eq(0).all()
    forecast = DeviceForecast(policy, slots)
    # An eager call in between left a residual that is no slot: it is copied into a free one.
    fresh = torch.randn(2, 5, 3, device=DEVICE)
    state.residual, state.older = fresh, [slots[0], slots[1]]
    state.times = [[0.25, 0.25], [0.5, 0.5], [0.75, 0.75]]
    kept = [t.clone() for t in (fresh, slots[0], slots[1])]
    forecast.load(state)
    back = BranchState()
    forecast.store(back)
    assert back.residual is slots[2] and [id(t) for t in back.older] == [id(slots[0]),
                                                                       id(slots[1])]
    for got, want in zip([back.residual] + back.older, kept):
        assert torch.equal(got, want)
    assert back.times == state.times
