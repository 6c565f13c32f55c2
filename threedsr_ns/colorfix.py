"""Wavelet colour fix (StableSR) and the bicubic upsample it takes its colours from.

Diffusion SR decodes drift in colour and tone. StableSR's fix keeps the high frequencies of the
decode (the invented detail) and takes the low frequencies (colour, shading) from the
bicubic-upsampled LR image, which are right by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BLUR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, C, h, w] in [0, 1] -> [B, C, scale*h, scale*w], clamped to [0, 1] (bicubic overshoots)."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    height, width = lr.shape[-2:]
    up = F.interpolate(lr, size=(height * scale, width * scale), mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)


def _wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 Gaussian blur with holes (a-trous), replicate padding, one kernel per channel."""
    channels = image.shape[1]
    kernel = _BLUR_KERNEL.to(device=image.device, dtype=image.dtype).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def _wavelet_decomposition(image: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == image; low is the image blurred at scales 1, 2, ..., 2**(levels-1)."""
    high = torch.zeros_like(image)
    low = image
    for level in range(levels):
        blurred = _wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of `target` (the SR decode) + low frequencies of `source` (bicubic LR).

    Both [B, 3, H, W] in [0, 1]; the result is float32, clamped to [0, 1] (it is a training target).
    """
    if target.shape != source.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != source shape {tuple(source.shape)}")
    if target.ndim != 4:
        raise ValueError(f"expected [B, C, H, W] images, got shape {tuple(target.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    target_high, _ = _wavelet_decomposition(target.float(), levels)
    _, source_low = _wavelet_decomposition(source.float(), levels)
    return (target_high + source_low).clamp(0.0, 1.0)
