"""modulated_distance / modulate against float64 oracles, per sample, in fp32/fp16/bf16."""

import pytest
import torch
import torch.nn.functional as F
from numerics import DEVICES, DTYPES, assert_sums_close, assert_tensor_close, device_param

from cachekern.kernels import modulation as md_module
from cachekern.kernels import (modulate, modulated_distance, torch_modulate,
                               torch_modulated_distance)
from cachekern.kernels._backend import use_triton
from cachekern.kernels.modulation import CHUNK

SHAPES = [(3, 77, 40), (1, 4097, 40), (1, 1, 5120), (3, 5, 3072), (2, 77, 3072)]
DEVS = [device_param(d) for d in DEVICES]


def torch_same_dtype_modulate(x, scale, shift, norm, eps):
    """How a diffusers model computes the modulated input in the model's dtype."""
    if norm == "layer":
        y = F.layer_norm(x, (x.shape[-1],), eps=eps)
    else:
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    if scale is not None:
        y = y * (1 + (scale[:, None] if scale.dim() == 2 else scale))
    if shift is not None:
        y = y + (shift[:, None] if shift.dim() == 2 else shift)
    return y


def make_inputs(shape, dtype, device, scale_shape="per_sample", with_shift=True):
    B, N, D = shape
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    sshape = (B, D) if scale_shape == "per_sample" else (D,)
    scale = (torch.randn(sshape, device=device) * 0.3).to(dtype)
    shift = (torch.randn(sshape, device=device) * 0.3).to(dtype) if with_shift else None
    return x, scale, shift


def check_against_oracle(x, prev, scale, shift, norm, eps, dtype, deterministic):
    up = lambda t: None if t is None else t.double()  # noqa: E731
    out = torch.full_like(x, float("nan"))  # poisoned: every element must be written
    diff, prev_sum = modulated_distance(x, prev, scale, shift, norm=norm, eps=eps,
                                        out_modulated=out, deterministic=deterministic)
    m64, diff64, prev64 = torch_modulated_distance(up(x), up(prev), up(scale), up(shift), norm, eps)
    m_torch = torch_same_dtype_modulate(x, scale, shift, norm, eps)
    assert_tensor_close(out, m64, m_torch, dtype, "modulated input")
    torch_error_l1 = (m_torch.double() - m64).abs().flatten(1).sum(1)
    assert_sums_close(diff, diff64, torch_error_l1, dtype, "diff_sum")
    assert_sums_close(prev_sum, prev64, torch.zeros_like(prev64), dtype, "prev_sum")
    assert diff.dtype == prev_sum.dtype == torch.float32 and diff.shape == (x.shape[0],)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_matches_float64_oracle(device, dtype, shape, norm):
    x, scale, shift = make_inputs(shape, dtype, device)
    prev = torch_modulate(x, scale, shift, norm) + 0.05 * torch.randn(shape, device=device).to(dtype)
    check_against_oracle(x, prev, scale, shift, norm, 1e-6, dtype, deterministic=False)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale_shape,with_shift,norm", [("shared", True, "layer"),
                                                         ("per_sample", False, "rms"),
                                                         ("shared", False, "layer")])
def test_broadcast_scale_and_missing_shift(device, dtype, scale_shape, with_shift, norm):
    shape = (3, 33, 96)
    x, scale, shift = make_inputs(shape, dtype, device, scale_shape, with_shift)
    prev = torch.randn(shape, device=device).to(dtype)
    check_against_oracle(x, prev, scale, shift, norm, 1e-5, dtype, deterministic=True)


@pytest.mark.parametrize("device", DEVS)
def test_no_scale_no_shift_is_the_plain_norm(device):
    x = torch.randn(2, 9, 40, device=device)
    out = modulate(x, None, None, norm="layer", eps=1e-6)
    assert_tensor_close(out, F.layer_norm(x.double(), (40,), eps=1e-6), out, torch.float32, "norm")


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_alone_and_in_place_over_prev(device, dtype):
    shape = (2, 50, 72)
    x, scale, shift = make_inputs(shape, dtype, device)
    m = modulate(x, scale, shift)
    m64 = torch_modulate(x.double(), scale.double(), shift.double())
    assert_tensor_close(m, m64, torch_same_dtype_modulate(x, scale, shift, "layer", 1e-6), dtype,
                        "modulate")
    # The next step writes its m over prev: the sums must still see the old prev. Written over
    # prev, rows this narrow take the pipelined kernel; the same kernel into a separate buffer
    # must give the same bits.
    x2 = x + 0.1 * torch.randn(shape, device=device).to(dtype)
    separate_out = torch.empty_like(m)
    if use_triton(x2):
        expected = md_module._launch(x2, m.clone(), scale, shift, 0, 1e-6, separate_out, True,
                                     pipelined=True)
    else:  # the PyTorch reference serves both
        expected = modulated_distance(x2, m.clone(), scale, shift, out_modulated=separate_out)
    diff, prev_sum = modulated_distance(x2, m, scale, shift, out_modulated=m, deterministic=True)
    assert torch.equal(diff, expected[0]) and torch.equal(prev_sum, expected[1])
    assert torch.equal(m, separate_out)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 33, 3072), (1, 9, 5120), (3, 5, 1000)])
def test_in_place_over_prev_at_model_widths(device, dtype, shape):
    """Written over prev, rows are held whole (another tile shape than with a separate m)."""
    x, scale, shift = make_inputs(shape, dtype, device)
    prev = torch_modulate(x, scale, shift) + 0.05 * torch.randn(shape, device=device).to(dtype)
    old_prev = prev.clone()
    diff, prev_sum = modulated_distance(x, prev, scale, shift, out_modulated=prev)
    m64, diff64, prev64 = torch_modulated_distance(x.double(), old_prev.double(), scale.double(),
                                                   shift.double(), "layer", 1e-6)
    m_torch = torch_same_dtype_modulate(x, scale, shift, "layer", 1e-6)
    assert_tensor_close(prev, m64, m_torch, dtype, "modulated input")
    torch_error_l1 = (m_torch.double() - m64).abs().flatten(1).sum(1)
    assert_sums_close(diff, diff64, torch_error_l1, dtype, "diff_sum")
    assert_sums_close(prev_sum, prev64, torch.zeros_like(prev64), dtype, "prev_sum")


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_samples_never_mix(device, deterministic):
    x, scale, shift = make_inputs((3, 40, 48), torch.float32, device)
    prev = torch.randn_like(x)
    diff, prev_sum = modulated_distance(x, prev, scale, shift, deterministic=deterministic)
    x2, prev2 = x.clone(), prev.clone()
    x2[1] = torch.randn_like(x2[1]) * 5
    prev2[2] = torch.randn_like(prev2[2]) * 3
    diff2, prev_sum2 = modulated_distance(x2, prev2, scale, shift, deterministic=deterministic)
    # Atomics add a sample's partial sums in a varying order: equal up to rounding only.
    same = torch.equal if deterministic else \
        (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=0))  # noqa: E731
    assert same(diff2[0], diff[0]) and same(prev_sum2[0], prev_sum[0])
    assert same(prev_sum2[1], prev_sum[1])
    assert not torch.equal(diff2[1], diff[1]) and not torch.equal(prev_sum2[2], prev_sum[2])


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["x", "prev"])
def test_nan_or_inf_input_never_gives_a_finite_ratio(device, bad, where):
    x, scale, shift = make_inputs((2, 17, 40), torch.bfloat16, device)
    prev = torch.randn_like(x)
    (x if where == "x" else prev)[1, 3, 7] = bad
    for deterministic in (False, True):
        diff, prev_sum = modulated_distance(x, prev, scale, shift, deterministic=deterministic)
        assert torch.isfinite(diff[0]) and torch.isfinite(prev_sum[0])
        ratio = diff[1] / prev_sum[1]
        assert not torch.isfinite(ratio) or not torch.isfinite(diff[1]), (diff, prev_sum)
        assert not (torch.isfinite(diff[1]) and torch.isfinite(prev_sum[1]))


@pytest.mark.parametrize("device", DEVS)
def test_deterministic_mode_repeats_bit_for_bit(device):
    x, scale, shift = make_inputs((2, 301, 200), torch.bfloat16, device)
    prev = torch.randn_like(x)
    first = modulated_distance(x, prev, scale, shift, deterministic=True)
    for _ in range(5):
        again = modulated_distance(x, prev, scale, shift, deterministic=True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_batch_dimension(device, dtype):
    base = torch.randn(6, 45, 64, device=device).to(dtype)
    x = base[::2]                                          # batch stride 2*45*64
    prev_base = torch.randn(3, 50, 64, device=device).to(dtype)
    prev = prev_base[:, 5:]                                # batch stride 50*64, offset rows
    scale = torch.randn(3, 64, device=device).to(dtype)
    out_base = torch.empty(3, 2, 45, 64, device=device, dtype=dtype)
    out = out_base[:, 1]
    check = modulated_distance(x, prev, scale, None, norm="rms", out_modulated=out)
    expected = modulated_distance(x.contiguous(), prev.contiguous(), scale, None, norm="rms")
    torch.testing.assert_close(check[0], expected[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(check[1], expected[1], rtol=1e-5, atol=0)
    assert torch.equal(out, modulate(x.contiguous(), scale, None, norm="rms"))


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_rows_wider_than_many_chunks(device, norm):
    x, scale, shift = make_inputs((2, 3, 16 * CHUNK + 9), torch.float32, device)
    prev = torch.randn_like(x)
    check_against_oracle(x, prev, scale, shift, norm, 1e-6, torch.float32, deterministic=True)


@pytest.mark.parametrize("device", DEVS)
def test_large_mean_rows_keep_their_precision(device):
    """Row statistics must not cancel when the mean dwarfs the spread (outlier channels)."""
    x = 1000.0 + torch.randn(2, 7, 3072, device=device)
    scale, shift = torch.randn(2, 3072, device=device) * 0.1, torch.randn(3072, device=device)
    prev = torch.randn_like(x)
    check_against_oracle(x, prev, scale, shift, "layer", 1e-6, torch.float32, deterministic=True)


def test_empty_inputs_give_zero_sums():
    x = torch.randn(2, 0, 40)
    diff, prev_sum = modulated_distance(x, x, None, None)
    assert diff.tolist() == [0.0, 0.0] and prev_sum.tolist() == [0.0, 0.0]


def test_bad_arguments_name_the_argument():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, N, D\]"):
        modulated_distance(x[0], x[0], None, None)
    with pytest.raises(TypeError, match="x must have dtype in"):
        modulated_distance(x.double(), x.double(), None, None)
    with pytest.raises(ValueError, match=r"prev must have shape \(2, 5, 8\)"):
        modulated_distance(x, x[:, :4], None, None)
    with pytest.raises(ValueError, match=r"scale must have shape \(2, 8\) or \(8,\)"):
        modulated_distance(x, x, torch.ones(3, 8), None)
    with pytest.raises(ValueError, match="norm must be 'layer' or 'rms'"):
        modulated_distance(x, x, None, None, norm="group")
    with pytest.raises(ValueError, match="eps must be a positive number"):
        modulated_distance(x, x, None, None, eps=0)
    with pytest.raises(ValueError, match="x must be contiguous in its last dimension"):
        modulated_distance(x.transpose(1, 2), x.transpose(1, 2), None, None)
    with pytest.raises(ValueError, match="prev is required"):
        modulated_distance(x, None, None, None)
    with pytest.raises(ValueError, match="out_modulated must have shape"):
        modulated_distance(x, x, None, None, out_modulated=torch.empty(2, 5))
    with pytest.raises(TypeError, match="scale must be a torch.Tensor"):
        modulate(x, [1.0] * 8, None)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_pipelined_in_place_kernel_edge_cases(device, deterministic):
    """Written over prev, rows up to 4096 wide take the persistent, pipelined kernel: it must
    keep the one-tile kernel's guarantees (precision with a large mean, RMSNorm without shift,
    strided storage, NaN and Inf, samples that never mix)."""
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("no Triton for this device here: the PyTorch reference serves it")

    def in_place(x, prev, scale, shift, norm="layer"):
        old = prev.clone()
        sums = modulated_distance(x, prev, scale, shift, norm=norm, out_modulated=prev,
                                  deterministic=deterministic)
        m64, diff64, prev64 = torch_modulated_distance(
            x.double(), old.double(), None if scale is None else scale.double(),
            None if shift is None else shift.double(), norm, 1e-6)
        return sums, (m64, diff64, prev64)

    x = 1000.0 + torch.randn(3, 41, 3072, device=device)      # the mean dwarfs the spread
    scale, shift = torch.randn(3, 3072, device=device) * 0.1, torch.randn(3072, device=device)
    prev = torch.randn_like(x)
    (diff, prev_sum), (m64, diff64, prev64) = in_place(x, prev, scale, shift)
    torch.testing.assert_close(prev.double(), m64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diff.double(), diff64, rtol=1e-5, atol=0)
    torch.testing.assert_close(prev_sum.double(), prev64, rtol=1e-5, atol=0)

    base = torch.randn(3, 50, 200, device=device)
    prev = base[:, 5:]                                         # strided storage, written over
    outside = base[:, :5].clone()
    x = torch.randn(3, 45, 200, device=device)
    scale = torch.randn(200, device=device)
    (diff, prev_sum), (m64, diff64, prev64) = in_place(x, prev, scale, None, norm="rms")
    torch.testing.assert_close(prev.double(), m64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diff.double(), diff64, rtol=1e-5, atol=0)
    assert torch.equal(base[:, :5], outside)                   # untouched outside the view

    for bad in (float("nan"), float("inf")):
        x, scale, shift = make_inputs((2, 17, 40), torch.bfloat16, device)
        prev = torch.randn_like(x)
        x[1, 3, 7] = bad
        diff, prev_sum = modulated_distance(x, prev, scale, shift, out_modulated=prev,
                                            deterministic=deterministic)
        assert torch.isfinite(diff[0]) and torch.isfinite(prev_sum[0])
        assert not torch.isfinite(diff[1])
