"""residual_reuse and residual_capture against float64 oracles, per sample, in fp32/fp16/bf16."""

import pytest
import torch
from numerics import DEVICES, DTYPES, assert_sums_close, assert_tensor_close, device_param

from cachekern.kernels import (residual_capture, residual_reuse, torch_residual_capture,
                                      torch_residual_reuse)

DEVS = [device_param(d) for d in DEVICES]
TOKEN_SHAPES = [(1, 4097, 40), (3, 77, 40), (1, 1, 5120), (2, 77, 3072)]


def up(t):
    return None if t is None else t.double()


# -- residual_reuse ------------------------------------------------------------------------------

def torch_same_dtype_reuse(x, residual, scale, shift, channel_dim):
    """Block Caching's reuse written as plain PyTorch in the model's dtype."""
    if scale is None and shift is None:
        return x + residual
    view = [1] * x.dim()
    view[0] = scale.shape[0] if scale.dim() == 2 else 1
    view[channel_dim] = scale.shape[-1]
    return x + (residual * scale.reshape(view) + shift.reshape(view))


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TOKEN_SHAPES)
def test_plain_reuse_is_bitwise_x_plus_residual(device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype)
    out = residual_reuse(x, residual)
    assert torch.equal(out, x + residual)
    in_place = x.clone()
    assert residual_reuse(in_place, residual, out=in_place) is in_place
    assert torch.equal(in_place, x + residual)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,channel_dim", [((3, 77, 40), -1), ((2, 77, 3072), -1),
                                               ((1, 4097, 40), -1), ((3, 40, 9, 7), 1),
                                               ((2, 320, 8, 8), 1), ((1, 5, 33), 1)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_scale_shift_reuse_matches_oracle(device, dtype, shape, channel_dim, per_sample):
    B, C = shape[0], shape[channel_dim]
    x = torch.randn(shape, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype)
    pshape = (B, C) if per_sample else (C,)
    scale = (1 + 0.2 * torch.randn(pshape, device=device)).to(dtype)
    shift = (0.1 * torch.randn(pshape, device=device)).to(dtype)
    out = residual_reuse(x, residual, scale, shift, channel_dim=channel_dim)
    oracle = torch_residual_reuse(up(x), up(residual), up(scale), up(shift), channel_dim)
    same = torch_same_dtype_reuse(x, residual, scale, shift, channel_dim)
    assert_tensor_close(out, oracle, same, dtype, "reuse")


@pytest.mark.parametrize("device", DEVS)
def test_scale_one_shift_zero_equals_plain_reuse(device):
    x = torch.randn(2, 31, 96, device=device, dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    out = residual_reuse(x, residual, torch.ones(2, 96, device=device),
                         torch.zeros(96, device=device))
    assert torch.equal(out, x + residual)


@pytest.mark.parametrize("device", DEVS)
def test_reuse_samples_never_mix_and_strided_batch(device):
    base = torch.randn(6, 20, 48, device=device)
    x = base[::2]
    residual = torch.randn(3, 20, 48, device=device)
    scale, shift = torch.randn(3, 48, device=device), torch.randn(3, 48, device=device)
    out = residual_reuse(x, residual, scale, shift)
    torch.testing.assert_close(out, torch_residual_reuse(x, residual, scale, shift),
                               rtol=1e-6, atol=1e-6)
    scale2 = scale.clone()
    scale2[1] += 1
    out2 = residual_reuse(x, residual, scale2, shift)
    assert torch.equal(out2[0], out[0]) and torch.equal(out2[2], out[2])
    assert not torch.equal(out2[1], out[1])


@pytest.mark.parametrize("device", DEVS)
def test_reuse_mixed_dtypes_round_once_to_out(device):
    x = torch.randn(2, 9, 40, device=device, dtype=torch.bfloat16)
    residual = torch.randn(2, 9, 40, device=device, dtype=torch.float32)  # fp32 residual stream
    out = torch.empty(2, 9, 40, device=device, dtype=torch.float32)
    residual_reuse(x, residual, out=out)
    assert torch.equal(out, x.float() + residual)


def test_reuse_bad_arguments_name_the_argument():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"residual must have shape \(2, 5, 8\)"):
        residual_reuse(x, x[:, :3])
    with pytest.raises(ValueError, match=r"scale must have shape \(2, 8\) or \(8,\)"):
        residual_reuse(x, x, torch.ones(2, 5), torch.ones(2, 5))
    with pytest.raises(ValueError, match="channel_dim must be -1"):
        residual_reuse(x, x, channel_dim=0)
    with pytest.raises(TypeError, match="channel_dim must be an int"):
        residual_reuse(x, x, channel_dim="last")
    with pytest.raises(TypeError, match="residual must have dtype in"):
        residual_reuse(x, x.to(torch.int32))
    with pytest.raises(ValueError, match="cannot be viewed as"):
        gappy = torch.randn(2, 4, 6, 8)[:, ::2]   # rows of a sample are not evenly spaced
        residual_reuse(gappy, gappy.contiguous())
    with pytest.raises(ValueError, match="out is on meta but x is on cpu"):
        residual_reuse(x, x, out=torch.empty(2, 5, 8, device="meta"))


# -- residual_capture ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TOKEN_SHAPES + [(3, 40, 9, 7)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_capture_matches_oracle(device, dtype, shape, deterministic):
    x = torch.randn(shape, device=device).to(dtype)
    output = (x.float() + 0.3 * torch.randn(shape, device=device)).to(dtype)
    prev = (0.3 * torch.randn(shape, device=device)).to(dtype)
    out = torch.full_like(x, float("nan"))
    residual, diff, cur = residual_capture(output, x, prev, out=out, deterministic=deterministic)
    assert residual is out
    oracle, diff64, cur64 = torch_residual_capture(up(output), up(x), up(prev))
    same = output - x
    assert_tensor_close(residual, oracle, same, dtype, "residual")
    err_l1 = (same.double() - oracle).abs().flatten(1).sum(1)
    assert_sums_close(diff, diff64, err_l1, dtype, "diff_sum")
    assert_sums_close(cur, cur64, err_l1, dtype, "cur_sum")


@pytest.mark.parametrize("device", DEVS)
def test_capture_without_prev_and_into_fp32(device):
    x = torch.randn(2, 50, 40, device=device, dtype=torch.bfloat16)
    output = torch.randn_like(x)
    out = torch.empty(2, 50, 40, device=device, dtype=torch.float32)
    residual, diff, cur = residual_capture(output, x, None, out=out)
    assert diff is None
    assert torch.equal(residual, output.float() - x.float())
    torch.testing.assert_close(cur, residual.abs().flatten(1).sum(1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVS)
def test_capture_samples_never_mix_nan_propagates_and_is_deterministic(device):
    x = torch.randn(3, 64, 72, device=device)
    output, prev = torch.randn_like(x), torch.randn_like(x)
    _, diff, cur = residual_capture(output, x, prev, deterministic=True)
    for _ in range(3):
        _, diff_again, cur_again = residual_capture(output, x, prev, deterministic=True)
        assert torch.equal(diff_again, diff) and torch.equal(cur_again, cur)
    output2 = output.clone()
    output2[1, 5, 5] = float("nan")
    _, diff2, cur2 = residual_capture(output2, x, prev, deterministic=True)
    assert torch.equal(diff2[0], diff[0]) and torch.equal(cur2[2], cur[2])
    assert torch.isnan(diff2[1]) and torch.isnan(cur2[1])


@pytest.mark.parametrize("device", DEVS)
def test_capture_strided_batch(device):
    base = torch.randn(4, 30, 40, device=device)
    x = base[::2]
    output = torch.randn(2, 35, 40, device=device)[:, 5:]
    residual, _, cur = residual_capture(output, x)
    assert torch.equal(residual, output - x)


def test_capture_bad_arguments_name_the_argument():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(2, 5, 8\)"):
        residual_capture(x, x[:1])
    with pytest.raises(ValueError, match=r"prev_residual must have shape"):
        residual_capture(x, x, x[:, :2])
    with pytest.raises(TypeError, match="output must be a torch.Tensor"):
        residual_capture(None, x)
    with pytest.raises(ValueError, match="output must have a batch dimension"):
        residual_capture(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="x must be contiguous in its last dimension"):
        residual_capture(x.transpose(1, 2).contiguous(), x.transpose(1, 2))
