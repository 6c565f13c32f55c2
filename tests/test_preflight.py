"""The start-up check: every bad input fails while the training pipeline is built (trainer.setup(), before the
first warm-up iteration), in one line naming the file and the fix; images with alpha, greyscale and palette
images and masks are turned into what the loop needs (real fern images, tiny random SD-x4 / bicubic, CPU)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from threedsr_ns.pipeline import ThreeDSRPipelineConfig
from threedsr_ns.preflight import PreflightError


def make_pipeline(data: Path, **overrides):
    settings = dict(sr_backend="bicubic", warmup_iters=10, denoise_steps=2, phase_iters=5, save_artifacts=False)
    background = overrides.pop("background_color", "random")
    config = ThreeDSRPipelineConfig(**{**settings, **overrides})
    config.datamanager.data = data
    config.model.random_init, config.model.num_random, config.model.background_color = True, 300, background
    return config.setup(device="cpu", test_mode="val")


@pytest.fixture
def fern_copy(tiny_fern: Path, tmp_path: Path) -> Path:
    data = tmp_path / "fern"
    shutil.copytree(tiny_fern, data)
    return data


def one_line_preflight_error(data: Path, match: str, **overrides) -> str:
    with pytest.raises(PreflightError, match=match) as error:
        make_pipeline(data, **overrides)  # pipeline construction: nothing has trained yet
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_missing_image_is_named_before_caching(fern_copy: Path):
    (fern_copy / "images" / "image005.png").unlink()
    one_line_preflight_error(fern_copy, r"image005\.png does not exist: add the image or remove its frame")


def test_ns_train_prints_the_fix_in_one_line_without_a_stack_trace(tiny_fern: Path, fern_copy: Path, tmp_path: Path):
    """What the user sees: `ns-train` itself, as a subprocess. A bad input (a missing image) and a bad option (an
    upscale factor the shipped prior was not trained for) each end the run at start-up with exit code 1 and the
    error's one line on stderr, prefixed with the command, and no stack trace."""
    missing = fern_copy / "images" / "image005.png"
    missing.unlink()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty_hf_cache"))
    ns_train = [str(Path(sys.executable).parent / "ns-train"), "3dsr-preview", "--output-dir", str(tmp_path / "out"),
                "--vis", "tensorboard", "--machine.device-type", "cpu"]
    for data, args, line in (
        (fern_copy, [], f"{missing} does not exist: add the image or remove its frame from transforms.json"),
        (tiny_fern, ["--pipeline.sr-backend", "compact", "--pipeline.upscale-factor", "2"],
         "SR backend 'compact' "),
    ):
        result = subprocess.run([*ns_train, *args, "--data", str(data)], capture_output=True, text=True, env=env,
                                timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        assert "Traceback" not in output
        assert result.stderr.strip().splitlines()[-1].startswith(f"ns-train 3dsr-preview: {line}"), output[-3000:]


def test_a_file_that_is_not_an_image_is_named(fern_copy: Path):
    (fern_copy / "images" / "image006.png").write_bytes(b"not a png at all")
    one_line_preflight_error(fern_copy, r"image006\.png is not an image PIL can read .*replace the file")


def test_a_truncated_image_is_named_when_it_is_decoded(fern_copy: Path):
    path = fern_copy / "images" / "image002.png"
    path.write_bytes(path.read_bytes()[:200])  # the header still parses; the pixels do not
    one_line_preflight_error(fern_copy, r"image002\.png cannot be decoded .*replace the file")


def test_mixed_sizes_are_named_at_start_up(fern_copy: Path):
    odd = fern_copy / "images" / "image003.png"
    Image.open(odd).resize((40, 30)).save(odd)
    one_line_preflight_error(fern_copy, r"image003\.png is 40x30 but its camera .* says 32x24")


def test_a_backend_that_does_not_produce_the_upscale_factor_fails_at_start_up(fern_copy: Path):
    with pytest.raises(ValueError, match=r"cannot produce x2.*--pipeline.upscale-factor 4"):
        make_pipeline(fern_copy, sr_backend="tiny-random", upscale_factor=2)


def test_offline_hub_is_one_line_at_start_up(fern_copy: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(RuntimeError) as error:
        make_pipeline(fern_copy, sr_backend="sd-x4-upscaler")
    assert "\n" not in str(error.value) and "--pipeline.sr-model-path" in str(error.value)


@pytest.mark.parametrize("background", ["white", "black"])
def test_rgba_images_are_composited_on_the_model_background_everywhere(fern_copy: Path, background: str):
    """LR images, SR targets and the LR batch image all carry the model's background where alpha is 0."""
    for path in sorted((fern_copy / "images").glob("*.png")):
        rgba = np.array(Image.open(path).convert("RGBA"))
        rgba[:, :16, 3] = 0  # left half transparent
        Image.fromarray(rgba).save(path)
    pipeline = make_pipeline(fern_copy, background_color=background)
    colour = 1.0 if background == "white" else 0.0
    lr = pipeline.datamanager.lr_images()
    assert lr.shape[1] == 3
    assert torch.allclose(lr[..., :16], torch.full_like(lr[..., :16], colour))
    assert lr[..., 16:].std() > 0.05  # the opaque half is the photo
    pipeline.run_guidance_step(1, step=10)
    targets = pipeline.datamanager.sr_targets
    assert torch.allclose(targets[:, 8:-8, 8:56], torch.full_like(targets[:, 8:-8, 8:56], colour), atol=1e-3)
    _, batch = pipeline.datamanager.next_train(11)
    assert batch["lr_image"].shape[-1] == 3 and batch["image"].shape[-1] == 3


def test_rgba_capture_with_the_random_background_trains_on_one_fixed_colour(fern_copy: Path, capsys):
    """splatfacto's default "random" background would composite the renders on a new colour every iteration while
    the images are composited on one: with alpha in the capture, training renders on that one colour, and says so."""
    opaque = make_pipeline(fern_copy)
    opaque.model.train()
    assert not opaque.model.fixed_background  # no alpha: splatfacto's random background, untouched
    assert not torch.equal(opaque.model._get_background_color(), opaque.model._get_background_color())
    for path in sorted((fern_copy / "images").glob("*.png")):
        rgba = np.array(Image.open(path).convert("RGBA"))
        rgba[:, :16, 3] = 0
        Image.fromarray(rgba).save(path)
    pipeline = make_pipeline(fern_copy)
    model = pipeline.model
    model.train()
    assert model.fixed_background and model.config.background_color == "random"  # the config is not rewritten
    first, second = model._get_background_color(), model._get_background_color()
    assert torch.equal(first, second) and torch.allclose(first.cpu(), pipeline.datamanager.background)
    lr = pipeline.datamanager.lr_images()
    assert torch.allclose(lr[:, :, :, :16], first.cpu().view(1, 3, 1, 1).expand_as(lr[:, :, :, :16]), atol=1 / 255)
    assert "the images have alpha" in capsys.readouterr().out


def test_greyscale_and_palette_images_become_rgb(fern_copy: Path):
    grey, palette = fern_copy / "images" / "image001.png", fern_copy / "images" / "image002.png"
    rgb_of_palette = Image.open(palette).convert("RGB").quantize(64)
    rgb_of_palette.save(palette)  # mode "P": pixel values are palette indices
    Image.open(grey).convert("L").save(grey)
    dm = make_pipeline(fern_copy).datamanager
    names = [Path(f).name for f in dm.train_dataset.image_filenames]
    cached = {n: d["image"] for n, d in zip(names, dm.cached_train)}
    assert all(image.shape[-1] == 3 for image in cached.values())
    assert torch.equal(cached["image002.png"], torch.from_numpy(np.array(rgb_of_palette.convert("RGB"))))
    g = cached["image001.png"]
    assert torch.equal(g[..., 0], g[..., 1]) and torch.equal(g[..., 0], g[..., 2])
    assert torch.equal(g[..., 0], torch.from_numpy(np.array(Image.open(grey))))


def test_masks_are_served_at_hr_for_splatfacto_and_at_lr_for_the_lr_loss(fern_copy: Path):
    meta = json.loads((fern_copy / "transforms.json").read_text())
    (fern_copy / "masks").mkdir()
    for i, frame in enumerate(meta["frames"]):
        mask = np.zeros((24, 32), np.uint8)
        mask[4 + i % 5 : 20, 3:29] = 255
        name = f"masks/{Path(frame['file_path']).stem}.png"
        Image.fromarray(mask).save(fern_copy / name)
        frame["mask_path"] = name
    (fern_copy / "transforms.json").write_text(json.dumps(meta))
    pipeline = make_pipeline(fern_copy)
    dm = pipeline.datamanager
    _, batch = dm.next_train(0)
    assert batch["mask"].shape == (24, 32, 1) and "lr_mask" not in batch  # warm-up: splatfacto's masking at LR
    pipeline.run_guidance_step(1, step=10)
    for _ in range(3):
        camera, batch = dm.next_train(11)
        assert batch["mask"].shape == (96, 128, 1) and batch["lr_mask"].shape == (24, 32, 1)
        assert torch.equal(batch["mask"][::4, ::4], batch["lr_mask"])  # nearest, xs
        assert torch.equal(batch["mask"][3::4, 3::4], batch["lr_mask"])
        assert batch["mask"].shape[:2] == batch["image"].shape[:2] == (int(camera.height), int(camera.width))


def test_targets_over_the_budget_stay_on_the_cpu_and_are_served_per_view(fern_copy: Path):
    pipeline = make_pipeline(fern_copy, sr_backend="tiny-random")
    pipeline.datamanager.config.targets_on_gpu_max_gb = 0.0
    pipeline.run_guidance_step(1, step=10)
    dm = pipeline.datamanager
    assert dm.targets_device == torch.device("cpu") and dm.sr_targets.device.type == "cpu"
    assert dm.sr_targets.is_pinned() == torch.cuda.is_available()
    assert pipeline.latents.device.type == "cpu"
    camera, batch = dm.next_train(11)
    assert batch["image"].device == torch.device(pipeline.device)
    assert torch.equal(batch["image"].cpu(), dm.sr_targets[camera.metadata["cam_idx"]])


def _live_hr_tensors(shape) -> list:
    """Every live tensor holding N-view images at the HR size."""
    n, h, w, _ = shape
    found = []
    for obj in gc.get_objects():
        try:
            if issubclass(type(obj), torch.Tensor) and obj.dim() == 4 and (h, w) in (tuple(obj.shape[-2:]),
                                                                                   tuple(obj.shape[1:3])):
                found.append(obj)
        except ReferenceError:  # a weak proxy whose referent is gone
            continue
    return found


def _new_hr_bytes(shape, before: set) -> int:
    """Bytes of the storages of live HR-sized N-view tensors, each counted once, leaving out those in `before`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _live_hr_tensors(shape)}
    return sum(size for ptr, size in storages.items() if ptr not in before)


@pytest.mark.parametrize("backend", ["compact", "tiny-random"])
def test_the_guidance_state_estimate_bounds_what_real_steps_hold(fern_copy: Path, monkeypatch, backend: str,
                                                                 one_torch_thread):
    """Real guidance steps (the shipped compact prior: pixel-space latents; the SD x4 architecture, tiny: latents on
    the LR grid) on real views: at every part of every step, the HR-sized tensors alive stay within the estimate the
    pre-flight check and the device choice use, and the estimate is not wildly above them."""
    import threedsr_ns.guidance as guidance
    import threedsr_ns.sampler as sampler

    pipeline = make_pipeline(fern_copy, sr_backend=backend, denoise_steps=2)
    dm = pipeline.datamanager
    estimate = dm.guidance_state_bytes  # planned at start-up, before any HR size exists
    shape = dm.sr_target_shape(4)
    gc.collect()
    earlier = _live_hr_tensors(shape)  # other tests' runs of the same views: held, so no storage address is reused
    before = {t.untyped_storage().data_ptr() for t in earlier}
    peak = [0]

    def watched(function):
        def call(*args, **kwargs):
            peak[0] = max(peak[0], _new_hr_bytes(shape, before))
            out = function(*args, **kwargs)
            peak[0] = max(peak[0], _new_hr_bytes(shape, before))
            return out
        return call

    for module, name in ((guidance, "posterior_step"), (guidance, "start_latents"), (sampler, "wavelet_color_fix")):
        monkeypatch.setattr(module, name, watched(getattr(module, name)))
    for name in ("encode", "decode", "predict_x0"):
        monkeypatch.setattr(pipeline.backend, name, watched(getattr(pipeline.backend, name)))
    monkeypatch.setattr(dm, "swap", watched(dm.swap))
    for k in (1, 2):  # the start, then a posterior step toward renders (3dsr's peak: renders and x_t both held)
        pipeline.run_guidance_step(k, step=10 + 5 * (k - 1))
    one_copy = shape[0] * shape[1] * shape[2] * 3 * 4
    assert dm.guidance_state_bytes == estimate
    assert 0.5 * estimate < peak[0] <= estimate, (peak[0] / one_copy, estimate / one_copy)


def test_a_capture_too_big_for_the_hosts_memory_fails_before_the_warm_up(fern_copy: Path, monkeypatch):
    """Targets kept on the CPU (over the GPU budget, or no GPU) must fit the memory the host has free: a capture that
    would not fails at start-up in one line with the numbers and the fix, instead of at the first guidance step."""
    import threedsr_ns.preflight as preflight

    need = make_pipeline(fern_copy).datamanager.guidance_state_bytes  # 17 views of 128x96: ~27 MB
    monkeypatch.setattr(preflight, "host_memory_available", lambda: int(need / 2))
    message = one_line_preflight_error(fern_copy, "need ~0.0 GB of host memory")
    assert "17 train views at x4 (128x96)" in message and "downscale-factor 2" in message
    monkeypatch.setattr(preflight, "host_memory_available", lambda: 2 * need)
    assert make_pipeline(fern_copy).datamanager.targets_device == torch.device("cpu")


def test_the_guidance_state_leaves_a_small_gpu_for_the_cpu(fern_copy: Path, monkeypatch):
    """On CUDA the targets stay on the GPU only when a guidance step's whole state takes at most half of its memory
    (3DGS training needs the rest); the device's size is all that is faked here."""
    dm = make_pipeline(fern_copy).datamanager
    need = dm.guidance_state_bytes
    monkeypatch.setattr(dm, "device", "cuda:0")
    for total, where in ((2 * need, "cuda"), (2 * need - 1, "cpu")):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, total=total: SimpleNamespace(
            total_memory=total))
        assert dm.targets_device.type == where
    dm.config.targets_on_gpu_max_gb = 0.0  # the budget on the targets alone still applies
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=10**15))
    assert dm.targets_device.type == "cpu"


def test_host_memory_is_capped_by_a_containers_cgroup_limit(tmp_path: Path):
    from threedsr_ns.preflight import host_memory_available

    free = host_memory_available(tmp_path)  # no cgroup files: the machine's available memory
    assert free is not None and free > 0
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("123\n")
    assert abs(host_memory_available(tmp_path) - free) < 2**28  # no limit (the machine's use moves a little)
    (tmp_path / "memory.max").write_text(f"{10**6 + 123}\n")
    assert host_memory_available(tmp_path) == 10**6
