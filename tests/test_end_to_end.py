"""`ns-train 3dsr` as a user runs it on real LLFF fern shrunk to 32x24 LR (tiny random SD-x4; the offline default).

Warm-up, two denoising steps with an HR phase each, checkpoints between and at the end; then the finished
run is loaded the way ns-render / ns-eval load it and must render at s x the LR size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

NS_TRAIN = Path(sys.executable).with_name("ns-train")
WARMUP, STEPS, PHASE = 60, 2, 30


def ns_train(data: Path, out: Path, *extra: str, backend: str = "tiny-random", warmup: int = WARMUP,
             steps: int = STEPS, phase: int = PHASE) -> subprocess.CompletedProcess:
    cmd = [
        str(NS_TRAIN), "3dsr", "--data", str(data), "--output-dir", str(out), "--timestamp", "run",
        "--vis", "tensorboard", "--machine.device-type", "cpu",
        "--pipeline.sr-backend", backend,
        "--pipeline.warmup-iters", str(warmup), "--pipeline.denoise-steps", str(steps),
        "--pipeline.phase-iters", str(phase), "--pipeline.guidance-batch-size", "5",
        "--steps-per-save", str(warmup + phase // 2), "--save-only-latest-checkpoint", "False",
        "--steps-per-eval-image", "50", "--steps-per-eval-all-images", "100000",
        "--logging.local-writer.enable", "False", *extra,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(out / "empty_hf_cache"), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def finished_run(tiny_fern, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs")
    result = ns_train(tiny_fern, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out / "fern" / "3dsr" / "run"


def load_pipeline_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]


def test_training_runs_the_whole_schedule_and_swaps_hr_targets(finished_run: Path):
    ckpts = sorted((finished_run / "nerfstudio_models").glob("step-*.ckpt"))
    steps = [int(c.stem.split("-")[1]) for c in ckpts]
    assert steps == [WARMUP + PHASE // 2, WARMUP + STEPS * PHASE - 1]
    mid, end = (load_pipeline_state(c)["_extra_state"] for c in ckpts)

    assert mid["steps_done"] == 1 and end["steps_done"] == STEPS
    n_train = 17  # fern's 20 views minus every 8th
    # SR targets are stored as uint8 (bounded checkpoints)
    assert mid["sr_targets_uint8"].shape == end["sr_targets_uint8"].shape == (n_train, 24 * 4, 32 * 4, 3)
    assert mid["sr_targets_uint8"].dtype == torch.uint8
    # the second denoising step produced new targets for every view
    change = (end["sr_targets_uint8"].float() - mid["sr_targets_uint8"].float()).div(255).abs().flatten(1).mean(1)
    assert (change > 1e-3).all(), change
    # sampler state: latents at the LR grid (the SD x4 VAE downsamples x4), kept only while a sampler step is left
    assert mid["latents"].shape[0] == n_train and mid["latents"].shape[-2:] == (24, 32)
    assert mid["latents"].dtype == torch.float16 and end["latents"] is None


def test_sr_targets_and_contact_sheets_are_written_for_people(finished_run: Path):
    from PIL import Image

    for name in ("step1", "step2", "final"):
        pngs = sorted((finished_run / "sr_targets" / name).glob("*.png"))
        assert len(pngs) == 17 and Image.open(pngs[0]).size == (128, 96)
        sheet = Image.open(finished_run / f"contact_sheet_{name}.png")
        assert sheet.width == 4 * 320 and sheet.height > 6 * 200  # 4 columns, 6 views
    # the final targets are the last step's: the same files, linked rather than encoded again
    for png in (finished_run / "sr_targets" / "final").glob("*.png"):
        assert png.samefile(finished_run / "sr_targets" / "step2" / png.name)


def test_finished_run_renders_at_hr_like_ns_render(finished_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(finished_run / "config.yml", test_mode="inference")
    assert step == WARMUP + STEPS * PHASE - 1
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    assert (int(camera.width), int(camera.height)) == (128, 96)
    outputs = pipeline.model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (96, 128, 3)
    assert torch.isfinite(outputs["rgb"]).all() and outputs["rgb"].std() > 0.01


def test_a_run_stopped_mid_phase_resumes_and_ends_on_the_same_schedule(finished_run: Path, tiny_fern: Path, tmp_path: Path):
    mid = finished_run / "nerfstudio_models" / f"step-{WARMUP + PHASE // 2:09d}.ckpt"
    result = ns_train(tiny_fern, tmp_path, "--load-checkpoint", str(mid))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ckpts = sorted((tmp_path / "fern" / "3dsr" / "run" / "nerfstudio_models").glob("step-*.ckpt"))
    assert [int(c.stem.split("-")[1]) for c in ckpts] == [WARMUP + STEPS * PHASE - 1]  # not 2x the schedule
    state = load_pipeline_state(ckpts[-1])["_extra_state"]
    assert state["steps_done"] == STEPS  # the second denoising step ran after the resume
    assert "denoise step 2/2" in result.stdout and "denoise step 1/2" not in result.stdout


def test_ns_render_dataset_writes_test_views_at_hr(finished_run: Path, tmp_path: Path):
    from PIL import Image

    ns_render = Path(sys.executable).with_name("ns-render")
    result = subprocess.run(
        [str(ns_render), "dataset", "--load-config", str(finished_run / "config.yml"), "--output-path", str(tmp_path),
         "--split", "test", "--rendered-output-names", "rgb"],
        capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frames = sorted((tmp_path / "test" / "rgb").glob("*"))
    assert [f.stem for f in frames] == ["image000", "image008", "image016"]  # fern's test views
    assert all(Image.open(f).size == (128, 96) for f in frames)  # x4 the 32x24 LR


def test_offline_default_backend_is_the_shipped_prior_and_adds_detail(tiny_fern: Path, tmp_path: Path):
    """`ns-train 3dsr` with no --pipeline.sr-backend, offline: `auto` picks the compact prior shipped in the
    package, says so, and its SR targets carry more detail above the LR Nyquist than the bicubic upsampling."""
    from threedsr_ns.colorfix import bicubic_upsample
    from threedsr_ns.evaluation import read_image
    from threedsr_ns.sr_prior.metrics import band_energy, hf_cutoff

    result = ns_train(tiny_fern, tmp_path, backend="auto", warmup=20, steps=2, phase=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "--pipeline.sr-backend auto chose 'compact'" in result.stdout + result.stderr
    ckpt = sorted((tmp_path / "fern" / "3dsr" / "run" / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    targets = load_pipeline_state(ckpt)["_extra_state"]["sr_targets_uint8"].permute(0, 3, 1, 2).float() / 255
    train_names = json.loads((tiny_fern / "split.json").read_text())["train"]
    lr = torch.stack([read_image(tiny_fern / "images" / name) for name in train_names]).permute(0, 3, 1, 2)
    bicubic = bicubic_upsample(lr, 4).clamp(0, 1)

    def mean_hf_energy(images: torch.Tensor) -> float:
        return sum(band_energy(image, hf_cutoff(4)) for image in images) / len(images)

    ratio = mean_hf_energy(targets) / mean_hf_energy(bicubic)
    assert ratio > 1.5, ratio


def final_targets_and_bicubic(data: Path, run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from threedsr_ns.colorfix import bicubic_upsample
    from threedsr_ns.evaluation import read_image

    ckpt = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    targets = load_pipeline_state(ckpt)["_extra_state"]["sr_targets_uint8"].permute(0, 3, 1, 2).float() / 255
    train_names = json.loads((data / "split.json").read_text())["train"]
    lr = torch.stack([read_image(data / "images" / name) for name in train_names]).permute(0, 3, 1, 2)
    return targets, bicubic_upsample(lr, 4).clamp(0, 1)


def test_offline_ns_train_runs_with_the_shipped_compact_v2(tiny_fern: Path, tmp_path: Path):
    """`ns-train 3dsr --pipeline.sr-backend compact-v2` offline, as installed: the residual prior around the frozen
    Real-ESRGAN (weights from the pip package) runs the whole schedule, and its SR targets carry detail bicubic lacks."""
    from threedsr_ns.sr_prior.metrics import band_energy, hf_cutoff

    result = ns_train(tiny_fern, tmp_path, backend="compact-v2", warmup=20, steps=2, phase=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    targets, bicubic = final_targets_and_bicubic(tiny_fern, tmp_path / "fern" / "3dsr" / "run")
    assert targets.shape == bicubic.shape
    ratio = sum(band_energy(t, hf_cutoff(4)) for t in targets) / sum(band_energy(b, hf_cutoff(4)) for b in bicubic)
    assert ratio > 1.5, ratio
