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


@pytest.mark.parametrize("guide_with_renders", [True, False])
def test_each_step_moves_toward_the_render_or_toward_its_own_prediction(tiny_fern: Path, monkeypatch, guide_with_renders):
    pipeline = make_pipeline(tiny_fern, guide_with_renders=guide_with_renders)
    seen = {}
    real_posterior = guidance.posterior_step

    def spy_posterior(x_t, x0, *args, **kwargs):
        seen["x0_target"] = x0.clone()
        return real_posterior(x_t, x0, *args, **kwargs)

    monkeypatch.setattr(guidance, "posterior_step", spy_posterior)
    renders = []
    real_render = pipeline.render_train_views
    monkeypatch.setattr(pipeline, "render_train_views", lambda *a: renders.append(1) or real_render(*a))

    pipeline.run_guidance_step(1, step=10)
    assert pipeline.datamanager.upscale_factor == 4 and pipeline.steps_done == 1
    first = pipeline.datamanager.sr_targets.clone()
    assert first.shape == (17, 96, 128, 3) and not renders  # step 1 starts from the noised LR, no render
    x0_step1 = pipeline.x0.clone()

    pipeline.run_guidance_step(2, step=15)
    if guide_with_renders:
        assert len(renders) == 1
        rendered = real_render()
        expected = pipeline.backend.encode(rendered)
        assert torch.allclose(seen["x0_target"], expected, atol=1e-5)  # 3D consistency enters here
    else:
        assert not renders and torch.equal(seen["x0_target"], x0_step1)
    assert (pipeline.datamanager.sr_targets - first).abs().mean() > 1e-3
    assert pipeline.model.strategy.phase_start == 15


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
    assert torch.equal(restored.datamanager.sr_targets, pipeline.datamanager.sr_targets)
    assert restored.model.strategy.phase_start == 15
