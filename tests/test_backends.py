"""SR backends: the tiny random SD x4 upscaler, bicubic, make_backend and loading from disk / the hub."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

import numpy as np
import torch.nn.functional as F
from PIL import Image

from threedsr_ns.backends import BACKEND_NAMES, BicubicBackend, compact, make_backend
from threedsr_ns.backends.sd_upscaler import (
    DEFAULT_VAE_TILE_SIZE,
    SDUpscalerBackend,
    build_random_sd_x4_upscaler,
    save_prompt_embeds,
)
from threedsr_ns.colorfix import bicubic_upsample

FERN_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff" / "fern" / "images_8" / "image000.png"
LR_SIZE = (10, 13)  # odd on purpose: the UNet must handle sizes that are not multiples of 8
HR_SIZE = (40, 52)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t latents on the LR grid, LR images in [0, 1])."""
    return torch.randn(batch, 4, *LR_SIZE, generator=_gen(100)), torch.rand(batch, 3, *LR_SIZE, generator=_gen(101))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> SDUpscalerBackend:
    return build_random_sd_x4_upscaler(device="cpu", seed=0, tiny=True, batch_size=4)


@pytest.fixture(scope="module")
def fern() -> torch.Tensor:
    """LLFF fern image000 (images_8) area-downsampled to 96x128, [1, 3, 96, 128] in [0, 1]."""
    if not FERN_IMAGE.exists():
        pytest.skip(f"{FERN_IMAGE} not found: the tests read LLFF fern from ../shared/data")
    image = torch.from_numpy(np.asarray(Image.open(FERN_IMAGE).convert("RGB"), dtype=np.float32) / 255.0)
    return F.interpolate(image.permute(2, 0, 1)[None, :, :376], size=(96, 128), mode="area")


# ---- tiny random SD x4 upscaler -----------------------------------------------------------------


def test_tiny_backend_attributes(tiny: SDUpscalerBackend) -> None:
    assert (tiny.name, tiny.scale, tiny.latent_factor) == ("tiny-random", 4, 4)
    assert tiny.is_diffusion and tiny.random_weights
    assert tiny.prediction_type == "v_prediction"
    assert tiny.alphas_cumprod.dtype == torch.float32 and tiny.alphas_cumprod.shape == (1000,)
    assert tiny.num_train_timesteps == 1000
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    assert not tiny.uses_cfg


def test_random_weights_warn_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build_random_sd_x4_upscaler(device="cpu", seed=0, tiny=True)
    assert "RANDOM WEIGHTS" in caplog.text and "never quality" in caplog.text


def test_encode_decode_shapes(tiny: SDUpscalerBackend) -> None:
    hr = torch.rand(3, 3, *HR_SIZE, generator=_gen(0))
    latents = tiny.encode(hr)
    assert latents.shape == (3, 4, *LR_SIZE) and latents.dtype == torch.float32
    images = tiny.decode(latents)
    assert images.shape == (3, 3, *HR_SIZE)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert not latents.requires_grad and not images.requires_grad
    with pytest.raises(ValueError, match="multiple"):
        tiny.encode(torch.rand(1, 3, 41, 52))


def test_predict_x0_shape_finite_and_timestep_forms(tiny: SDUpscalerBackend) -> None:
    x_t, lr = _inputs()
    x0 = tiny.predict_x0(x_t, 749, lr, generator=_gen(1))
    assert x0.shape == x_t.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    per_view = tiny.predict_x0(x_t, torch.tensor([749, 749]), lr, generator=_gen(1))
    torch.testing.assert_close(per_view, x0)
    with pytest.raises(ValueError, match="LR grid"):
        tiny.predict_x0(x_t, 749, torch.rand(2, 3, 20, 26))
    with pytest.raises(ValueError, match="timesteps for a batch"):
        tiny.predict_x0(x_t, torch.tensor([1, 2, 3]), lr)


def test_predict_x0_takes_one_generator_per_view(tiny: SDUpscalerBackend) -> None:
    """The LR noise augmentation of view i comes from generator i: a batch equals its views run one at a time, and
    another generator for view 1 changes view 1 only."""
    x_t, lr = _inputs()
    both = tiny.predict_x0(x_t, 600, lr, generator=[_gen(10), _gen(11)])
    alone = [tiny.predict_x0(x_t[i : i + 1], 600, lr[i : i + 1], generator=[_gen(10 + i)]) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(alone))
    other = tiny.predict_x0(x_t, 600, lr, generator=[_gen(10), _gen(12)])
    torch.testing.assert_close(other[0], both[0])
    assert not torch.allclose(other[1], both[1])
    with pytest.raises(ValueError, match="generators for a batch of 2"):
        tiny.predict_x0(x_t, 600, lr, generator=[_gen(10)])


def test_predict_x0_is_deterministic_under_seed() -> None:
    x_t, lr = _inputs()
    first, again, other = (
        build_random_sd_x4_upscaler(device="cpu", seed=seed, tiny=True, batch_size=2).predict_x0(x_t, 500, lr)
        for seed in (0, 0, 1)
    )
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.allclose(first, other)


def _rewrap(tiny: SDUpscalerBackend, *embeds: torch.Tensor, **options) -> SDUpscalerBackend:
    """Another backend on the same modules (no copy of the weights)."""
    parts = (tiny.unet, tiny.vae, tiny.scheduler, tiny.low_res_scheduler)
    return SDUpscalerBackend.from_components(*parts, *embeds, device="cpu", seed=0, **options)


def test_batching_does_not_change_results(tiny: SDUpscalerBackend) -> None:
    x_t, lr = _inputs(3)
    hr = torch.rand(3, 3, *HR_SIZE, generator=_gen(2))
    results = {}
    for batch_size in (2, 3):  # 2 splits the three views unevenly
        backend = _rewrap(tiny, tiny.prompt_embeds, batch_size=batch_size)
        results[batch_size] = (
            backend.predict_x0(x_t, torch.tensor([999, 500, 10]), lr, generator=_gen(3)),
            backend.encode(hr),
            backend.decode(x_t),
        )
    for split, whole in zip(results[2], results[3], strict=True):
        torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)


def test_classifier_free_guidance_combines_the_two_predictions(tiny: SDUpscalerBackend) -> None:
    negative = torch.randn(tiny.prompt_embeds.shape, generator=_gen(4))
    cond = _rewrap(tiny, tiny.prompt_embeds)
    uncond = _rewrap(tiny, negative)
    guided = _rewrap(tiny, tiny.prompt_embeds, negative, guidance_scale=3.0)
    assert guided.uses_cfg and not cond.uses_cfg
    x_t, lr = _inputs(1)
    x0 = {name: b.predict_x0(x_t, 600, lr, _gen(5)) for name, b in [("c", cond), ("u", uncond), ("g", guided)]}
    # x0 is affine in the model output with weights summing to one, so it combines like the output.
    torch.testing.assert_close(x0["g"], x0["u"] + 3.0 * (x0["c"] - x0["u"]), atol=1e-4, rtol=1e-4)


def test_check_scale(tiny: SDUpscalerBackend) -> None:
    tiny.check_scale(4)
    with pytest.raises(ValueError) as error:
        tiny.check_scale(2)
    message = str(error.value)
    for part in ("tiny-random", "x2", "LR grid", "--pipeline.upscale-factor 4", "--pipeline.sr-backend bicubic"):
        assert part in message
    with pytest.raises(ValueError, match="only produces x4"):
        make_backend("tiny-random", device="cpu", scale=2)


def test_to_and_offload(tiny: SDUpscalerBackend) -> None:
    assert tiny.to("cpu") is tiny
    tiny.offload()
    assert tiny.device.type == "cpu" and tiny.unet.device.type == "cpu"


# ---- bicubic ------------------------------------------------------------------------------------


def test_bicubic_backend() -> None:
    backend = make_backend("bicubic", device="cpu", scale=2, batch_size=2)
    assert isinstance(backend, BicubicBackend)
    assert (backend.name, backend.scale, backend.latent_factor, backend.is_diffusion) == ("bicubic", 2, 1, False)
    assert backend.alphas_cumprod.shape == (1000,)
    lr = torch.rand(3, 3, *LR_SIZE, generator=_gen(6))
    hr = torch.rand(3, 3, 20, 26, generator=_gen(7))
    torch.testing.assert_close(backend.encode(hr), hr)
    torch.testing.assert_close(backend.decode(hr * 2 - 0.5), (hr * 2 - 0.5).clamp(0, 1))
    for x_t in (torch.randn(3, 3, 20, 26), torch.zeros(3, 3, 20, 26)):
        torch.testing.assert_close(backend.predict_x0(x_t, 999, lr), bicubic_upsample(lr, 2))
    backend.check_scale(2)
    with pytest.raises(ValueError, match="scale=3"):
        backend.check_scale(3)
    with pytest.raises(ValueError, match="need"):
        backend.predict_x0(torch.zeros(3, 3, 40, 52), 999, lr)


# ---- make_backend and loading -------------------------------------------------------------------


def test_make_backend_names() -> None:
    assert BACKEND_NAMES == (
        "sd-x4-upscaler", "sd-x4-upscaler-random", "tiny-random", "bicubic", "compact", "compact-v2", "realesrgan",
        "auto"
    )
    with pytest.raises(ValueError) as error:
        make_backend("stablesr", device="cpu")
    for name in BACKEND_NAMES:
        assert name in str(error.value)
    assert make_backend("tiny-random", device="cpu").name == "tiny-random"


def test_from_pretrained_offline_missing_model_explains_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "threedsr-tests/no-such-upscaler"
    with pytest.raises(RuntimeError) as error:
        SDUpscalerBackend.from_pretrained(model_id, device="cpu")
    message = str(error.value)
    assert "\n" not in message
    for part in (model_id, "hf download", "--pipeline.sr-model-path", "--pipeline.sr-backend bicubic"):
        assert part in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def _save_pipeline_folder(backend: SDUpscalerBackend, folder: Path) -> None:
    """diffusers' pipeline layout, with precomputed prompt embeddings instead of a text encoder."""
    backend.unet.save_pretrained(folder / "unet")
    backend.vae.save_pretrained(folder / "vae")
    backend.scheduler.save_pretrained(folder / "scheduler")
    backend.low_res_scheduler.save_pretrained(folder / "low_res_scheduler")
    model_index = {
        "_class_name": "StableDiffusionUpscalePipeline",
        "max_noise_level": 350,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "low_res_scheduler": ["diffusers", "DDPMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index))
    save_prompt_embeds(folder, backend.prompt_embeds, prompt="")


def test_from_pretrained_local_folder_round_trip(tiny: SDUpscalerBackend, tmp_path: Path) -> None:
    _save_pipeline_folder(tiny, tmp_path)
    loaded = SDUpscalerBackend.from_pretrained(str(tmp_path), device="cpu", batch_size=4)
    assert (loaded.name, loaded.scale, loaded.prediction_type) == ("sd-x4-upscaler", 4, "v_prediction")
    assert not loaded.random_weights
    torch.testing.assert_close(loaded.alphas_cumprod, tiny.alphas_cumprod)
    x_t, lr = _inputs()
    hr = torch.rand(2, 3, *HR_SIZE, generator=_gen(8))
    torch.testing.assert_close(loaded.predict_x0(x_t, 300, lr, _gen(9)), tiny.predict_x0(x_t, 300, lr, _gen(9)))
    torch.testing.assert_close(loaded.encode(hr), tiny.encode(hr))
    torch.testing.assert_close(loaded.decode(x_t), tiny.decode(x_t))
    through_factory = make_backend("sd-x4-upscaler", model_path=str(tmp_path), device="cpu", batch_size=4)
    torch.testing.assert_close(through_factory.decode(x_t), tiny.decode(x_t))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_other_prompt_without_transformers_says_what_is_missing(tiny: SDUpscalerBackend, tmp_path: Path) -> None:
    _save_pipeline_folder(tiny, tmp_path)
    with pytest.raises(RuntimeError, match="transformers.*prompt_embeds.safetensors"):
        SDUpscalerBackend.from_pretrained(str(tmp_path), device="cpu", prompt="a sharp photo")


def _save_tiny_clip(folder: Path) -> None:
    """A tiny CLIP tokenizer (bytes only, no merges) and text encoder, built offline."""
    transformers = pytest.importorskip("transformers")
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    # GPT-2's byte -> unicode table, as CLIP's BPE expects.
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder / "tokenizer")
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.CLIPTextModel(config).save_pretrained(folder / "text_encoder")


def test_from_pretrained_encodes_the_prompt_with_the_text_encoder(tiny: SDUpscalerBackend, tmp_path: Path) -> None:
    _save_tiny_clip(tmp_path)
    _save_pipeline_folder(tiny, tmp_path)
    (tmp_path / "prompt_embeds.safetensors").unlink()
    import transformers

    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path, subfolder="tokenizer")
    text_encoder = transformers.CLIPTextModel.from_pretrained(tmp_path, subfolder="text_encoder")

    def embed(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0]

    guided = SDUpscalerBackend.from_pretrained(
        str(tmp_path), device="cpu", prompt="a sharp photo", negative_prompt="blurry", guidance_scale=4.0
    )
    assert guided.uses_cfg
    torch.testing.assert_close(guided.prompt_embeds, embed("a sharp photo"))
    torch.testing.assert_close(guided.negative_prompt_embeds, embed("blurry"))
    same_prompts = SDUpscalerBackend.from_pretrained(
        str(tmp_path), device="cpu", prompt="blurry", negative_prompt="blurry", guidance_scale=4.0
    )
    assert not same_prompts.uses_cfg


# ---- tiling for memory at any size ----------------------------------------------------------------


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_sd_vae_tiles_above_the_tile_size(fern: torch.Tensor) -> None:
    """diffusers' AutoencoderKL tiling, with the tile size set by the backend. With random weights each tile's
    GroupNorm / attention statistics differ from the whole image's, so tiled and untiled outputs agree only
    loosely here (a trained VAE is far closer); the exact check is that the first tile's kept block is that
    tile's own decode, i.e. sample and latent tile sizes are consistent."""
    assert DEFAULT_VAE_TILE_SIZE < 1512  # LLFF's 2016x1512 HR encodes and decodes in tiles by default
    smooth = F.avg_pool2d(F.pad(fern, (4, 4, 4, 4), mode="replicate"), 9, stride=1)  # 96x128
    backend = build_random_sd_x4_upscaler(device="cpu", seed=0, tiny=True, vae_tile_size=None)
    calls: list[tuple[str, tuple[int, ...]]] = []
    def record(name: str):
        return lambda module, args: calls.append((name, tuple(args[0].shape[-2:])))

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in (("encoder", backend.vae.encoder), ("decoder", backend.vae.decoder))]
    try:
        latents = backend.encode(smooth)
        images = backend.decode(latents)
        assert calls == [("encoder", (96, 128)), ("decoder", (24, 32))]
        calls.clear()
        backend.set_vae_tiling(64)
        tiled_latents, tiled_images = backend.encode(smooth), backend.decode(latents)
        assert [name for name, _ in calls] == ["encoder"] * 6 + ["decoder"] * 6  # 2 x 3 overlapping tiles each
        assert max(max(size) for name, size in calls if name == "encoder") == 64
        assert max(max(size) for name, size in calls if name == "decoder") == 16
        calls.clear()
        backend.encode(smooth[..., :64, :64])  # not above the tile size: one pass
        assert calls == [("encoder", (64, 64))]
    finally:
        for hook in hooks:
            hook.remove()
    assert tiled_latents.shape == latents.shape and tiled_images.shape == images.shape
    first_tile = backend.vae.decode(latents[..., :16, :16] / backend.scaling_factor).sample
    torch.testing.assert_close(tiled_images[..., :48, :48], ((first_tile + 1) / 2).clamp(0, 1)[..., :48, :48])
    assert _correlation(tiled_latents, latents) > 0.7 and _correlation(tiled_images, images) > 0.5
    odd = backend.decode(torch.randn(1, 4, 21, 37, generator=_gen(11)))  # sizes off the tile grid
    assert odd.shape == (1, 3, 84, 148)
    with pytest.raises(ValueError, match="multiple of 16"):
        backend.set_vae_tiling(100)
    backend.set_vae_tiling(None)
    assert not backend.vae.use_tiling and backend.vae_tile_size is None


def test_bfloat16_vae_agrees_with_float32_on_a_real_image(fern: torch.Tensor) -> None:
    """A bfloat16 VAE (set_vae_dtype; float32's range, so none of float16's overflow) encodes and decodes a real
    photo as float32 does, to bfloat16's precision: outputs stay float32, and the decode of the same latents is far
    closer to float32's than the round trip's own error."""
    backend = build_random_sd_x4_upscaler(device="cpu", seed=0, tiny=True, vae_tile_size=None)
    latents, images = backend.encode(fern), backend.decode(backend.encode(fern))
    backend.set_vae_dtype(torch.bfloat16)
    try:
        assert backend.vae.dtype == torch.bfloat16
        latents_bf16, images_bf16 = backend.encode(fern), backend.decode(latents)
    finally:
        backend.set_vae_dtype(torch.float32)
    assert latents_bf16.dtype == images_bf16.dtype == torch.float32
    assert _correlation(latents_bf16, latents) > 0.99
    assert (images_bf16 - images).abs().mean() < 0.01
    assert not torch.equal(images_bf16, images)  # it really ran in bfloat16


def test_the_pipelines_vae_dtype_reaches_the_sd_x4_vae_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fern: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    """--pipeline.sr-vae-dtype bfloat16 runs the SD x4 VAE in bfloat16 (float32 by default); naming a backend without a
    VAE with it is one line before anything loads, and `auto` settling offline for the compact prior says it goes
    unused."""
    from threedsr_ns import backends
    from threedsr_ns.errors import SetupError
    from threedsr_ns.pipeline import ThreeDSRPipelineConfig, backend_kwargs

    def build(**options):
        return make_backend(**backend_kwargs(ThreeDSRPipelineConfig(**options)), device="cpu")

    assert build(sr_backend="tiny-random").vae.dtype == torch.float32
    backend = build(sr_backend="tiny-random", sr_vae_dtype="bfloat16")
    assert backend.vae.dtype == torch.bfloat16 and backend.unet.dtype == torch.float32
    assert backend.decode(backend.encode(fern)).dtype == torch.float32
    missing = tmp_path / "no-such-prior"
    for name in ("compact", "bicubic", "realesrgan"):  # the option is checked before any weights are looked for
        with pytest.raises(SetupError) as error:
            build(sr_backend=name, sr_model_path=str(missing), sr_vae_dtype="bfloat16")
        message = str(error.value)
        assert "\n" not in message and f"the {name} SR backend has no VAE" in message and "drop the option" in message
    with pytest.raises(SetupError, match="float16 overflows"):
        make_backend("tiny-random", device="cpu", vae_dtype="float16")
    assert build(sr_backend="compact", sr_vae_dtype="float32").name == "compact"  # the default is no error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(backends, "hub_reachable", lambda *a, **k: pytest.fail("auto must not touch the network"))
    with caplog.at_level(logging.WARNING, logger="threedsr_ns.backends"):
        assert build(sr_backend="auto", sr_vae_dtype="bfloat16").name == "compact"
    assert "auto chose 'compact'" in caplog.text and "--pipeline.sr-vae-dtype goes unused" in caplog.text


def test_compact_tiles_agree_with_untiled_and_leave_no_seams(fern: torch.Tensor) -> None:
    """Tiled denoising on the tiny config (random weights) on a real image, at 3DSR's last timestep (249)."""
    config = compact.tiny_config()
    unet = compact.build_unet(config, seed=0)
    lr = F.interpolate(fern, scale_factor=0.25, mode="area")
    untiled = compact.CompactSRBackend(unet, config, device="cpu", tile_size=None)
    x_t = untiled.encode(fern) * 0.6 + 0.8 * torch.randn(fern.shape, generator=_gen(12))
    reference = untiled.predict_x0(x_t, 249, lr)

    def error(overlap: int) -> tuple[torch.Tensor, float]:
        tiled = compact.CompactSRBackend(unet, config, device="cpu", tile_size=64, tile_overlap=overlap)
        difference = tiled.predict_x0(x_t, 249, lr) - reference
        steps = max(float(difference.diff(dim=-1).abs().max()), float(difference.diff(dim=-2).abs().max()))
        return difference, steps

    assert compact.tile_layout(128, 64, 16, 8) == ([0, 36, 72], 56)  # 3 tiles of 56 (not 64), sharing >= 16
    assert compact.tile_layout(96, 64, 16, 8) == ([0, 40], 56) and compact.tile_layout(64, 64, 16, 8) == ([0], 64)
    starts, length = compact.tile_layout(1512, 512, 64, 8)  # fern's height at the paper protocol
    assert (len(starts), length) == (4, 432) and starts[-1] + length == 1512
    assert all(a + length - b >= 64 for a, b in zip(starts, starts[1:]))
    starts, length = compact.tile_layout(2016, 512, 64, 8)  # and its width: 5 x 4 tiles of 456x432
    assert (len(starts), length) == (5, 456) and starts[-1] + length == 2016
    blended, blended_steps = error(32)  # on this 96x128 image: 2 x 3 tiles of 64 px
    _, cut_steps = error(0)  # tiles butted together, no blending: a visible seam
    assert float(blended.abs().mean()) < 0.005 and float(blended.abs().max()) < 0.05
    assert blended_steps < 0.5 * cut_steps  # the blend removes the jump at the tile edges
    with pytest.raises(ValueError, match="multiple of 2"):
        compact.CompactSRBackend(unet, config, device="cpu", tile_size=63)


def test_check_lr_size(tiny: SDUpscalerBackend) -> None:
    backends = [tiny, make_backend("bicubic", device="cpu")]
    config = compact.tiny_config()
    backends.append(compact.CompactSRBackend(compact.build_unet(config), config, device="cpu"))
    for backend in backends:
        backend.check_lr_size(1, 1)  # every backend takes any size from 1 px
        backend.check_lr_size(378, 504)
        with pytest.raises(ValueError) as error:
            backend.check_lr_size(0, 10)
        message = str(error.value)
        assert "\n" not in message and backend.name in message and "at least 1x1" in message and "10x0" in message
        with pytest.raises(ValueError, match="two integers"):
            backend.check_lr_size(94.5, 126)
    # What the check promises: those sizes really run.
    x0 = tiny.predict_x0(torch.randn(1, 4, 1, 3), 500, torch.rand(1, 3, 1, 3))
    assert tiny.decode(x0).shape == (1, 3, 4, 12)
    assert backends[2].predict_x0(torch.randn(1, 3, 4, 4), 500, torch.rand(1, 3, 1, 1)).shape == (1, 3, 4, 4)


def test_the_pipelines_tile_size_reaches_the_backend() -> None:
    """--pipeline.sr-tile-size: the compact prior's denoising tiles and the SD x4 VAE's tiles (None: the default)."""
    from threedsr_ns.pipeline import ThreeDSRPipelineConfig, backend_kwargs

    for size, expected in ((None, compact.DEFAULT_TILE_SIZE), (256, 256), (0, None)):
        config = ThreeDSRPipelineConfig(sr_backend="compact", sr_tile_size=size)
        assert make_backend(**backend_kwargs(config), device="cpu").tile_size == expected
    config = ThreeDSRPipelineConfig(sr_backend="tiny-random", sr_tile_size=64)
    assert make_backend(**backend_kwargs(config), device="cpu").vae_tile_size == 64
    with pytest.raises(ValueError, match="multiple of 8"):
        make_backend(**backend_kwargs(ThreeDSRPipelineConfig(sr_backend="compact", sr_tile_size=500)), device="cpu")
