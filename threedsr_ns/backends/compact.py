"""The project's own compact diffusion SR priors (x4, pixel space) as SR backends: `compact` and `compact-v2`.

What the model is
- Pixel-space conditional diffusion: the "latents" are the HR images themselves mapped to [-1, 1]
  (encode = 2x - 1, decode = (z + 1) / 2; latent_factor 1), so `threedsr_ns.guidance`'s sampler, the
  3DSR posterior steps toward encoded renders, and the colour fix all work unchanged.
- The denoiser is a diffusers `UNet2DModel` (convolutional, no attention: it runs on any image size and
  does not see its training crop size as a sequence length) with 6 input channels: the noisy HR image
  x_t (3) and the bicubic-upsampled LR image (3, `threedsr_ns.colorfix.bicubic_upsample`, in [-1, 1]).
  It outputs v (v-prediction by default) and is conditioned on the timestep only.
- The noise schedule is ours, fixed at training: alphas_cumprod over 1000 steps with log-SNR linear in
  t from +10 (t = 0) to -7 (t = 999). Why not SD's: in pixel space the details x4 SR must invent are
  small (a few % of the range), so they are buried by noise much earlier than the image is. With this
  schedule 3DSR's K = 4 trailing timesteps [999, 749, 499, 249] sit at log-SNR [-7, -2.7, 1.5, 5.8]: the
  last clean estimate is taken at a noise std of 0.056 (in [-1, 1]), below the detail amplitude, so the
  samples keep invented detail instead of regressing to the blurry posterior mean.
- HR sizes that are not a multiple of the UNet's 2**(levels - 1) are padded (reflect) and cropped back.
- HR images larger than `tile_size` (default 1024 px on CUDA, 512 px elsewhere, either side) are denoised on
  overlapping tiles of the noisy image and the (full-image) bicubic conditioning, blended with linear ramps over
  `tile_overlap` pixels, so memory stays bounded at any size (`tiled_unet_output`).

compact-v2: residual diffusion on Real-ESRGAN (config `conditioning = "realesrgan_residual"`)
- The frozen Real-ESRGAN x4plus RRDBNet (`threedsr_ns.backends.realesrgan`; weights from the pip package, never
  shipped here) gives per view an estimate E = RRDBNet(LR) and its penultimate activations F (64 channels at HR).
- The diffusion runs on the residual r0 = x0 - e (e = E in [-1, 1]) with the same alphas as the image: the
  sampler's x_t stays the noisy HR image, and since x_t = sqrt(a) (e + r0) + sqrt(1 - a) eps, the UNet is given
  r_t = x_t - sqrt(a) e = sqrt(a) r0 + sqrt(1 - a) eps, a standard diffusion of the residual, and x0 = e + r0_hat.
  So the pipeline's posterior steps toward encoded renders, the colour fix and the tiling are unchanged.
- The UNet's conditioning is [bicubic(LR), e, feature_scale * F]: 70 channels beside r_t. Like SRDiff and ResShift,
  the model only has to add what the regression misses, and its samples still differ where the LR is ambiguous.

Where the weights come from
- `CompactSRBackend.from_package()`: the folder `threedsr_ns/weights/compact_sr_x4/` shipped in the
  package (config.json + model.safetensors + MODEL_CARD.md), written by `scripts/train_sr_prior.py`.
- `CompactSRBackend.from_folder(path)`: any folder of the same layout.
No network is ever used. A missing file raises `CompactWeightsMissingError`, naming the file and the
command that trains it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from threedsr_ns.backends.base import SRBackend, default_device
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.errors import SetupError
from threedsr_ns.guidance import PredictionType, Timestep, model_output_to_x0

PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "compact_sr_x4"
"""The package data folder the `compact` backend loads by default."""
PACKAGE_WEIGHTS_DIR_V2 = Path(__file__).resolve().parents[1] / "weights" / "compact_sr_x4_v2"
"""The package data folder of the `compact-v2` backend (residual diffusion on Real-ESRGAN)."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
MODEL_TYPE = "threedsr-compact-sr"
"""`model_type` in config.json: how `auto` recognises a compact-prior folder given as --pipeline.sr-model-path."""
TRAIN_COMMAND = (
    "python scripts/train_sr_prior.py train --data ../shared/data/sr_train --out outputs/compact_sr_x4 && "
    "python scripts/train_sr_prior.py export --checkpoint outputs/compact_sr_x4"
)
"""The commands that train and install the package weights (see the script's docstring for the GPU runs)."""
TRAIN_COMMAND_V2 = (
    "python scripts/train_sr_prior.py train --conditioning realesrgan_residual --data ../shared/data/sr_train "
    "--out outputs/compact_sr_x4_v2 && python scripts/train_sr_prior.py export --checkpoint outputs/compact_sr_x4_v2"
)
RRDB_FEATURES = 64
"""Channels of Real-ESRGAN x4plus's penultimate activations (compact-v2's feature conditioning)."""

DEFAULT_TILE_SIZE = 512
"""HR pixels per denoising tile side off CUDA; larger images are denoised in overlapping tiles."""
CUDA_TILE_SIZE = 1024
"""The tile side on CUDA: fewer, larger tiles run faster there (benchmarks/results/guidance-step-h200-tile1024.json
against guidance-step-h200.json: one fox guidance step's denoising, 43 views at 1076x1916, took 2.01 s on 1024 px
tiles against 2.61 s on 512 px ones, at a peak of 12.5 GB)."""
DEFAULT_TILE_OVERLAP = 64
"""HR pixels shared by neighbouring tiles, blended with linear ramps."""

ScheduleName = Literal["logsnr_linear", "linear", "scaled_linear", "cosine"]
Conditioning = Literal["bicubic_lr", "realesrgan_residual"]


class CompactWeightsMissingError(SetupError, FileNotFoundError):
    """A compact-prior folder lacks a file; the message names it and the command that makes it."""


@dataclass
class CompactSRConfig:
    """Architecture and noise schedule of a compact SR prior; stored as the folder's config.json."""

    scale: int = 4
    """Upscale factor (HR size / LR size)."""
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    """UNet channels per resolution level (one 2x downsample between levels)."""
    layers_per_block: int = 2
    """ResNet blocks per level (the up path has one more, as in diffusers)."""
    norm_num_groups: int = 16
    """GroupNorm groups; must divide every entry of block_out_channels."""
    prediction_type: PredictionType = "v_prediction"
    """What the UNet outputs: "v_prediction" or "epsilon"."""
    schedule: ScheduleName = "logsnr_linear"
    """Noise schedule: log-SNR linear in t (ours), or diffusers' "linear" / "scaled_linear" betas, or "cosine"."""
    logsnr_max: float = 10.0
    """log-SNR at t = 0 ("logsnr_linear")."""
    logsnr_min: float = -7.0
    """log-SNR at t = num_train_timesteps - 1 ("logsnr_linear")."""
    beta_start: float = 0.0001
    """First beta ("linear", "scaled_linear")."""
    beta_end: float = 0.02
    """Last beta ("linear", "scaled_linear")."""
    num_train_timesteps: int = 1000
    conditioning: Conditioning = "bicubic_lr"
    """"bicubic_lr" (compact): the UNet's extra input is bicubic_upsample(LR, scale) in [-1, 1].
    "realesrgan_residual" (compact-v2): residual diffusion around the frozen Real-ESRGAN estimate (module docstring)."""
    feature_scale: float = 1.0
    """realesrgan_residual: factor on the RRDBNet activations fed to the UNet (1 / their RMS, set by the first
    training run)."""
    model_type: str = MODEL_TYPE
    format_version: int = 1

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"model_type must be {MODEL_TYPE!r}, got {self.model_type!r}: not a compact SR prior")
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups {self.norm_num_groups} must divide every entry of block_out_channels "
                f"{self.block_out_channels}"
            )
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ValueError(f'prediction_type must be "v_prediction" or "epsilon", got {self.prediction_type!r}')
        if self.schedule not in ("logsnr_linear", "linear", "scaled_linear", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.conditioning not in ("bicubic_lr", "realesrgan_residual"):
            raise ValueError(f'conditioning must be "bicubic_lr" or "realesrgan_residual", got {self.conditioning!r}')
        if self.schedule == "logsnr_linear" and not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min {self.logsnr_min} must be < logsnr_max {self.logsnr_max}")

    @property
    def residual(self) -> bool:
        """compact-v2: the diffusion runs on the residual around the Real-ESRGAN estimate."""
        return self.conditioning == "realesrgan_residual"

    @property
    def condition_channels(self) -> int:
        """Channels of the UNet's conditioning input (beside the 3 of x_t or r_t)."""
        return 3 + 3 + RRDB_FEATURES if self.residual else 3

    @property
    def backend_name(self) -> str:
        return "compact-v2" if self.residual else "compact"

    @property
    def size_multiple(self) -> int:
        """HR sizes the UNet takes without padding are multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactSRConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"_comment", "unet"})
        if unknown:
            raise ValueError(f"unknown keys in a compact SR prior config: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        data = {
            "_comment": "threedsr_ns compact x4 SR diffusion prior; see MODEL_CARD.md and threedsr_ns/backends/compact.py",
            **self.to_dict(),
            "unet": unet_kwargs(self),
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> CompactSRConfig:
        path = Path(folder) / CONFIG_FILE
        _require(path)
        return cls.from_dict(json.loads(path.read_text()))


def tiny_config(**overrides: Any) -> CompactSRConfig:
    """A few-channel config for tests and CPU smoke runs (random or briefly trained weights)."""
    return CompactSRConfig(**{"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4, **overrides})


# ---- schedule and network -----------------------------------------------------------------------------


def alphas_cumprod_for(config: CompactSRConfig) -> torch.Tensor:
    """1D float32 cumulative alphas, one per training timestep (what `guidance` needs)."""
    steps = config.num_train_timesteps
    if config.schedule == "logsnr_linear":
        t = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        logsnr = config.logsnr_max + (config.logsnr_min - config.logsnr_max) * t
        return torch.sigmoid(logsnr).float()
    if config.schedule == "cosine":  # Nichol & Dhariwal, betas clipped at 0.999 as diffusers does
        s = 0.008

        def f(x: float) -> float:
            return math.cos((x / steps + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)], dtype=torch.float64)
        return torch.cumprod(1 - betas, 0).float()
    if config.schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float64)
    else:  # scaled_linear
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def unet_kwargs(config: CompactSRConfig) -> dict[str, Any]:
    levels = len(config.block_out_channels)
    return dict(
        in_channels=3 + config.condition_channels,
        out_channels=3,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=False,
        norm_num_groups=config.norm_num_groups,
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def build_unet(config: CompactSRConfig, seed: int | None = 0) -> UNet2DModel:
    """The denoiser with freshly initialised weights (float32, CPU); seed None uses the global RNG."""
    if seed is None:
        return UNet2DModel(**unet_kwargs(config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**unet_kwargs(config))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0


def lr_condition(lr_images: torch.Tensor, scale: int) -> torch.Tensor:
    """The UNet's conditioning input for LR images in [0, 1]: bicubic x scale, clamped, in [-1, 1] (float32)."""
    return to_model_range(bicubic_upsample(lr_images.float(), scale))


def conditioning(
    config: CompactSRConfig, lr_images: torch.Tensor, rrdb: torch.nn.Module | None = None, rrdb_tile: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the UNet's conditioning [B, condition_channels, sH, sW] in `dtype` (the UNet's: compact-v2's 70 channels at
    HR are the largest tensor of a guidance batch), the anchor e [B, 3, sH, sW] in [-1, 1], float32, or None) for LR
    images in [0, 1]. compact: (bicubic, None). compact-v2: ([bicubic, e, feature_scale * F], e) with E, F from the
    frozen RRDBNet `rrdb`, run on LR tiles of `rrdb_tile` pixels (0: whole images)."""
    bicubic = lr_condition(lr_images, config.scale)
    if not config.residual:
        return bicubic.to(dtype), None
    if rrdb is None:
        raise ValueError("compact-v2 needs the Real-ESRGAN RRDBNet (threedsr_ns.backends.realesrgan.load_rrdbnet)")
    from threedsr_ns.backends.realesrgan import run_tiled

    rgb, features = run_tiled(rrdb, lr_images, rrdb_tile, with_features=True)
    anchor = to_model_range(rgb.to(bicubic.device))
    features = features.to(bicubic.device, dtype).mul_(config.feature_scale)
    return torch.cat([bicubic.to(dtype), anchor.to(dtype), features], dim=1), anchor


def residual_input(x_t: torch.Tensor, anchor: torch.Tensor | None, timesteps: torch.Tensor,
                   alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the UNet denoises: x_t itself (compact), or r_t = x_t - sqrt(alpha_bar_t) e (compact-v2)."""
    if anchor is None:
        return x_t
    a = alphas_cumprod.to(x_t.device, torch.float32)[timesteps.to(x_t.device).long()].view(-1, 1, 1, 1)
    return x_t - a.sqrt() * anchor


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def is_channels_last(unet: torch.nn.Module) -> bool:
    """True when the UNet's convolution weights are in channels-last memory format (`Module.to(memory_format=...)`)."""
    weight = next(p for p in unet.parameters() if p.ndim == 4)
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def unet_output(
    unet: UNet2DModel, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor, multiple: int
) -> torch.Tensor:
    """The raw UNet output (v or eps) for x_t [B, 3, H, W] and the conditioning [B, C, H, W], in the UNet's dtype.

    Pads H, W to `multiple` and crops the output back. Training and inference both go through here.
    The input takes the UNet's memory format (`is_channels_last`).
    """
    model_input, (height, width) = _pad_to_multiple(torch.cat([x_t, condition], dim=1), multiple)
    if is_channels_last(unet):
        model_input = model_input.contiguous(memory_format=torch.channels_last)
    output = unet(model_input, timesteps, return_dict=False)[0]
    return output[..., :height, :width]


def tile_layout(size: int, max_tile: int, overlap: int, multiple: int = 1) -> tuple[list[int], int]:
    """Origins and length of the fewest equal tiles of at most `max_tile` pixels that cover [0, size) with neighbours
    sharing at least `overlap` pixels, each as short as that allows (rounded up to `multiple`, the UNet's padding
    unit; max_tile is one), spread evenly (first at 0, last at size - length). Short tiles, not max_tile ones: at
    fern's 2016x1512 with 512 / 64 the 20 tiles are 456x432, 25% fewer pixels through the UNet than 512x512 ones."""
    if size <= max_tile:
        return [0], size
    count = math.ceil((size - overlap) / (max_tile - overlap))
    length = min(max_tile, multiple * math.ceil(math.ceil((size + (count - 1) * overlap) / count) / multiple))
    return [round(i * (size - length) / (count - 1)) for i in range(count)], length


def _ramp(length: int, overlap: int, blend_start: bool, blend_end: bool) -> torch.Tensor:
    """1D blending weights of one tile: rising over `overlap` pixels at a shared start, falling at a shared end."""
    weight = torch.ones(length)
    if overlap > 0:
        rise = (torch.arange(overlap, dtype=torch.float32) + 1.0) / (overlap + 1.0)
        if blend_start:
            weight[:overlap] = torch.minimum(weight[:overlap], rise)
        if blend_end:
            weight[-overlap:] = torch.minimum(weight[-overlap:], rise.flip(0))
    return weight


def tiled_unet_output(
    unet: UNet2DModel,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    condition: torch.Tensor,
    multiple: int,
    tile_size: int,
    overlap: int,
) -> torch.Tensor:
    """`unet_output` computed on overlapping tiles of at most tile_size x tile_size (`tile_layout`), blended (float32
    result).

    Each tile's output is weighted by a separable ramp that rises over the `overlap` pixels it shares with a
    neighbour (1 at the image border), and the weighted outputs are normalised by the summed weights.
    """
    height, width = x_t.shape[-2:]
    (ys, th), (xs, tw) = (tile_layout(n, tile_size, overlap, multiple) for n in (height, width))
    if len(ys) == 1 and len(xs) == 1:
        return unet_output(unet, x_t, timesteps, condition, multiple).float()
    total = torch.zeros(x_t.shape[0], x_t.shape[1], height, width, device=x_t.device, dtype=torch.float32)
    weights = torch.zeros(height, width, device=x_t.device, dtype=torch.float32)
    for y in ys:
        wy = _ramp(th, overlap, y > 0, y + th < height)
        for x in xs:
            w = (wy[:, None] * _ramp(tw, overlap, x > 0, x + tw < width)[None, :]).to(x_t.device)
            window = (..., slice(y, y + th), slice(x, x + tw))
            out = unet_output(unet, x_t[window], timesteps, condition[window], multiple).float()
            total[window] += out * w
            weights[window] += w
    return total / weights


# ---- folders ------------------------------------------------------------------------------------------


def _require(path: Path) -> None:
    if not path.is_file():
        shipped = path.parent.resolve() in (PACKAGE_WEIGHTS_DIR.resolve(), PACKAGE_WEIGHTS_DIR_V2.resolve())
        where = "the package's compact SR prior folder" if shipped else "the compact SR prior folder"
        command = TRAIN_COMMAND_V2 if path.parent.resolve() == PACKAGE_WEIGHTS_DIR_V2.resolve() else TRAIN_COMMAND
        raise CompactWeightsMissingError(
            f"{path.name} is missing from {where} {path.parent} (it needs {CONFIG_FILE} and {WEIGHTS_FILE}): "
            f"no trained compact prior is there. Train and install one with `{command}` (GPU runs: see "
            "scripts/train_sr_prior.py), or pass a trained folder with --pipeline.sr-model-path, or choose "
            "--pipeline.sr-backend sd-x4-upscaler or bicubic."
        )


def is_compact_folder(path: str | Path) -> bool:
    """True when `path` is a folder whose config.json says it holds a compact SR prior."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def save_weights(unet: torch.nn.Module, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the UNet's weights as `model.safetensors` (float16 by default: the shipped precision)."""
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in unet.state_dict().items()}
    if dtype == torch.float16:
        worst = max(float(t.float().abs().max()) for t in unet.state_dict().values())
        if not math.isfinite(worst) or worst > 6.0e4:
            raise ValueError(f"a weight of magnitude {worst:g} does not fit float16; save in float32")
    path = Path(folder) / WEIGHTS_FILE
    save_file(state, str(path), metadata={"format": "pt", "model_type": MODEL_TYPE})
    path.chmod(0o644)  # safetensors writes 0600: the package file must be readable by every user
    return path


def save_folder(
    unet: torch.nn.Module, config: CompactSRConfig, folder: str | Path, dtype: torch.dtype = torch.float16
) -> Path:
    """config.json + model.safetensors: a folder `CompactSRBackend.from_folder` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder)
    save_weights(unet, folder, dtype)
    return folder


def load_unet(folder: str | Path, config: CompactSRConfig | None = None) -> tuple[UNet2DModel, CompactSRConfig]:
    """(UNet in float32 on the CPU, its config) from a compact-prior folder."""
    folder = Path(folder)
    config = config or CompactSRConfig.load(folder)
    weights = folder / WEIGHTS_FILE
    _require(weights)
    state = {name: tensor.float() for name, tensor in load_file(str(weights)).items()}
    unet = build_unet(config, seed=0)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {folder / CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return unet, config


# ---- the backend --------------------------------------------------------------------------------------


class CompactSRBackend(SRBackend):
    name = "compact"
    latent_factor = 1
    is_diffusion = True

    def __init__(
        self,
        unet: UNet2DModel,
        config: CompactSRConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 1,
        seed: int = 0,
        source: str = "",
        tile_size: int | None | Literal["default"] = "default",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        rrdb: torch.nn.Module | None = None,
        rrdb_weights: str | Path | None = None,
        channels_last: bool = False,
    ) -> None:
        """Wrap a UNet; use `from_package` or `from_folder` to load trained weights. tile_size (HR pixels, a
        multiple of config.size_multiple; None or 0: never tile; "default": CUDA_TILE_SIZE on CUDA, else
        DEFAULT_TILE_SIZE) and tile_overlap: see `tiled_unet_output`.
        channels_last: run the UNet and the RRDBNet in channels-last memory format (`use_channels_last`; off by
        default: on the H200 it denoised slower, benchmarks/results/guidance-step-h200-tile1024-channels-last.json).
        compact-v2 also needs the frozen Real-ESRGAN RRDBNet: `rrdb`, or loaded from `rrdb_weights` (default: the
        lookup of threedsr_ns.backends.realesrgan, i.e. THREEDSR_REALESRGAN_WEIGHTS, its cache, the pip package)."""
        self.device = torch.device(device) if device is not None else default_device()
        if tile_size == "default":
            tile_size = CUDA_TILE_SIZE if self.device.type == "cuda" else DEFAULT_TILE_SIZE
        if tile_size:
            if tile_size % config.size_multiple or not 0 <= tile_overlap <= tile_size // 2:
                raise ValueError(
                    f"tile_size must be a multiple of {config.size_multiple} and tile_overlap in [0, tile_size / 2], "
                    f"got tile_size {tile_size}, tile_overlap {tile_overlap}"
                )
        self.tile_size = tile_size or None
        self.tile_overlap = tile_overlap
        self.config = config
        self.name = config.backend_name
        self.scale = config.scale
        self.prediction_type = config.prediction_type
        self.alphas_cumprod = alphas_cumprod_for(config)
        self.batch_size = batch_size
        self.source = source
        self.seed = seed
        self.generator = torch.Generator("cpu").manual_seed(seed)
        """Unused by predict_x0 (it is deterministic: no conditioning noise); kept for the interface."""
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        # Plain Module.to: diffusers' override warns on dtype casts.
        self.unet = torch.nn.Module.to(unet, device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.rrdb = None
        if config.residual:
            from threedsr_ns.backends.realesrgan import load_rrdbnet

            if rrdb is None:
                rrdb, rrdb_source = load_rrdbnet(rrdb_weights, self.device, self.dtype)
                self.source = f"{source} + Real-ESRGAN x4plus from {rrdb_source}" if source else rrdb_source
            self.rrdb = rrdb.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.use_channels_last(channels_last)

    def use_channels_last(self, enabled: bool) -> CompactSRBackend:
        """Put the UNet (and the RRDBNet) in channels-last memory format, or back in the contiguous one. The outputs
        are the same up to the convolution algorithms' rounding."""
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.unet.to(memory_format=memory_format)
        if self.rrdb is not None:
            self.rrdb.to(memory_format=memory_format)
        self.channels_last = enabled
        return self

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        batch_size: int = 1,
        seed: int = 0,
        tile_size: int | None | Literal["default"] = "default",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        rrdb_weights: str | Path | None = None,
        channels_last: bool = False,
    ) -> CompactSRBackend:
        """Load config.json + model.safetensors from `path` (no network)."""
        unet, config = load_unet(path)
        return cls(unet, config, device=device, dtype=dtype, batch_size=batch_size, seed=seed, source=str(path),
                   tile_size=tile_size, tile_overlap=tile_overlap, rrdb_weights=rrdb_weights,
                   channels_last=channels_last)

    @classmethod
    def from_package(
        cls,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        batch_size: int = 1,
        seed: int = 0,
        tile_size: int | None | Literal["default"] = "default",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        channels_last: bool = False,
    ) -> CompactSRBackend:
        """Load the weights shipped in the package (threedsr_ns/weights/compact_sr_x4/)."""
        return cls.from_folder(PACKAGE_WEIGHTS_DIR, device, dtype, batch_size=batch_size, seed=seed,
                               tile_size=tile_size, tile_overlap=tile_overlap, channels_last=channels_last)

    # ---- SRBackend ----------------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> CompactSRBackend:
        self.device = torch.device(device)
        torch.nn.Module.to(self.unet, self.device)
        if self.rrdb is not None:
            self.rrdb.to(self.device)
        return self

    def encode(self, hr_images: torch.Tensor) -> torch.Tensor:
        self._check_images(hr_images, "HR images")
        return to_model_range(hr_images.float())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_images(latents, "latents")
        return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        lr_images: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Deterministic: `generator` is accepted for the interface and unused."""
        self._check_images(x_t, "x_t")
        self._check_images(lr_images, "LR images")
        batch = x_t.shape[0]
        expected = (lr_images.shape[-2] * self.scale, lr_images.shape[-1] * self.scale)
        if lr_images.shape[0] != batch or tuple(x_t.shape[-2:]) != expected:
            raise ValueError(
                f"x_t {tuple(x_t.shape)} does not match LR images {tuple(lr_images.shape)}: the compact prior's "
                f"latents are the HR pixels, x{self.scale} the LR size {expected}"
            )
        timesteps = torch.as_tensor(t).long().cpu().reshape(-1)
        if timesteps.shape[0] not in (1, batch):
            raise ValueError(f"t has {timesteps.shape[0]} timesteps for a batch of {batch}")
        if bool(((timesteps < 0) | (timesteps >= self.num_train_timesteps)).any()):
            raise ValueError(f"timesteps must be in [0, {self.num_train_timesteps - 1}], got {timesteps.tolist()}")
        timesteps = timesteps.expand(batch).contiguous()
        return self._in_batches(self._predict_x0_batch, x_t, timesteps, lr_images).to(x_t.device)

    # ---- internals ----------------------------------------------------------------------------------

    @staticmethod
    def _check_images(x: torch.Tensor, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{what} must be [B, 3, H, W], got {tuple(x.shape)}")

    def _predict_x0_batch(self, x_t: torch.Tensor, timesteps: torch.Tensor, lr_images: torch.Tensor) -> torch.Tensor:
        x_t = x_t.to(device=self.device, dtype=torch.float32)
        timesteps = timesteps.to(self.device)
        rrdb_tile = (self.tile_size or 0) // self.scale
        condition, anchor = conditioning(self.config, lr_images.to(self.device), self.rrdb, rrdb_tile, self.dtype)
        model_x = residual_input(x_t, anchor, timesteps, self.alphas_cumprod)
        if self.tile_size:
            output = tiled_unet_output(self.unet, model_x.to(self.dtype), timesteps, condition.to(self.dtype),
                                       self.config.size_multiple, self.tile_size, self.tile_overlap)
        else:
            output = unet_output(
                self.unet, model_x.to(self.dtype), timesteps, condition.to(self.dtype), self.config.size_multiple
            ).float()
        x0 = model_output_to_x0(output, model_x, timesteps, self.alphas_cumprod, self.prediction_type)
        return x0 if anchor is None else x0 + anchor


__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "CUDA_TILE_SIZE",
    "DEFAULT_TILE_SIZE",
    "PACKAGE_WEIGHTS_DIR",
    "PACKAGE_WEIGHTS_DIR_V2",
    "TRAIN_COMMAND",
    "WEIGHTS_FILE",
    "CompactSRBackend",
    "CompactSRConfig",
    "CompactWeightsMissingError",
    "alphas_cumprod_for",
    "build_unet",
    "conditioning",
    "residual_input",
    "count_parameters",
    "is_channels_last",
    "is_compact_folder",
    "lr_condition",
    "load_unet",
    "tile_layout",
    "tiled_unet_output",
    "save_folder",
    "save_weights",
    "tiny_config",
    "unet_output",
]
