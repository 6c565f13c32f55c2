"""Bicubic upsampling as an SR backend: the no-diffusion baseline.

Its "latents" are the HR pixels themselves (encode/decode are the identity), and its clean
estimate is always bicubic(LR), whatever x_t. Run through the 3DSR loop it reduces to training
3DGS on bicubic-upsampled targets, with the same code path as a diffusion backend.
"""

from __future__ import annotations

import torch

from threedsr_ns.backends.base import SRBackend
from threedsr_ns.backends.sd_x4_upscaler_config import SCHEDULER_CONFIG
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.errors import UnsupportedScaleError
from threedsr_ns.guidance import Timestep


def _scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """diffusers' "scaled_linear" schedule (linear in sqrt(beta)), cumulative alphas in float32."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class PixelSpaceBackend(SRBackend):
    """A deterministic per-frame SR model in the loop: its "latents" are the HR pixels (encode/decode are the
    identity) and its clean estimate is `upscale(LR)` whatever x_t. Subclasses give `upscale`."""

    latent_factor = 1
    is_diffusion = False
    prediction_type = "sample"

    def encode(self, hr_images: torch.Tensor) -> torch.Tensor:
        return hr_images.float().clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(0.0, 1.0)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        lr_images: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """upscale(LR) per view; x_t only fixes the output size and device (t, generator unused)."""
        expected = (lr_images.shape[-2] * self.scale, lr_images.shape[-1] * self.scale)
        if tuple(x_t.shape[-2:]) != expected:
            raise ValueError(
                f"x_t is {tuple(x_t.shape[-2:])} but LR images {tuple(lr_images.shape[-2:])} x{self.scale} "
                f"need {expected}"
            )
        return self.upscale(lr_images).to(x_t.device)

    def upscale(self, lr_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> [B, 3, s h, s w] in [0, 1] on the inputs' device."""
        raise NotImplementedError


class BicubicBackend(PixelSpaceBackend):
    name = "bicubic"

    def __init__(self, scale: int = 4, batch_size: int = 8, device: torch.device | str = "cpu") -> None:
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = scale
        self.batch_size = batch_size
        self.device = torch.device(device)
        # Any valid schedule works (predict_x0 ignores x_t); use the SD x4 upscaler's so that the
        # sampler settings mean the same thing for every backend.
        self.alphas_cumprod = _scaled_linear_alphas_cumprod(
            SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"], SCHEDULER_CONFIG["num_train_timesteps"]
        )

    def check_scale(self, scale: int) -> None:
        if scale != self.scale:
            raise UnsupportedScaleError(
                f"SR backend 'bicubic' was built for x{self.scale} but an upscale factor of {scale} was asked "
                f"for; build it with make_backend('bicubic', scale={scale})"
            )

    def to(self, device: torch.device | str) -> BicubicBackend:
        self.device = torch.device(device)
        return self

    def upscale(self, lr_images: torch.Tensor) -> torch.Tensor:
        def upsample(lr: torch.Tensor) -> torch.Tensor:
            return bicubic_upsample(lr.to(self.device).float(), self.scale)

        return self._in_batches(upsample, lr_images).to(lr_images.device)
