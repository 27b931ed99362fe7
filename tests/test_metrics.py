"""cachekern.metrics against plain re-implementations."""

import math

import numpy as np
import pytest
import torch

from cachekern.metrics import frechet_distance, psnr, relative_error, ssim


def ssim_by_windows(x, y, data_range, size=11, sigma=1.5):
    """SSIM as Wang et al. define it, one window at a time (float64 numpy)."""
    g = np.exp(-(np.arange(size) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for a, b in zip(x, y):                      # channels
        for i in range(a.shape[0] - size + 1):
            for j in range(a.shape[1] - size + 1):
                pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) /
                              ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(1, 13, 17), (3, 16, 21)])
def test_ssim_equals_the_window_by_window_definition(shape):
    x = torch.rand(shape) * 2 - 1
    y = (x + 0.2 * torch.randn(shape)).clamp(-1, 1)
    expected = ssim_by_windows(x.double().numpy(), y.double().numpy(), 2.0)
    assert ssim(x, y, data_range=2.0) == pytest.approx(expected, rel=1e-9)
    assert ssim(x[None], y[None], data_range=2.0) == pytest.approx(expected, rel=1e-9)
    assert ssim(x, x, data_range=2.0) == pytest.approx(1.0)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x = torch.rand(3, 40, 33) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    expected = metrics.structural_similarity(x.numpy(), y.numpy(), channel_axis=0, data_range=2.0,
                                             gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False)
    assert ssim(x, y, data_range=2.0) == pytest.approx(expected, rel=1e-5)


def test_ssim_rejects_mismatched_or_small_images():
    with pytest.raises(ValueError, match="other"):
        ssim(torch.rand(1, 16, 16), torch.rand(1, 16, 15))
    with pytest.raises(ValueError, match="reference"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


def test_psnr_and_relative_error():
    x = torch.rand(2, 3, 8, 8)
    noise = 0.01 * torch.randn_like(x)
    mse = noise.double().pow(2).mean().item()
    assert psnr(x, x + noise, data_range=1.0) == pytest.approx(10 * math.log10(1 / mse))
    assert psnr(x, x) == math.inf
    assert relative_error(x, x + noise) == pytest.approx(
        (noise.double().norm() / x.double().norm()).item())


def frechet_by_scipy(a, b):
    """FID's formula with scipy's general matrix square root (float64 numpy)."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("n,m,d", [(257, 131, 7), (61, 45, 13), (30, 300, 19)])
def test_frechet_distance_matches_scipy(n, m, d):
    g = torch.Generator().manual_seed(n + d)
    mix = torch.randn(d, d, generator=g)
    a = torch.randn(n, d, generator=g) @ mix + 0.3
    b = torch.randn(m, d, generator=g) @ (mix + 0.5 * torch.randn(d, d, generator=g)) - 0.2
    ours = frechet_distance(a, b)
    assert ours > 0.1
    assert ours == pytest.approx(frechet_by_scipy(a, b), rel=1e-6, abs=1e-8)
    assert ours == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * ours)


def test_frechet_distance_refuses_bad_features():
    with pytest.raises(ValueError, match="features"):
        frechet_distance(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="reference_features"):
        frechet_distance(torch.randn(5, 4), torch.randn(5))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(torch.randn(5, 4), torch.randn(5, 3))
