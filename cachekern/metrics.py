"""Quality against the uncached output, with nothing to download: PSNR, SSIM and relative L2 error."""

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


def _gaussian_window(size, sigma, dtype):
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(reference: torch.Tensor, other: torch.Tensor, data_range: float = None,
         window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03),
    per channel over the windows lying wholly inside the image, averaged over windows, channels and
    samples. Images are [B, C, H, W] (or [C, H, W]); data_range defaults to the reference's max − min.
    Equals skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False) per sample."""
    if reference.shape != other.shape:
        raise ValueError(f"other: expected the reference's shape {tuple(reference.shape)}, got "
                         f"{tuple(other.shape)}")
    ref, oth = reference.double(), other.double()
    if ref.dim() == 3:
        ref, oth = ref[None], oth[None]
    if ref.dim() != 4 or min(ref.shape[-2:]) < window:
        raise ValueError(f"reference: expected [B, C, H, W] images of at least {window}×{window}, "
                         f"got shape {tuple(reference.shape)}")
    if data_range is None:
        data_range = (ref.max() - ref.min()).item()
    g = _gaussian_window(window, sigma, torch.float64).to(ref.device)
    c = ref.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t):
        return torch.nn.functional.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(ref), blur(oth)
    var_x = blur(ref * ref) - mu_x ** 2
    var_y = blur(oth * oth) - mu_y ** 2
    cov = blur(ref * oth) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) *
                                                           (var_x + var_y + c2))
    return ssim_map.mean().item()
