"""The sampler pieces of threedsr_ns.guidance against closed forms and diffusers' schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from threedsr_ns.guidance import (
    ddim_step,
    ddpm_posterior_step,
    denoise_timesteps,
    model_output_to_x0,
    posterior_step,
    q_sample,
    start_latents,
    view_generators,
    view_seed,
)

# The SD x4 upscaler's schedule.
SCHEDULE = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    return DDPMScheduler(**SCHEDULE).alphas_cumprod.clone()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# ---- timesteps ----------------------------------------------------------------------------------


def test_denoise_timesteps_values() -> None:
    assert denoise_timesteps(4) == [999, 749, 499, 249]
    assert denoise_timesteps(1) == [999]
    assert denoise_timesteps(3, start_timestep=599) == [599, 399, 199]
    assert denoise_timesteps(5, num_train_timesteps=5) == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("num_steps", [1, 3, 4, 7, 50, 1000])
def test_denoise_timesteps_match_diffusers_trailing(num_steps: int) -> None:
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing")
    scheduler.set_timesteps(num_steps)
    assert denoise_timesteps(num_steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=1001), "num_steps"),
        (dict(num_steps=5, start_timestep=3), "num_steps"),
        (dict(num_steps=2, start_timestep=1000), "start_timestep"),
        (dict(num_steps=2, start_timestep=-1), "start_timestep"),
        (dict(num_steps=2, num_train_timesteps=0), "num_train_timesteps"),
    ],
)
def test_denoise_timesteps_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        denoise_timesteps(**kwargs)


# ---- forward process and x0 conversion ----------------------------------------------------------


def test_backend_timesteps_stay_inside_what_it_was_trained_on() -> None:
    from threedsr_ns.backends import BicubicBackend

    class PartlyTrained(BicubicBackend):
        trained_timesteps = (100, 599)

    assert BicubicBackend().denoise_timesteps(4) == [999, 749, 499, 249]  # every timestep: the plain trailing spacing
    partial = PartlyTrained().denoise_timesteps(4)
    assert partial == [599, 474, 349, 224]
    assert min(partial) - 100 >= (599 - 100 + 1) // 4 - 1  # the last step stays an interval above the lowest
    assert PartlyTrained().denoise_timesteps(2, start_timestep=300) == [300, 199]
    with pytest.raises(ValueError, match="outside the timesteps \\[100, 599\\]"):
        PartlyTrained().denoise_timesteps(4, start_timestep=50)


def test_q_sample_statistics(alphas_cumprod: torch.Tensor) -> None:
    t = 600
    x0 = torch.full((200_000,), 0.7)
    x_t = q_sample(x0, t, torch.randn(x0.shape, generator=_gen(0)), alphas_cumprod)
    a = alphas_cumprod[t].double()
    assert x_t.mean().item() == pytest.approx((a.sqrt() * 0.7).item(), abs=5e-3)
    assert x_t.var().item() == pytest.approx((1 - a).item(), rel=1e-2)


def test_q_sample_per_batch_timesteps(alphas_cumprod: torch.Tensor) -> None:
    x0, noise = torch.randn(3, 4, 5, 6, generator=_gen(1)), torch.randn(3, 4, 5, 6, generator=_gen(2))
    t = torch.tensor([10, 500, 999])
    batched = q_sample(x0, t, noise, alphas_cumprod)
    for i in range(3):
        single = q_sample(x0[i : i + 1], int(t[i]), noise[i : i + 1], alphas_cumprod)
        torch.testing.assert_close(batched[i : i + 1], single)


def test_q_sample_matches_diffusers_add_noise(alphas_cumprod: torch.Tensor) -> None:
    x0, noise = torch.randn(2, 4, 8, 8, generator=_gen(3)), torch.randn(2, 4, 8, 8, generator=_gen(4))
    t = torch.tensor([123, 877])
    expected = DDPMScheduler(**SCHEDULE).add_noise(x0, noise, t)
    torch.testing.assert_close(q_sample(x0, t, noise, alphas_cumprod), expected)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_x0_round_trips(alphas_cumprod: torch.Tensor, t: int) -> None:
    x0, eps = torch.randn(2, 4, 8, 8, generator=_gen(5)), torch.randn(2, 4, 8, 8, generator=_gen(6))
    x_t = q_sample(x0, t, eps, alphas_cumprod)
    timesteps = torch.full((2,), t)
    v = DDPMScheduler(**SCHEDULE).get_velocity(x0, eps, timesteps)
    tol = dict(atol=2e-3 if t == 999 else 1e-4, rtol=1e-4)  # eps -> x0 divides by sqrt(a_999) ~ 0.027
    torch.testing.assert_close(model_output_to_x0(eps, x_t, t, alphas_cumprod, "epsilon"), x0, **tol)
    torch.testing.assert_close(model_output_to_x0(v, x_t, timesteps, alphas_cumprod, "v_prediction"), x0, **tol)
    torch.testing.assert_close(model_output_to_x0(x0, x_t, t, alphas_cumprod, "sample"), x0)


def test_x0_conversion_errors(alphas_cumprod: torch.Tensor) -> None:
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        model_output_to_x0(x, x, 10, alphas_cumprod, "flow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timesteps"):
        model_output_to_x0(x, x, 1000, alphas_cumprod, "sample")
    with pytest.raises(ValueError, match="batch"):
        pair = torch.zeros(2, 4, 2, 2)
        model_output_to_x0(pair, pair, torch.tensor([1, 2, 3]), alphas_cumprod, "sample")


def test_computation_is_float32_and_keeps_dtype(alphas_cumprod: torch.Tensor) -> None:
    x0 = torch.randn(1, 4, 4, 4, generator=_gen(7)).half()
    out = q_sample(x0, 500, torch.zeros_like(x0), alphas_cumprod.double())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), (alphas_cumprod[500].sqrt() * x0.float()), atol=1e-3, rtol=1e-3)


# ---- start latents ------------------------------------------------------------------------------


def test_start_latents_modes(alphas_cumprod: torch.Tensor) -> None:
    encoded = torch.randn(2, 4, 6, 7, generator=_gen(8))
    noised = start_latents(encoded, encoded.shape, 749, alphas_cumprod, _gen(9), "noised_lr")
    expected = q_sample(encoded, 749, torch.randn(encoded.shape, generator=_gen(9)), alphas_cumprod)
    torch.testing.assert_close(noised, expected)
    noise = start_latents(None, (2, 4, 6, 7), 999, alphas_cumprod, _gen(9), "noise")
    torch.testing.assert_close(noise, torch.randn(2, 4, 6, 7, generator=_gen(9)))
    with pytest.raises(ValueError, match="noised_lr"):
        start_latents(None, (2, 4, 6, 7), 999, alphas_cumprod, _gen(9), "noised_lr")
    with pytest.raises(ValueError, match="shape"):
        start_latents(encoded, (1, 4, 6, 7), 999, alphas_cumprod, _gen(9), "noised_lr")
    with pytest.raises(ValueError, match="start mode"):
        start_latents(encoded, encoded.shape, 999, alphas_cumprod, _gen(9), "zeros")  # type: ignore[arg-type]


def test_view_generators_draw_each_view_alone_whatever_its_batch(alphas_cumprod: torch.Tensor) -> None:
    """A batch of 3 views with one generator each equals the views drawn one at a time (start and posterior)."""
    encoded = torch.randn(3, 4, 6, 7, generator=_gen(8))
    x0 = torch.randn(3, 4, 6, 7, generator=_gen(10))
    together = start_latents(encoded, encoded.shape, 749, alphas_cumprod, view_generators(5, 1, [0, 1, 2]), "noised_lr")
    stepped = posterior_step(together, x0, 749, 499, alphas_cumprod, generator=view_generators(5, 2, [0, 1, 2]))
    for i in range(3):
        alone = start_latents(encoded[i : i + 1], (1, 4, 6, 7), 749, alphas_cumprod, view_generators(5, 1, [i]),
                              "noised_lr")
        assert torch.equal(together[i : i + 1], alone)
        step_alone = posterior_step(alone, x0[i : i + 1], 749, 499, alphas_cumprod, generator=view_generators(5, 2, [i]))
        assert torch.equal(stepped[i : i + 1], step_alone)
    noise = start_latents(None, (3, 4, 6, 7), 999, alphas_cumprod, view_generators(5, 1, [7, 8, 9]), "noise")
    assert torch.equal(noise[2], torch.randn(4, 6, 7, generator=_gen(view_seed(5, 1, 9))))
    assert not torch.equal(noise[0], noise[1])  # every view has its own stream
    assert len({view_seed(0, k, v) for k in range(1, 5) for v in range(500)}) == 4 * 500
    with pytest.raises(ValueError, match="one per batch element"):
        start_latents(None, (3, 4, 6, 7), 999, alphas_cumprod, view_generators(5, 1, [0, 1]), "noise")
    with pytest.raises(ValueError, match="guidance-seed"):
        view_seed(2**32, 1, 0)


def test_large_draws_on_threads_are_the_views_own_numbers(monkeypatch) -> None:
    """Above PARALLEL_DRAW_MIN elements a view, the views' noise is drawn on threads: each view still gets exactly
    its own generator's stream, so results do not depend on the thread count or the order the threads ran in."""
    from threedsr_ns import guidance

    shape = (4, 3, 512, 683)  # 1.05 M elements a view: the threaded path
    assert math.prod(shape[1:]) >= guidance.PARALLEL_DRAW_MIN
    serial = torch.stack([torch.randn(shape[1:], generator=g) for g in view_generators(3, 2, range(4))])
    for threads in (1, 2, 4):
        monkeypatch.setattr(guidance, "DRAW_THREADS", threads)
        assert torch.equal(guidance.randn(shape, "cpu", view_generators(3, 2, range(4))), serial), threads


# ---- posterior steps ----------------------------------------------------------------------------


def _conditional_gaussian(a_t: float, a_s: float, x0: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean and variance of x_s | (x_t, x0) by Gaussian conditioning, in float64.

    x_s = sqrt(a_s) x0 + sqrt(1 - a_s) e1 and x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) e2, so
    (x_s, x_t) are jointly Gaussian given x0; condition x_s on x_t.
    """
    x0, x_t = x0.double(), x_t.double()
    mean_s, mean_t = math.sqrt(a_s) * x0, math.sqrt(a_t) * x0
    var_s, var_t = 1 - a_s, 1 - a_t
    cov = math.sqrt(a_t / a_s) * (1 - a_s)
    return mean_s + cov / var_t * (x_t - mean_t), var_s - cov**2 / var_t


@pytest.mark.parametrize(("t", "t_prev"), [(999, 749), (749, 499), (499, 249), (249, 0), (600, 599)])
def test_ddpm_posterior_statistics(alphas_cumprod: torch.Tensor, t: int, t_prev: int) -> None:
    samples = 100_000
    x0 = torch.linspace(-1.0, 1.0, 4)
    x_t = torch.tensor([0.3, -1.2, 2.0, 0.0])
    draws = ddpm_posterior_step(
        x_t.expand(samples, 4), x0.expand(samples, 4), t, t_prev, alphas_cumprod, _gen(10)
    ).double()
    mean, var = _conditional_gaussian(float(alphas_cumprod[t]), float(alphas_cumprod[t_prev]), x0, x_t)
    std = math.sqrt(var)
    torch.testing.assert_close(draws.mean(0), mean, atol=5 * std / math.sqrt(samples) + 1e-6, rtol=0)
    torch.testing.assert_close(draws.var(0), torch.full((4,), var, dtype=torch.float64), rtol=0.03, atol=1e-9)


def _ddpm_sample_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="sample", clip_sample=False, variance_type="fixed_small")


@pytest.mark.parametrize("t", [1, 500, 999])
def test_ddpm_adjacent_step_matches_diffusers(alphas_cumprod: torch.Tensor, t: int) -> None:
    x0, x_t = torch.randn(2, 4, 8, 8, generator=_gen(11)), torch.randn(2, 4, 8, 8, generator=_gen(12))
    # Same generator seed: both draw the same noise, so the samples (mean and spread) must agree.
    expected = _ddpm_sample_scheduler().step(x0, t, x_t, generator=_gen(13)).prev_sample
    torch.testing.assert_close(ddpm_posterior_step(x_t, x0, t, t - 1, alphas_cumprod, _gen(13)), expected)


def test_ddpm_non_adjacent_step_matches_diffusers(alphas_cumprod: torch.Tensor) -> None:
    scheduler = _ddpm_sample_scheduler()
    scheduler.set_timesteps(4)  # jumps of 250: 750 -> 500
    x0, x_t = torch.randn(1, 4, 8, 8, generator=_gen(14)), torch.randn(1, 4, 8, 8, generator=_gen(15))
    expected = scheduler.step(x0, 750, x_t, generator=_gen(16)).prev_sample
    torch.testing.assert_close(ddpm_posterior_step(x_t, x0, 750, 500, alphas_cumprod, _gen(16)), expected)


def test_ddpm_last_step_is_deterministic(alphas_cumprod: torch.Tensor) -> None:
    x0, x_t = torch.randn(1, 4, 8, 8, generator=_gen(17)), torch.randn(1, 4, 8, 8, generator=_gen(18))
    # t = 0 -> "-1" (clean): zero variance, the posterior mean is x0, as in diffusers' final step.
    expected = _ddpm_sample_scheduler().step(x0, 0, x_t).prev_sample
    torch.testing.assert_close(ddpm_posterior_step(x_t, x0, 0, -1, alphas_cumprod, _gen(19)), expected)
    torch.testing.assert_close(ddpm_posterior_step(x_t, x0, 500, -1, alphas_cumprod, _gen(19)), x0)


@pytest.mark.parametrize("t", [900, 500, 100])
def test_ddim_step_matches_diffusers(alphas_cumprod: torch.Tensor, t: int) -> None:
    scheduler = DDIMScheduler(**SCHEDULE, prediction_type="sample", clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(10)  # jumps of 100
    x0, x_t = torch.randn(2, 4, 8, 8, generator=_gen(20)), torch.randn(2, 4, 8, 8, generator=_gen(21))
    expected = scheduler.step(x0, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(ddim_step(x_t, x0, t, t - 100, alphas_cumprod), expected)


def test_ddim_keeps_the_noise_direction(alphas_cumprod: torch.Tensor) -> None:
    x0, eps = torch.randn(1, 4, 8, 8, generator=_gen(22)), torch.randn(1, 4, 8, 8, generator=_gen(23))
    x_t = q_sample(x0, 800, eps, alphas_cumprod)
    torch.testing.assert_close(ddim_step(x_t, x0, 800, 300, alphas_cumprod), q_sample(x0, 300, eps, alphas_cumprod))


def test_posterior_step_dispatch_and_errors(alphas_cumprod: torch.Tensor) -> None:
    x0, x_t = torch.randn(2, 4, 4, 4, generator=_gen(24)), torch.randn(2, 4, 4, 4, generator=_gen(25))
    t, t_prev = torch.tensor([999, 700]), torch.tensor([749, 400])
    torch.testing.assert_close(
        posterior_step(x_t, x0, t, t_prev, alphas_cumprod, "ddpm", _gen(26)),
        ddpm_posterior_step(x_t, x0, t, t_prev, alphas_cumprod, _gen(26)),
    )
    torch.testing.assert_close(
        posterior_step(x_t, x0, t, t_prev, alphas_cumprod, "ddim"), ddim_step(x_t, x0, t, t_prev, alphas_cumprod)
    )
    with pytest.raises(ValueError, match="kind"):
        posterior_step(x_t, x0, 999, 749, alphas_cumprod, "euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t_prev must be < t"):
        ddpm_posterior_step(x_t, x0, 500, 500, alphas_cumprod)
    with pytest.raises(ValueError, match="t_prev must be < t"):
        ddim_step(x_t, x0, 500, 600, alphas_cumprod)


def test_a_no_diffusion_backend_draws_no_noise_in_its_sampler_step() -> None:
    """The bicubic baseline's "step" is its SR of the LR alone: drawing start noise it ignores would make the
    no-diffusion run of the cost table slower than plain 3DGS (0.56 s at fox's 43 views of 1076x1916)."""
    from threedsr_ns.backends import BicubicBackend
    from threedsr_ns.colorfix import bicubic_upsample, wavelet_color_fix
    from threedsr_ns.sampler import sampler_step
    from threedsr_ns.timing import SectionTimer

    backend = BicubicBackend(scale=4, device="cpu")
    lr = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    lr_up = bicubic_upsample(lr, 4)
    generators = view_generators(5, 1, range(2))
    states = [g.get_state() for g in generators]
    timer = SectionTimer("cpu")
    for k in (1, 2):
        x_t, sr = sampler_step(backend, backend.denoise_timesteps(4), k, lr, lr_up, generators, timer=timer)
        assert torch.equal(x_t, lr_up)  # the clean encoding: no noise added
        assert torch.allclose(sr, wavelet_color_fix(lr_up.clamp(0, 1), lr_up), atol=1e-6)
    assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, states))  # nothing drawn from them
    assert "noise" not in timer.seconds
