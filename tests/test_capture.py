"""A real phone capture (instant-ngp fox, OPENCV distortion) as an x4 SR task, and its GT in the render frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threedsr_ns.capture import distortion_of, prepare_capture, undistort_into

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "instant_ngp" / "fox"


@pytest.fixture(scope="module")
def small_fox(tmp_path_factory) -> Path:
    """The first 10 existing fox frames at 1/4 size (270x480 "photos"), with the capture's real distortion."""
    if not FOX.exists():
        pytest.skip(f"{FOX} not found")
    meta = json.loads((FOX / "transforms.json").read_text())
    frames = [f for f in meta["frames"] if (FOX / f["file_path"]).is_file()][:10]
    out = tmp_path_factory.mktemp("capture") / "fox"
    (out / "images").mkdir(parents=True)
    for f in frames:
        with Image.open(FOX / f["file_path"]) as image:
            image.resize((270, 480), Image.Resampling.BICUBIC).save(out / f["file_path"])
    small = dict(meta, w=270, h=480, frames=frames, **{k: meta[k] / 4 for k in ("fl_x", "fl_y", "cx", "cy")})
    (out / "transforms.json").write_text(json.dumps(small))
    return out


def test_a_capture_becomes_an_x4_task_with_the_photos_as_gt(small_fox: Path, tmp_path: Path):
    summary = prepare_capture(small_fox, tmp_path / "task", scale=2, test_every=4)
    task = tmp_path / "task"
    lr, gt = (json.loads((task / f).read_text()) for f in ("transforms.json", "transforms_gt.json"))
    assert summary["lr_size"] == [135, 240] and summary["gt_size"] == [270, 480] and len(summary["test"]) == 3
    assert lr["camera_model"] == "OPENCV" and distortion_of(lr) == distortion_of(gt) != [0.0] * 6
    assert lr["fl_x"] == pytest.approx(gt["fl_x"] / 2) and lr["cx"] == pytest.approx(gt["cx"] / 2)
    name = Path(gt["frames"][0]["file_path"]).name
    assert (task / "gt" / name).read_bytes() == (small_fox / "images" / name).read_bytes()
    assert Image.open(task / "images" / (Path(name).stem + ".png")).size == (135, 240)


def test_gt_resampled_into_the_render_frame_matches_nerfstudios_own_undistortion(small_fox: Path):
    """The GT of a distorted capture, resampled into the xs undistorted camera and downsampled xs, must be the image
    nerfstudio's cache undistorts at LR (its _undistort_image, the source of every training image): same convention."""
    from nerfstudio.cameras.cameras import Cameras, CameraType
    from nerfstudio.data.datamanagers.full_images_datamanager import _undistort_image

    from threedsr_ns.losses import downsample_antialiased

    meta = json.loads((small_fox / "transforms.json").read_text())
    photo = Image.open(small_fox / meta["frames"][0]["file_path"]).convert("RGB")
    gt = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255)
    lr = np.asarray(photo.resize((135, 240), Image.Resampling.BICUBIC))  # the LR the capture trains on (x2 here)
    k = (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"])
    dist = distortion_of(meta)
    camera = Cameras(camera_to_worlds=torch.eye(4)[None, :3], fx=k[0] / 2, fy=k[1] / 2, cx=k[2] / 2, cy=k[3] / 2,
                     width=135, height=240, distortion_params=torch.tensor(dist)[None], camera_type=CameraType.PERSPECTIVE)
    K = np.array([[k[0] / 2, 0, k[2] / 2], [0, k[1] / 2, k[3] / 2], [0, 0, 1]])
    new_k, undistorted, _ = _undistort_image(camera[0:1], np.array(dist), {}, lr.copy(), K)
    h, w = undistorted.shape[:2]
    assert (w, h) != (135, 240)  # the ROI crop really changed the frame
    target = (2 * new_k[0, 0], 2 * new_k[1, 1], 2 * new_k[0, 2], 2 * new_k[1, 2], 2 * w, 2 * h)
    ours = undistort_into(gt, k, dist, target)
    down = downsample_antialiased(ours.permute(2, 0, 1)[None], (h, w))[0].permute(1, 2, 0).numpy()
    ref = undistorted.astype(np.float32) / 255
    inner = (slice(4, -4), slice(4, -4))
    psnr = 10 * np.log10(1 / np.mean((down[inner] - ref[inner]) ** 2))
    # shifting by half an LR pixel (the classic centre-convention slip) must be clearly worse
    shifted = undistort_into(gt, k, dist, (target[0], target[1], target[2] + 1.0, target[3] + 1.0, *target[4:]))
    down_shifted = downsample_antialiased(shifted.permute(2, 0, 1)[None], (h, w))[0].permute(1, 2, 0).numpy()
    psnr_shifted = 10 * np.log10(1 / np.mean((down_shifted[inner] - ref[inner]) ** 2))
    assert psnr > 33 and psnr > psnr_shifted + 3, (psnr, psnr_shifted)


def test_a_distorted_capture_run_is_scored_against_its_photos_in_the_render_frame(small_fox: Path, tmp_path: Path):
    """prepare_capture -> ns-train 3dsr (tiny) -> evaluate_run: the GT photos (distorted, 268x480) are compared in the
    run's undistorted x4 frame, and the consistency scores run on the undistorted cameras."""
    import os
    import subprocess
    import sys

    from threedsr_ns.evaluation import evaluate_run

    capture = tmp_path / "capture"
    (capture / "images").mkdir(parents=True)
    meta = json.loads((small_fox / "transforms.json").read_text())
    for f in meta["frames"]:  # 268x480: a size that x4 divides
        with Image.open(small_fox / f["file_path"]) as image:
            image.crop((1, 0, 269, 480)).save(capture / f["file_path"])
    (capture / "transforms.json").write_text(json.dumps(dict(meta, w=268, cx=meta["cx"] - 1)))
    task = tmp_path / "task"
    prepare_capture(capture, task, scale=4)  # every 8th view a test view, as 3dsr's dataparser
    out = tmp_path / "outputs"
    cmd = [str(Path(sys.executable).with_name("ns-train")), "3dsr", "--data", str(task), "--output-dir", str(out),
           "--timestamp", "run", "--vis", "tensorboard", "--machine.device-type", "cpu",
           "--pipeline.sr-backend", "tiny-random", "--pipeline.warmup-iters", "4", "--pipeline.denoise-steps", "1",
           "--pipeline.phase-iters", "2", "--pipeline.model.random-init", "True", "--pipeline.model.num-random", "300",
           "--pipeline.save-artifacts", "False", "--steps-per-save", "100000", "--steps-per-eval-image", "100000",
           "--steps-per-eval-batch", "100000", "--steps-per-eval-all-images", "100000",
           "--logging.local-writer.enable", "False"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = evaluate_run(out / "task" / "3dsr" / "run" / "config.yml", task)
    w, h = report["render_size"]
    assert (w, h) != (268, 480) and w % 4 == 0 and h % 4 == 0  # the undistorted, ROI-cropped frame, x4
    assert 5 < report["mean"]["psnr"] < 60 and 5 < report["mean"]["lr_psnr"] < 60
    assert report["mean"]["detail_consistency"] is not None and 0 < report["mean"]["covisible_fraction"] <= 1
