"""residual_forecast against a float64 oracle, per sample, in fp32/fp16/bf16, and the Lagrange
weights against polynomials they must reproduce exactly."""

import math
import random

import pytest
import torch
from numerics import DEVICES, DTYPES, assert_tensor_close, device_param

from cachekern.kernels import (lagrange_weights, residual_forecast, residual_reuse,
                               taylor_weights, torch_residual_forecast)

DEVS = [device_param(d) for d in DEVICES]


def plain_forecast(x, history, weights, bias, channel_dim):
    """What a user would write in the model's dtype: x + sum_k w_k h_k + bias."""
    shape_w = [1] * x.dim()
    shape_w[0] = x.shape[0]
    r = 0
    for k, h in enumerate(history):
        w = weights[:, k]
        view = list(shape_w)
        if w.dim() == 2:
            view[channel_dim] = w.shape[-1]
        r = r + w.reshape(view).to(x.dtype) * h
    if bias is not None:
        view = [1] * x.dim()
        if bias.dim() == 2:
            view[0] = bias.shape[0]
        view[channel_dim] = bias.shape[-1]
        r = r + bias.reshape(view)
    return x + r


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,channel_dim", [((3, 77, 40), -1), ((1, 4097, 40), -1),
                                               ((2, 77, 3072), -1), ((3, 40, 9, 7), 1),
                                               ((2, 5, 33), 1)])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("per_channel,with_bias", [(False, False), (True, True), (False, True)])
def test_forecast_matches_oracle_per_sample(device, dtype, shape, channel_dim, k, per_channel,
                                            with_bias):
    B, C = shape[0], shape[channel_dim]
    x = torch.randn(shape, device=device).to(dtype)
    history = [torch.randn(shape, device=device).to(dtype) for _ in range(k)]
    weights = torch.randn((B, k, C) if per_channel else (B, k), device=device)
    bias = (0.1 * torch.randn(B, C, device=device)).to(dtype) if with_bias else None
    out = residual_forecast(x, history, weights, bias, channel_dim=channel_dim)
    oracle = torch_residual_forecast(x.double(), [h.double() for h in history], weights.double(),
                                     None if bias is None else bias.double(), channel_dim)
    same = plain_forecast(x, history, weights, bias, channel_dim)
    for b in range(B):        # each sample on its own: its own weights
        assert_tensor_close(out[b], oracle[b], same[b], dtype, f"forecast sample {b}")


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_unit_weight_is_bitwise_plain_reuse_and_in_place_works(device, dtype):
    x = torch.randn(3, 77, 40, device=device).to(dtype)
    residual = torch.randn(3, 77, 40, device=device).to(dtype)
    ones = torch.ones(3, 1, device=device)
    assert torch.equal(residual_forecast(x, [residual], ones), residual_reuse(x, residual))
    in_place = x.clone()
    history = [torch.randn_like(x) for _ in range(2)]
    weights = torch.randn(3, 2, device=device)
    expected = residual_forecast(x, history, weights)
    assert residual_forecast(in_place, history, weights, out=in_place) is in_place
    assert torch.equal(in_place, expected)


@pytest.mark.parametrize("device", DEVS)
def test_history_may_be_any_float_dtype_and_weights_differ_per_sample(device):
    x = torch.randn(2, 33, 17, device=device, dtype=torch.bfloat16)
    history = [torch.randn(2, 33, 17, device=device, dtype=torch.float32),
               torch.randn(2, 33, 17, device=device, dtype=torch.float16)]
    weights = torch.tensor([[2.0, -1.0], [0.5, 0.5]], device=device)
    out = residual_forecast(x, history, weights)
    for b in range(2):
        oracle = x[b].double() + sum(weights[b, k].double() * history[k][b].double()
                                     for k in range(2))
        torch.testing.assert_close(out[b].double(), oracle.to(torch.bfloat16).double(),
                                   rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,channel_dim", [((3, 77, 40), -1), ((2, 40, 9, 7), 1)])
def test_without_x_the_forecast_alone_is_written(device, dtype, shape, channel_dim):
    history = [torch.randn(shape, device=device).to(dtype) for _ in range(3)]
    B, C = shape[0], shape[channel_dim]
    weights = torch.randn(B, 3, C, device=device)
    out = residual_forecast(None, history, weights, channel_dim=channel_dim)
    assert out.dtype == dtype and out.shape == shape
    oracle = torch_residual_forecast(None, [h.double() for h in history], weights.double(),
                                     None, channel_dim)
    zero = torch.zeros(shape, device=device, dtype=dtype)
    same = plain_forecast(zero, history, weights, None, channel_dim)
    for b in range(B):
        assert_tensor_close(out[b], oracle[b], same[b], dtype, f"forecast alone, sample {b}")


def test_taylor_weights_are_taylorseers_recursive_differences():
    rng = random.Random(3)
    for _ in range(5):
        times = sorted((rng.uniform(0, 100) for _ in range(3)), reverse=True)  # newest first
        ys = [rng.uniform(-1, 1) for _ in range(3)]
        t = times[0] - rng.uniform(0.5, 20)
        # TaylorSeer's update, oldest to newest: each order's difference over the newest gap
        factors = {}
        previous_time = None
        for time, y in zip(times[::-1], ys[::-1]):
            new = {0: y}
            if previous_time is not None:
                for j in range(2):
                    if j in factors:
                        new[j + 1] = (new[j] - factors[j]) / (time - previous_time)
            factors, previous_time = new, time
        d = t - times[0]
        expected = sum(f * d ** k / math.factorial(k) for k, f in factors.items())
        got = sum(w * y for w, y in zip(taylor_weights(times, t), ys))
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    assert taylor_weights([2.0, 1.0], 3.0) == lagrange_weights([2.0, 1.0], 3.0)
    with pytest.raises(ValueError, match="1 to 3 distinct"):
        taylor_weights([3.0, 2.0, 1.0, 0.0], 0.0)


def test_lagrange_weights_reproduce_polynomials_of_their_degree():
    rng = random.Random(7)
    for degree in range(3):
        times = sorted(rng.uniform(0, 1000) for _ in range(degree + 1))
        coefficients = [rng.uniform(-2, 2) for _ in range(degree + 1)]

        def p(t):
            return sum(c * t ** i for i, c in enumerate(coefficients))
        t = rng.uniform(-100, 0)        # extrapolation, as a sampler's time decreases
        w = lagrange_weights(times, t)
        assert math.isclose(sum(wk * p(tk) for wk, tk in zip(w, times)), p(t), rel_tol=1e-9,
                            abs_tol=1e-6)
        assert math.isclose(sum(w), 1.0, rel_tol=1e-12)     # constants are kept
    assert lagrange_weights([0.7], 0.1) == [1.0]            # order 0: plain reuse
    assert lagrange_weights([1.0, 2.0], 0.0) == [2.0, -1.0]  # linear: 2 h(1) - h(2)


def test_bad_arguments_are_named():
    x = torch.randn(2, 5, 8)
    h = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="history must be a list of 1 to 3"):
        residual_forecast(x, [h] * 4, torch.ones(2, 4))
    with pytest.raises(ValueError, match="history"):
        residual_forecast(x, [], torch.ones(2, 0))
    with pytest.raises(ValueError, match=r"history\[1\] must have shape"):
        residual_forecast(x, [h, h[:, :4]], torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"weights must have shape \(2, 2\) or \(2, 2, 8\)"):
        residual_forecast(x, [h, h], torch.ones(2))
    with pytest.raises(TypeError, match="weights must have dtype in \\(float32\\)"):
        residual_forecast(x, [h], torch.ones(2, 1, dtype=torch.float16))
    with pytest.raises(ValueError, match="bias must have shape"):
        residual_forecast(x, [h], torch.ones(2, 1), torch.ones(3))
    with pytest.raises(ValueError, match="times: expected distinct"):
        lagrange_weights([1.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="times: expected distinct"):
        lagrange_weights([], 0.0)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [(2,), (1, 0), (0, 2), (2, 0, 1), (1, 2, 0)])
def test_slot_order_reads_the_history_on_the_device_in_the_order_it_names(device, dtype, order):
    x = torch.randn(3, 41, 37, device=device).to(dtype)
    slots = [torch.randn(3, 41, 37, device=device).to(dtype) for _ in range(3)]
    weights = torch.randn(3, len(order), device=device)
    ring = torch.tensor(list(order) + [7] * (3 - len(order)), dtype=torch.int32, device=device)
    got = residual_forecast(x, slots, weights, slot_order=ring)
    # the very terms, in the very order: the same bits as the history passed in that order
    assert torch.equal(got, residual_forecast(x, [slots[i] for i in order], weights))
    assert not torch.equal(got, residual_forecast(x, slots[:len(order)], weights)) or \
        list(order) == list(range(len(order)))
    with pytest.raises(ValueError, match="slot_order must be an int32 vector"):
        residual_forecast(x, slots, weights, slot_order=ring.long())
    with pytest.raises(ValueError, match="slots of one dtype and layout"):
        other = slots[2].half() if dtype != torch.float16 else slots[2].float()
        residual_forecast(x, slots[:2] + [other], weights[:, :1], slot_order=ring)
