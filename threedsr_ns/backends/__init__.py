"""Pluggable, frozen super-resolution models behind one interface (`SRBackend`).

`make_backend(name, ...)` is the only constructor the pipeline needs; `BACKEND_NAMES` lists the
names it accepts (the choices of `--pipeline.sr-backend`).
"""

from __future__ import annotations

import torch

from threedsr_ns.backends.base import SRBackend, default_device
from threedsr_ns.backends.bicubic import BicubicBackend
from threedsr_ns.backends.sd_x4_upscaler_config import DEFAULT_NOISE_LEVEL
from threedsr_ns.backends.sd_x4_upscaler_config import MODEL_ID as SD_X4_MODEL_ID

BACKEND_NAMES: tuple[str, ...] = ("sd-x4-upscaler", "sd-x4-upscaler-random", "tiny-random", "bicubic")

__all__ = ["BACKEND_NAMES", "BicubicBackend", "SRBackend", "make_backend"]


def make_backend(
    name: str,
    *,
    model_path: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    batch_size: int = 1,
    scale: int = 4,
    prompt: str = "",
    negative_prompt: str = "",
    guidance_scale: float = 1.0,
    noise_level: int = DEFAULT_NOISE_LEVEL,
) -> SRBackend:
    """Build the SR backend called `name`.

    - "sd-x4-upscaler": pretrained weights from `model_path` (a local folder or hub id; default
      the hub's stabilityai/stable-diffusion-x4-upscaler).
    - "sd-x4-upscaler-random": the same architecture, full size, random weights (cost benchmarks).
    - "tiny-random": a few-channel version with random weights (tests, CPU end-to-end runs).
    - "bicubic": no diffusion, bicubic upsampling at `scale`.
    device None: CUDA when available; dtype None: float16 on CUDA, float32 otherwise. `scale` is
    the upscale factor asked for: a backend that cannot produce it raises before loading anything.
    `model_path`, `prompt`, `negative_prompt` and `guidance_scale` only apply to "sd-x4-upscaler".
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown SR backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")
    if name == "bicubic":
        return BicubicBackend(scale=scale, batch_size=batch_size, device=device or default_device())
    # Imported here: diffusers takes seconds to import, and the bicubic baseline does not need it.
    from threedsr_ns.backends.sd_upscaler import SDUpscalerBackend, build_random_sd_x4_upscaler, check_upscaler_scale

    check_upscaler_scale(name, scale)  # before loading or downloading anything
    if name == "sd-x4-upscaler":
        return SDUpscalerBackend.from_pretrained(
            model_path or SD_X4_MODEL_ID,
            device=device,
            dtype=dtype,
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            noise_level=noise_level,
            batch_size=batch_size,
            seed=seed,
        )
    return build_random_sd_x4_upscaler(
        device=device,
        dtype=dtype,
        seed=seed,
        tiny=name == "tiny-random",
        batch_size=batch_size,
        noise_level=noise_level,
    )
