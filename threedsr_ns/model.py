"""Splatfacto plus 3DSR's LR subsampling loss and per-phase densification.

    L_all = L_hr(H_i, R_i) + λ · L_lr(L_i, down_s(R_i))

splatfacto's own loss is L_hr against the batch's "image" (the current SR target during HR phases, the
LR image during the warm-up); this model adds L_lr whenever the batch carries "lr_image".
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.cpu_fallback import splatfacto_on_cpu
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


class ThreeDSRModel(SplatfactoModel):
    config: ThreeDSRModelConfig

    def populate_modules(self) -> None:
        with splatfacto_on_cpu(), lpips_only_if_weights_on_disk():
            super().populate_modules()
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
        with splatfacto_on_cpu():
            return super().get_outputs(camera)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if "lr_image" in batch:
            lr_image = batch["lr_image"]
            if lr_image.dtype == torch.uint8:
                lr_image = lr_image.float() / 255.0
            lr_image = self.composite_with_background(lr_image.to(self.device), outputs["background"])
            loss_dict["lr_loss"] = self.config.lr_loss_weight * lr_subsampling_loss(
                lr_image, outputs["rgb"], ssim_weight=self.config.lr_ssim_weight
            )
        return loss_dict

    def get_image_metrics_and_images(self, outputs, batch):
        # After the warm-up the cameras render xs while the dataset's images stay LR: score the render
        # downsampled to the image's size (fidelity to the LR input), and keep the HR render for display.
        gt_hw = batch["image"].shape[:2]
        if outputs["rgb"].shape[:2] != gt_hw:
            outputs = dict(outputs)
            outputs["rgb"] = downsample_antialiased(outputs["rgb"].permute(2, 0, 1)[None], tuple(gt_hw))[0].permute(1, 2, 0)
            if outputs["background"].dim() == 3:
                outputs["background"] = outputs["background"][: gt_hw[0], : gt_hw[1]]
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if isinstance(self.lpips, _LpipsUnavailable):
            metrics.pop("lpips", None)
            metrics.pop("cc_lpips", None)
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


def alexnet_weights_path() -> str:
    from torchvision.models import AlexNet_Weights

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url))


class lpips_only_if_weights_on_disk:
    """splatfacto builds torchmetrics' LPIPS, which downloads AlexNet's weights: offline it cannot even be
    constructed. Build it only when the weights are already on disk; otherwise say so once and skip it."""

    def __enter__(self):
        import torchmetrics.image.lpip as lpip

        self._module, self._saved = lpip, lpip.LearnedPerceptualImagePatchSimilarity
        if not os.path.exists(alexnet_weights_path()):
            CONSOLE.log(f"LPIPS skipped: its AlexNet weights are not at {alexnet_weights_path()} (no download attempted)")
            lpip.LearnedPerceptualImagePatchSimilarity = lambda *a, **k: _LpipsUnavailable()
        return self

    def __exit__(self, *exc) -> None:
        self._module.LearnedPerceptualImagePatchSimilarity = self._saved
