"""Splatfacto plus 3DSR's LR subsampling loss and per-phase densification.

    L_all = L_hr(H_i, R_i) + λ · L_lr(L_i, down_s(R_i))

splatfacto's own loss is L_hr against the batch's "image" (the current SR target during HR phases, the
LR image during the warm-up); this model adds L_lr whenever the batch carries "lr_image".
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.cpu_fallback import cuda_calls_stay_put, splatfacto_function_with, with_reference_rasterizer
from threedsr_ns.losses import downsample_antialiased, lr_subsampling_loss
from threedsr_ns.strategy import PhasedStrategy


@dataclass
class ThreeDSRModelConfig(SplatfactoModelConfig):
    """Splatfacto with the 3DSR LR subsampling loss. Every splatfacto option still applies."""

    _target: Type = field(default_factory=lambda: ThreeDSRModel)
    lr_loss_weight: float = 1.0
    """λ: weight of the LR subsampling loss L_lr(L_i, down_s(R_i)) during HR phases."""
    lr_ssim_weight: float = 0.2
    """δ in L_lr = (1-δ)·L1 + δ·(1-SSIM)."""
    hr_densify_fraction: float = 0.5
    """Densification runs in this first fraction of each HR phase (paper: the first half)."""
    min_downscaled_side: int = 64
    """Splatfacto's coarse-to-fine start never trains on images whose short side is below this many
    pixels: on a small LR capture its 1/4-size start would be a few dozen pixels."""
    screen_size_margin: float = 2.0
    """Screen-size split/cull thresholds never go below this many times gsplat's 2 px minimum radius."""
    max_seed_points: Optional[int] = None
    """Start from at most this many of the SfM points (a fixed random subset); None: all of them. Fewer Gaussians
    make the CPU rasterizer's iterations proportionally cheaper (3dsr-preview)."""


class ThreeDSRModel(SplatfactoModel):
    config: ThreeDSRModelConfig

    fixed_background: bool = False
    """Render on the fixed `background_color` in training too, not on splatfacto's random one: set by the pipeline
    when the capture has alpha (its images are composited on that colour, so the loss must see the same one)."""

    def _get_background_color(self) -> torch.Tensor:
        if self.fixed_background:
            return self.background_color.to(self.device)
        return super()._get_background_color()

    def populate_modules(self) -> None:
        limit = self.config.max_seed_points
        if self.seed_points is not None and limit is not None and len(self.seed_points[0]) > limit:
            keep = torch.randperm(len(self.seed_points[0]), generator=torch.Generator().manual_seed(0))[:limit]
            self.seed_points = tuple(points[keep] for points in self.seed_points)
        # splatfacto's own populate_modules, with its LPIPS built by perceptual_metric() (no download) and, without
        # CUDA, its one `.cuda()` kept on the CPU; neither torchmetrics nor torch is patched (threedsr_ns.cpu_fallback)
        with nullcontext() if torch.cuda.is_available() else cuda_calls_stay_put():
            _splatfacto_populate_modules(self)
        fields = {f.name: getattr(self.strategy, f.name) for f in dataclasses.fields(self.strategy)}
        self.strategy = PhasedStrategy(**fields, screen_size_margin=self.config.screen_size_margin)
        self.in_hr_phase = False
        self._train_image_size: Optional[Tuple[int, int]] = None

    def start_hr_phase(self, step: int, phase_iters: int) -> None:
        """Begin an HR phase at global `step`: fresh densification statistics, densify in its first part."""
        self.in_hr_phase = True
        self.strategy.start_phase(step, refine_stop_iter=int(phase_iters * self.config.hr_densify_fraction))
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    def _get_downscale_factor(self) -> int:
        if self.in_hr_phase or not self.training:
            return 1
        factor = super()._get_downscale_factor()
        if self._train_image_size is not None:
            while factor > 1 and min(self._train_image_size) / factor < self.config.min_downscaled_side:
                factor //= 2
        return factor

    def get_outputs(self, camera: Cameras) -> Dict[str, torch.Tensor]:
        if self.training:
            self._train_image_size = (int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0]))
        if self.means.device.type == "cuda":
            return super().get_outputs(camera)
        with cuda_calls_stay_put():  # gsplat has no CPU kernels: splatfacto's code with the reference rasterizer
            return _splatfacto_get_outputs_on_cpu(self, camera)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if "lr_image" in batch:
            lr_image = batch["lr_image"]
            if lr_image.dtype == torch.uint8:
                lr_image = lr_image.float() / 255.0
            lr_image = self.composite_with_background(lr_image.to(self.device), outputs["background"])
            mask = batch["lr_mask"].to(self.device) if "lr_mask" in batch else None  # the capture's mask, at LR
            loss_dict["lr_loss"] = self.config.lr_loss_weight * lr_subsampling_loss(
                lr_image, outputs["rgb"], ssim_weight=self.config.lr_ssim_weight, mask=mask
            )
        return loss_dict

    def get_image_metrics_and_images(self, outputs, batch):
        # After the warm-up the cameras render xs; where the dataset's images are smaller (the LR input), the
        # render is scored downsampled to their size, and the metrics say so: lr_psnr, lr_ssim, lr_lpips and
        # lr_downsample_factor (what ns-eval and the training eval report). Images at the render's size (e.g. HR
        # ground truth) are scored as splatfacto does, under its names.
        gt_hw = tuple(batch["image"].shape[:2])
        factor = 1
        if tuple(outputs["rgb"].shape[:2]) != gt_hw:
            factor = outputs["rgb"].shape[0] // gt_hw[0]
            outputs = dict(outputs)
            outputs["rgb"] = downsample_antialiased(outputs["rgb"].permute(2, 0, 1)[None], gt_hw)[0].permute(1, 2, 0)
            if outputs["background"].dim() == 3:
                outputs["background"] = outputs["background"][: gt_hw[0], : gt_hw[1]]
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        for name in ("lpips", "cc_lpips"):
            if name in metrics and (self.lpips.unavailable or math.isnan(metrics[name])):
                del metrics[name]  # no weights, or the image is too small for AlexNet: dropped, never faked
        if factor > 1:
            metrics = {f"lr_{name}": value for name, value in metrics.items()}
            metrics["lr_downsample_factor"] = float(factor)
        return metrics, images


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Render without training side effects (random background, densification statistics), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _LpipsUnavailable(torch.nn.Module):
    """Stands in for LPIPS when its AlexNet weights are not on disk: the metric is dropped, never faked."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.tensor(float("nan"))


class OutOfStateMetric:
    """A metric module the model calls but does not register: its fixed weights stay out of every checkpoint
    (runs with and without LPIPS weights load each other's), and it follows its inputs' device."""

    def __init__(self, module: torch.nn.Module, min_side: int = 1) -> None:
        self.module = module.eval().requires_grad_(False)
        self.unavailable = isinstance(module, _LpipsUnavailable)
        self.min_side = min_side
        """Images with a smaller side get NaN (AlexNet's layers need 31 px): the model drops the metric."""

    @torch.no_grad()
    def __call__(self, *images: torch.Tensor) -> torch.Tensor:
        if min(images[0].shape[-2:]) < self.min_side:
            return torch.tensor(float("nan"))
        self.module.to(images[0].device)
        return self.module(*images)


def perceptual_metric() -> OutOfStateMetric:
    """LPIPS (AlexNet, inputs in [0, 1]) for splatfacto's eval metrics, from threedsr_ns.perceptual's converted
    weights (no download); when they are missing, a stand-in whose metric the model drops, and one log line saying so."""
    from threedsr_ns.perceptual import MIN_SIDE, LPIPSModule, weights_available

    available, note = weights_available()  # note: "lpips_alex skipped: <why and what to install>"
    if available:
        return OutOfStateMetric(LPIPSModule(), min_side=MIN_SIDE["alex"])
    CONSOLE.log(note)
    return OutOfStateMetric(_LpipsUnavailable())


_splatfacto_populate_modules: Callable = splatfacto_function_with(
    SplatfactoModel.populate_modules,
    imports={"torchmetrics.image.lpip": {"LearnedPerceptualImagePatchSimilarity": lambda *a, **k: perceptual_metric()}},
)
"""splatfacto's populate_modules, whose `from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity`
gives perceptual_metric instead of torchmetrics' class (which downloads AlexNet when it is built)."""

_splatfacto_get_outputs_on_cpu: Callable = with_reference_rasterizer(SplatfactoModel.get_outputs)
"""splatfacto's get_outputs calling threedsr_ns.rasterize_torch.rasterization (CPU) instead of gsplat's."""


class OfflineSplatfactoModel(SplatfactoModel):
    """nerfstudio's splatfacto unchanged, but for its LPIPS metric, built by perceptual_metric() (converted weights,
    no download) instead of torchmetrics' class, which downloads AlexNet when it is built. For the scripts that train
    plain splatfacto beside 3dsr (scripts/benchmark.py's GT-size anchor): set it as the model config's `_target`."""

    def populate_modules(self) -> None:
        _splatfacto_populate_modules(self)
