"""Turn a nerfstudio capture (transforms.json + photos, e.g. from ns-process-data) into an xs super-resolution task.

    out/images/*.png        LR inputs: each photo downsampled xs (antialiased): what 3dsr trains on
    out/gt/*                the photos themselves, copied byte for byte: the HR ground truth (evaluation only)
    out/transforms.json     the capture's cameras at LR: intrinsics / s, the same distortion coefficients
    out/transforms_gt.json  the capture's own cameras over gt/
    out/split.json          train / test names: every test_every-th *existing* frame is a test view

Distortion coefficients (k1..k4, p1, p2) act on normalised image coordinates, so they do not change with the
image size; focal lengths and the principal point (nerfstudio's continuous pixel coordinates) scale by 1 / s.
Frames whose photo is missing are left out, as nerfstudio's parsers skip them (the instant-ngp fox lists 67
frames for 50 photos).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

INTRINSICS = ("fl_x", "fl_y", "cx", "cy")


def prepare_capture(capture: Path, out: Path, scale: int = 4, test_every: int = 8) -> dict:
    """Write the task described in the module docstring; returns the split summary (also out/split.json)."""
    capture, out = Path(capture), Path(out)
    source = capture / "transforms.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: a capture folder holds transforms.json and its photos "
                                "(ns-process-data writes both)")
    meta = json.loads(source.read_text())
    frames = [f for f in meta["frames"] if (capture / f["file_path"]).is_file()]
    if not frames:
        raise FileNotFoundError(f"none of the {len(meta['frames'])} photos {source} lists exists under {capture}")
    if any(key in f for f in frames for key in INTRINSICS):
        raise ValueError(f"{source}: per-frame intrinsics are not supported here; give them once at the top level")
    width, height = int(meta["w"]), int(meta["h"])
    if width % scale or height % scale:
        raise ValueError(f"{source}: the photos are {width}x{height}, which x{scale} does not divide; crop them first")
    for sub in ("images", "gt"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lr_frames, gt_frames, train, test = [], [], [], []
    for i, frame in enumerate(frames):
        photo = capture / frame["file_path"]
        with Image.open(photo) as image:
            if image.size != (width, height):
                raise ValueError(f"{photo} is {image.size[0]}x{image.size[1]}, but {source} says {width}x{height}")
            lr = image.convert("RGB").resize((width // scale, height // scale), Image.Resampling.BICUBIC)
        name = photo.stem + ".png"
        lr.save(out / "images" / name)
        (out / "gt" / photo.name).write_bytes(photo.read_bytes())
        lr_frames.append(dict(frame, file_path=f"images/{name}"))
        gt_frames.append(dict(frame, file_path=f"gt/{photo.name}"))
        (test if i % test_every == 0 else train).append(name)
    header = {k: v for k, v in meta.items() if k != "frames"}
    header.setdefault("camera_model", "OPENCV")
    gt_meta = dict(header, w=width, h=height, frames=gt_frames)
    lr_meta = dict(header, w=width // scale, h=height // scale, frames=lr_frames,
                   **{k: float(meta[k]) / scale for k in INTRINSICS if k in meta})
    (out / "transforms.json").write_text(json.dumps(lr_meta, indent=2))
    (out / "transforms_gt.json").write_text(json.dumps(gt_meta, indent=2))
    summary = {"capture": str(capture), "protocol": f"capture x{scale}", "scale": scale, "gt_size": [width, height],
               "lr_size": [width // scale, height // scale], "train": train, "test": test,
               "skipped_missing": len(meta["frames"]) - len(frames)}
    (out / "split.json").write_text(json.dumps(summary, indent=2))
    return summary


def distortion_of(meta: dict) -> list:
    """nerfstudio's distortion_params order [k1, k2, k3, k4, p1, p2] from a transforms dict (zeros where absent)."""
    return [float(meta.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4", "p1", "p2")]


def undistort_into(image: torch.Tensor, source_k, distortion, target) -> torch.Tensor:
    """Resample a distorted photo [H, W, 3] (intrinsics source_k = (fx, fy, cx, cy), OPENCV `distortion` in
    nerfstudio's order) into an undistorted pinhole camera target = (fx, fy, cx, cy, width, height): the frame in
    which nerfstudio trains and renders after undistorting its cached images. Continuous pixel coordinates (pixel
    centres at +0.5) on both sides, as nerfstudio's cameras and its cv2 undistortion use them; bicubic sampling."""
    k1, k2, k3, k4, p1, p2 = distortion
    if k4:
        raise ValueError("undistort_into: k4 is not part of the OPENCV model (nerfstudio's undistortion rejects it too)")
    fx, fy, cx, cy, width, height = target
    sfx, sfy, scx, scy = source_k
    v, u = torch.meshgrid(torch.arange(int(height), dtype=torch.float64) + 0.5,
                          torch.arange(int(width), dtype=torch.float64) + 0.5, indexing="ij")
    x, y = (u - cx) / fx, (v - cy) / fy
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    src_h, src_w = image.shape[:2]
    grid = torch.stack([(sfx * xd + scx) / src_w * 2 - 1, (sfy * yd + scy) / src_h * 2 - 1], -1).float()
    out = F.grid_sample(image.permute(2, 0, 1)[None].float(), grid[None], mode="bicubic", padding_mode="border",
                        align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 1)
