"""Quality against the uncached output, with nothing to download: PSNR, SSIM and relative L2 error;
and against the data: the Fréchet distance between feature sets."""

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


def frechet_distance(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors ([N, D] each):
    |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), in float64 (FID's formula on any features).
    With few samples the covariances are poor estimates and the distance is biased upwards:
    compare only distances computed from equally many samples."""
    for name, f in (("features", features), ("reference_features", reference_features)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected [N >= 2, D] feature vectors, got shape "
                             f"{tuple(f.shape)}")
    if features.shape[1] != reference_features.shape[1]:
        raise ValueError(f"features: {features.shape[1]} dimensions, reference_features "
                         f"{reference_features.shape[1]}")
    a, b = features.double(), reference_features.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # (Σ₁^½ Σ₂ Σ₁^½) is symmetric positive semi-definite: its square root's trace is the sum of
    # the square roots of its eigenvalues (clamped: rounding can make tiny ones negative).
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(distance.item(), 0.0)
