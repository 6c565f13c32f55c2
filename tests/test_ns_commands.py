"""Every nerfstudio command a user runs on a finished 3dsr run, each as a real subprocess.

One tiny run (real LLFF fern at 32x24 LR, x4, tiny random SR backend) is trained once and reused: ns-render
interpolate / spiral / camera-path write mp4s at the HR size, ns-export writes the splats as a PLY that loads
back, ns-eval says which resolution it scored, ns-viewer serves the run on a loopback port. Nothing here registers
torch safe globals: the checkpoints load with torch's default weights_only=True.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from test_end_to_end import ns_train

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LR_W, LR_H, S = 32, 24, 4
WARMUP, STEPS, PHASE = 40, 2, 10


def run_ns(command: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([str(BIN / command), *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def run(tiny_fern, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ns_outputs")
    result = ns_train(tiny_fern, out, warmup=WARMUP, steps=STEPS, phase=PHASE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out / "fern" / "3dsr" / "run"


def last_checkpoint(run: Path) -> Path:
    return sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]


def mp4_frames(path: Path) -> tuple:
    """(width, height) and the frames ([N, H, W, 3] uint8) of an mp4, read with imageio-ffmpeg's ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    return (w, h), frames


def test_checkpoints_load_with_torch_defaults_and_hold_no_numpy(run: Path):
    code = ("import sys, torch; s = torch.load(sys.argv[1], map_location='cpu'); "
            "print(type(s['optimizers']['means']['param_groups'][0]['lr']).__name__, s['step'])")
    result = subprocess.run([sys.executable, "-c", code, str(last_checkpoint(run))], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["float", str(WARMUP + STEPS * PHASE - 1)]


SPIRAL_LIMITATION = pytest.mark.xfail(strict=True, reason=(
    "nerfstudio 1.1.5's ns-render spiral asserts a ray-based datamanager (VanillaDataManager/ParallelDataManager/"
    "RandomCamerasDataManager), so it fails for splatfacto too; strict: this test fails once nerfstudio lifts it"))


@pytest.mark.parametrize("kind", ["interpolate", pytest.param("spiral", marks=SPIRAL_LIMITATION)])
def test_ns_render_trajectories_write_an_mp4_at_hr(run: Path, tmp_path: Path, kind: str):
    video = tmp_path / f"{kind}.mp4"
    extra = ["--interpolation-steps", "2", "--frame-rate", "4"] if kind == "interpolate" else ["--seconds", "1", "--frame-rate", "6"]
    run_ns("ns-render", kind, "--load-config", str(run / "config.yml"), "--output-path", str(video), *extra)
    size, frames = mp4_frames(video)
    assert size == (S * LR_W, S * LR_H)
    assert len(frames) == (2 * 2 if kind == "interpolate" else 6)  # 3 test views -> 2 transitions of 2 steps
    assert frames.std() > 5  # the scene, not a blank frame


def _viewer_camera_path(run: Path, view: int) -> dict:
    """A camera path as the viewer's Render tab saves it (nerfstudio/viewer/render_panel.py), at HR, through
    train view `view`'s pose and field of view in the run's (dataparser) world frame."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="inference")
    cameras = pipeline.datamanager.train_dataset.cameras
    c2w = torch.cat([cameras.camera_to_worlds[view], torch.tensor([[0.0, 0, 0, 1]])]).flatten().tolist()
    w, h = int(cameras.width[view]), int(cameras.height[view])
    fov = math.degrees(2 * math.atan(h / (2 * float(cameras.fy[view]))))
    frame = {"camera_to_world": c2w, "fov": fov, "aspect": w / h}
    keyframe = {"matrix": c2w, "fov": fov, "aspect": w / h, "override_transition_enabled": False,
                "override_transition_sec": None}
    return {"default_fov": fov, "default_transition_sec": 1.0, "keyframes": [keyframe], "camera_type": "perspective",
            "render_height": h, "render_width": w, "fps": 2, "seconds": 1.0, "is_cycle": False,
            "smoothness_value": 0.5, "camera_path": [frame, frame]}


def test_ns_render_camera_path_from_the_viewer_format_renders_that_view(run: Path, tiny_fern: Path, tmp_path: Path):
    view = 3
    path = _viewer_camera_path(run, view)
    assert (path["render_width"], path["render_height"]) == (S * LR_W, S * LR_H)  # the run's cameras are xs
    (tmp_path / "path.json").write_text(json.dumps(path))
    video = tmp_path / "path.mp4"
    run_ns("ns-render", "camera-path", "--load-config", str(run / "config.yml"),
           "--camera-path-filename", str(tmp_path / "path.json"), "--output-path", str(video))
    size, frames = mp4_frames(video)
    assert size == (S * LR_W, S * LR_H) and len(frames) == 2
    # the frame is that view: downsampled to LR it is closer to its own LR photo than to any other view's
    names = json.loads((tiny_fern / "split.json").read_text())["train"]
    small = np.asarray(Image.fromarray(frames[0]).resize((LR_W, LR_H), Image.BICUBIC), np.float32)
    errors = [np.abs(small - np.asarray(Image.open(tiny_fern / "images" / n).convert("RGB"), np.float32)).mean()
              for n in names]
    assert int(np.argmin(errors)) == view, errors


def _read_ply(path: Path) -> tuple:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode()
    count = int(re.search(r"element vertex (\d+)", header).group(1))
    props = re.findall(r"property (\w+) (\w+)", header)
    assert {t for t, _ in props} == {"float"}, props
    table = np.frombuffer(data[end:], dtype="<f4")
    assert table.size == count * len(props), "PLY body does not match its header"
    return count, [n for _, n in props], table.reshape(count, len(props))


def test_ns_export_gaussian_splat_writes_the_run_splats_as_ply(run: Path, tmp_path: Path):
    run_ns("ns-export", "gaussian-splat", "--load-config", str(run / "config.yml"), "--output-dir", str(tmp_path))
    count, names, table = _read_ply(tmp_path / "splat.ply")
    means = torch.load(last_checkpoint(run), map_location="cpu")["pipeline"]["_model.gauss_params.means"]
    assert count == means.shape[0] > 100
    assert names[:3] == ["x", "y", "z"] and {"opacity", "scale_0", "rot_0", "f_dc_0"} <= set(names)
    assert np.allclose(table[:, :3], means.numpy(), atol=1e-6)


def test_ns_eval_scores_hr_against_the_gt_and_says_so(run: Path, tmp_path: Path):
    """The tiny dataset carries the GT of its test views (transforms_gt.json, as prepare_llff.py writes it): the HR
    renders are scored against it, under splatfacto's own metric names, and the log says so."""
    out = tmp_path / "eval.json"
    result = run_ns("ns-eval", "--load-config", str(run / "config.yml"), "--output-path", str(out))
    results = json.loads(out.read_text())["results"]
    assert "eval metrics are HR" in result.stdout + result.stderr
    assert {"psnr", "ssim", "lpips"} <= set(results) and not any(k.startswith("lr_") for k in results), results
    assert 10 < results["psnr"] < 50 and 0 < results["lpips"] < 1


def test_ns_eval_without_gt_reports_lr_fidelity_under_lr_names(run: Path, tiny_fern: Path, tmp_path: Path):
    """The same run on the capture without its GT: the eval images are the LR test photos, so the HR render is
    scored downsampled, and every metric name says it (lr_psnr, ..., lr_downsample_factor)."""
    no_gt = tmp_path / "fern_no_gt"
    shutil.copytree(tiny_fern, no_gt, ignore=shutil.ignore_patterns("gt", "transforms_gt.json"))
    trainer_config = yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)
    trainer_config.data = trainer_config.pipeline.datamanager.data = no_gt
    config = tmp_path / "config_no_gt.yml"
    config.write_text(yaml.dump(trainer_config))
    out = tmp_path / "eval.json"
    result = run_ns("ns-eval", "--load-config", str(config), "--output-path", str(out))
    results = json.loads(out.read_text())["results"]
    assert "eval metrics are LR fidelity" in result.stdout + result.stderr
    assert {"lr_psnr", "lr_ssim", "lr_downsample_factor"} <= set(results) and "psnr" not in results, results
    assert results["lr_downsample_factor"] == S and 10 < results["lr_psnr"] < 50
    assert "lr_lpips" not in results  # the 32x24 LR images are below AlexNet's 31 px: dropped, not faked


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ns_viewer_serves_the_finished_run_on_loopback(run: Path, tmp_path: Path):
    import msgspec
    from websockets.sync.client import connect

    port = _free_port()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    log = open(tmp_path / "viewer.log", "w+")
    viewer = subprocess.Popen([str(BIN / "ns-viewer"), "--load-config", str(run / "config.yml"),
                               "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while True:
            assert viewer.poll() is None, f"ns-viewer exited: {(tmp_path / 'viewer.log').read_text()[-3000:]}"
            assert time.time() < deadline, "ns-viewer did not answer in 180 s"
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        assert b"<html" in page.lower()
        messages = []
        with connect(f"ws://127.0.0.1:{port}") as ws:
            end = time.time() + 20
            while time.time() < end and sum(m.get("type") == "CameraFrustumMessage" for m in messages) < 17:
                try:
                    raw = ws.recv(timeout=1)
                except TimeoutError:
                    continue
                decoded = msgspec.msgpack.decode(raw)
                messages.extend(m for m in (decoded if isinstance(decoded, list) else [decoded]) if isinstance(m, dict))
        frustums = [m for m in messages if m.get("type") == "CameraFrustumMessage"]
        assert len(frustums) == 17  # the run's train views
        assert all(abs(m["aspect"] - LR_W / LR_H) < 1e-3 for m in frustums)
        assert "Done loading checkpoint" in (tmp_path / "viewer.log").read_text()
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)
        log.close()
