"""The sampler side of the 3DSR loop, as pure functions on tensors.

3DSR runs a diffusion SR sampler whose clean-latent estimate is replaced, at every step, by the
encoding of the current 3DGS render. So the sampler is taken apart here: the timestep schedule,
the start latents, the conversion of the model output to a clean latent x0, and the step
x_t -> x_{t_prev} given an x0 that may come from the 3D scene instead of the model.

Conventions:
- `alphas_cumprod` is the model's 1D cumulative product of alphas (length = training steps). It
  is moved to the tensors' device and used in float32 whatever its dtype.
- `t` is a Python int or an integer tensor with one timestep per batch element.
- A previous timestep of -1 means "clean" (alpha_bar = 1): a step to it returns x0.
- Results come back in the dtype of the input latents; all arithmetic is done in float32.
- Noise comes from one `torch.Generator` for the whole batch, or from a sequence of generators, one per batch
  element (`view_generators`): each element's noise is then drawn from its own generator and the draws are stacked,
  so a view's noise does not depend on which other views share its batch (or process).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]
StepKind = Literal["ddpm", "ddim"]
StartMode = Literal["noised_lr", "noise"]

Timestep = int | torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, one per batch element, or None (the global RNG)."""

VIEW_SEED_STRIDE = 1_000_003
"""view_seed's stride between guidance steps: (seed, k, view) -> seed + 1_000_003 k + view is one-to-one for the
views of any capture (< 1_000_003 views)."""


def view_seed(seed: int, k: int, view: int) -> int:
    """Seed of view `view`'s generator at guidance step k: seed + 1_000_003 * k + view (distinct for every (k, view)
    of a run, and a function of the view's index only, never of how the views are batched or split)."""
    value = seed + VIEW_SEED_STRIDE * k + view
    if not 0 <= value < 2**32:  # torch's CPU generator (mt19937) keeps the low 32 bits of its seed
        raise ValueError(f"view seed {value} (seed {seed}, step {k}, view {view}) is outside [0, 2**32); "
                         "pass a smaller --pipeline.guidance-seed")
    return value


def view_generators(seed: int, k: int, views: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per view, seeded with `view_seed(seed, k, view)`: the noise of guidance step k. CPU
    generators draw the same numbers on every machine; the noise is moved to the latents' device. Each view's
    generator gives, in order, its start or posterior noise and then any conditioning noise of the SR model."""
    return [torch.Generator("cpu").manual_seed(view_seed(seed, k, int(v))) for v in views]


def denoise_timesteps(num_steps: int, num_train_timesteps: int = 1000, start_timestep: int | None = None) -> list[int]:
    """Timesteps t_1 > ... > t_K evenly spaced from `start_timestep` down (DDIM "trailing").

    K=4, T=1000 -> [999, 749, 499, 249]: the first step starts from the noisiest timestep and the
    last one stays a full interval above 0, as diffusers' `timestep_spacing="trailing"` does.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    start = num_train_timesteps - 1 if start_timestep is None else start_timestep
    if not 0 <= start < num_train_timesteps:
        raise ValueError(
            f"start_timestep must be in [0, {num_train_timesteps - 1}] "
            f"(num_train_timesteps={num_train_timesteps}), got {start_timestep}"
        )
    span = start + 1
    if not 1 <= num_steps <= span:
        raise ValueError(
            f"num_steps must be in [1, {span}] for start_timestep={start} (more steps than timesteps "
            f"would repeat timesteps), got {num_steps}"
        )
    # Same float arithmetic as numpy's arange(span, 0, -span / K) in diffusers' trailing spacing.
    step = span / num_steps
    return [int(round(span - k * step)) - 1 for k in range(num_steps)]


def _alpha_bar(alphas_cumprod: torch.Tensor, t: Timestep, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t in float32 on `like`'s device, shaped to broadcast over `like` ([B, 1, 1, ...]).

    t = -1 gives 1 (the clean end of the chain).
    """
    num_train = alphas_cumprod.shape[0]
    table = alphas_cumprod.to(device=like.device, dtype=torch.float32)
    t_tensor = torch.as_tensor(t, device=like.device).long()
    if t_tensor.ndim > 1:
        raise ValueError(f"t must be an int or a 1D tensor (one per batch element), got shape {tuple(t_tensor.shape)}")
    if t_tensor.ndim == 1 and t_tensor.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"t has {t_tensor.shape[0]} timesteps for a batch of {like.shape[0]}")
    if bool(((t_tensor < -1) | (t_tensor >= num_train)).any()):
        raise ValueError(f"timesteps must be in [-1, {num_train - 1}], got {t_tensor.tolist()}")
    clean = torch.ones((), device=like.device, dtype=torch.float32)
    alpha_bar = torch.where(t_tensor >= 0, table[t_tensor.clamp(min=0)], clean)
    return alpha_bar.reshape(-1, *([1] * (like.ndim - 1)))


DRAW_THREADS = min(8, os.cpu_count() or 1)
"""Views whose noise is drawn at once: a CPU generator draws on one core, and each view has its own (on the H200
host a fern step at 2016x1512 took 3.12 s with one core's draws, 2.09 s with 8 threads:
benchmarks/results/guidance-step-h200*.json)."""
PARALLEL_DRAW_MIN = 1 << 20
"""Elements per view from which the views' noise is drawn on DRAW_THREADS threads."""


def randn(shape: Sequence[int], device: torch.device | str, generator: Generators) -> torch.Tensor:
    """Float32 standard noise on `device`, drawn on the generator's device (reproducible across devices).
    A sequence of generators draws element i of the batch (shape[0]) from generator i, large draws on DRAW_THREADS
    threads (the same numbers). The sampler's noise, and a backend's conditioning noise (the SD x4 upscaler's LR noise
    augmentation)."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        draw_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)
    generators = list(generator)
    if not shape or len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0] if shape else 0} (shape {shape}): "
                         "pass one per batch element")

    def draw(g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32)

    if len(generators) > 1 and math.prod(shape[1:]) >= PARALLEL_DRAW_MIN:  # each view's numbers come from its own
        with ThreadPoolExecutor(min(len(generators), DRAW_THREADS)) as pool:  # generator: the same in any thread
            draws = list(pool.map(draw, generators))
    else:
        draws = [draw(g) for g in generators]
    return torch.stack([d.to(device) for d in draws]) if draws else torch.empty(shape, device=device, dtype=torch.float32)


def predraw_posterior_noise(seed: int, k: int, views: Sequence[int], shape: Sequence[int],
                            pin: bool = False) -> tuple[list[torch.Generator], torch.Tensor]:
    """Guidance step k's DDPM posterior noise for `views`, drawn ahead of the step (e.g. on a background thread
    during the HR phase before it): (the views' generators, advanced past it, for the step's further draws; the
    noise [len(views), *shape[1:]] on the CPU, pinned if `pin`). The same numbers as the step would draw itself:
    `view_generators(seed, k, views)` and then `randn`."""
    generators = view_generators(seed, k, views)
    noise = randn((len(generators), *tuple(shape)[1:]), "cpu", generators)
    return generators, noise.pin_memory() if pin else noise


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return randn(x.shape, x.device, generator)


def q_sample(x0: torch.Tensor, t: Timestep, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    a = _alpha_bar(alphas_cumprod, t, x0)
    x_t = a.sqrt() * x0.float() + (1.0 - a).sqrt() * noise.float()
    return x_t.to(x0.dtype)


def start_latents(
    encoded: torch.Tensor | None,
    shape: Sequence[int],
    t1: Timestep,
    alphas_cumprod: torch.Tensor,
    generator: Generators,
    mode: StartMode,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The sampler's first latents x_{t_1}.

    "noised_lr": q_sample(E(bicubic(L)), t_1), StableSR-style (and the official 3DSR code): the
    sampler starts from the upsampled LR, so its low frequencies are right from the first step.
    "noise": pure Gaussian noise of `shape` (the usual sampler start; `encoded` is ignored).
    `device` is where pure-noise latents go (default: `encoded`'s device, else CPU). `generator`: one for the
    batch or one per batch element.
    """
    shape = tuple(shape)
    if mode == "noised_lr":
        if encoded is None:
            raise ValueError('mode "noised_lr" needs the encoded bicubic-upsampled LR images, got None')
        if tuple(encoded.shape) != shape:
            raise ValueError(f"encoded shape {tuple(encoded.shape)} != requested shape {shape}")
        return q_sample(encoded, t1, _randn_like(encoded, generator), alphas_cumprod)
    if mode == "noise":
        target = device if device is not None else (encoded.device if encoded is not None else "cpu")
        return randn(shape, target, generator)
    raise ValueError(f'start mode must be "noised_lr" or "noise", got {mode!r}')


def model_output_to_x0(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: Timestep,
    alphas_cumprod: torch.Tensor,
    prediction_type: PredictionType,
) -> torch.Tensor:
    """The clean latent x0 implied by the denoiser output at timestep t."""
    a = _alpha_bar(alphas_cumprod, t, x_t)
    out, x = model_output.float(), x_t.float()
    if prediction_type == "epsilon":
        x0 = (x - (1.0 - a).sqrt() * out) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1.0 - a).sqrt() * out
    elif prediction_type == "sample":
        x0 = out
    else:
        raise ValueError(f'prediction_type must be "epsilon", "v_prediction" or "sample", got {prediction_type!r}')
    return x0.to(x_t.dtype)


def _check_order(t: Timestep, t_prev: Timestep) -> None:
    if bool((torch.as_tensor(t_prev) >= torch.as_tensor(t)).any()):
        raise ValueError(f"t_prev must be < t (the sampler goes toward t = 0), got t={t}, t_prev={t_prev}")


def ddpm_posterior_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: Timestep,
    t_prev: Timestep,
    alphas_cumprod: torch.Tensor,
    generator: Generators = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample q(x_{t_prev} | x_t, x0) for any t_prev < t (the steps need not be adjacent). `noise`: the standard
    noise already drawn from `generator` (`predraw_posterior_noise`); default drawn here.

    With s = t_prev and a_{t|s} = a_t / a_s (the alpha of the jump s -> t):
      mean = sqrt(a_s) (1 - a_{t|s}) / (1 - a_t) * x0 + sqrt(a_{t|s}) (1 - a_s) / (1 - a_t) * x_t
      var  = (1 - a_s) / (1 - a_t) * (1 - a_{t|s})
    For s = t - 1 this is DDPM's posterior with the "fixed_small" variance.
    """
    _check_order(t, t_prev)
    a_t = _alpha_bar(alphas_cumprod, t, x_t)
    a_s = _alpha_bar(alphas_cumprod, t_prev, x_t)
    a_ts = a_t / a_s
    if noise is not None and noise.shape != x_t.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x_t shape {tuple(x_t.shape)}")
    # mean, then the noise, summed in place: the same operations as mean + sqrt(var) * noise, with fewer N-view
    # temporaries alive at once (at HR in pixel space each is all the views' images)
    out = (a_s.sqrt() * (1.0 - a_ts) / (1.0 - a_t)) * x0.float()
    out += (a_ts.sqrt() * (1.0 - a_s) / (1.0 - a_t)) * x_t.float()
    var = (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_ts)
    if noise is None:
        noise = _randn_like(x_t, generator)
    out += var.sqrt() * noise.to(x_t.device, torch.float32)
    return out.to(x_t.dtype)


def ddim_step(
    x_t: torch.Tensor, x0: torch.Tensor, t: Timestep, t_prev: Timestep, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0): keep the noise direction implied by (x_t, x0)."""
    _check_order(t, t_prev)
    a_t = _alpha_bar(alphas_cumprod, t, x_t)
    a_s = _alpha_bar(alphas_cumprod, t_prev, x_t)
    x0f = x0.float()
    eps = (x_t.float() - a_t.sqrt() * x0f) / (1.0 - a_t).sqrt()
    return (a_s.sqrt() * x0f + (1.0 - a_s).sqrt() * eps).to(x_t.dtype)


def posterior_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: Timestep,
    t_prev: Timestep,
    alphas_cumprod: torch.Tensor,
    kind: StepKind = "ddpm",
    generator: Generators = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_{t_prev} from x_t toward x0 with the chosen step ("ddpm": stochastic posterior, "ddim": eta 0).
    `generator`: one for the batch or one per batch element; `noise`: DDPM's noise, drawn from it beforehand."""
    if kind == "ddpm":
        return ddpm_posterior_step(x_t, x0, t, t_prev, alphas_cumprod, generator, noise)
    if kind == "ddim":
        return ddim_step(x_t, x0, t, t_prev, alphas_cumprod)
    raise ValueError(f'posterior step kind must be "ddpm" or "ddim", got {kind!r}')
