"""The 3DSR model on the CPU: splatfacto + the LR subsampling loss, phase handling, offline metrics, and no
process-wide patching on the way."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import gsplat.rendering
import nerfstudio.models.splatfacto as splatfacto
import pytest
import torch
import torchmetrics.image.lpip
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from threedsr_ns import perceptual
from threedsr_ns.losses import lr_subsampling_loss
from threedsr_ns.model import ThreeDSRModelConfig

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the model")


def make_model(**options):
    torch.manual_seed(0)
    config = ThreeDSRModelConfig(**{"random_init": False, "sh_degree": 1,
                                    **options})
    seed = (torch.rand(500, 3) - 0.5, torch.randint(0, 256, (500, 3)).float())
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                         metadata={}, seed_points=seed, device="cpu")
    model.step_cb(SimpleNamespace(optimizers={}), 0)
    return model


@pytest.fixture
def model():
    return make_model()


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


def test_hr_render_is_scored_against_lr_images_under_lr_names_with_real_lpips(model):
    assert not model.lpips.unavailable and not any("lpips" in k for k in model.state_dict())
    model.eval()
    outputs = model.get_outputs_for_camera(camera(160, 128))
    metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.rand(32, 40, 3)})
    assert set(metrics) == {"lr_psnr", "lr_ssim", "lr_lpips", "lr_downsample_factor"}
    assert metrics["lr_downsample_factor"] == 4.0 and 0 < metrics["lr_psnr"] < 60 and 0 < metrics["lr_lpips"] < 1
    same_size, _ = model.get_image_metrics_and_images(outputs, {"image": outputs["rgb"].clone()})
    assert set(same_size) == {"psnr", "ssim", "lpips"} and same_size["psnr"] > 60 and same_size["lpips"] < 1e-3
    # images below AlexNet's 31 px (the tests' tiny LLFF): LPIPS dropped, not faked
    tiny, _ = model.get_image_metrics_and_images(outputs, {"image": torch.rand(16, 20, 3)})
    assert set(tiny) == {"lr_psnr", "lr_ssim", "lr_downsample_factor"} and tiny["lr_downsample_factor"] == 8.0


def test_lpips_is_dropped_not_faked_when_its_weights_are_missing(monkeypatch):
    monkeypatch.setattr(perceptual, "weights_available", lambda *a, **k: (False, "lpips_alex skipped: no weights"))
    model = make_model()
    model.eval()
    metrics, _ = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera(16, 12)),
                                                    {"image": torch.rand(12, 16, 3)})
    assert model.lpips.unavailable and set(metrics) == {"psnr", "ssim"}


def test_cpu_forward_and_backward_patch_nothing_process_wide(model):
    """The reference rasterizer and the no-op `.cuda()` reach splatfacto's code through the model only: while it
    renders, torch.Tensor.cuda and splatfacto's module-level rasterization are the originals, and another thread's
    `.cuda()` still fails as it must on a machine without CUDA."""
    originals = (torch.Tensor.cuda, splatfacto.rasterization, torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity)
    assert splatfacto.rasterization is gsplat.rendering.rasterization
    seen = {}

    def during_forward(*args, **kwargs):  # splatfacto calls this between rasterization and the loss
        seen["globals"] = (torch.Tensor.cuda, splatfacto.rasterization,
                           torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity)
        seen["same_thread_cuda"] = torch.zeros(1).cuda().device.type  # the model's own thread: kept on the CPU

        def other_thread():
            try:
                torch.zeros(1).cuda()
                seen["other_thread"] = "moved"
            except (RuntimeError, AssertionError):
                seen["other_thread"] = "raised"

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()

    model.strategy.step_pre_backward = during_forward
    outputs = model.get_outputs(camera(32, 24))
    outputs["rgb"].mean().backward()
    assert seen == {"globals": originals, "same_thread_cuda": "cpu", "other_thread": "raised"}
    assert model.gauss_params["means"].grad.abs().sum() > 0
    assert (torch.Tensor.cuda, splatfacto.rasterization,
            torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity) == originals


def test_seed_points_are_kept_and_capped(model):
    assert model.num_points == 500  # the SfM points, colours via splatfacto's `.cuda()` kept on the CPU
    capped = make_model(max_seed_points=120)
    assert capped.num_points == 120


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


def test_plain_splatfacto_for_the_benchmarks_scores_lpips_offline_without_patching_torchmetrics():
    """scripts/benchmark.py's GT-size splatfacto: nerfstudio's model, whose LPIPS comes from the converted weights
    (no AlexNet download), and torchmetrics' class is the same object before and after, in every thread."""
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    from threedsr_ns.model import OfflineSplatfactoModel

    before = torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity
    model = SplatfactoModelConfig(_target=OfflineSplatfactoModel).setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=3, metadata={})
    assert isinstance(model, splatfacto.SplatfactoModel)
    assert torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity is before
    available, _ = perceptual.weights_available()
    if not available:
        pytest.skip("LPIPS weights are not installed")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(image, 5, stride=1, padding=2)
    assert float(model.lpips(image, image)) < 1e-6 < float(model.lpips(image, blurred))
