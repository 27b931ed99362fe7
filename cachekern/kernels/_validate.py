"""Argument checks shared by the kernels: each error names the argument and what was expected."""

from typing import Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(op: str, name: str, t, *, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype in ({names}), got "
                        f"{str(t.dtype).replace('torch.', '')}")


def check_same_device(op: str, reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {reference_name} is on "
                             f"{reference.device}; all tensors must be on one device")


def check_shape(op: str, name: str, t: torch.Tensor, expected) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_last_dim_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be contiguous in its last dimension "
                         f"(stride(-1) == 1), got strides {tuple(t.stride())}")


def check_per_sample_channels(op: str, name: str, t: Optional[torch.Tensor], batch: int,
                              channels: int, device: torch.device) -> None:
    """scale/shift: shape [B, C] or [C], float, contiguous in C, on the device of the data."""
    if t is None:
        return
    check_tensor(op, name, t)
    if tuple(t.shape) not in ((batch, channels), (channels,)):
        raise ValueError(f"{op}: {name} must have shape ({batch}, {channels}) or ({channels},), "
                         f"got {tuple(t.shape)}")
    check_last_dim_contiguous(op, name, t)
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the data is on {device}")


def batch_stride(t: Optional[torch.Tensor]) -> int:
    """Stride between samples of a [B, C] or broadcast [C] tensor (0 for [C]); 0 for None."""
    if t is None or t.dim() == 1:
        return 0
    return t.stride(0)


def as_rows(op: str, name: str, t: torch.Tensor, batch: int, columns: int) -> torch.Tensor:
    """A [B, R, columns] view of t (no copy): every sample a matrix with unit column stride.
    The batch dimension may have any stride; the rest of each sample must collapse into rows."""
    try:
        view = t.view(batch, -1, columns)
    except RuntimeError:
        raise ValueError(f"{op}: {name} with shape {tuple(t.shape)} and strides "
                         f"{tuple(t.stride())} cannot be viewed as [B, rows, {columns}] without a "
                         f"copy; make the dimensions after the batch dimension contiguous") from None
    if columns > 1 and view.stride(2) != 1:
        raise ValueError(f"{op}: {name} must be contiguous in its channel/last dimension")
    return view
