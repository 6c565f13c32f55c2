"""Image metrics of the held-out SR check. Images are [3, H, W] float tensors in [0, 1].

- PSNR and SSIM: nerfstudio's definitions (as threedsr_ns.evaluation: PSNR with data range 1; SSIM of
  pytorch_msssim, 11x11 Gaussian window, data range 1), without importing nerfstudio.
- High-frequency energy ratio: how much detail above what the LR image can hold an SR image has, relative
  to the ground truth. On the luminance (Rec. 601 weights), mean removed, Hann-windowed (no edge leakage),
  the 2D power spectrum |FFT|^2 is summed over the annulus of radial frequencies f with
  cutoff < f <= 0.5 cycles per HR pixel, where cutoff = the LR Nyquist frequency 1 / (2 s) by default
  (0.125 for x4: what antialiased x4 downsampling removes). ratio = E_band(SR) / E_band(GT): bicubic is far
  below 1, a sharp faithful SR near 1, noise or over-sharpening above 1. The summed 2D spectrum over the
  annulus equals the integral of the radially averaged spectrum over that band.
- Seed spread: the per-pixel standard deviation across seeds (population, ddof 0), averaged over pixels and
  channels: how much the sampler invents differently from one seed to the next (0 for bicubic).
"""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ssim as _ssim

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _check(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image, got shape {tuple(image.shape)}")
    return image.float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((_check(a) - _check(b).to(a.device)) ** 2)
    return float(10.0 * torch.log10(1.0 / mse)) if float(mse) > 0 else math.inf


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(_ssim(_check(a)[None], _check(b).to(a.device)[None], data_range=1.0, size_average=True))


def luminance(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("chw,c->hw", _check(image), _LUMA.to(image.device))


def power_spectrum(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(power [H, W], radial frequency [H, W] in cycles per pixel) of the windowed, mean-removed luminance."""
    y = luminance(image).double()
    height, width = y.shape
    window = torch.outer(
        torch.hann_window(height, periodic=False, dtype=torch.float64, device=y.device),
        torch.hann_window(width, periodic=False, dtype=torch.float64, device=y.device),
    )
    y = (y - y.mean()) * window
    power = torch.fft.fft2(y).abs() ** 2 / window.square().sum()
    fy = torch.fft.fftfreq(height, dtype=torch.float64, device=y.device)
    fx = torch.fft.fftfreq(width, dtype=torch.float64, device=y.device)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return power, radius


def band_energy(image: torch.Tensor, low: float, high: float = 0.5) -> float:
    """Spectral energy of the luminance at radial frequencies in (low, high] cycles per pixel."""
    power, radius = power_spectrum(image)
    return float(power[(radius > low) & (radius <= high)].sum())


def hf_cutoff(scale: int, fraction: float = 1.0) -> float:
    """The LR Nyquist frequency in cycles per HR pixel (times `fraction`)."""
    return fraction * 0.5 / scale


def hf_energy_ratio(image: torch.Tensor, gt: torch.Tensor, scale: int = 4, fraction: float = 1.0) -> float:
    """E_band(image) / E_band(gt) over radial frequencies above fraction x the LR Nyquist, up to the HR Nyquist."""
    low = hf_cutoff(scale, fraction)
    reference = band_energy(gt, low)
    if reference <= 0:
        raise ValueError("the ground truth has no energy in the high-frequency band")
    return band_energy(image, low) / reference


def seed_spread(samples: torch.Tensor) -> float:
    """Mean over pixels and channels of the std across seeds of [S, 3, H, W] samples (S >= 2)."""
    if samples.ndim != 4 or samples.shape[0] < 2:
        raise ValueError(f"expected [S >= 2, 3, H, W] samples, got shape {tuple(samples.shape)}")
    return float(samples.float().std(dim=0, unbiased=False).mean())
