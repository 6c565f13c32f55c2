"""Evaluation of a finished run: image metrics, LR fidelity, the weights-free multi-view consistency score,
and scripts/evaluate.py on a cheap tiny CPU run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from conftest import load_script
from threedsr_ns import evaluation
from threedsr_ns.evaluation import (EvaluationError, check_inputs, evaluate_run, load_run, lr_fidelity_psnr,
                                    multiview_consistency, nearest_camera_pairs, perceptual_or_none, psnr, ssim,
                                    save_shared_geometry)
from threedsr_ns.losses import downsample_antialiased

REPO = Path(__file__).resolve().parents[1]
NS_TRAIN = Path(sys.executable).with_name("ns-train")
FERN = REPO.parent / "shared" / "data" / "llff" / "fern"
WIDTH, HEIGHT, FOCAL = 64, 48, 60.0


# -- a synthetic scene: a textured plane z = 0 seen by three cameras (OpenGL axes) ---------------------------


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """OpenGL camera-to-world [3, 4]: the camera looks down its -z axis, y up."""
    eye, target, up = (torch.tensor(v, dtype=torch.float32) for v in (eye, target, up))
    back = torch.nn.functional.normalize(eye - target, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(up, back), dim=0)
    return torch.stack([right, torch.linalg.cross(back, right), back, eye], dim=1)


def plane_cameras() -> Cameras:
    eyes = [(0.0, 0.0, 3.0), (0.5, 0.1, 2.8), (-0.3, 0.4, 3.3)]  # translated and rotated toward the origin
    c2w = torch.stack([look_at(e, target=(0.1, -0.1, 0.0)) for e in eyes])
    return Cameras(camera_to_worlds=c2w, fx=FOCAL, fy=FOCAL * 1.1, cx=WIDTH / 2 + 1.5, cy=HEIGHT / 2 - 2.0,
                   width=WIDTH, height=HEIGHT)


def texture(x: torch.Tensor, y: torch.Tensor, phase: float = 0.0) -> torch.Tensor:
    """Smooth colours on the plane (a few pixels per feature: bilinear resampling stays exact to ~1e-3)."""
    channels = [0.5 + 0.35 * torch.sin(3.0 * x + 1.7 * c + phase) * torch.cos(2.5 * y - c) for c in range(3)]
    return torch.stack(channels, -1)


def render_plane(cameras: Cameras, phases=(0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-traced images [N, H, W, 3] and z-depths [N, H, W] of the textured plane z = 0."""
    v, u = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    images, depths = [], []
    for i in range(len(cameras)):
        cam = cameras[i]
        rays = torch.stack([(u - cam.cx) / cam.fx, -(v - cam.cy) / cam.fy, -torch.ones_like(u)], -1)  # z = -1
        c2w = cam.camera_to_worlds
        dirs, origin = rays @ c2w[:, :3].T, c2w[:, 3]
        z_depth = -origin[2] / dirs[..., 2]  # rays have camera-z -1, so the ray parameter is the z-depth
        hit = origin + z_depth[..., None] * dirs
        images.append(texture(hit[..., 0], hit[..., 1], phases[i]))
        depths.append(z_depth)
    return torch.stack(images), torch.stack(depths)


def test_consistent_views_score_near_zero_and_per_view_inventions_score_clearly_higher():
    cameras = plane_cameras()
    images, depths = render_plane(cameras)
    consistent = multiview_consistency(images, depths, cameras)
    assert consistent.pairs == nearest_camera_pairs(cameras.camera_to_worlds[:, :, 3], k=2)
    assert consistent.covisible_fraction > 0.6
    assert consistent.disagreement < 0.005, consistent

    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert multiview_consistency(noisy, depths, cameras).disagreement > 0.08  # independent noise: ~0.11
    invented, _ = render_plane(cameras, phases=(0.0, 0.8, -0.8))  # each view "invents" its own texture
    assert multiview_consistency(invented, depths, cameras).disagreement > 10 * consistent.disagreement


def test_pixels_hidden_in_the_other_view_are_not_compared():
    cameras = plane_cameras()
    images, depths = render_plane(cameras)
    occluded = depths.clone()
    occluded[1] *= 0.5  # something sits halfway in front of the plane in view 1: i's points are hidden there
    result = multiview_consistency(images, occluded, cameras, pairs=[(0, 1), (2, 0)])
    assert result.per_view_covisible[0] == 0 and math.isnan(result.per_view[0])
    assert result.per_view_covisible[2] > 0.6


def test_splatfacto_depth_is_the_z_depth_the_warp_assumes(tmp_path, monkeypatch):
    """The convention against the real renderer (gsplat's "ED", here its CPU twin): splatfacto's "depth" of a
    splatted plane is the plane's z-depth along the optical axis, not the distance along the ray."""
    from threedsr_ns.model import ThreeDSRModelConfig

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = ThreeDSRModelConfig(random_init=True, num_random=10, sh_degree=0).setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=3, metadata={}, device="cpu")
    model.step_cb(SimpleNamespace(optimizers={}), 0)
    grid = torch.linspace(-2.0, 2.0, 51)
    x, y = torch.meshgrid(grid, grid, indexing="xy")
    n = x.numel()
    params = {"means": torch.stack([x.flatten(), y.flatten(), torch.zeros(n)], -1),  # flat splats on z = 0
              "scales": torch.tensor([0.06, 0.06, 0.002]).log().expand(n, 3).clone(),
              "quats": torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
              "features_dc": torch.logit(texture(x.flatten(), y.flatten()).clamp(0.02, 0.98)),
              "features_rest": torch.zeros(n, 0, 3), "opacities": torch.full((n, 1), 5.0)}
    for name, value in params.items():
        model.gauss_params[name] = torch.nn.Parameter(value)
    cameras = plane_cameras()
    model.eval()
    with torch.no_grad():
        outputs = [model.get_outputs_for_camera(cameras[i : i + 1]) for i in range(len(cameras))]
    images = torch.stack([o["rgb"] for o in outputs])
    depths = torch.stack([o["depth"][..., 0] for o in outputs])
    valid = torch.stack([o["accumulation"][..., 0] for o in outputs]) > 0.5
    _, z_depth = render_plane(cameras)
    assert valid.float().mean() > 0.8
    assert ((depths - z_depth).abs() / z_depth)[valid].max() < 0.01  # measured: 0.3 % at most
    v, u = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    ray_length = torch.sqrt(((u - cameras.cx[:, :, None]) / cameras.fx[:, :, None]) ** 2
                            + ((v - cameras.cy[:, :, None]) / cameras.fy[:, :, None]) ** 2 + 1)
    assert ((depths - z_depth * ray_length).abs() / z_depth)[valid].max() > 0.1  # a ray distance would differ
    # warping with the rendered depth is as good as with the exact geometry; what remains is the renders' own
    # disagreement (coplanar splats composite in a view-dependent order)
    rendered = multiview_consistency(images, depths, cameras, valid=valid)
    exact = multiview_consistency(images, z_depth, cameras, valid=valid)
    assert rendered.covisible_fraction == pytest.approx(exact.covisible_fraction, abs=0.01)
    assert rendered.disagreement == pytest.approx(exact.disagreement, rel=0.1)


# -- image metrics ----------------------------------------------------------------------------------------


def test_psnr_ssim_and_lr_fidelity_on_known_inputs():
    a = torch.full((32, 32, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-3)  # MSE 0.01
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-5)
    assert ssim(image, image.flip(0)) < 0.2

    render = texture(*torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="xy"))
    lr = downsample_antialiased(render.permute(2, 0, 1)[None], (16, 16))[0].permute(1, 2, 0)
    assert lr_fidelity_psnr(render, lr + 0.1) == pytest.approx(20.0, abs=1e-3)
    assert lr_fidelity_psnr(render, lr + 0.01) == pytest.approx(40.0, abs=1e-3)
    with pytest.raises(ValueError, match="integer multiple"):
        lr_fidelity_psnr(render, lr[:15])


def test_perceptual_metrics_are_na_with_one_line_each_when_their_weights_are_missing(tmp_path, monkeypatch):
    from threedsr_ns import perceptual

    monkeypatch.setenv(perceptual.WEIGHTS_ENV, str(tmp_path))  # an empty export folder, and no packages:
    monkeypatch.setattr(perceptual, "_package_dir", lambda package: None)
    values, notes = perceptual_or_none(torch.rand(32, 32, 3), torch.rand(32, 32, 3))
    assert set(values) == set(evaluation.PERCEPTUAL_METRICS) and all(v is None for v in values.values())
    assert len(notes) == len(values) and all("\n" not in n and "install" in n for n in notes)


# -- a finished run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_fern, tmp_path_factory) -> Path:
    """The cheapest real run: 20 LR iterations, one denoising step, 10 HR iterations, 500 random Gaussians."""
    out = tmp_path_factory.mktemp("outputs")
    cmd = [str(NS_TRAIN), "3dsr", "--data", str(tiny_fern), "--output-dir", str(out), "--timestamp", "run",
           "--vis", "tensorboard", "--machine.device-type", "cpu", "--pipeline.sr-backend", "tiny-random",
           "--pipeline.warmup-iters", "20", "--pipeline.denoise-steps", "1", "--pipeline.phase-iters", "10",
           "--pipeline.guidance-batch-size", "17", "--pipeline.model.random-init", "True",
           "--pipeline.model.num-random", "500", "--steps-per-save", "100000", "--steps-per-eval-image", "100000",
           "--steps-per-eval-batch", "100000", "--steps-per-eval-all-images", "100000",
           "--logging.local-writer.enable", "False"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out / "fern" / "3dsr" / "run" / "config.yml"


def test_evaluate_run_scores_every_view_of_a_finished_run(tiny_run: Path, tiny_fern: Path):
    result = evaluate_run(tiny_run, tiny_fern)
    split = json.loads((tiny_fern / "split.json").read_text())
    assert [v["name"] for v in result["test_views"]] == split["test"]
    assert [v["name"] for v in result["train_views"]] == split["train"]
    assert result["render_size"] == split["gt_size"] == [128, 96]
    assert result["upscale_factor"] == 4 and result["denoise_steps_done"] == 1
    for view in result["test_views"]:
        assert 5 < view["psnr"] < 60 and 5 < view["lr_psnr"] < 60 and -1 <= view["ssim"] <= 1
    mean = result["mean"]
    assert result["protocol"] == "small" and result["metric_notes"] == []  # the install brings the metric weights
    for view in result["test_views"]:
        assert 0 < view["lpips_alex"] < 1.5 and 0 < view["lpips_vgg"] < 1.5 and 0 < view["dists"] < 1
    assert 0 < mean["hf_energy_ratio_render"] and 0 < mean["hf_energy_ratio"]
    # (20 LR iterations give no usable geometry: the scores' properties are tested on exact geometry in
    # test_detail_consistency.py; here they only have to be there and in range)
    assert all(-1 <= mean[k] <= 1 for k in ("detail_consistency", "gt_detail_score", "sr_target_detail_correlation"))
    assert result["consistency"]["geometry"] == "the run's own rendered depth"
    for kind in ("sr_target", "gt", "render"):
        assert 0 <= mean[f"{kind}_disagreement"] <= 1
        assert all(v[f"{kind}_disagreement"] is None or 0 <= v[f"{kind}_disagreement"] <= 1 for v in result["train_views"])
    assert mean["render_disagreement"] < mean["sr_target_disagreement"]  # the tiny random SR model is not consistent
    assert 0 < mean["covisible_fraction"] <= 1
    assert len(result["consistency"]["pairs"]) == 2 * len(split["train"])


def test_a_run_loads_without_the_installed_entry_point(tiny_run: Path, tiny_fern: Path, monkeypatch):
    """Scripts run from a checkout on PYTHONPATH (the GPU machine) have no `3dsr` plugin entry point."""
    from nerfstudio.utils import eval_utils

    monkeypatch.setattr(eval_utils, "all_methods", {})
    pipeline, step = load_run(tiny_run, tiny_fern)
    assert step > 0 and pipeline.model.num_points > 0
    assert eval_utils.all_methods == {}  # nothing was written into nerfstudio's registry


def test_a_scene_with_gt_for_the_test_views_only_is_scored_without_the_gt_reference(tiny_run: Path, tmp_path: Path):
    from threedsr_ns.llff import prepare_llff

    data = tmp_path / "fern"
    split = prepare_llff(FERN, data, scale=4, gt_width=128, gt_views="test")
    assert sorted(p.name for p in (data / "gt").iterdir()) == sorted(split["test"])
    assert len(list((data / "images").iterdir())) == len(split["train"]) + len(split["test"])
    result = evaluate_run(tiny_run, data)
    assert result["mean"]["gt_disagreement"] is None and 5 < result["mean"]["psnr"] < 60
    assert result["mean"]["sr_target_disagreement"] is not None
    # no train-view GT: no reference energy, so only the correlation; the report says why
    assert result["mean"]["detail_consistency"] is None and result["mean"]["sr_target_detail_correlation"] is not None
    assert "--gt-views all" in result["consistency"]["detail_note"]


def test_a_shared_geometry_grades_every_run_with_the_same_depth(tiny_run: Path, tiny_fern: Path, tmp_path: Path):
    geometry = save_shared_geometry(tiny_run, tiny_fern, tmp_path / "geometry.pt")
    shared = torch.load(geometry, weights_only=True)
    assert shared["depth"].shape == (17, 96, 128) and shared["valid"].dtype == torch.bool
    own, with_shared = evaluate_run(tiny_run, tiny_fern), evaluate_run(tiny_run, tiny_fern, geometry=geometry)
    assert with_shared["consistency"]["geometry"].startswith("the shared depth of")
    # the same checkpoint's depth: the same score as its own geometry (up to the fp16 storage of the depth)
    assert with_shared["mean"]["detail_consistency"] == pytest.approx(own["mean"]["detail_consistency"], abs=2e-3)
    shared["names"] = shared["names"][::-1]
    torch.save(shared, geometry)
    with pytest.raises(EvaluationError, match="not this run's train views"):
        evaluate_run(tiny_run, tiny_fern, geometry=geometry)


def test_evaluate_script_writes_json_and_markdown(tiny_run: Path, tiny_fern: Path, tmp_path: Path):
    out = tmp_path / "eval"
    cmd = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--config", str(tiny_run), "--data", str(tiny_fern),
           "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mean"]) >= {"psnr", "ssim", "lpips_alex", "lpips_vgg", "dists", "lr_psnr", "detail_consistency",
                                    "hf_energy_ratio", "hf_energy_ratio_render", "sr_target_disagreement",
                                    "gt_disagreement", "render_disagreement", "covisible_fraction"}
    markdown = (out / "metrics.md").read_text()
    assert "| PSNR (dB, vs GT) ↑ |" in markdown and "image000.png" in markdown
    assert "| metric | value |" in result.stdout


def test_missing_inputs_name_the_path_and_the_fix(tmp_path: Path, tiny_fern: Path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="config.yml of a finished run"):
        check_inputs(tmp_path / "nope" / "config.yml", tiny_fern)
    (tmp_path / "config.yml").write_text("")
    with pytest.raises(FileNotFoundError, match="nerfstudio_models"):
        check_inputs(tmp_path / "config.yml", tiny_fern)
    (tmp_path / "nerfstudio_models").mkdir()
    (tmp_path / "nerfstudio_models" / "step-000000001.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="prepare_llff"):
        check_inputs(tmp_path / "config.yml", tmp_path)

    # the script turns them into one line on stderr and exit status 1
    module = load_script(REPO / "scripts" / "evaluate.py", "evaluate_script", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--config", str(tmp_path / "nope.yml"), "--data", str(tiny_fern)])
    with pytest.raises(SystemExit) as exit_info:
        module.entrypoint()
    assert exit_info.value.code == 1
    assert f"error: {tmp_path / 'nope.yml'} not found" in capsys.readouterr().err


def test_a_run_still_in_its_lr_warm_up_is_refused(tmp_path: Path, tiny_fern: Path, monkeypatch):
    (tmp_path / "config.yml").write_text("")
    (tmp_path / "nerfstudio_models").mkdir()
    (tmp_path / "nerfstudio_models" / "step-000000010.ckpt").write_bytes(b"")
    warm_up = SimpleNamespace(steps_done=0, datamanager=SimpleNamespace(upscale_factor=1,
                                                                        config=SimpleNamespace(data=tiny_fern)))
    monkeypatch.setattr(evaluation, "load_run", lambda config, data: (warm_up, 10))
    with pytest.raises(EvaluationError, match="still in the LR warm-up"):
        evaluate_run(tmp_path / "config.yml", tiny_fern)
