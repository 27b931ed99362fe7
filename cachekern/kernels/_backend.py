"""Where a kernel runs: Triton on CUDA tensors, Triton's interpreter on CPU tensors when
TRITON_INTERPRET=1 was set before this package was imported, the plain PyTorch reference otherwise.

Triton decides at decoration time whether a kernel is interpreted, so the choice is read once,
at import, exactly as Triton reads it.
"""

import os

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for the kernel modules)
except ImportError:  # e.g. macOS or Windows without a Triton build: the references serve
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    if triton is None:
        return False
    if tensor.device.type == "cuda":
        return not INTERPRET
    return tensor.device.type == "cpu" and INTERPRET


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
