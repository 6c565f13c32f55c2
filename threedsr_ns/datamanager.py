"""The 3DSR DataManager: LR images during the warm-up, then xs cameras with swappable SR targets.

Every train view keeps its LR image (nerfstudio's image cache: undistorted and ROI-cropped when the cameras
carry distortion, composited on the model's background when it has alpha, always RGB) and, once the HR
phases begin, a current SR target H_i in one [N, sH, sW, 3] float tensor. The LR size is the *cached*
(undistorted) size, so targets, xs cameras and LR images all live in the undistorted frame. The targets sit
on the training device when they fit in `targets_on_gpu_max_gb`, else on the CPU (pinned) and each view is
copied to the device as it is served. `swap()` overwrites them in place after each denoising step.

Batch keys in HR phases: "image" (the SR target, sH x sW), "lr_image" (the LR image), and, when the capture
has masks, "mask" (nearest-upsampled xs, so splatfacto's own masking applies) and "lr_mask" (LR size).
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager, FullImageDatamanagerConfig, _undistort_image)
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.dataparser import ThreeDSRDataParserConfig
from threedsr_ns.llff import gt_files
from threedsr_ns.preflight import PreflightError

_HR_SCALES: Dict[int, Tuple[int, torch.Tensor]] = {}
"""id(datamanager config) -> (s, background), for configs whose pipeline has entered HR: a datamanager built later from the
same config object for evaluation or rendering (ns-render dataset makes its own) starts with xs cameras. The
entry goes when the config is garbage-collected; the config itself is never changed."""


def _register_hr(config: "ThreeDSRDataManagerConfig", scale: int, background: torch.Tensor) -> None:
    if id(config) not in _HR_SCALES:
        weakref.finalize(config, _HR_SCALES.pop, id(config), None)
    _HR_SCALES[id(config)] = (scale, background)


def to_rgb_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Any PIL mode as uint8 [H, W, 3] or, when it has transparency, [H, W, 4]: greyscale repeated, palettes
    looked up, 16-bit greyscale scaled to 8 bits."""
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit greyscale
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    return np.array(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)


class ThreeDSRDataset(InputDataset):
    """nerfstudio's InputDataset for any image file PIL reads: always RGB(A) uint8; an unreadable file is a
    one-line error naming it (raised while caching, before any training)."""

    has_alpha: bool = False
    """True once an image with transparency was read (it is composited on the datamanager's background)."""

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        filename = self._dataparser_outputs.image_filenames[image_idx]
        try:
            with Image.open(filename) as pil_image:
                if self.scale_factor != 1.0:
                    width, height = pil_image.size
                    newsize = (int(width * self.scale_factor), int(height * self.scale_factor))
                    pil_image = pil_image.resize(newsize, resample=Image.Resampling.BILINEAR)
                array = to_rgb_array(pil_image)
                if array.shape[-1] == 4:
                    self.has_alpha = True
                return array
        except (OSError, SyntaxError, ValueError) as err:
            raise PreflightError(f"{filename} cannot be decoded ({err}): replace the file or remove its frame from "
                                 "transforms.json") from None


@dataclass
class ThreeDSRDataManagerConfig(FullImageDatamanagerConfig):
    _target: Type = field(default_factory=lambda: ThreeDSRDataManager)
    dataparser: ThreeDSRDataParserConfig = field(
        default_factory=lambda: ThreeDSRDataParserConfig(
            load_3D_points=True, eval_mode="interval", eval_interval=8, downscale_factor=1
        )
    )
    """nerfstudio-data format; the paper's LLFF protocol by default: every 8th image is a test view, images as they are."""
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    targets_on_gpu_max_gb: float = 4.0
    """SR targets (float32, N x sH x sW x 3) up to this size live on the training device; larger ones stay on the
    CPU (pinned under CUDA) and each view is copied to the device when it is served, as are the sampler's latents.
    On CUDA they also stay on the CPU when a guidance step's whole state (`guidance_state_bytes`) would take more than
    half of the GPU's memory (GPU_STATE_FRACTION), which 3DGS training needs too."""


GPU_STATE_FRACTION = 0.5
"""A guidance step's state (`guidance_state_bytes`) stays on the GPU only up to this fraction of its memory."""


def guidance_state_copies(latent_factor: int) -> float:
    """A guidance step's peak on its work device (threedsr_ns.pipeline.run_guidance_step), in float32 copies of the
    N train views' HR images. Where the latents are the HR pixels (latent_factor 1: compact, compact-v2, bicubic,
    realesrgan) the pipeline holds the bicubic-upsampled LR, the renders, the last step's x_t and the targets while the
    posterior step makes x~0, x_t, a temporary and the noise: 8 copies at most; the N-view tensors alive between the
    backend's calls came to 7.1 copies in real steps (tests/test_preflight.py::
    test_the_guidance_state_estimate_bounds_what_real_steps_hold), 4.6 for the SD x4 architecture, whose latents are
    on the LR grid. With a copy or two of margin: 10 and 7."""
    return 10.0 if latent_factor == 1 else 7.0


class ThreeDSRDataManager(FullImageDatamanager[ThreeDSRDataset]):
    config: ThreeDSRDataManagerConfig

    def __init__(self, config: ThreeDSRDataManagerConfig, device: Union[torch.device, str] = "cpu",
                 test_mode: Literal["test", "val", "inference"] = "val", world_size: int = 1, local_rank: int = 0,
                 **kwargs):
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size,
                         local_rank=local_rank, **kwargs)
        self.upscale_factor = 1
        """1 during the LR warm-up; s once the cameras render xs."""
        self.sr_targets: Optional[torch.Tensor] = None
        """[N, sH, sW, 3] float in [0, 1] on `targets_device`: the current SR target of every train view."""
        self.background = torch.tensor([0.1490, 0.1647, 0.2157])
        """RGB that images with alpha are composited on (splatfacto's background for "random"); see set_background."""
        self.set_background(self.background)
        self.eval_has_gt = False
        """True once the eval images are the GT at xs (ns-eval then reports HR metrics)."""
        self._lr_size: Optional[Tuple[int, int]] = None
        self.guidance_state_copies = guidance_state_copies(1)
        """See guidance_state_copies(); plan_guidance() sets it from the SR backend (this default: the larger)."""
        self._planned_scale: Optional[int] = None
        self._check_files()
        if test_mode == "inference":  # images are never read: undistort the cameras as caching would
            for dataset in (self.train_dataset, self.eval_dataset):
                _undistort_cameras(dataset.cameras)
            self._lr_size = Counter(_camera_sizes(self.train_dataset.cameras)).most_common(1)[0][0]
        if test_mode != "val" and id(config) in _HR_SCALES:  # ns-render dataset etc. on a finished run
            scale, background = _HR_SCALES[id(config)]
            self.set_background(background)
            self.enter_hr(scale)

    # -- input checks -----------------------------------------------------------------------------------

    def _check_files(self) -> None:
        """Every image (and mask) exists and PIL reads its header; all share one size, which matches the camera.
        (The SR targets live in one tensor and the backend batches views.) Cheap: no image is decoded here."""
        files: List[Path] = []
        camera_sizes: List[Tuple[int, int]] = []
        masks: List[Optional[Path]] = []
        for dataset in (self.train_dataset, self.eval_dataset):
            outputs = dataset._dataparser_outputs
            camera_sizes += [(round(h / dataset.scale_factor), round(w / dataset.scale_factor))
                             for h, w in _camera_sizes(dataset.cameras)]
            files += list(outputs.image_filenames)
            masks += list(outputs.mask_filenames) if outputs.mask_filenames is not None else [None] * len(dataset)
        if self.test_mode == "inference":  # ns-render / viewer: images are not read
            return
        sizes = []
        for f, cam, mask in zip(files, camera_sizes, masks):
            size = _header_size(f, "image")
            if size != cam:
                raise PreflightError(f"{f} is {size[1]}x{size[0]} but its camera in the dataset says {cam[1]}x{cam[0]}: "
                                     "fix the image or its w/h/intrinsics in transforms.json")
            if mask is not None and _header_size(mask, "mask") != size:
                mh, mw = _header_size(mask, "mask")
                raise PreflightError(f"{mask} is {mw}x{mh} but its image {f.name} is {size[1]}x{size[0]}: give "
                                     "every mask its image's size")
            sizes.append(size)
        _check_one_size(files, sizes, "")

    @property
    def lr_size(self) -> Tuple[int, int]:
        """(h, w) of every LR image as cached: after undistortion and its ROI crop (loads the caches once)."""
        if self._lr_size is None:
            cached = self.cached_train + self.cached_eval
            files = list(self.train_dataset.image_filenames) + list(self.eval_dataset.image_filenames)
            self._lr_size = _check_one_size(files, [tuple(d["image"].shape[:2]) for d in cached],
                                            " after undistortion (give every frame the same camera model, "
                                            "intrinsics and distortion)")
        return self._lr_size

    def set_background(self, rgb: torch.Tensor) -> None:
        """Composite images with alpha on `rgb` ([3] in [0, 1], the model's background) when they are cached:
        LR images, SR targets, renders and L_lr then agree. Call before the caches load (the pipeline does)."""
        if "cached_train" in self.__dict__ or "cached_eval" in self.__dict__:
            raise RuntimeError("set_background() after the images were cached")
        self.background = rgb.detach().float().cpu().reshape(3)
        for dataset in (self.train_dataset, self.eval_dataset):
            dataset._dataparser_outputs.alpha_color = self.background

    # -- what the loop reads ----------------------------------------------------------------------------

    @property
    def num_train_views(self) -> int:
        return len(self.train_dataset)

    def sr_target_shape(self, scale: Optional[int] = None) -> Tuple[int, int, int, int]:
        h, w = self.lr_size
        s = self.upscale_factor if scale is None else scale
        return (self.num_train_views, s * h, s * w, 3)

    def plan_guidance(self, scale: int, latent_factor: int) -> None:
        """What the HR phases will hold (the pipeline says so at start-up): xs targets, and the state of an SR
        backend with this latent_factor. From then on `targets_device` and `guidance_state_bytes` answer for them,
        during the warm-up too (the pre-flight check reads them)."""
        self._planned_scale, self.guidance_state_copies = scale, guidance_state_copies(latent_factor)

    def _hr_target_shape(self) -> Tuple[int, int, int, int]:
        """sr_target_shape at the HR phases' scale: the current one, or the planned one during the warm-up."""
        return self.sr_target_shape(self._planned_scale if self.upscale_factor == 1 and self._planned_scale else None)

    @property
    def guidance_state_bytes(self) -> int:
        """Estimated peak bytes a guidance step holds on its work device (`targets_device`): guidance_state_copies
        float32 copies of the N train views' SR targets."""
        n, h, w, c = self._hr_target_shape()
        return int(self.guidance_state_copies * n * h * w * c * 4)

    @property
    def targets_device(self) -> torch.device:
        """Where the SR targets, the sampler's latents and a guidance step's work are kept: the training device
        unless the targets exceed `targets_on_gpu_max_gb` or, on CUDA, the step's state would take more than
        GPU_STATE_FRACTION of the GPU's memory; then the CPU."""
        n, h, w, c = self._hr_target_shape()
        fits = n * h * w * c * 4 <= self.config.targets_on_gpu_max_gb * 1e9
        device = torch.device(self.device)
        if fits and device.type == "cuda":
            fits = self.guidance_state_bytes <= GPU_STATE_FRACTION * torch.cuda.get_device_properties(device).total_memory
        return device if fits else torch.device("cpu")

    def lr_images(self, device: Optional[Union[torch.device, str]] = None) -> torch.Tensor:
        """Every train view's LR image as [N, 3, h, w] float in [0, 1] (composited, RGB) on `device` (default: the
        training device)."""
        device = self.device if device is None else device
        images = torch.stack([d["image"].to(device) for d in self.cached_train])
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return images[..., :3].permute(0, 3, 1, 2).contiguous()

    # -- LR -> HR ---------------------------------------------------------------------------------------

    def enter_hr(self, scale: int) -> None:
        """Rescale every camera xs: training, evaluation, the viewer and ns-render then render at HR."""
        if self.upscale_factor == scale:
            return
        if self.upscale_factor != 1:
            raise RuntimeError(f"cameras are already at x{self.upscale_factor}, cannot switch to x{scale}")
        _ = self.lr_size  # caches load (and undistort the cameras) while the cameras still match the images
        for dataset in (self.train_dataset, self.eval_dataset):
            dataset.cameras.rescale_output_resolution(scale)
        self.train_cameras = self.train_dataset.cameras.to(self.device)
        self.upscale_factor = scale
        _register_hr(self.config, scale, self.background)
        if self.test_mode == "test":
            self._use_gt_for_eval()

    def _use_gt_for_eval(self) -> None:
        """ns-eval at HR: when the dataset has the GT of the eval views (transforms_gt.json + its images, as
        scripts/prepare_llff.py writes them) at xs the LR size, they become the eval images; otherwise say that the
        metrics are LR fidelity (the model scores the render downsampled to the LR image)."""
        gt = gt_files(Path(self.config.data), self.eval_dataset.image_filenames)
        h, w = self.sr_target_shape()[1:3]
        distorted = self.eval_dataset.cameras.distortion_params is not None and bool(
            (self.eval_dataset.cameras.distortion_params != 0).any())
        usable = gt is not None and not distorted and all(
            f.exists() and _header_size(f, "GT image") == (h, w) for f in gt)
        if not usable:
            why = "it has no transforms_gt.json with GT images" if gt is None else (
                "its cameras are distorted" if distorted else f"the GT is not {w}x{h} for every eval view")
            CONSOLE.log(f"[bold]3dsr[/bold] eval metrics are LR fidelity (the HR render downsampled x{self.upscale_factor} "
                        f"against the LR images): {self.config.data} {why}")
            return
        for data, f in zip(self.cached_eval, gt):
            with Image.open(f) as im:
                rgba = torch.from_numpy(to_rgb_array(im).copy())
            if rgba.shape[-1] == 4:  # composite as the LR images are
                a = rgba[..., 3:].float() / 255.0
                rgba = (rgba[..., :3] * a + 255.0 * self.background * (1 - a)).round().clamp(0, 255).to(torch.uint8)
            data["image"] = rgba.to(data["image"].device)
            data.pop("mask", None)
        self.eval_has_gt = True
        CONSOLE.log(f"[bold]3dsr[/bold] eval metrics are HR: the {len(gt)} eval views are scored against their GT at {w}x{h}")

    def swap(self, targets: torch.Tensor) -> None:
        """Make `targets` ([N, sH, sW, 3], float in [0, 1], any device) the training images of the N views."""
        s = self.upscale_factor
        if s == 1:
            raise RuntimeError("swap() before enter_hr(): SR targets are HR images, the cameras are still LR")
        expected = self.sr_target_shape()
        if tuple(targets.shape) != expected:
            raise ValueError(f"SR targets must be {expected} (views, sH, sW, RGB), got {tuple(targets.shape)}")
        if self.sr_targets is None:
            device = self.targets_device
            self.sr_targets = torch.empty(expected, dtype=torch.float32, device=device)
            if device.type == "cpu" and torch.cuda.is_available():
                self.sr_targets = self.sr_targets.pin_memory()
        for i in range(expected[0]):  # per view: no second full-size tensor on either side
            self.sr_targets[i].copy_(targets[i].clamp(0.0, 1.0))

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        camera, data = super().next_train(step)
        if self.sr_targets is not None:
            idx = camera.metadata["cam_idx"]
            data["lr_image"] = data["image"]
            data["image"] = self.sr_targets[idx].to(self.device, non_blocking=True)
            if "mask" in data:
                s = self.upscale_factor
                data["lr_mask"] = data["mask"]
                data["mask"] = data["mask"].repeat_interleave(s, 0).repeat_interleave(s, 1)
        return camera, data

    # -- checkpoints ------------------------------------------------------------------------------------

    def targets_state(self) -> Optional[torch.Tensor]:
        """The SR targets as uint8 on the CPU: what checkpoints keep (a quarter of float32)."""
        if self.sr_targets is None:
            return None
        return torch.stack([(t * 255.0).round().to(torch.uint8).cpu() for t in self.sr_targets])

    def load_targets_state(self, targets: torch.Tensor) -> None:
        """Inverse of targets_state (older checkpoints kept float targets: taken as they are)."""
        if targets.dtype == torch.uint8:
            self.swap(_Uint8Views(targets))
        else:
            self.swap(targets)


class _Uint8Views:
    """[N, H, W, 3] uint8 read view by view as float in [0, 1], so a resume never makes a float copy of all of them."""

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets, self.shape = targets, targets.shape

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.targets[i].float() / 255.0


def _camera_sizes(cameras: Cameras) -> List[Tuple[int, int]]:
    return [(int(h), int(w)) for h, w in zip(cameras.height.reshape(-1), cameras.width.reshape(-1))]


def _header_size(path: Path, what: str) -> Tuple[int, int]:
    if not Path(path).exists():
        raise PreflightError(f"{path} does not exist: add the {what} or remove its frame from transforms.json")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError) as err:
        raise PreflightError(f"{path} is not an {what} PIL can read ({err}): replace the file or remove its frame "
                             "from transforms.json") from None


def _check_one_size(files: Sequence[Path], sizes: Sequence[Tuple[int, int]], where: str) -> Tuple[int, int]:
    common, _ = Counter(sizes).most_common(1)[0]
    odd = [(f, s) for f, s in zip(files, sizes) if s != common]
    if odd:
        listing = ", ".join(f"{f} ({w}x{h})" for f, (h, w) in odd[:5])
        raise PreflightError(
            f"3dsr needs every image of the capture at one size{where}; most are {common[1]}x{common[0]} but "
            f"{len(odd)} differ: {listing}{' ...' if len(odd) > 5 else ''}. "
            f"Resize or crop those images (and their intrinsics) to {common[1]}x{common[0]}, or remove them "
            f"from transforms.json."
        )
    return common


def _undistort_cameras(cameras: Cameras) -> None:
    """Give distorted cameras the intrinsics and size nerfstudio's image caching would (its own undistortion, run
    on a blank image of the camera's size): used where images are not read, so every mode sees one frame."""
    if cameras.distortion_params is None:
        return
    done: Dict[tuple, Tuple[np.ndarray, Tuple[int, int]]] = {}
    for i in range(cameras.shape[0]):
        camera = cameras[i].reshape(())
        params = camera.distortion_params
        if torch.all(params == 0) or camera.camera_type.item() not in (CameraType.PERSPECTIVE.value,
                                                                       CameraType.FISHEYE.value):
            continue
        h, w = int(camera.height), int(camera.width)
        key = (camera.camera_type.item(), h, w, *camera.get_intrinsics_matrices().flatten().tolist(), *params.tolist())
        if key not in done:
            K, image, _ = _undistort_image(camera, params.numpy(), {}, np.zeros((h, w, 3), np.uint8),
                                           camera.get_intrinsics_matrices().numpy())
            done[key] = (K, image.shape[:2])
        K, (uh, uw) = done[key]
        cameras.fx[i], cameras.fy[i] = float(K[0, 0]), float(K[1, 1])
        cameras.cx[i], cameras.cy[i] = float(K[0, 2]), float(K[1, 2])
        cameras.height[i], cameras.width[i] = uh, uw
