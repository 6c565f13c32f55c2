"""The 3DSR DataManager: LR images during the warm-up, then xs cameras with swappable SR targets.

Every train view keeps its LR image (nerfstudio's image cache, on the training device) and, once the
HR phases begin, a current SR target H_i in one [N, sH, sW, 3] tensor on the same device. `swap()`
overwrites those targets in place after each denoising step: no disk round trip, no reallocation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Tuple, Type, Union

import torch
from PIL import Image
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

from threedsr_ns.dataparser import ThreeDSRDataParserConfig


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


class ThreeDSRDataManager(FullImageDatamanager[InputDataset]):
    config: ThreeDSRDataManagerConfig

    def __init__(self, config: ThreeDSRDataManagerConfig, device: Union[torch.device, str] = "cpu",
                 test_mode: Literal["test", "val", "inference"] = "val", world_size: int = 1, local_rank: int = 0,
                 **kwargs):
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size,
                         local_rank=local_rank, **kwargs)
        self.lr_size = self._check_one_image_size()
        self.upscale_factor = 1
        """1 during the LR warm-up; s once the cameras render xs."""
        self.sr_targets: torch.Tensor | None = None
        """[N, sH, sW, 3] float in [0, 1] on the training device: the current SR target of every train view."""

    def _check_one_image_size(self) -> Tuple[int, int]:
        """The SR targets live in one tensor and the backend batches views: all images must share one size,
        and each must match its camera (checked here, where the file can be named, not deep in caching)."""
        files: List[Path] = []
        camera_sizes: List[Tuple[int, int]] = []
        for dataset in (self.train_dataset, self.eval_dataset):
            cams, scale = dataset.cameras, dataset.scale_factor  # cameras of a finished run's re-render are xs
            camera_sizes += [(round(int(h) / scale), round(int(w) / scale))
                             for h, w in zip(cams.height.reshape(-1), cams.width.reshape(-1))]
            files += list(dataset._dataparser_outputs.image_filenames)
        if self.test_mode == "inference":  # ns-render / viewer: images are not read
            return Counter(camera_sizes).most_common(1)[0][0]
        sizes = []
        for f, cam in zip(files, camera_sizes):
            with Image.open(f) as im:
                size = (im.height, im.width)
            if size != cam:
                raise ValueError(f"{f} is {size[1]}x{size[0]} but its camera in the dataset says {cam[1]}x{cam[0]}: "
                                 "fix the image or its w/h/intrinsics in transforms.json")
            sizes.append(size)
        common, _ = Counter(sizes).most_common(1)[0]
        odd = [(f, s) for f, s in zip(files, sizes) if s != common]
        if odd:
            listing = ", ".join(f"{f} ({w}x{h})" for f, (h, w) in odd[:5])
            raise ValueError(
                f"3dsr needs every image of the capture at one size; most are {common[1]}x{common[0]} but "
                f"{len(odd)} differ: {listing}{' ...' if len(odd) > 5 else ''}. "
                f"Resize or crop those images (and their intrinsics) to {common[1]}x{common[0]}, or remove them "
                f"from transforms.json."
            )
        return common

    @property
    def num_train_views(self) -> int:
        return len(self.train_dataset)

    def lr_images(self) -> torch.Tensor:
        """Every train view's LR image as [N, 3, h, w] float in [0, 1] on the training device."""
        images = torch.stack([d["image"].to(self.device) for d in self.cached_train])
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return images[..., :3].permute(0, 3, 1, 2).contiguous()

    def enter_hr(self, scale: int) -> None:
        """Rescale every camera xs: training, evaluation, the viewer and ns-render then render at HR."""
        if self.upscale_factor == scale:
            return
        if self.upscale_factor != 1:
            raise RuntimeError(f"cameras are already at x{self.upscale_factor}, cannot switch to x{scale}")
        if self.test_mode != "inference":
            # nerfstudio checks each cached image against its camera's size when it first loads: load the
            # LR caches now, while the cameras still match them
            _ = self.cached_train, self.cached_eval
        for dataset in (self.train_dataset, self.eval_dataset):
            dataset.cameras.rescale_output_resolution(scale)
        self.train_cameras = self.train_dataset.cameras.to(self.device)
        self.upscale_factor = scale
        # datamanagers built later from this config (ns-render dataset makes its own) get xs cameras too
        self.config.camera_res_scale_factor = float(scale)

    def swap(self, targets: torch.Tensor) -> None:
        """Make `targets` ([N, sH, sW, 3], float in [0, 1], on the device) the training images of the N views."""
        h, w = self.lr_size
        s = self.upscale_factor
        expected = (self.num_train_views, s * h, s * w, 3)
        if s == 1:
            raise RuntimeError("swap() before enter_hr(): SR targets are HR images, the cameras are still LR")
        if tuple(targets.shape) != expected:
            raise ValueError(f"SR targets must be {expected} (views, sH, sW, RGB), got {tuple(targets.shape)}")
        if self.sr_targets is None:
            self.sr_targets = torch.empty(expected, dtype=torch.float32, device=self.device)
        self.sr_targets.copy_(targets.clamp(0.0, 1.0))

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        camera, data = super().next_train(step)
        if self.sr_targets is not None:
            idx = camera.metadata["cam_idx"]
            data["lr_image"] = data["image"]
            data["image"] = self.sr_targets[idx]
        return camera, data
