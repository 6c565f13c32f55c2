"""The Stable Diffusion x4 upscaler (diffusers' StableDiffusionUpscalePipeline parts) as an SR backend.

What the pipeline does, and what is kept here (diffusers' pipeline_stable_diffusion_upscale.py):
- The LR image is mapped to [-1, 1], noised with `low_res_scheduler.add_noise` at `noise_level`
  (default 20, at most the pipeline's max_noise_level, 350), and concatenated to the 4 latent
  channels (UNet in_channels 7); `noise_level` is also the UNet's class label.
- The latent grid is the LR grid: the VAE downsamples x4 and latents are scaled by the VAE's
  scaling_factor (0.08333): encode = E(2x - 1).mean * sf, decode = (D(z / sf) + 1) / 2.
- The text prompt (optional, "" by default) is encoded once at load; classifier-free guidance
  runs only when guidance_scale > 1 and the prompt differs from the negative prompt.
- The VAE stays in float32 when the UNet runs in float16 (its decoder overflows in half precision;
  the pipeline upcasts it too). `set_vae_dtype` runs it in another dtype, e.g. bfloat16 (float32's range;
  scripts/benchmark_guidance.py --vae-dtype times it).
- HR images larger than `vae_tile_size` (default 256 px, either side) are encoded and decoded with
  diffusers' own AutoencoderKL tiling (overlapping tiles, 25% blended overlap), so memory does not
  grow with the image (2016x1512 decodes in 11x8 tiles); the UNet runs on the whole LR grid.
What is not kept: the pipeline's sampling loop (3DSR drives the sampler itself, see
threedsr_ns.guidance), its resizing of the LR image to a multiple of 4 (the UNet handles any
size), and `scale_model_input` (the identity for this model's DDIM scheduler).

Weights come from the hub or a local folder in diffusers' pipeline layout (`from_pretrained`),
from objects (`from_components`), or are random (`build_random_sd_x4_upscaler`, cost only).
A local folder may carry `prompt_embeds.safetensors` (see `save_prompt_embeds`) instead of a text
encoder: the backend then loads without `transformers`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file

from threedsr_ns.backends import sd_x4_upscaler_config as x4_config
from threedsr_ns.backends.base import SRBackend, default_device
from threedsr_ns.errors import BackendLoadError, UnsupportedScaleError
from threedsr_ns.guidance import Timestep, model_output_to_x0, randn

logger = logging.getLogger(__name__)

PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
DEFAULT_NOISE_LEVEL = x4_config.DEFAULT_NOISE_LEVEL
DEFAULT_VAE_TILE_SIZE = 256
"""HR pixels per VAE tile side; larger images are encoded / decoded in tiles (None or 0: never). 256 is the VAE
config's sample_size, the tile diffusers' `enable_tiling` would use, and the fastest measured: a guidance step of
fern's 17 views at 2016x1512 took 15.05 s with 256 px tiles, 20.03 s with 512 and 38.30 s with 1024, at the same peak
GPU memory for 256 and 512 (the VAE's attention grows with the tile's square; H200, the architecture with random
weights, benchmarks/results/guidance-step-h200-sd4-tile{256,512,1024}.json)."""


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (the UNet is fine in half precision), float32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def check_upscaler_scale(name: str, scale: int, produced: int = 4) -> None:
    """Raise an UnsupportedScaleError (a ValueError) unless `scale` is the one factor an SD x4-style upscaler
    produces."""
    if scale != produced:
        raise UnsupportedScaleError(
            f"SR backend '{name}' cannot produce x{scale}: the SD x4 upscaler's latent grid is the LR grid "
            f"(its VAE downsamples x{produced}), so it only produces x{produced}; pass "
            f"--pipeline.upscale-factor {produced} or choose --pipeline.sr-backend bicubic"
        )


class SDUpscalerBackend(SRBackend):
    is_diffusion = True
    draws_conditioning_noise = True

    def __init__(
        self,
        *,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        low_res_scheduler: DDPMScheduler,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        guidance_scale: float,
        noise_level: int,
        max_noise_level: int,
        batch_size: int,
        seed: int,
        name: str,
        random_weights: bool,
        vae_tile_size: int | None = DEFAULT_VAE_TILE_SIZE,
    ) -> None:
        """Use `from_pretrained`, `from_components` or `build_random_sd_x4_upscaler`."""
        if unet.config.in_channels != vae.config.latent_channels + 3:
            raise ValueError(
                f"UNet in_channels {unet.config.in_channels} != VAE latent channels {vae.config.latent_channels} "
                "+ 3 LR image channels: not an SD x4 upscaler-style model"
            )
        limit = min(max_noise_level, low_res_scheduler.config.num_train_timesteps - 1, unet.config.num_class_embeds - 1)
        if not 0 <= noise_level <= limit:
            raise ValueError(f"noise_level must be in [0, {limit}], got {noise_level}")
        self.name = name
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.low_res_scheduler = low_res_scheduler
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        self.guidance_scale = guidance_scale
        self.noise_level = noise_level
        self.batch_size = batch_size
        self.random_weights = random_weights
        self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = self.latent_factor  # latents live on the LR grid
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().float().cpu().clone()
        self.scaling_factor = float(vae.config.scaling_factor)
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.device = unet.device
        self.dtype = unet.dtype
        self.vae_tile_size: int | None = None
        self.set_vae_tiling(vae_tile_size)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        low_res_scheduler: DDPMScheduler,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        guidance_scale: float = 1.0,
        noise_level: int = DEFAULT_NOISE_LEVEL,
        max_noise_level: int = x4_config.MAX_NOISE_LEVEL,
        batch_size: int = 1,
        seed: int = 0,
        name: str = "sd-x4-upscaler",
        random_weights: bool = False,
        vae_tile_size: int | None = DEFAULT_VAE_TILE_SIZE,
    ) -> SDUpscalerBackend:
        """Wrap loaded modules. prompt_embeds: [1, 77, cross_attention_dim] (negative likewise); CFG
        runs when negative_prompt_embeds is given and guidance_scale > 1. vae_tile_size: see `set_vae_tiling`."""
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        vae_dtype = torch.float32 if dtype == torch.float16 and vae.config.force_upcast else dtype
        # Plain Module.to: diffusers' override warns on every dtype cast, even with nothing to keep in float32.
        torch.nn.Module.to(unet, device=device, dtype=dtype).eval().requires_grad_(False)
        torch.nn.Module.to(vae, device=device, dtype=vae_dtype).eval().requires_grad_(False)
        use_cfg = negative_prompt_embeds is not None and guidance_scale > 1.0
        return cls(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            low_res_scheduler=low_res_scheduler,
            prompt_embeds=prompt_embeds.to(device=device, dtype=dtype),
            negative_prompt_embeds=negative_prompt_embeds.to(device=device, dtype=dtype) if use_cfg else None,
            guidance_scale=guidance_scale,
            noise_level=noise_level,
            max_noise_level=max_noise_level,
            batch_size=batch_size,
            seed=seed,
            name=name,
            random_weights=random_weights,
            vae_tile_size=vae_tile_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str = x4_config.MODEL_ID,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        guidance_scale: float = 1.0,
        noise_level: int = DEFAULT_NOISE_LEVEL,
        batch_size: int = 1,
        seed: int = 0,
        vae_tile_size: int | None = DEFAULT_VAE_TILE_SIZE,
    ) -> SDUpscalerBackend:
        """Load from a hub id (cached or downloaded) or a local folder in diffusers' pipeline layout
        (unet/, vae/, scheduler/, low_res_scheduler/, model_index.json, and text_encoder/ + tokenizer/
        or prompt_embeds.safetensors). local_files_only=None follows HF_HUB_OFFLINE."""
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        use_cfg = guidance_scale > 1.0 and prompt != negative_prompt
        source = dict(pretrained_model_name_or_path=model_id_or_path, local_files_only=local_files_only)
        try:
            unet = UNet2DConditionModel.from_pretrained(**source, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(**source, subfolder="vae")
            scheduler = DDIMScheduler.from_pretrained(**source, subfolder="scheduler")
            low_res_scheduler = DDPMScheduler.from_pretrained(**source, subfolder="low_res_scheduler")
            pipeline_config = DiffusionPipeline.load_config(model_id_or_path, local_files_only=local_files_only)
            prompt_embeds, negative_prompt_embeds = _prompt_embeddings(
                model_id_or_path, prompt, negative_prompt if use_cfg else None, device, dtype, local_files_only
            )
        except (OSError, EntryNotFoundError) as error:
            raise BackendLoadError(_load_error_message(model_id_or_path, error)) from None
        return cls.from_components(
            unet,
            vae,
            scheduler,
            low_res_scheduler,
            prompt_embeds,
            negative_prompt_embeds,
            device=device,
            dtype=dtype,
            guidance_scale=guidance_scale,
            noise_level=noise_level,
            max_noise_level=pipeline_config.get("max_noise_level", x4_config.MAX_NOISE_LEVEL),
            batch_size=batch_size,
            seed=seed,
            vae_tile_size=vae_tile_size,
        )

    def set_vae_tiling(self, tile_size: int | None) -> None:
        """Encode / decode HR images wider or taller than `tile_size` pixels in overlapping tiles.

        This is diffusers' AutoencoderKL tiling (`enable_tiling`, tiles of `tile_sample_min_size` pixels /
        `tile_latent_min_size` latents, blended over `tile_overlap_factor` = 25%), with the tile size set
        here instead of from the VAE config's sample_size. It bounds the VAE's memory at any image size;
        tile edges are blended, so results differ slightly from an untiled pass (GroupNorm and attention
        see one tile). None or 0 turns it off.
        """
        if not tile_size:
            self.vae.disable_tiling()
            self.vae_tile_size = None
            return
        step = 4 * self.latent_factor  # the 25% overlap must be a whole number of latents
        if tile_size < step or tile_size % step:
            raise ValueError(
                f"vae_tile_size must be a positive multiple of {step} HR pixels (4 x the VAE factor "
                f"{self.latent_factor}), got {tile_size}"
            )
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile_size
        self.vae.tile_latent_min_size = tile_size // self.latent_factor
        self.vae_tile_size = tile_size

    # ---- SRBackend ----------------------------------------------------------------------------

    @property
    def uses_cfg(self) -> bool:
        return self.negative_prompt_embeds is not None

    def set_vae_dtype(self, dtype: torch.dtype) -> None:
        """Run the VAE's encode and decode in `dtype` (their inputs are cast to the VAE's dtype, outputs to float32)."""
        torch.nn.Module.to(self.vae, dtype=dtype)

    def check_scale(self, scale: int) -> None:
        check_upscaler_scale(self.name, scale, produced=self.scale)

    def to(self, device: torch.device | str) -> SDUpscalerBackend:
        self.device = torch.device(device)
        self.unet.to(self.device)
        self.vae.to(self.device)
        self.prompt_embeds = self.prompt_embeds.to(self.device)
        if self.negative_prompt_embeds is not None:
            self.negative_prompt_embeds = self.negative_prompt_embeds.to(self.device)
        return self

    def encode(self, hr_images: torch.Tensor) -> torch.Tensor:
        height, width = hr_images.shape[-2:]
        if height % self.latent_factor or width % self.latent_factor:
            raise ValueError(f"HR size {height}x{width} is not a multiple of the VAE factor {self.latent_factor}")
        return self._in_batches(self._encode_batch, hr_images).to(hr_images.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._in_batches(self._decode_batch, latents).to(latents.device)

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        lr_images: torch.Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """`generator`: one for the batch's LR noise augmentation, or one per view (each view's noise its own)."""
        batch = x_t.shape[0]
        if x_t.ndim != 4 or x_t.shape[1] != self.vae.config.latent_channels:
            raise ValueError(f"x_t must be [B, {self.vae.config.latent_channels}, h, w], got {tuple(x_t.shape)}")
        if lr_images.shape[0] != batch or tuple(lr_images.shape[-2:]) != tuple(x_t.shape[-2:]):
            raise ValueError(
                f"LR images {tuple(lr_images.shape)} do not match latents {tuple(x_t.shape)}: "
                "the x4 upscaler's latents are on the LR grid"
            )
        timesteps = torch.as_tensor(t).long().cpu().reshape(-1)
        if timesteps.shape[0] not in (1, batch):
            raise ValueError(f"t has {timesteps.shape[0]} timesteps for a batch of {batch}")
        timesteps = timesteps.expand(batch)
        # one generator: drawn for all views at once, so batching does not change it; one per view: each view's own
        noise = randn(lr_images.shape, "cpu", self.generator if generator is None else generator)
        return self._in_batches(self._predict_x0_batch, x_t, timesteps, lr_images, noise).to(x_t.device)

    # ---- per-batch work (on self.device, under no_grad via _in_batches) -----------------------

    def _encode_batch(self, hr_images: torch.Tensor) -> torch.Tensor:
        pixels = hr_images.to(device=self.device, dtype=self.vae.dtype) * 2.0 - 1.0
        return self.vae.encode(pixels).latent_dist.mean.float() * self.scaling_factor

    def _decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
        pixels = self.vae.decode(scaled).sample.float()
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    def _predict_x0_batch(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, lr_images: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        batch = x_t.shape[0]
        x_t = x_t.to(device=self.device, dtype=torch.float32)
        timesteps = timesteps.to(self.device)
        noise_level = torch.full((batch,), self.noise_level, dtype=torch.long, device=self.device)
        image = lr_images.to(device=self.device, dtype=self.dtype) * 2.0 - 1.0
        image = self.low_res_scheduler.add_noise(image, noise.to(device=self.device, dtype=self.dtype), noise_level)
        model_input = torch.cat([x_t.to(self.dtype), image], dim=1)
        embeds = self.prompt_embeds.expand(batch, -1, -1)
        if self.negative_prompt_embeds is not None:
            model_input = torch.cat([model_input, model_input])
            embeds = torch.cat([self.negative_prompt_embeds.expand(batch, -1, -1), embeds])
            unet_timesteps, class_labels = timesteps.repeat(2), noise_level.repeat(2)
        else:
            unet_timesteps, class_labels = timesteps, noise_level
        output = self.unet(
            model_input, unet_timesteps, encoder_hidden_states=embeds, class_labels=class_labels, return_dict=False
        )[0].float()
        if self.negative_prompt_embeds is not None:
            uncond, cond = output.chunk(2)
            output = uncond + self.guidance_scale * (cond - uncond)
        return model_output_to_x0(output, x_t, timesteps, self.alphas_cumprod, self.prediction_type)


# ---- prompt embeddings ----------------------------------------------------------------------------


def save_prompt_embeds(
    folder: str | Path,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    prompt: str = "",
    negative_prompt: str = "",
) -> Path:
    """Write `prompt_embeds.safetensors` into a model folder so it loads without a text encoder.

    The prompts are stored as metadata; `from_pretrained` uses the file only when they match.
    """
    tensors = {"prompt_embeds": prompt_embeds.detach().float().cpu().contiguous()}
    metadata = {"prompt": prompt}
    if negative_prompt_embeds is not None:
        tensors["negative_prompt_embeds"] = negative_prompt_embeds.detach().float().cpu().contiguous()
        metadata["negative_prompt"] = negative_prompt
    path = Path(folder) / PROMPT_EMBEDS_FILE
    save_file(tensors, str(path), metadata=metadata)
    return path


def _cached_prompt_embeddings(
    path: Path, prompt: str, negative_prompt: str | None
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The embeddings in `path` if they were computed for these prompts, else None."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        names = set(file.keys())
        if metadata.get("prompt") != prompt:
            return None
        if negative_prompt is None:
            return file.get_tensor("prompt_embeds"), None
        if "negative_prompt_embeds" not in names or metadata.get("negative_prompt") != negative_prompt:
            return None
        return file.get_tensor("prompt_embeds"), file.get_tensor("negative_prompt_embeds")


def _prompt_embeddings(
    model_id_or_path: str,
    prompt: str,
    negative_prompt: str | None,
    device: torch.device,
    dtype: torch.dtype,
    local_files_only: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt, negative or None) embeddings: from prompt_embeds.safetensors when it matches, else
    from the model's own text encoder (which is then dropped: only the embeddings are kept)."""
    cache = Path(model_id_or_path) / PROMPT_EMBEDS_FILE
    if cache.is_file():
        cached = _cached_prompt_embeddings(cache, prompt, negative_prompt)
        if cached is not None:
            return cached
        logger.info("%s was computed for other prompts; encoding with the text encoder", cache)
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise BackendLoadError(
            f"Encoding the prompt for '{model_id_or_path}' needs the `transformers` package (pip install "
            f"transformers), or a {PROMPT_EMBEDS_FILE} for this prompt in the model folder (see "
            "threedsr_ns.backends.sd_upscaler.save_prompt_embeds)"
        ) from None
    tokenizer = CLIPTokenizer.from_pretrained(
        model_id_or_path, subfolder="tokenizer", local_files_only=local_files_only
    )
    text_encoder = CLIPTextModel.from_pretrained(
        model_id_or_path, subfolder="text_encoder", local_files_only=local_files_only
    ).to(device=device, dtype=dtype)

    def embed(text: str) -> torch.Tensor:
        tokens = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        use_mask = getattr(text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(device) if use_mask else None
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    with torch.no_grad():
        prompt_embeds = embed(prompt)
        negative_prompt_embeds = embed(negative_prompt) if negative_prompt is not None else None
    return prompt_embeds, negative_prompt_embeds


def _load_error_message(model_id_or_path: str, error: BaseException) -> str:
    reason = " ".join(str(error).split())
    return (
        f"Could not load the SR model '{model_id_or_path}': {reason}. To fix: download it once on a machine with "
        f"internet (`hf download {model_id_or_path} --exclude '*.ckpt'`, or `huggingface-cli download "
        f"{model_id_or_path}` with older huggingface_hub) and copy the Hugging Face cache over, or pass a local "
        "folder with --pipeline.sr-model-path /path/to/folder, or use --pipeline.sr-backend bicubic."
    )


# ---- random weights (cost only) -------------------------------------------------------------------


def build_random_sd_x4_upscaler(
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    tiny: bool = False,
    *,
    batch_size: int = 1,
    noise_level: int = DEFAULT_NOISE_LEVEL,
    vae_tile_size: int | None = DEFAULT_VAE_TILE_SIZE,
) -> SDUpscalerBackend:
    """The SD x4 upscaler architecture with random weights (tiny=True: a few-channel version).

    Its outputs are noise: it measures time and memory, never quality. The prompt embedding is a
    fixed random tensor of the text encoder's output shape, so no text encoder is built.
    """
    if tiny:
        unet_config, vae_config = x4_config.TINY_UNET_CONFIG, x4_config.TINY_VAE_CONFIG
        embeds_shape, name = x4_config.TINY_PROMPT_EMBEDS_SHAPE, "tiny-random"
    else:
        unet_config, vae_config = x4_config.UNET_CONFIG, x4_config.VAE_CONFIG
        embeds_shape, name = x4_config.PROMPT_EMBEDS_SHAPE, "sd-x4-upscaler-random"
    # Initialise on the CPU under a private RNG: same weights on every device, global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        prompt_embeds = torch.randn(embeds_shape)
    logger.warning(
        "SR backend '%s' has RANDOM WEIGHTS: it measures cost (time, memory) only, never quality; "
        "its images are noise.",
        name,
    )
    return SDUpscalerBackend.from_components(
        unet,
        vae,
        DDIMScheduler(**x4_config.SCHEDULER_CONFIG),
        DDPMScheduler(**x4_config.LOW_RES_SCHEDULER_CONFIG),
        prompt_embeds,
        device=device,
        dtype=dtype,
        noise_level=noise_level,
        batch_size=batch_size,
        seed=seed,
        name=name,
        random_weights=True,
        vae_tile_size=vae_tile_size,
    )
