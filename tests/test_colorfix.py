"""Wavelet colour fix: low frequencies from the source (bicubic LR), high from the target (decode)."""

from __future__ import annotations

import pytest
import torch

from threedsr_ns.colorfix import bicubic_upsample, wavelet_color_fix

# Blur radii 1 + 2 + 4 + 8 + 16: farther than this from the border, replicate padding has no effect.
BORDER = 31


def _smooth_image(height: int = 80, width: int = 80) -> torch.Tensor:
    """Slow colour ramps in [0.3, 0.7]: all low frequency."""
    ys = torch.linspace(0.0, 1.0, height)[:, None]
    xs = torch.linspace(0.0, 1.0, width)[None, :]
    channels = [0.3 + 0.4 * ys * xs, 0.5 + 0.2 * torch.sin(3 * xs) * ys, 0.6 - 0.3 * ys + 0 * xs]
    return torch.stack(channels)[None]


def _checkerboard(height: int = 80, width: int = 80, amplitude: float = 0.1) -> torch.Tensor:
    """The highest frequency there is: the first [1, 2, 1] blur removes it entirely."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (amplitude * (-1.0) ** (ys + xs).float()).expand(1, 3, height, width)


def test_high_frequencies_come_from_the_target() -> None:
    source = _smooth_image()
    target = source + _checkerboard()
    fixed = wavelet_color_fix(target, source)
    inner = (..., slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    torch.testing.assert_close(fixed[inner], target[inner], atol=1e-5, rtol=0)


def test_low_frequencies_come_from_the_source() -> None:
    source = _smooth_image() + _checkerboard(amplitude=0.05)
    target = source + torch.tensor([0.1, -0.2, 0.05])[None, :, None, None]  # a colour cast
    torch.testing.assert_close(wavelet_color_fix(target, source), source, atol=1e-5, rtol=0)


def test_identical_inputs_are_unchanged_and_range_is_clamped() -> None:
    image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(wavelet_color_fix(image, image), image, atol=1e-5, rtol=0)
    fixed = wavelet_color_fix(torch.rand(1, 3, 40, 48) * 3 - 1, torch.rand(1, 3, 40, 48))
    assert fixed.dtype == torch.float32
    assert fixed.min() >= 0.0 and fixed.max() <= 1.0


def test_color_fix_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        wavelet_color_fix(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="levels"):
        wavelet_color_fix(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), levels=0)


def test_bicubic_upsample_shape_and_range() -> None:
    lr = torch.zeros(2, 3, 5, 7)
    lr[..., ::2, ::2] = 1.0  # sharp edges: bicubic overshoots here unless clamped
    up = bicubic_upsample(lr, 4)
    assert up.shape == (2, 3, 20, 28)
    assert up.min() >= 0.0 and up.max() <= 1.0
    constant = torch.full((1, 3, 6, 6), 0.25)
    torch.testing.assert_close(bicubic_upsample(constant, 3), torch.full((1, 3, 18, 18), 0.25))
    with pytest.raises(ValueError, match="scale"):
        bicubic_upsample(lr, 0)
