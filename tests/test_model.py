"""The 3DSR model on the CPU: splatfacto + the LR subsampling loss, phase handling, offline metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from threedsr_ns.losses import lr_subsampling_loss
from threedsr_ns.model import ThreeDSRModelConfig, _LpipsUnavailable


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no AlexNet weights on disk
    torch.manual_seed(0)
    config = ThreeDSRModelConfig(random_init=True, num_random=400, random_scale=1.5, sh_degree=1)
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                         metadata={}, device="cpu")
    model.step_cb(SimpleNamespace(optimizers={}), 0)
    return model


def camera(width: int, height: int) -> Cameras:
    c2w = torch.eye(4)[None, :3]
    c2w[0, 2, 3] = 3.0  # 3 units back along +z, looking down -z at the Gaussians (OpenGL axes)
    return Cameras(camera_to_worlds=c2w, fx=float(width), fy=float(width), cx=width / 2, cy=height / 2,
                   width=width, height=height)


def test_lr_loss_is_added_only_when_the_batch_has_the_lr_image(model):
    outputs = model.get_outputs(camera(64, 48))
    assert outputs["rgb"].shape == (48, 64, 3)
    target = torch.rand(48, 64, 3)
    assert "lr_loss" not in model.get_loss_dict(outputs, {"image": target})

    lr = (torch.rand(12, 16, 3) * 255).to(torch.uint8)
    losses = model.get_loss_dict(outputs, {"image": target, "lr_image": lr})
    expected = lr_subsampling_loss(lr.float() / 255, outputs["rgb"], ssim_weight=0.2)
    assert torch.allclose(losses["lr_loss"], expected)
    losses["lr_loss"].backward()
    assert model.gauss_params["means"].grad.abs().sum() > 0  # it trains the Gaussians


def test_hr_render_is_scored_against_lr_images_and_lpips_is_skipped_offline(model):
    assert isinstance(model.lpips, _LpipsUnavailable)
    model.eval()
    outputs = model.get_outputs_for_camera(camera(64, 48))
    metrics, images = model.get_image_metrics_and_images(outputs, {"image": torch.rand(12, 16, 3)})
    assert set(metrics) == {"psnr", "ssim"}  # no fake LPIPS
    assert 0 < metrics["psnr"] < 60


def test_coarse_to_fine_start_never_goes_below_the_minimum_side(model):
    model.get_outputs(camera(126, 94))  # LLFF's LR size
    assert model._get_downscale_factor() == 1  # splatfacto alone would train at 31x23
    model.get_outputs(camera(512, 384))
    assert model._get_downscale_factor() == 4


def test_hr_phase_restarts_densification_at_full_resolution(model):
    model.start_hr_phase(step=300, phase_iters=100)
    model.get_outputs(camera(512, 384))
    assert model._get_downscale_factor() == 1
    assert model.strategy.phase_start == 300 and model.strategy.refine_stop_iter == 50
    # the screen-size split threshold knows gsplat's 2 px minimum radius on tiny images only
    assert model.strategy.screen_size_floor(31, 23) > model.config.split_screen_size
    assert model.strategy.screen_size_floor(504, 376) < model.config.split_screen_size
