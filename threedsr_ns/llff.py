"""Turn an LLFF scene (poses_bounds.npy + images_8/ [+ images_2/]) into a nerfstudio dataset for x4 super-resolution.

Two protocols:
    paper  (3DSR, ICCV 2025, and its official code: LR from images_{4r}, GT from images_r, r = 2): LR = LLFF's own
           images_8 (original / 8, 504x378), GT = images_2 (original / 2, 2016x1512). 4 * 504 = 2016 and
           4 * 378 = 1512: nothing is cropped or resampled; both are copied byte for byte.
    small  (NeRF-SR's, this project's first tables): GT = images_8 centre-cropped to 504x376, LR = GT / 4 (126x94).

Layout written:
    out/images/*.png      LR images: what 3dsr trains on
    out/gt/*.png|*.jpg    GT images (s x LR), kept for evaluation only (gt_file() finds a view's)
    out/transforms.json   LR intrinsics, OpenGL camera-to-world poses, the SfM points if the scene has them
    out/transforms_gt.json  the same cameras at GT size over gt/ (evaluation, and the splatfacto-at-GT anchor)
    out/sparse_pc.ply     COLMAP points3D (same world frame as poses_bounds.npy)
    out/split.json        train / test file names (every 8th image is a test view, the paper's protocol)

LLFF's images_8 are 504x378, and 378/4 is not an integer. The GT is centre-cropped to a height that s
divides (one row off the top and one off the bottom: 504x376), which keeps the principal point at the
centre; the LR is then 126x94.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG")
PROTOCOLS = ("small", "paper")
PAPER_GT_DIR = "images_2"
"""The paper protocol's GT: the originals / 2 (4x images_8)."""


def _lr_gt_pairs(data: Path) -> Optional[List[Tuple[Path, Path]]]:
    """(LR file, GT file) of each frame: transforms.json (or the transforms file `data` names) beside
    transforms_gt.json, frames in the same order (what prepare_llff and prepare_capture write); None without them."""
    root = data if data.is_dir() else data.parent
    gt_json, lr_json = root / "transforms_gt.json", (data if data.suffix == ".json" else root / "transforms.json")
    if not gt_json.exists() or not lr_json.exists():
        return None
    lr_frames, gt_frames = json.loads(lr_json.read_text())["frames"], json.loads(gt_json.read_text())["frames"]
    return [(root / a["file_path"], root / b["file_path"]) for a, b in zip(lr_frames, gt_frames)]


def gt_files(data: Path, image_filenames: Sequence[Path]) -> Optional[List[Path]]:
    """The GT file of each image, from transforms_gt.json beside transforms.json (`_lr_gt_pairs`), or None when
    there is no such file or an image is not listed. `data` is the dataset folder or one of its transforms files."""
    pairs = _lr_gt_pairs(data)
    if pairs is None:
        return None
    mapping = {lr.resolve(): gt for lr, gt in pairs}
    gt = [mapping.get(Path(f).resolve()) for f in image_filenames]
    return None if any(g is None for g in gt) else gt  # type: ignore[misc]


def lr_names(data: Path, gt_filenames: Sequence[Path]) -> List[str]:
    """The images/ name of the view of each GT file (the images of a run trained on transforms_gt.json): gt_files'
    mapping the other way, so that a JPEG GT finds its PNG LR; a GT file that transforms_gt.json does not list keeps
    its own name. `data` is the dataset folder."""
    mapping = {gt.resolve(): lr.name for lr, gt in _lr_gt_pairs(Path(data)) or []}
    return [mapping.get(Path(f).resolve(), Path(f).name) for f in gt_filenames]


def gt_file(data_dir: Path, name: str) -> Path:
    """The GT image of the view whose LR file is images/<name>: its frame in transforms_gt.json (`gt_files`, the one
    mapping the datamanager's ns-eval metrics use too); for a dataset without one, gt/<stem> with whichever image
    suffix it has, else gt/<name>. The file may not exist (a GT of the test views only): callers check."""
    mapped = gt_files(Path(data_dir), [Path(data_dir) / "images" / name])
    if mapped is not None:
        return mapped[0]
    stem = Path(name).stem
    for suffix in IMAGE_SUFFIXES:
        path = Path(data_dir) / "gt" / (stem + suffix)
        if path.is_file():
            return path
    return Path(data_dir) / "gt" / name


def llff_poses_to_opengl(poses_bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """poses_bounds [N, 17] -> (camera-to-world [N, 4, 4] in OpenGL axes, hwf [N, 3] at full resolution).

    LLFF stores each pose's rotation columns as (down, right, back); nerfstudio wants (right, up, back).
    """
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    hwf = poses[:, :, 4]
    down, right, back, t = poses[:, :, 0], poses[:, :, 1], poses[:, :, 2], poses[:, :, 3]
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, -down, back, t
    return c2w, hwf


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    vertex = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz.T
    vertex["r"], vertex["g"], vertex["b"] = rgb.T
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(vertex.tobytes())


def _copy_view(lr_src: Path, gt_src: Path, out: Path, stem: str, gt_size: tuple, write_gt: bool) -> None:
    """The paper protocol: the LR PNG and the GT file copied byte for byte (after checking the GT's size)."""
    if lr_src.suffix.lower() != ".png":
        raise ValueError(f"{lr_src}: the paper protocol copies images_8 as it is and expects PNG files")
    (out / "images" / stem).write_bytes(lr_src.read_bytes())
    if write_gt:
        with Image.open(gt_src) as gt:
            if gt.size != tuple(gt_size):
                raise ValueError(f"{gt_src} is {gt.size[0]}x{gt.size[1]}, but the paper protocol's GT is 4x images_8: "
                                 f"{gt_size[0]}x{gt_size[1]}")
        (out / "gt" / (Path(stem).stem + gt_src.suffix)).write_bytes(gt_src.read_bytes())


def prepare_llff(scene: Path, out: Path, scale: int = 4, gt_width: Optional[int] = None, test_every: int = 8,
                 gt_views: str = "all", protocol: str = "small") -> dict:
    """Write the dataset described in the module docstring; returns a summary dict.

    protocol: "small" (default) or "paper" (see the module docstring; scale must be 4 and gt_width unset).

    gt_views: "all", or "test" to write GT only for the test views (all that PSNR/SSIM need: a third of the
    size to carry; evaluate then has no GT consistency reference and transforms_gt.json lists absent files).

    gt_width: resize the (cropped) GT to this width first, to make a small test scene; the height follows
    the aspect ratio, rounded to a multiple of `scale`.
    """
    if gt_views not in ("all", "test"):
        raise ValueError(f"gt_views must be 'all' or 'test', not {gt_views!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    scene, out = Path(scene), Path(out)
    if protocol == "paper":
        if scale != 4 or gt_width is not None:
            raise ValueError("--protocol paper is LR = images_8, GT = images_2: x4 at full size; drop --scale/--gt-width")
        if not (scene / PAPER_GT_DIR).is_dir():
            raise FileNotFoundError(f"{scene / PAPER_GT_DIR} not found: --protocol paper reads its GT (the originals / 2) "
                                    "from there; use --protocol small for a scene without it")
    poses_file = scene / "poses_bounds.npy"
    image_dir = scene / "images_8"
    if not poses_file.exists():
        raise FileNotFoundError(f"{poses_file} not found: an LLFF scene folder holds poses_bounds.npy and images_8/")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir} not found: prepare_llff reads the 1/8-size LLFF images from images_8/")
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)
    poses_bounds = np.load(poses_file)
    if len(names) != len(poses_bounds):
        raise ValueError(f"{poses_file} has {len(poses_bounds)} poses but {image_dir} has {len(names)} images")
    c2w, hwf = llff_poses_to_opengl(poses_bounds)

    width0, height0 = Image.open(image_dir / names[0]).size
    focal = hwf[0, 2] * width0 / hwf[0, 1]  # focal at images_8 size (poses store it for the originals)
    if protocol == "paper":
        crop_h, top, lr_w, lr_h = height0, 0, width0, height0
        gt_w, gt_h = scale * width0, scale * height0
        gt_names = sorted(p.name for p in (scene / PAPER_GT_DIR).iterdir() if p.suffix in IMAGE_SUFFIXES)
        if len(gt_names) != len(names):
            raise ValueError(f"{scene / PAPER_GT_DIR} has {len(gt_names)} images but {image_dir} has {len(names)}: "
                             "the paper protocol needs the GT of every view, in the same sorted order")
    else:
        crop_h = height0 - height0 % scale  # crop rows symmetrically so the principal point stays centred
        top = (height0 - crop_h) // 2
        gt_w = gt_width or width0 - width0 % scale
        gt_h = crop_h if gt_width is None else max(scale, round(gt_width * crop_h / width0 / scale) * scale)
        if gt_w % scale:
            raise ValueError(f"gt_width {gt_w} is not a multiple of the upscale factor {scale}")
        lr_w, lr_h = gt_w // scale, gt_h // scale
    fx, fy = focal * gt_w / width0 / scale, focal * gt_h / crop_h / scale

    for sub in ("images", "gt"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    frames, train, test, gt_paths = [], [], [], []
    for i, name in enumerate(names):
        stem = Path(name).stem + ".png"
        write_gt = gt_views == "all" or i % test_every == 0
        with Image.open(image_dir / name) as image:
            if image.size != (width0, height0):
                raise ValueError(f"{image_dir / name} is {image.size[0]}x{image.size[1]}, the others {width0}x{height0}")
            if protocol == "paper":
                _copy_view(image_dir / name, scene / PAPER_GT_DIR / gt_names[i], out, stem, (gt_w, gt_h), write_gt)
                gt_stem = Path(name).stem + Path(gt_names[i]).suffix
            else:
                gt = image.convert("RGB").crop((0, top, width0, top + crop_h))
                if (gt_w, gt_h) != gt.size:
                    gt = gt.resize((gt_w, gt_h), Image.Resampling.BICUBIC)
                lr = gt.resize((lr_w, lr_h), Image.Resampling.BICUBIC)  # PIL's reducing resize is antialiased
                if write_gt:
                    gt.save(out / "gt" / stem)
                lr.save(out / "images" / stem)
                gt_stem = stem
        frames.append({"file_path": f"images/{stem}", "transform_matrix": c2w[i].tolist()})
        gt_paths.append(f"gt/{gt_stem}")
        (test if i % test_every == 0 else train).append(stem)

    transforms = {
        "camera_model": "OPENCV",
        "w": lr_w, "h": lr_h, "fl_x": float(fx), "fl_y": float(fy), "cx": lr_w / 2.0, "cy": lr_h / 2.0,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": frames,
    }
    points = scene / "sparse" / "0" / "points3D.bin"
    if points.exists():
        from nerfstudio.data.utils.colmap_parsing_utils import read_points3D_binary

        pts = read_points3D_binary(points)
        xyz = np.stack([p.xyz for p in pts.values()]).astype(np.float32)
        rgb = np.stack([p.rgb for p in pts.values()]).astype(np.uint8)
        _write_ply(out / "sparse_pc.ply", xyz, rgb)
        transforms["ply_file_path"] = "sparse_pc.ply"
    (out / "transforms.json").write_text(json.dumps(transforms, indent=2))
    gt_transforms = dict(transforms, w=gt_w, h=gt_h, fl_x=float(fx * scale), fl_y=float(fy * scale), cx=gt_w / 2.0,
                         cy=gt_h / 2.0, frames=[dict(f, file_path=g) for f, g in zip(frames, gt_paths)])
    (out / "transforms_gt.json").write_text(json.dumps(gt_transforms, indent=2))
    crop = (f"LR = {image_dir.name} as is, GT = {PAPER_GT_DIR} as is (no crop)" if protocol == "paper" else
            f"GT centre-cropped from {width0}x{height0} to {width0}x{crop_h} (rows {top}..{top + crop_h - 1})")
    summary = {
        "scene": str(scene), "protocol": protocol, "scale": scale, "gt_size": [gt_w, gt_h], "lr_size": [lr_w, lr_h],
        "crop": crop,
        "train": train, "test": test, "sfm_points": "ply_file_path" in transforms,
    }
    (out / "split.json").write_text(json.dumps(summary, indent=2))
    return summary
