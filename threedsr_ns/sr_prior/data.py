"""Training photos for the compact SR prior: the split, packs for the GPU machine, random crops, LR synthesis.

Source: ../shared/data/sr_train (images/ + split.json: 522 "train", 58 "heldout"; the held-out photos
are never read for training, and a pack records its split so the trainer can refuse a held-out one).

Packs. What travels to the GPU machine is at most 64 MiB, code, wheels and checkpoint included, so the
trainer reads a pack (.npz) instead of the JPEG folder:
- format "files" (default): the photos' original JPEG bytes, unchanged (no re-encoding), concatenated in
  one uint8 array. All 522 train photos are 38.5 MB this way (decoded pixels: 258 MB); shard i of n takes
  every n-th photo (names sorted per split.json), e.g. 2 shards of about 19 MB each, one per run. The
  trainer decodes them once and takes random crops anywhere in every photo.
- format "crops": uint8 random crops [N, S, S, 3] in a zlib-compressed .npz: 36.6 KB per 128 px crop on
  these photos, i.e. one crop per photo is 19 MB for the 522 (and covers only 10 % of their pixels).
LR synthesis is done on the fly, batched on the training device: antialiased bicubic x s downsampling
(`threedsr_ns.losses.downsample_antialiased`, what the LR loss and the LLFF preparation use), optional
mild degradations (HR blur, LR Gaussian noise, LR JPEG), quantised to 8 bits like an LR image on disk.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from threedsr_ns.losses import downsample_antialiased

Split = Literal["train", "heldout"]
PackFormat = Literal["files", "crops"]
PACK_VERSION = 1


@dataclass
class Photo:
    name: str
    pixels: np.ndarray
    """[H, W, 3] uint8."""


# ---- the split and the folder -----------------------------------------------------------------------


def read_split(data_dir: str | Path) -> dict[str, list[str]]:
    """split.json of an sr_train-style folder: {"train": [...], "heldout": [...]}, checked disjoint."""
    path = Path(data_dir) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data must be an sr_train folder (images/ + split.json) or a pack")
    split = json.loads(path.read_text())
    train, heldout = list(split["train"]), list(split["heldout"])
    overlap = set(train) & set(heldout)
    if overlap:
        raise ValueError(f"{path}: {len(overlap)} photos are both train and heldout, e.g. {sorted(overlap)[:3]}")
    return {"train": train, "heldout": heldout}


def split_names(data_dir: str | Path, split: Split, shard: int = 0, num_shards: int = 1, limit: int | None = None) -> list[str]:
    names = read_split(data_dir)[split]
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards - 1}], got {shard}")
    names = names[shard::num_shards]
    return names[:limit] if limit is not None else names


def decode_image(data: bytes | Path) -> np.ndarray:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_folder_photos(data_dir: str | Path, names: Sequence[str]) -> list[Photo]:
    images = Path(data_dir) / "images"
    return [Photo(name, decode_image(images / name)) for name in names]


# ---- packs --------------------------------------------------------------------------------------------


def write_pack(
    data_dir: str | Path,
    out: str | Path,
    *,
    split: Split = "train",
    pack_format: PackFormat = "files",
    shard: int = 0,
    num_shards: int = 1,
    limit: int | None = None,
    crop_size: int = 128,
    crops_per_photo: int = 1,
    seed: int = 0,
) -> dict:
    """Pack photos of `split` (shard `shard` of `num_shards`) into `out` (.npz); returns the pack's metadata."""
    data_dir, out = Path(data_dir), Path(out)
    names = split_names(data_dir, split, shard, num_shards, limit)
    meta = {
        "pack_version": PACK_VERSION,
        "format": pack_format,
        "split": split,
        "names": names,
        "shard": shard,
        "num_shards": num_shards,
        "source": str(data_dir),
        "created_by": "scripts/train_sr_prior.py pack",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if pack_format == "files":
        blobs = [(data_dir / "images" / name).read_bytes() for name in names]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        np.savez(out, meta=_meta_array(meta), blob=blob, offsets=offsets)
    elif pack_format == "crops":
        rng = np.random.default_rng(seed)
        crops, sources = [], []
        for photo in read_folder_photos(data_dir, names):
            height, width = photo.pixels.shape[:2]
            if min(height, width) < crop_size:
                continue
            for _ in range(crops_per_photo):
                y, x = int(rng.integers(0, height - crop_size + 1)), int(rng.integers(0, width - crop_size + 1))
                crops.append(photo.pixels[y : y + crop_size, x : x + crop_size])
                sources.append(photo.name)
        meta.update(crop_size=crop_size, crops_per_photo=crops_per_photo, seed=seed, crop_sources=sources)
        np.savez_compressed(out, meta=_meta_array(meta), crops=np.stack(crops))
    else:
        raise ValueError(f'pack format must be "files" or "crops", got {pack_format!r}')
    meta["bytes"] = out.stat().st_size
    return meta


def _meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def read_pack(path: str | Path) -> tuple[dict, list[Photo]]:
    with np.load(path, allow_pickle=False) as pack:
        meta = json.loads(pack["meta"].tobytes().decode())
        if meta.get("pack_version") != PACK_VERSION:
            raise ValueError(f"{path}: pack version {meta.get('pack_version')} != {PACK_VERSION}; repack it")
        if meta["format"] == "files":
            blob, offsets = pack["blob"], pack["offsets"]
            photos = [
                Photo(name, decode_image(blob[offsets[i] : offsets[i + 1]].tobytes()))
                for i, name in enumerate(meta["names"])
            ]
        else:
            photos = [Photo(f"{name}#crop{i}", crop) for i, (name, crop) in enumerate(zip(meta["crop_sources"], pack["crops"]))]
    return meta, photos


def load_photos(source: str | Path, split: Split, limit: int | None = None) -> tuple[dict, list[Photo]]:
    """(description, photos) of `split` from an sr_train folder or a pack; a pack of another split is refused."""
    source = Path(source)
    if source.is_dir():
        names = split_names(source, split, limit=limit)
        description = {"source": str(source), "format": "folder", "split": split, "names": names}
        return description, read_folder_photos(source, names)
    meta, photos = read_pack(source)
    if meta["split"] != split:
        raise ValueError(f"{source} packs the {meta['split']!r} split, but the {split!r} split is needed here")
    if limit is not None:
        photos = photos[:limit]
    description = {k: v for k, v in meta.items() if k not in ("crop_sources",)}
    description.update(source=str(source), pack_bytes=source.stat().st_size, names=[p.name for p in photos])
    return description, photos


# ---- crops and LR synthesis (batched, on the training device) ------------------------------------------


class CropSampler:
    """Random square HR crops with random flips / transposes (the 8 dihedral symmetries) from photos."""

    def __init__(self, photos: Sequence[Photo], crop_size: int, device: torch.device | str, seed: int = 0) -> None:
        kept = [p for p in photos if min(p.pixels.shape[:2]) >= crop_size]
        if not kept:
            raise ValueError(f"no photo is at least {crop_size} px on its short side")
        self.crop_size = crop_size
        self.device = torch.device(device)
        self.images = [torch.from_numpy(p.pixels).to(self.device).permute(2, 0, 1).contiguous() for p in kept]
        self.num_skipped = len(photos) - len(kept)
        self.generator = torch.Generator("cpu").manual_seed(seed)

    @property
    def num_pixels(self) -> int:
        return sum(int(im.shape[1] * im.shape[2]) for im in self.images)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch: int) -> torch.Tensor:
        """[batch, 3, S, S] float32 in [0, 1] on the device."""
        size = self.crop_size
        crops = []
        for _ in range(batch):
            image = self.images[self._randint(len(self.images))]
            y, x = self._randint(image.shape[1] - size + 1), self._randint(image.shape[2] - size + 1)
            crops.append(image[:, y : y + size, x : x + size])
        hr = torch.stack(crops).float() / 255.0
        flips = torch.rand(3, batch, generator=self.generator).to(self.device) < 0.5
        view = (-1, 1, 1, 1)
        hr = torch.where(flips[0].view(view), hr.flip(-1), hr)
        hr = torch.where(flips[1].view(view), hr.flip(-2), hr)
        return torch.where(flips[2].view(view), hr.transpose(-1, -2), hr)


@dataclass
class Degradation:
    """Optional mild degradations on top of antialiased bicubic downsampling (each applied per sample
    with its probability; all zero: clean bicubic LR, as the evaluation and the LLFF preparation make it)."""

    blur_prob: float = 0.0
    """Gaussian blur of the HR crop before downsampling, sigma uniform in blur_sigma (HR pixels)."""
    blur_sigma: tuple[float, float] = (0.2, 1.2)
    noise_prob: float = 0.0
    """Gaussian noise on the LR image, std uniform in noise_std (in [0, 1] units)."""
    noise_std: tuple[float, float] = (0.0, 3.0 / 255.0)
    jpeg_prob: float = 0.0
    """JPEG compression of the LR image, quality uniform in jpeg_quality."""
    jpeg_quality: tuple[int, int] = (75, 95)

    @property
    def active(self) -> bool:
        return self.blur_prob > 0 or self.noise_prob > 0 or self.jpeg_prob > 0

    def describe(self) -> str:
        parts = ["Antialiased bicubic x{s} downsampling (torch interpolate, antialias=True), 8-bit quantised LR"]
        if self.blur_prob > 0:
            parts.append(f"HR Gaussian blur p={self.blur_prob} sigma {self.blur_sigma[0]}-{self.blur_sigma[1]} px")
        if self.noise_prob > 0:
            parts.append(
                f"LR Gaussian noise p={self.noise_prob} std {self.noise_std[0] * 255:.1f}-{self.noise_std[1] * 255:.1f}/255"
            )
        if self.jpeg_prob > 0:
            parts.append(f"LR JPEG p={self.jpeg_prob} quality {self.jpeg_quality[0]}-{self.jpeg_quality[1]}")
        return "; ".join(parts)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur of [B, C, H, W] (reflect padding)."""
    batch, channels = images.shape[:2]
    radius = max(1, math.ceil(3.0 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None].clamp(min=1e-3)) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # [B, K]
    kernels = kernels.repeat_interleave(channels, 0)  # [B*C, K]
    x = F.pad(images.reshape(1, batch * channels, *images.shape[-2:]), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernels[:, None, None, :], groups=batch * channels)
    x = F.conv2d(x, kernels[:, None, :, None], groups=batch * channels)
    return x.reshape(images.shape)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    decoded = decode_image(buffer.getvalue())
    return torch.from_numpy(decoded).to(image.device).permute(2, 0, 1).float() / 255.0


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def synthesize_lr(
    hr: torch.Tensor, scale: int, degradation: Degradation | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """LR images [B, 3, H/s, W/s] in [0, 1] (8-bit quantised) from HR crops [B, 3, H, W] in [0, 1]."""
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"HR crop {height}x{width} is not a multiple of the scale {scale}")
    degradation = degradation or Degradation()
    generator = generator or torch.Generator("cpu").manual_seed(0)
    batch = hr.shape[0]
    if degradation.blur_prob > 0:
        chosen = torch.rand(batch, generator=generator) < degradation.blur_prob
        if bool(chosen.any()):
            sigmas = _uniform(generator, batch, *degradation.blur_sigma).to(hr.device)
            blurred = _gaussian_blur(hr, sigmas)
            hr = torch.where(chosen.to(hr.device).view(-1, 1, 1, 1), blurred, hr)
    lr = downsample_antialiased(hr, (height // scale, width // scale)).clamp(0.0, 1.0)
    if degradation.noise_prob > 0:
        chosen = (torch.rand(batch, generator=generator) < degradation.noise_prob).float()
        std = _uniform(generator, batch, *degradation.noise_std) * chosen
        noise = torch.randn(lr.shape, generator=generator) * std.view(-1, 1, 1, 1)
        lr = (lr + noise.to(lr.device)).clamp(0.0, 1.0)
    lr = (lr * 255.0).round() / 255.0
    if degradation.jpeg_prob > 0:
        chosen = torch.rand(batch, generator=generator) < degradation.jpeg_prob
        qualities = torch.randint(degradation.jpeg_quality[0], degradation.jpeg_quality[1] + 1, (batch,), generator=generator)
        for i in torch.nonzero(chosen).flatten().tolist():
            lr[i] = _jpeg(lr[i], int(qualities[i]))
    return lr


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Centre crop [H, W, 3] so that H and W are multiples of `multiple` (the held-out GT for x multiple SR)."""
    height, width = image.shape[:2]
    new_h, new_w = height - height % multiple, width - width % multiple
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return image[top : top + new_h, left : left + new_w]
