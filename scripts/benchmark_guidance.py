"""What one guidance step costs with an SR backend, apart from 3DGS: the sampler step the pipeline runs, timed part by
part with the pipeline's own timer, for a given number of views at a given LR size.

    python scripts/benchmark_guidance.py --case fern=17x504x378 fox=43x269x479 \
        --json benchmarks/results/guidance-step-h200.json          # the paper-protocol fern and the fox capture
    python scripts/benchmark_guidance.py --tile-size 1024 --json ...  # the compact prior on larger tiles
    python scripts/benchmark_guidance.py --backend sd-x4-upscaler-random --tile-size 1024 --json ...  # SD x4 VAE tiles
    python scripts/benchmark_guidance.py --channels-last False --json ...  # in the contiguous memory format
    python scripts/benchmark_guidance.py --predraw-noise --json ...   # step 2's noise drawn ahead, as in the pipeline
    python scripts/benchmark_guidance.py --cudnn-benchmark --json ...  # cuDNN's autotuner instead of its heuristics
    python scripts/benchmark_guidance.py --backend sd-x4-upscaler-random --vae-dtype float32 --json ...  # SD x4 VAE dtype

For each case: step 1 (from the noised bicubic LR) and step 2 (the posterior step toward images standing in for the
renders), --repeats times each after one untimed warm-up step (kernel selection, allocator), median seconds of each
part (encode / noise / denoise / decode, decode including the colour fix), and on CUDA each case's peak GPU memory.
The LR images are smooth random images: the cost of the compact prior and the SD x4 does not depend on the content.
Timing only; the outputs are never looked at.
"""

from __future__ import annotations

import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
import tyro

from threedsr_ns.backends import make_backend
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.guidance import predraw_posterior_noise, view_generators
from threedsr_ns.sampler import sampler_step
from threedsr_ns.runs import print_and_save_json
from threedsr_ns.timing import SectionTimer


@dataclass
class Args:
    case: Tuple[str, ...] = ("fern=17x504x378", "fox=43x269x479")
    """NAME=VIEWSxWIDTHxHEIGHT (LR pixels): one timed case each."""
    backend: str = "compact"
    batch_size: int = 8
    """Views per batch through the SR model (the pipeline's --pipeline.guidance-batch-size default)."""
    scale: int = 4
    denoise_steps: int = 4
    repeats: int = 3
    tile_size: Optional[int] = None
    """HR pixels per tile side, as --pipeline.sr-tile-size (the compact prior's denoising tiles, the SD x4's VAE
    tiles); default the backend's; 0 never tiles."""
    tile_overlap: Optional[int] = None
    """The compact prior's denoising tile overlap (HR pixels); default the backend's."""
    channels_last: Optional[bool] = None
    """The compact prior's memory format: True channels-last, False contiguous; default the backend's (contiguous)."""
    predraw_noise: bool = False
    """Step 2's posterior noise drawn before the timed step (guidance.predraw_posterior_noise), as the pipeline does
    during the HR phase on CUDA: its "noise" part is then the posterior arithmetic alone."""
    cudnn_benchmark: bool = False
    """Run the steps under cuDNN's autotuner (`torch.backends.cudnn.flags(benchmark=True)`, scoped to the cases, not
    set for the process): each convolution shape's fastest algorithm is measured on its first use, in the untimed
    warm-up step; default cuDNN's heuristics, as the pipeline runs."""
    vae_dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    """The SD x4 VAE's dtype (SDUpscalerBackend.set_vae_dtype); default the backend's: float32 beside a float16 UNet,
    as diffusers' pipeline upcasts it."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    json: Optional[Path] = None
    """Where to write the result (also printed)."""


def parse_case(text: str) -> Tuple[str, int, int, int]:
    match = re.fullmatch(r"([\w-]+)=(\d+)x(\d+)x(\d+)", text)
    if match is None:
        raise SystemExit(f"--case {text!r}: write NAME=VIEWSxWIDTHxHEIGHT, e.g. fern=17x504x378")
    name, views, width, height = match.groups()
    return name, int(views), int(width), int(height)


def smooth_images(views: int, width: int, height: int, device: str) -> torch.Tensor:
    coarse = torch.rand(views, 3, max(height // 16, 2), max(width // 16, 2), generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).to(device)


def time_case(backend, timesteps, views: int, width: int, height: int, args: Args) -> Dict[str, Dict[str, float]]:
    lr = smooth_images(views, width, height, args.device)
    lr_up = bicubic_upsample(lr, args.scale)
    result = {}
    first_latents: Optional[torch.Tensor] = None  # step 1's x_t: where step 2 starts
    for k in (1, 2):
        runs = []
        for r in range(args.repeats + 1):  # the first is the untimed warm-up
            latents, toward = (None, None) if k == 1 else (first_latents, lr_up)
            noise = None
            if k > 1 and args.predraw_noise:
                generators, noise = predraw_posterior_noise(0, k, range(views), tuple(latents.shape),
                                                            pin=args.device.startswith("cuda"))
            else:
                generators = view_generators(0, k, range(views))
            timer = SectionTimer(args.device)
            with torch.no_grad(), timer("step"):
                x_t, _ = sampler_step(backend, timesteps, k, lr, lr_up, generators, latents=latents, toward=toward,
                                      noise=noise, timer=timer)
            if k == 1 and r == 0:
                first_latents = x_t
            if r > 0:
                runs.append(timer.seconds)
        result[f"step{k}"] = {part: statistics.median(run[part] for run in runs) for part in runs[0]}
    return result


def run_case(result: dict, backend, timesteps, name: str, views: int, width: int, height: int, args: Args) -> None:
    """Time one case into result["cases"][name], with its peak GPU memory on CUDA (the weights included)."""
    cuda = args.device.startswith("cuda")
    print(f"{name}: {views} views at {width}x{height} -> {args.scale * width}x{args.scale * height}", flush=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    result["cases"][name] = {"views": views, "lr_size": [width, height],
                             "sr_size": [args.scale * width, args.scale * height],
                             **time_case(backend, timesteps, views, width, height, args)}
    if cuda:
        result["cases"][name]["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(args.device) / 1e9


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    cases = [parse_case(c) for c in args.case]
    backend = make_backend(args.backend, device=args.device, batch_size=args.batch_size, scale=args.scale,
                           tile_size=args.tile_size)
    backend.check_scale(args.scale)
    tile_attr = next((name for name in ("tile_size", "vae_tile_size") if hasattr(backend, name)), None)
    if args.tile_size is not None and tile_attr is None:
        raise SystemExit(f"--tile-size: the {backend.name} backend does not tile")
    if args.tile_overlap is not None:
        if not hasattr(backend, "tile_overlap"):
            raise SystemExit(f"--tile-overlap: the {backend.name} backend has no denoising tiles")
        backend.tile_overlap = args.tile_overlap
    if args.channels_last is not None:
        if not hasattr(backend, "use_channels_last"):
            raise SystemExit(f"--channels-last: the {backend.name} backend has no memory-format choice")
        backend.use_channels_last(args.channels_last)
    if args.vae_dtype is not None:
        if not hasattr(backend, "set_vae_dtype"):
            raise SystemExit(f"--vae-dtype: the {backend.name} backend has no VAE")
        backend.set_vae_dtype(getattr(torch, args.vae_dtype))
    backend.to(args.device)
    timesteps = backend.denoise_timesteps(args.denoise_steps, None)
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if cuda else platform.processor()
    result = {"backend": backend.name, "device": device_name, "batch_size": args.batch_size, "scale": args.scale,
              "timesteps": list(timesteps), "repeats": args.repeats,
              "tile_size": getattr(backend, tile_attr) if tile_attr else None,
              "tile_overlap": getattr(backend, "tile_overlap", None),
              "channels_last": getattr(backend, "channels_last", None), "predraw_noise": args.predraw_noise,
              "cudnn_benchmark": args.cudnn_benchmark,
              "vae_dtype": str(backend.vae.dtype).removeprefix("torch.") if hasattr(backend, "vae") else None,
              "cases": {}}
    autotune = torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=args.cudnn_benchmark,
                                          deterministic=torch.backends.cudnn.deterministic,
                                          allow_tf32=torch.backends.cudnn.allow_tf32)
    with autotune:
        for name, views, width, height in cases:
            run_case(result, backend, timesteps, name, views, width, height, args)
    print_and_save_json(result, args.json)


if __name__ == "__main__":
    main()
