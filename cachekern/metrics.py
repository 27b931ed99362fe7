"""Quality against the uncached output, with nothing to download: PSNR and relative L2 error."""

import math

import torch


def psnr(reference: torch.Tensor, other: torch.Tensor, data_range: float = None) -> float:
    """Peak signal-to-noise ratio in dB; data_range defaults to the reference's max - min."""
    ref, oth = reference.double(), other.double()
    if data_range is None:
        data_range = (ref.max() - ref.min()).item()
    mse = (ref - oth).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """||other - reference|| / ||reference|| (L2)."""
    ref = reference.double()
    return ((other.double() - ref).norm() / ref.norm()).item()
