"""The guidance loop itself, step by step, on a real pipeline (tiny fern, tiny random SD-x4, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threedsr_ns import guidance
from threedsr_ns.pipeline import ThreeDSRPipelineConfig


def make_pipeline(data: Path, **overrides):
    settings = dict(sr_backend="tiny-random", warmup_iters=10, denoise_steps=3, phase_iters=5, guidance_batch_size=6,
                    save_artifacts=False)
    config = ThreeDSRPipelineConfig(**{**settings, **overrides})
    config.datamanager.data = data
    config.model.random_init, config.model.num_random = True, 300
    return config.setup(device="cpu", test_mode="val")


@pytest.mark.parametrize("mode", ["3dsr", "per-frame-interleaved", "per-frame"])
def test_each_step_moves_toward_the_render_or_toward_its_own_sr_target(tiny_fern: Path, monkeypatch, mode):
    pipeline = make_pipeline(tiny_fern, mode=mode)
    seen = []
    real_posterior = guidance.posterior_step

    def spy_posterior(x_t, x0, *args, **kwargs):
        seen.append(x0.clone())
        return real_posterior(x_t, x0, *args, **kwargs)

    monkeypatch.setattr(guidance, "posterior_step", spy_posterior)
    renders = []
    real_render = pipeline.render_train_views
    monkeypatch.setattr(pipeline, "render_train_views", lambda *a: renders.append(1) or real_render(*a))
    swaps = []
    real_swap = pipeline.datamanager.swap
    monkeypatch.setattr(pipeline.datamanager, "swap", lambda t: swaps.append(t.clone()) or real_swap(t))

    pipeline.run_guidance_step(1, step=10)
    assert pipeline.datamanager.upscale_factor == 4 and pipeline.steps_done == 1
    first = pipeline.datamanager.sr_targets.clone()
    assert first.shape == (17, 96, 128, 3) and not renders  # step 1 starts from the noised LR, no render
    if mode == "per-frame":  # all K = 3 sampler steps at once, each toward the previous colour-fixed SR images
        assert len(seen) == 2 and len(swaps) == 1
    else:
        assert not seen

    pipeline.run_guidance_step(2, step=15)
    assert pipeline.model.strategy.phase_start == 15  # every mode starts its HR phase at the same boundary
    if mode == "per-frame":  # no sampling after the first boundary: 3DGS trains on the final images
        assert len(seen) == 2 and len(swaps) == 1 and torch.equal(pipeline.datamanager.sr_targets, first)
        return
    if mode == "3dsr":
        assert len(renders) == 1
        expected = pipeline.backend.encode(real_render().contiguous())  # 3D consistency enters here (the sampler
        # encodes contiguous images: the rounding of the convolutions depends on the memory layout)
    else:
        assert not renders
        expected = pipeline.backend.encode(first.permute(0, 3, 1, 2).contiguous())  # its own colour-fixed SR target
    assert torch.allclose(seen[-1], expected, atol=1e-5)
    assert (pipeline.datamanager.sr_targets - first).abs().mean() > 1e-3


def test_per_frame_sampling_equals_the_interleaved_chain_without_3dgs(tiny_fern: Path):
    """per-frame (the paper's baseline) samples each view through the same K steps, seeds and targets as the
    interleaved ablation would if no 3DGS training happened in between: the final SR images agree."""
    full = make_pipeline(tiny_fern, mode="per-frame")
    chain = make_pipeline(tiny_fern, mode="per-frame-interleaved")
    full.run_guidance_step(1, step=10)
    for k in (1, 2, 3):
        chain.run_guidance_step(k, step=10 + 5 * (k - 1))
    assert torch.allclose(full.datamanager.sr_targets, chain.datamanager.sr_targets, atol=1e-5)


def test_guidance_callback_catches_up_after_a_resume(tiny_fern: Path):
    pipeline = make_pipeline(tiny_fern, sr_backend="bicubic")
    pipeline.guidance_callback(9)
    assert pipeline.steps_done == 0
    pipeline.guidance_callback(16)  # resumed past two boundaries: both steps run, in order
    assert pipeline.steps_done == 2
    state = pipeline.get_extra_state()
    restored = make_pipeline(tiny_fern, sr_backend="bicubic")
    restored.set_extra_state(state)
    assert restored.steps_done == 2 and restored.datamanager.upscale_factor == 4
    # checkpoints keep the SR targets as uint8: the resumed targets are their 8-bit quantisation, nothing else
    assert state["sr_targets_uint8"].dtype == torch.uint8 and "sr_targets" not in state
    quantised = (pipeline.datamanager.sr_targets * 255).round() / 255
    assert torch.allclose(restored.datamanager.sr_targets, quantised, atol=1e-6)
    assert not torch.equal(restored.datamanager.sr_targets, pipeline.datamanager.sr_targets)  # really quantised
    assert restored.model.strategy.phase_start == 15


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_noise_start_latents_are_drawn_on_the_pipeline_device_and_run_a_full_step(tiny_fern: Path, device: str):
    settings = dict(sr_backend="tiny-random", warmup_iters=10, denoise_steps=2, phase_iters=5, save_artifacts=False,
                    start_latents="noise")
    config = ThreeDSRPipelineConfig(**settings)
    config.datamanager.data = tiny_fern
    config.model.random_init, config.model.num_random = True, 300
    pipeline = config.setup(device=device, test_mode="val")
    pipeline.run_guidance_step(1, step=10)
    assert pipeline.latents.device == torch.device(pipeline.device) == pipeline.datamanager.sr_targets.device
    assert pipeline.latents.shape == (17, 4, 24, 32) and torch.isfinite(pipeline.latents).all()
    assert pipeline.datamanager.sr_targets.shape == (17, 96, 128, 3)
    pipeline.run_guidance_step(2, step=15)  # the posterior step from noise start latents
    assert pipeline.steps_done == 2 and torch.isfinite(pipeline.datamanager.sr_targets).all()


@pytest.mark.parametrize("mode", ["3dsr", "per-frame"])
def test_each_later_step_logs_how_much_detail_is_left_against_step_1(tiny_fern: Path, monkeypatch, mode):
    """detail_log: spectral energy above the LR Nyquist of the renders step k moved toward and of its new SR targets,
    over step 1's SR, on the contact-sheet views; none for per-frame (nothing is sampled after step 1)."""
    from threedsr_ns.sr_prior.metrics import band_energy, hf_cutoff

    pipeline = make_pipeline(tiny_fern, mode=mode)
    renders = []
    real_render = pipeline.render_train_views
    monkeypatch.setattr(pipeline, "render_train_views", lambda *a: renders.append(real_render(*a)) or renders[-1])
    pipeline.run_guidance_step(1, step=10)
    first = pipeline._first_sr.float() / 255
    pipeline.run_guidance_step(2, step=15)
    if mode == "per-frame":
        assert pipeline.detail_log == []
        return
    n = first.shape[0]

    def energy(images):
        return sum(band_energy(image, hf_cutoff(4)) for image in images)

    [entry] = pipeline.detail_log
    assert entry["step"] == 2 and n == 6
    assert entry["renders_vs_step1"] == pytest.approx(energy(renders[0][:n]) / energy(first), rel=1e-6)
    targets = pipeline.datamanager.sr_targets[:n].permute(0, 3, 1, 2)
    assert entry["targets_vs_step1"] == pytest.approx(energy(targets) / energy(first), rel=1e-6)
    assert entry["renders_vs_step1"] != pytest.approx(entry["targets_vs_step1"])


def test_noise_drawn_ahead_during_the_phase_gives_the_same_targets(tiny_fern: Path, monkeypatch):
    """predraw_noise (the CUDA default, forced on here): steps 2 and 3 take their posterior noise from a draw started
    when the step before ended, and the SR targets are bit-identical to drawing it in the step. The tiny SD x4 also
    draws its conditioning noise from the same generators afterwards, so their hand-over is checked too. (The
    interleaved mode steps toward the views' own targets: renders of two separately built pipelines differ, their
    Gaussians being randomly initialised.)"""
    drawn, ahead = [], []
    real_draw = guidance.predraw_posterior_noise
    monkeypatch.setattr("threedsr_ns.pipeline.predraw_posterior_noise",
                        lambda *args: drawn.append(args[1]) or real_draw(*args))
    targets = {}
    for predraw in (False, True):
        pipeline = make_pipeline(tiny_fern, mode="per-frame-interleaved")
        pipeline.predraw_noise = predraw
        steps = []
        for k in (1, 2, 3):
            pipeline.run_guidance_step(k, step=10 + 5 * (k - 1))
            steps.append(pipeline.datamanager.sr_targets.clone())
            ahead.append(pipeline._noise_ahead is not None and pipeline._noise_ahead[0])
        targets[predraw] = steps
    assert drawn == [2, 3] and ahead == [False, False, False, 2, 3, False]  # none after the last step
    for k in range(3):
        assert torch.equal(targets[False][k], targets[True][k]), k
    assert not torch.equal(targets[True][1], targets[True][2])  # the steps did change the targets
    with pytest.raises(ValueError, match="noise shape"):
        guidance.ddpm_posterior_step(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), 749, 499,
                                     pipeline.backend.alphas_cumprod, noise=torch.zeros(1, 3, 4, 4))
