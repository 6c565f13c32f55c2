"""Per-frame SR with any diffusion backend: 3DSR's K-step sampler without the 3D scene, or a plain sampler.

The loop is the pipeline's (threedsr_ns.pipeline.run_guidance_step) with the 3D-consistent clean latent
replaced by the model's own estimate, which is exactly an ancestral sampler on trailing timesteps:

    x_{t1} = start_latents(E(bicubic(L)), t1)           ("noised_lr", as 3DSR) or pure noise ("noise")
    for k = 1..K:  x0_k = predict_x0(x_{tk}, tk | L);  x_{t(k+1)} = posterior_step(x_{tk}, x0_k)  (k < K)
    SR = colour_fix(D(x0_K), bicubic(L))

`SamplerSpec("ddpm", 4, "noised_lr")` is what 3DSR's first guidance step and its per-frame baseline do;
`SamplerSpec("ddpm", 50, "noise")` or `("ddim", 50, ...)` is a plain full sampler with the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from threedsr_ns import guidance
from threedsr_ns.backends.base import SRBackend
from threedsr_ns.colorfix import bicubic_upsample, wavelet_color_fix


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
    timesteps = guidance.denoise_timesteps(spec.steps, backend.num_train_timesteps, spec.start_timestep)
    lr_up = bicubic_upsample(lr_images.float(), scale)
    encoded = backend.encode(lr_up)
    x_t = guidance.start_latents(
        encoded if spec.start == "noised_lr" else None, encoded.shape, timesteps[0], backend.alphas_cumprod,
        generator, mode=spec.start, device=encoded.device,
    )
    x0 = x_t
    for k, t in enumerate(timesteps):
        x0 = backend.predict_x0(x_t, t, lr_images)
        if k + 1 < len(timesteps):
            x_t = guidance.posterior_step(x_t, x0, t, timesteps[k + 1], backend.alphas_cumprod, spec.kind, generator)
    sr = backend.decode(x0)
    return wavelet_color_fix(sr, lr_up) if color_fix else sr
