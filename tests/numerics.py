"""Accuracy rules for the kernel tests.

- fp32: within 1e-5 relative of a float64 oracle.
- fp16/bf16: no worse than twice what plain PyTorch computing in that dtype gets against the same
  float64 oracle (flash-attention's rule). Tensors compare by relative L2 error, which is stable
  even for small tensors; per-sample sums compare against twice the L1 norm of the same-dtype
  PyTorch computation's elementwise error, which bounds what that computation's sum could be off.
"""

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEVICES = ["cpu", "cuda"]


def rel_l2(a: torch.Tensor, oracle: torch.Tensor) -> float:
    return ((a.double() - oracle).norm() / oracle.norm().clamp_min(1e-300)).item()


def assert_tensor_close(got, oracle, torch_same_dtype, dtype, what):
    err = rel_l2(got, oracle)
    if dtype == torch.float32:
        bound = 1e-5
    else:
        bound = 2 * rel_l2(torch_same_dtype, oracle)
    assert err <= bound, f"{what}: relative L2 error {err:.3e} > bound {bound:.3e}"
    assert torch.isfinite(got).all() == torch.isfinite(oracle).all()


def assert_sums_close(got, oracle, elementwise_torch_error_l1, dtype, what):
    """got, oracle: [B]; elementwise_torch_error_l1: [B] sum over a sample of |torch - oracle|."""
    for b in range(got.shape[0]):
        err = abs(got[b].double().item() - oracle[b].item())
        bound = 1e-5 * abs(oracle[b].item())
        if dtype != torch.float32:
            bound += 2 * elementwise_torch_error_l1[b].item()
        assert err <= bound, f"{what}[{b}]: error {err:.4e} > bound {bound:.4e}"


def device_param(device):
    import pytest
    return pytest.param(device, marks=pytest.mark.gpu) if device == "cuda" else device
