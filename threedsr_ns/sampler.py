"""One step of 3DSR's sampler with an SR backend: the guidance steps of the pipeline and the pre-flight check
both run it (threedsr_ns.guidance holds the maths, the backend the model).

    k = 1:  x_{t1} = start_latents(E(bicubic(L)), t1)     (or pure noise)
    k > 1:  x_{tk} = posterior(x_{t(k-1)}, x~0 = E(toward))   toward: renders (3dsr) or the previous SR images
    then    x0 = predict_x0(x_{tk}, tk | L);  SR = colour_fix(D(x0), bicubic(L))
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional, Sequence, Tuple

import torch

from threedsr_ns import guidance
from threedsr_ns.colorfix import wavelet_color_fix


def sampler_step(backend, timesteps: Sequence[int], k: int, lr: torch.Tensor, lr_up: torch.Tensor,
                 generator: Optional[torch.Generator], *, start_mode: guidance.StartMode = "noised_lr",
                 posterior: guidance.StepKind = "ddpm", color_fix: bool = True,
                 latents: Optional[torch.Tensor] = None, toward: Optional[torch.Tensor] = None,
                 timer: Optional[Callable[[str], ContextManager]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step k (1-based) for a batch of views: (x_{t_k}, colour-fixed SR images [B, 3, sH, sW]).

    lr [B, 3, h, w] and lr_up (its bicubic upsampling) in [0, 1]; the step works on lr's device. k > 1 needs
    `latents` (x_{t_(k-1)}) and `toward` (images whose encoding is the clean latent), unless the backend is not a
    diffusion model (it ignores x_t: every step starts afresh). `timer(name)` times the parts (encode, denoise,
    decode)."""
    section = timer or (lambda name: nullcontext())
    t = timesteps[k - 1]
    if k == 1 or not backend.is_diffusion:
        with section("encode"):
            encoded = backend.encode(lr_up)
        x_t = guidance.start_latents(encoded if start_mode == "noised_lr" else None, encoded.shape, t,
                                     backend.alphas_cumprod, generator, mode=start_mode, device=lr.device)
    else:
        if latents is None or toward is None:
            raise ValueError(f"sampler step {k} needs the latents of step {k - 1} and the images to step toward")
        with section("encode"):
            x0_target = backend.encode(toward)
        x_t = guidance.posterior_step(latents.to(lr.device).float(), x0_target, timesteps[k - 2], t,
                                      backend.alphas_cumprod, generator=generator, kind=posterior)
    with section("denoise"):
        x0 = backend.predict_x0(x_t, t, lr)
    with section("decode"):
        sr = backend.decode(x0)
        if color_fix:
            sr = wavelet_color_fix(sr, lr_up)
    return x_t, sr
