"""The LR subsampling loss of 3DSR: the HR render, downsampled ×s, must reproduce the LR input.

    L_lr = (1 - δ) · L1(L, down_s(R)) + δ · (1 - SSIM(L, down_s(R)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim


def downsample_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic downsample of [B,C,H,W] images to `size` (h, w), as the official code does.

    Plain bicubic would alias the HR render's high frequencies into the LR comparison; the antialias
    flag widens the kernel by the scale factor (the same as PIL's reducing resize).
    """
    if images.dim() != 4:
        raise ValueError(f"expected [B,C,H,W] images, got shape {tuple(images.shape)}")
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def l1_ssim_loss(target: torch.Tensor, pred: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """(1 - δ)·L1 + δ·(1 - SSIM) between [B,3,H,W] images in [0, 1]."""
    l1 = (target - pred).abs().mean()
    # win_size 11 needs images of at least 11 px; tiny test scenes fall back to the largest odd window
    win = min(11, min(target.shape[-2:]) // 2 * 2 - 1)
    structural = 1.0 - ssim(target, pred, data_range=1.0, size_average=True, win_size=max(win, 3))
    return (1.0 - ssim_weight) * l1 + ssim_weight * structural


def lr_subsampling_loss(lr_image: torch.Tensor, hr_render: torch.Tensor, ssim_weight: float = 0.2,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_lr between an LR image and an HR render, both [H,W,3] (nerfstudio's layout).

    The render's size must be an integer multiple of the LR size (the upscale factor s). mask: optional [h, w, 1]
    at LR size (the capture's mask); pixels outside it take no part (both sides zeroed, as splatfacto masks L_hr).
    """
    lr = lr_image.permute(2, 0, 1)[None].to(hr_render.dtype)
    hr = hr_render.permute(2, 0, 1)[None]
    (h, w), (H, W) = lr.shape[-2:], hr.shape[-2:]
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"HR render {W}x{H} is not an integer multiple of the LR image {w}x{h}")
    down = downsample_antialiased(hr, (h, w))
    if mask is not None:
        keep = mask.permute(2, 0, 1)[None].to(down.dtype)
        lr, down = lr * keep, down * keep
    return l1_ssim_loss(lr, down, ssim_weight)
