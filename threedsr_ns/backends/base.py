"""The one interface the 3DSR pipeline uses to talk to a (frozen) super-resolution model.

A backend works in its own latent space: `encode` maps HR images in [0, 1] to latents,
`decode` maps latents back, and `predict_x0` runs the denoiser on noisy latents x_t conditioned
on the LR images and returns the clean-latent estimate x0. The sampler itself (schedule, start
latents, posterior steps) lives in `threedsr_ns.guidance` and only needs `alphas_cumprod` and
`prediction_type` from here.

Conventions for every backend:
- Images are [B, 3, H, W] float in [0, 1]. Latents of HR images of H x W are
  [B, C, H / latent_factor, W / latent_factor].
- Inputs may live on any device; the work runs on `self.device` (`to()`), outputs come back as
  float32 on the device of the inputs.
- Views are processed `batch_size` at a time to bound memory; results do not depend on it.
- Everything runs under torch.no_grad: the SR model is frozen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from numbers import Integral

import torch

from threedsr_ns import guidance
from threedsr_ns.guidance import PredictionType, Timestep


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SRBackend(ABC):
    name: str
    """Short name, as given to `--pipeline.sr-backend`."""
    scale: int
    """Upscale factor this backend produces (HR size / LR size)."""
    latent_factor: int
    """HR pixels per latent pixel along each axis."""
    is_diffusion: bool
    """False for non-generative baselines: predict_x0 then ignores x_t and t."""
    prediction_type: PredictionType
    alphas_cumprod: torch.Tensor
    """1D float32 (CPU) tensor, one entry per training timestep."""
    batch_size: int
    device: torch.device
    draws_conditioning_noise: bool = False
    """True when predict_x0 draws noise for its conditioning (the SD x4 upscaler's LR noise augmentation): its
    `generator` then also takes a sequence, one generator per view, and the sampler hands it each view's own
    (threedsr_ns.sampler)."""
    min_lr_size: int = 1
    """Smallest LR side (pixels) this backend takes. Every backend here takes any size from 1 px up: the UNets and
    RRDBNet pad or upsample to exact sizes, the SD x4 latents are on the LR grid (HR = 4 x LR is always a
    multiple of the VAE factor), and tiling only starts above the tile size."""

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def trained_timesteps(self) -> tuple[int, int]:
        """(lowest, highest) timestep the model was trained on, inclusive; default every training timestep.
        A backend trained on part of the schedule overrides this, and its guidance timesteps stay inside."""
        return 0, self.num_train_timesteps - 1

    def denoise_timesteps(self, num_steps: int, start_timestep: int | None = None) -> list[int]:
        """The K guidance timesteps t_1 > ... > t_K of this model: trailing-spaced over `trained_timesteps`, from its
        highest (or `start_timestep`) down, the last a full interval above the lowest, so that the last step's x0
        is the model's clean estimate at a timestep it was trained on. What the pipeline and every sampler use."""
        low, high = self.trained_timesteps
        if start_timestep is not None and not low <= start_timestep <= high:
            raise ValueError(f"start timestep {start_timestep} is outside the timesteps [{low}, {high}] SR backend "
                             f"'{self.name}' was trained on; pass a --pipeline.start-timestep in that range")
        top = high if start_timestep is None else start_timestep
        return [low + t for t in guidance.denoise_timesteps(num_steps, top - low + 1)]

    def check_scale(self, scale: int) -> None:
        """Raise a ValueError saying how to fix it when `scale` is not what this backend produces."""
        if scale != self.scale:
            raise ValueError(
                f"SR backend '{self.name}' produces x{self.scale} only, but an upscale factor of {scale} was "
                f"asked for; pass --pipeline.upscale-factor {self.scale} or choose "
                "--pipeline.sr-backend bicubic"
            )

    def check_lr_size(self, height: int, width: int) -> None:
        """Raise a one-line ValueError saying how to fix it when LR images of height x width cannot be processed.

        The pipeline calls this before the warm-up, with the LR size of the training images.
        """
        if not all(isinstance(side, Integral) and not isinstance(side, bool) for side in (height, width)):
            raise ValueError(f"LR size must be two integers (height, width), got {height!r} x {width!r}")
        if min(height, width) < self.min_lr_size:
            raise ValueError(
                f"SR backend '{self.name}' needs LR images of at least {self.min_lr_size}x{self.min_lr_size} pixels, "
                f"got {width}x{height} (width x height); prepare the data at a higher resolution (e.g. "
                "scripts/prepare_llff.py --gt-width) so that the LR images are at least that large"
            )

    @abstractmethod
    def to(self, device: torch.device | str) -> SRBackend:
        """Move the weights (and cached conditioning) to `device`; later calls compute there."""

    def offload(self) -> None:
        """Park the weights on the CPU and give the GPU memory back to 3DGS training."""
        self.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @abstractmethod
    def encode(self, hr_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> latents (the posterior mean for a VAE)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> [B, 3, H, W] in [0, 1]."""

    @abstractmethod
    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        lr_images: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Clean-latent estimate from noisy latents x_t at timestep(s) t, given the LR images [B, 3, h, w].

        `generator` drives any randomness of the conditioning (e.g. the LR noise augmentation);
        None uses the backend's own generator, seeded at construction.
        """

    def _in_batches(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """Apply fn to consecutive slices of `batch_size` views of every tensor and concatenate."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        total = tensors[0].shape[0]
        if any(x.shape[0] != total for x in tensors):
            raise ValueError(f"batch sizes differ: {[x.shape[0] for x in tensors]}")
        # no_grad rather than inference_mode: outputs become training targets, and inference tensors
        # cannot be saved for backward.
        with torch.no_grad():
            chunks = [
                fn(*(x[start : start + self.batch_size] for x in tensors)) for start in range(0, total, self.batch_size)
            ]
        return torch.cat(chunks)
