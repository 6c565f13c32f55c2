"""A real phone capture with lens distortion, start to finish: instant-ngp's fox (OPENCV k1, k2, p1, p2 as
ns-process-data writes them), 10 views shrunk to 67x120 with the intrinsics scaled.

nerfstudio undistorts and ROI-crops the cached images (and updates the cameras): the LR images, the xs cameras,
the SR targets and the renders must all live in that undistorted frame (66x119 here), whatever the files say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA

FOX = SHARED_DATA / "instant_ngp" / "fox"
BIN = Path(sys.executable).parent


def make_fox_capture(out: Path, views: int = 10, size=(67, 120), **camera) -> Path:
    """The first `views` fox frames whose files exist (the shared copy lacks some listed ones), resized to `size`,
    intrinsics scaled, fox's own distortion unless `camera` overrides the model and its parameters."""
    if not FOX.exists():
        pytest.skip(f"{FOX} not found: the tests read the fox capture from ../shared/data")
    meta = json.loads((FOX / "transforms.json").read_text())
    frames = [f for f in meta["frames"] if (FOX / f["file_path"]).exists()][:views]
    sx, sy = size[0] / meta["w"], size[1] / meta["h"]
    (out / "images").mkdir(parents=True)
    for f in frames:
        with Image.open(FOX / f["file_path"]) as im:
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out / "images" / f"{Path(f['file_path']).stem}.png")
    transforms = dict(camera_model="OPENCV", w=size[0], h=size[1], fl_x=meta["fl_x"] * sx, fl_y=meta["fl_y"] * sy,
                      cx=meta["cx"] * sx, cy=meta["cy"] * sy, **{k: meta[k] for k in ("k1", "k2", "p1", "p2")})
    transforms.update(camera)
    transforms["frames"] = [dict(file_path=f"images/{Path(f['file_path']).stem}.png", transform_matrix=f["transform_matrix"])
                            for f in frames]
    (out / "transforms.json").write_text(json.dumps(transforms))
    return out


@pytest.fixture(scope="module")
def fox(tmp_path_factory) -> Path:
    return make_fox_capture(tmp_path_factory.mktemp("fox") / "capture")


@pytest.mark.parametrize("camera", [{}, dict(camera_model="OPENCV_FISHEYE", k1=0.05, k2=-0.02, k3=0.01, k4=0.0)],
                         ids=["opencv", "opencv-fisheye"])
def test_lr_size_cameras_and_targets_are_the_undistorted_frame(tmp_path: Path, camera):
    from threedsr_ns.datamanager import ThreeDSRDataManagerConfig

    data = make_fox_capture(tmp_path / "capture", views=5, **camera)
    dm = ThreeDSRDataManagerConfig(data=data).setup(device="cpu", test_mode="val")
    h, w = dm.lr_size
    file_fx = json.loads((data / "transforms.json").read_text())["fl_x"]
    assert not torch.allclose(dm.train_dataset.cameras.fx, torch.tensor(file_fx))  # undistortion changed the frame
    if not camera:  # OPENCV: the ROI crop also changed the size
        assert (h, w) != (120, 67)
    for dataset, cache in ((dm.train_dataset, dm.cached_train), (dm.eval_dataset, dm.cached_eval)):
        assert all(d["image"].shape == (h, w, 3) for d in cache)
        assert (dataset.cameras.height == h).all() and (dataset.cameras.width == w).all()
    # a run loaded for rendering reads no image, yet its cameras are those of the cache
    inference = ThreeDSRDataManagerConfig(data=data).setup(device="cpu", test_mode="inference")
    assert inference.lr_size == (h, w)
    for name in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(inference.train_dataset.cameras, name), getattr(dm.train_dataset.cameras, name))
    dm.enter_hr(4)
    assert dm.sr_target_shape() == (dm.num_train_views, 4 * h, 4 * w, 3)
    dm.swap(torch.rand(dm.sr_target_shape()))
    camera_hr, batch = dm.next_train(0)
    assert batch["image"].shape == (4 * h, 4 * w, 3) and batch["lr_image"].shape == (h, w, 3)
    assert (int(camera_hr.height), int(camera_hr.width)) == (4 * h, 4 * w)


def test_ns_train_3dsr_then_ns_render_interpolate_on_the_distorted_capture(fox: Path, tmp_path: Path):
    import imageio_ffmpeg

    from threedsr_ns.datamanager import ThreeDSRDataManagerConfig

    h, w = ThreeDSRDataManagerConfig(data=fox).setup(device="cpu", test_mode="inference").lr_size
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "empty_hf_cache"), CUDA_VISIBLE_DEVICES="")
    train = subprocess.run(
        [str(BIN / "ns-train"), "3dsr", "--data", str(fox), "--output-dir", str(tmp_path), "--timestamp", "run",
         "--vis", "tensorboard", "--machine.device-type", "cpu", "--pipeline.sr-backend", "tiny-random",
         "--pipeline.warmup-iters", "10", "--pipeline.denoise-steps", "2", "--pipeline.phase-iters", "1",
         "--pipeline.model.num-random", "100", "--pipeline.save-artifacts", "False", "--steps-per-eval-image",
         "1000", "--steps-per-eval-all-images", "100000", "--logging.local-writer.enable", "False"],
        capture_output=True, text=True, env=env, timeout=900)
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-6000:]
    assert "denoise step 2 done" in log and "pre-flight passed" in log
    run = tmp_path / "capture" / "3dsr" / "run"
    ckpt = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]["_extra_state"]
    assert state["steps_done"] == 2 and state["sr_targets_uint8"].shape == (8, 4 * h, 4 * w, 3)

    video = tmp_path / "x.mp4"
    render = subprocess.run(
        [str(BIN / "ns-render"), "interpolate", "--load-config", str(run / "config.yml"), "--output-path", str(video),
         "--interpolation-steps", "1", "--frame-rate", "2"],
        capture_output=True, text=True, env=env, timeout=600)
    assert render.returncode == 0, (render.stdout + render.stderr)[-6000:]
    meta = next(imageio_ffmpeg.read_frames(str(video)))
    # nerfstudio's get_interpolated_camera_path passes no width/height: a frame is 2cx x 2cy of the (undistorted,
    # xs) cameras, here 4x the undistorted LR plus the principal point's offset from the centre
    cam = ThreeDSRDataManagerConfig(data=fox).setup(device="cpu", test_mode="inference").eval_dataset.cameras[0]
    assert tuple(meta["size"]) == (int(4 * 2 * float(cam.cx)), int(4 * 2 * float(cam.cy)))
