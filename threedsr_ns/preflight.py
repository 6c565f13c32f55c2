"""The start-up check of a 3dsr run: everything that would otherwise fail after a 30k-step warm-up fails first.

`preflight(pipeline)` runs when a training pipeline is built, before any 3DGS iteration: the images load
(undistorted, composited, RGB; the datamanager names a missing or corrupt file), the SR backend says whether it
takes the LR size, and the guidance path runs once on one view at a tiny size (encode, start latents,
predict_x0, decode, colour fix: threedsr_ns.sampler, as the guidance steps run it). Any problem is one line, naming the
file or option and the fix, raised as a `PreflightError`. When a guidance step's state must live in host memory (too
big for the GPU, or no GPU), the memory it will need is checked against what the machine has free, so a capture too
big for it fails now, not at the first guidance step after the warm-up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.errors import SetupError

if TYPE_CHECKING:
    from threedsr_ns.pipeline import ThreeDSRPipeline

PROBE_LR_SIDE = 16
"""Side of the LR crop the guidance path is run on (the SR of a 16x16 LR patch takes well under a second)."""


class PreflightError(SetupError, ValueError):
    """A capture or setting 3dsr cannot train on: one line naming the file or option, and the fix."""


HOST_MEMORY_HEADROOM = 0.9
"""A guidance step kept in host memory may plan on this fraction of the memory free at start-up."""


def host_memory_available(cgroup: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """Bytes of memory this process can still take: the machine's available memory (psutil, else /proc/meminfo's
    MemAvailable), capped by a cgroup v2 limit (a container's) when one is set; None where neither can be read."""
    available: Optional[int] = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cgroup / "memory.current").read_text().strip())
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def check_host_memory(pipeline: "ThreeDSRPipeline") -> None:
    """A guidance step whose state stays on the CPU must fit the host's free memory."""
    dm = pipeline.datamanager
    if dm.targets_device.type != "cpu":
        return
    need, free = dm.guidance_state_bytes, host_memory_available()
    if free is None or need <= HOST_MEMORY_HEADROOM * free:
        return
    n, sh, sw, _ = dm.sr_target_shape(pipeline.config.upscale_factor)
    raise PreflightError(f"{dm.config.data}: {n} train views at x{pipeline.config.upscale_factor} ({sw}x{sh}) need "
                         f"~{need / 1e9:.1f} GB of host memory for the guidance steps (SR targets and sampler state, "
                         f"float32), but {free / 1e9:.1f} GB are free: train on fewer views or smaller images (e.g. "
                         f"--pipeline.datamanager.dataparser.downscale-factor 2), or free memory")


def preflight(pipeline: "ThreeDSRPipeline") -> None:
    """Check the capture and run the guidance path once, at a tiny size, before the warm-up."""
    from threedsr_ns.colorfix import bicubic_upsample
    from threedsr_ns.guidance import view_generators
    from threedsr_ns.sampler import sampler_step

    start = time.perf_counter()
    cfg, backend, dm = pipeline.config, pipeline.backend, pipeline.datamanager
    assert backend is not None
    s = cfg.upscale_factor
    h, w = dm.lr_size  # loads, undistorts and checks every image (named errors)
    check_lr_size = getattr(backend, "check_lr_size", None)
    if check_lr_size is not None:
        try:
            check_lr_size(h, w)
        except ValueError as err:
            raise PreflightError(f"{dm.config.data}: images are {w}x{h} after undistortion: {err}") from None
    check_host_memory(pipeline)
    ph, pw = min(h, PROBE_LR_SIDE), min(w, PROBE_LR_SIDE)
    lr = dm.lr_images()[:1, :, :ph, :pw].to(pipeline.device)
    lr_up = bicubic_upsample(lr, s)
    generators = view_generators(cfg.guidance_seed, 0, range(1))  # one per view, as the guidance steps draw them
    backend.to(pipeline.device)
    try:
        _, sr = sampler_step(backend, pipeline.timesteps, 1, lr, lr_up, generators, start_mode=cfg.start_latents,
                             color_fix=cfg.color_fix)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreflightError(f"SR backend '{backend.name}' failed on a {pw}x{ph} LR crop of "
                             f"{dm.train_dataset.image_filenames[0]}: {first}; check --pipeline.sr-backend / "
                             f"--pipeline.upscale-factor") from err
    finally:
        backend.offload()
    if tuple(sr.shape) != (1, 3, s * ph, s * pw):
        raise PreflightError(f"SR backend '{backend.name}' returned {tuple(sr.shape)} for a {pw}x{ph} LR crop, not "
                             f"(1, 3, {s * ph}, {s * pw}): it does not upscale x{s}; pass "
                             f"--pipeline.upscale-factor {backend.scale} or another --pipeline.sr-backend")
    CONSOLE.log(f"[bold]3dsr[/bold] pre-flight passed in {time.perf_counter() - start:.1f}s: {dm.num_train_views} "
                f"train views at {w}x{h} (undistorted), SR targets {s * w}x{s * h}, backend '{backend.name}', "
                f"targets on {dm.targets_device} (~{dm.guidance_state_bytes / 1e9:.2g} GB a guidance step)")
