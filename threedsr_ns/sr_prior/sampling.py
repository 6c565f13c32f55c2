"""Per-frame SR with any diffusion backend: 3DSR's K-step sampler without the 3D scene, or a plain sampler.

Each step is `threedsr_ns.sampler.sampler_step`, the step the pipeline's guidance runs, with the 3D-consistent
renders replaced by the view's own previous SR image: exactly what `--pipeline.mode per-frame` does per view,

    x_{t1} = start_latents(E(bicubic(L)), t1)           ("noised_lr", as 3DSR) or pure noise ("noise")
    SR_1 = colour_fix(D(predict_x0(x_{t1}, t1 | L)))
    for k = 2..K:  x_{tk} = posterior_step(x_{t(k-1)}, x~0 = E(SR_(k-1)));  SR_k = colour_fix(D(predict_x0(x_{tk})))

on the backend's own trained timesteps (`SRBackend.denoise_timesteps`). Without the colour fix, a pixel-space
prior's E(D(x0)) is x0 clipped to the image range, and this is an ancestral sampler on trailing timesteps.

`SamplerSpec("ddpm", 4, "noised_lr")` is what 3DSR's first guidance step and its per-frame baseline do;
`SamplerSpec("ddpm", 50, "noise")` or `("ddim", 50, ...)` is a plain full sampler with the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from threedsr_ns import guidance
from threedsr_ns.backends.base import SRBackend
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.sampler import sampler_step


@dataclass(frozen=True)
class SamplerSpec:
    kind: guidance.StepKind = "ddpm"
    """"ddpm": the stochastic posterior step (3DSR's default); "ddim": eta 0."""
    steps: int = 4
    """Number of denoiser calls (K); timesteps trailing-spaced from start_timestep."""
    start: guidance.StartMode = "noised_lr"
    start_timestep: int | None = None
    """t1; default the last training timestep."""

    @classmethod
    def parse(cls, text: str) -> SamplerSpec:
        """"kind:steps[:start[:t1]]", e.g. "ddpm:4" (3DSR's), "ddim:50:noise"."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 4 or parts[0] not in ("ddpm", "ddim"):
            raise ValueError(f'sampler must be "ddpm|ddim:steps[:noised_lr|noise[:t1]]", got {text!r}')
        start = parts[2] if len(parts) > 2 else "noised_lr"
        if start not in ("noised_lr", "noise"):
            raise ValueError(f"sampler start must be noised_lr or noise, got {start!r}")
        return cls(parts[0], int(parts[1]), start, int(parts[3]) if len(parts) > 3 else None)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        text = f"{self.kind}:{self.steps}:{self.start}"
        return text if self.start_timestep is None else f"{text}:{self.start_timestep}"


@torch.no_grad()
def sample_sr(
    backend: SRBackend,
    lr_images: torch.Tensor,
    spec: SamplerSpec = SamplerSpec(),
    generator: torch.Generator | None = None,
    color_fix: bool = True,
    scale: int | None = None,
) -> torch.Tensor:
    """SR images [B, 3, s*h, s*w] in [0, 1] for LR images [B, 3, h, w] in [0, 1] (float32, on lr's device)."""
    scale = scale or backend.scale
    timesteps = backend.denoise_timesteps(spec.steps, spec.start_timestep)
    lr = lr_images.float()
    lr_up = bicubic_upsample(lr, scale)
    x_t, sr = None, None
    for k in range(1, len(timesteps) + 1 if backend.is_diffusion else 2):
        x_t, sr = sampler_step(backend, timesteps, k, lr, lr_up, generator, start_mode=spec.start,
                               posterior=spec.kind, color_fix=color_fix, latents=x_t, toward=sr)
    return sr
