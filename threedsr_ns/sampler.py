"""One step of 3DSR's sampler with an SR backend: the guidance steps of the pipeline and the pre-flight check
both run it (threedsr_ns.guidance holds the maths, the backend the model).

    k = 1:  x_{t1} = start_latents(E(bicubic(L)), t1)     (or pure noise)
    k > 1:  x_{tk} = posterior(x_{t(k-1)}, x~0 = E(toward))   toward: renders (3dsr) or the previous SR images
    then    x0 = predict_x0(x_{tk}, tk | L);  SR = colour_fix(D(x0), bicubic(L))

`generator` is one torch.Generator for the whole batch, or one per view (guidance.view_generators: what the pipeline
passes). With one per view, every view's result is a function of that view alone, whatever the views batched or
split over processes with it: its start/posterior noise comes from its own generator, a backend whose conditioning
is noisy (the SD x4's LR noise augmentation) gets that view's generator for it, and the colour fix runs in the
backend's batches, so that the view sees the same batch composition as long as its batch is the same
(threedsr_ns.distributed shards whole batches).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional, Sequence, Tuple, Union

import torch

from threedsr_ns import guidance
from threedsr_ns.colorfix import wavelet_color_fix


def _predict_x0(backend, x_t: torch.Tensor, t: int, lr: torch.Tensor,
                generator: Union[torch.Generator, Sequence[torch.Generator], None]) -> torch.Tensor:
    """backend.predict_x0. One generator (or None): the backend's own conditioning noise, as before. One generator
    per view: a backend with noisy conditioning (`draws_conditioning_noise`) gets the views' generators (its
    predict_x0 takes a sequence, one per view); a deterministic one runs as it is."""
    noisy = getattr(backend, "draws_conditioning_noise", False)
    if generator is None or isinstance(generator, torch.Generator) or not noisy:
        return backend.predict_x0(x_t, t, lr)
    return backend.predict_x0(x_t, t, lr, generator=list(generator))


def sampler_step(backend, timesteps: Sequence[int], k: int, lr: torch.Tensor, lr_up: torch.Tensor,
                 generator: Union[torch.Generator, Sequence[torch.Generator], None], *,
                 start_mode: guidance.StartMode = "noised_lr", posterior: guidance.StepKind = "ddpm",
                 color_fix: bool = True,
                 latents: Optional[torch.Tensor] = None, toward: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None,
                 timer: Optional[Callable[[str], ContextManager]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step k (1-based) for a batch of views: (x_{t_k}, colour-fixed SR images [B, 3, sH, sW]).

    lr [B, 3, h, w] and lr_up (its bicubic upsampling) in [0, 1]; the step works on lr's device. k > 1 needs
    `latents` (x_{t_(k-1)}) and `toward` (images whose encoding is the clean latent), unless the backend is not a
    diffusion model (it ignores x_t: every step starts afresh from the clean encoding, and no noise is drawn).
    `timer(name)` times the parts (encode; noise: the start or posterior step with its noise draws; denoise;
    decode). `generator`: one for the batch, or one per view (see the module docstring). `noise` (k > 1, DDPM
    posterior): that step's noise already drawn from the per-view generators, which come advanced past it
    (guidance.predraw_posterior_noise); default drawn in the step."""
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != lr.shape[0]:
        raise ValueError(f"{len(generator)} generators for {lr.shape[0]} views: pass one generator, or one per view")
    section = timer or (lambda name: nullcontext())
    # one memory layout whatever the caller's (renders come permuted): the kernels' rounding depends on the layout,
    # and a view's result must not depend on whether it came through a process boundary
    lr, lr_up = lr.contiguous(), lr_up.contiguous()
    latents = None if latents is None else latents.contiguous()
    toward = None if toward is None else toward.contiguous()
    t = timesteps[k - 1]
    if not backend.is_diffusion:  # it ignores x_t: no noise to draw (a no-diffusion baseline must not pay for it)
        with section("encode"):
            x_t = backend.encode(lr_up)
    elif k == 1:
        with section("encode"):
            encoded = backend.encode(lr_up)
        with section("noise"):
            x_t = guidance.start_latents(encoded if start_mode == "noised_lr" else None, encoded.shape, t,
                                         backend.alphas_cumprod, generator, mode=start_mode, device=lr.device)
    else:
        if latents is None or toward is None:
            raise ValueError(f"sampler step {k} needs the latents of step {k - 1} and the images to step toward")
        with section("encode"):
            x0_target = backend.encode(toward)
        with section("noise"):
            x_t = guidance.posterior_step(latents.to(lr.device).float(), x0_target, timesteps[k - 2], t,
                                          backend.alphas_cumprod, generator=generator, kind=posterior, noise=noise)
        del x0_target  # N views' worth of memory the rest of the step does not need
    with section("denoise"):
        x0 = _predict_x0(backend, x_t, t, lr, generator)
    with section("decode"):
        sr = backend.decode(x0)
        del x0
        if color_fix:
            step = max(int(getattr(backend, "batch_size", 0) or sr.shape[0]), 1)  # the backend's batches
            if sr.data_ptr() in (x_t.data_ptr(), lr_up.data_ptr()):  # never write into the state or the input
                sr = sr.clone()
            for i in range(0, sr.shape[0], step):  # in place, batch by batch: no second copy of all views
                sr[i : i + step] = wavelet_color_fix(sr[i : i + step], lr_up[i : i + step])
    return x_t, sr
