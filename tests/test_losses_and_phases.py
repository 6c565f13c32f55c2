from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threedsr_ns.losses import downsample_antialiased, l1_ssim_loss, lr_subsampling_loss
from threedsr_ns.phases import PhaseSchedule


def test_downsample_reproduces_a_linear_ramp_at_lr_pixel_centres():
    s, h, w = 4, 12, 16
    ys = (torch.arange(s * h) + 0.5) / s  # HR pixel centres in LR pixel units
    xs = (torch.arange(s * w) + 0.5) / s
    hr = (0.02 * ys[:, None] + 0.03 * xs[None, :]).expand(1, 3, -1, -1)
    lr = downsample_antialiased(hr, (h, w))
    expected = 0.02 * (torch.arange(h) + 0.5)[:, None] + 0.03 * (torch.arange(w) + 0.5)[None, :]
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the clamped border
    assert torch.allclose(lr[interior], expected.expand(1, 3, h, w)[interior], atol=1e-4)


def test_downsample_is_antialiased():
    # thin lines every 4 px cover a quarter of each LR pixel: an antialiased x4 downsample is 0.25
    # everywhere, a plain bicubic one samples between the lines and misses them
    s, h, w = 4, 8, 8
    xx = torch.arange(s * w).expand(s * h, -1)
    hr = (xx % s == 0).float().expand(1, 3, -1, -1)
    ours = downsample_antialiased(hr, (h, w))
    aliased = F.interpolate(hr, size=(h, w), mode="bicubic", align_corners=False)
    interior = (slice(None), slice(None), slice(None), slice(1, -1))
    assert (ours[interior] - 0.25).abs().max() < 0.02
    assert (aliased[interior] - 0.25).abs().min() > 0.2


def test_lr_loss_is_zero_for_a_consistent_render_and_grows_with_error():
    torch.manual_seed(0)
    hr = torch.rand(48, 64, 3)
    lr = downsample_antialiased(hr.permute(2, 0, 1)[None], (12, 16))[0].permute(1, 2, 0)
    assert lr_subsampling_loss(lr, hr).item() < 1e-5
    small = lr_subsampling_loss(lr, (hr + 0.05).clamp(0, 1)).item()
    large = lr_subsampling_loss(lr, (hr + 0.2).clamp(0, 1)).item()
    assert 0 < small < large


def test_lr_loss_mixes_l1_and_ssim_with_delta():
    torch.manual_seed(1)
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    l1 = (a - b).abs().mean()
    assert torch.allclose(l1_ssim_loss(a, b, ssim_weight=0.0), l1)
    mixed = l1_ssim_loss(a, b, ssim_weight=0.2)
    structural = l1_ssim_loss(a, b, ssim_weight=1.0)
    assert torch.allclose(mixed, 0.8 * l1 + 0.2 * structural, atol=1e-6)


def test_lr_loss_sends_gradients_to_the_render_and_rejects_non_multiples():
    hr = torch.rand(48, 64, 3, requires_grad=True)
    lr_subsampling_loss(torch.rand(12, 16, 3), hr).backward()
    assert hr.grad is not None and hr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not an integer multiple"):
        lr_subsampling_loss(torch.rand(12, 16, 3), torch.rand(50, 64, 3))


def test_phase_schedule_paper_defaults():
    schedule = PhaseSchedule(30000, 4, 5000)
    assert schedule.total_iterations == 50000
    assert schedule.guidance_starts == [30000, 35000, 40000, 45000]
    assert [schedule.phase_at(s) for s in (0, 29999, 30000, 34999, 35000, 49999)] == [0, 0, 1, 1, 2, 4]
    assert schedule.describe(31000) == "denoise step 1/4, HR phase 1000/5000"
    with pytest.raises(ValueError, match="denoise_steps"):
        PhaseSchedule(100, 0, 10)
