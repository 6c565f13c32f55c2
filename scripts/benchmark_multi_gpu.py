"""What --pipeline.guidance-devices N buys on a multi-GPU host: the guidance step's and the whole run's wall time.

For each N of --gpus, on a prepared scene (scripts/prepare_llff.py; the paper protocol: fern at 2016x1512 GT):
  scene         `ns-train 3dsr`'s schedule through nerfstudio's trainer, with the full-size SD x4 upscaler
                architecture in RANDOM-WEIGHTS mode (cost only, never quality), guidance sharded over N GPUs
  synthetic     a COST PROBE, not a capture: the scene's LR views repeated to --synthetic-views (default 120),
                guidance steps 1 and 2 only (step 2 toward the bicubic upsampling, standing in for the renders)

    python scripts/benchmark_multi_gpu.py --data data/fern --gpus 1 2 4

writes --out (default benchmarks/results/multi-gpu.json): one entry per (case, N) with n_gpus,
guidance_s_per_step, wall_s and device. It refuses, in one line, when fewer GPUs than max(--gpus) are present.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import tyro

from threedsr_ns.pipeline import ThreeDSRPipelineConfig

SYNTHETIC_LABEL = "synthetic: the scene's LR views repeated (a cost probe, not a capture)"


@dataclass
class Args:
    data: Path
    """Prepared scene (scripts/prepare_llff.py output)."""
    gpus: Tuple[int, ...] = (1, 2, 4)
    """The values of --pipeline.guidance-devices to time."""
    out: Path = Path("benchmarks/results/multi-gpu.json")
    work_dir: Path = Path("bench-multi-gpu")
    """Where the runs write their outputs."""
    warmup_iters: int = ThreeDSRPipelineConfig.warmup_iters
    denoise_steps: int = ThreeDSRPipelineConfig.denoise_steps
    phase_iters: int = ThreeDSRPipelineConfig.phase_iters
    guidance_batch_size: int = ThreeDSRPipelineConfig.guidance_batch_size
    synthetic_views: int = 120
    """Views of the synthetic cost probe (0: skip it)."""
    skip_scene: bool = False
    """Only the synthetic probe."""


def refuse_without_gpus(gpus: Tuple[int, ...]) -> None:
    need, have = max(gpus), torch.cuda.device_count()
    if min(gpus) < 1 or have < need:
        fix = f" or pass --gpus with values up to {have}" if have else ""
        print(f"benchmark_multi_gpu.py needs {need} GPUs for --gpus {' '.join(map(str, gpus))}, found {have}; run it "
              f"on a host with {need} GPUs{fix}", file=sys.stderr)
        raise SystemExit(2)


def _guidance_seconds(log: List[dict]) -> List[float]:
    return [sum(v for name, v in entry.items() if name not in ("step", "iteration")) for entry in log]


def run_scene(args: Args, n: int) -> dict:
    from threedsr_ns.config import threedsr_trainer_config
    from threedsr_ns.runs import quiet, release_gpu_memory, setup_trainer

    config = threedsr_trainer_config()
    p = config.pipeline
    p.sr_backend, p.guidance_devices, p.guidance_batch_size = "sd-x4-upscaler-random", n, args.guidance_batch_size
    p.warmup_iters, p.denoise_steps, p.phase_iters = args.warmup_iters, args.denoise_steps, args.phase_iters
    p.save_artifacts = False
    p.datamanager.data = args.data
    config.max_num_iterations = p.schedule.total_iterations
    config = quiet(config, args.work_dir / "runs", f"scene-{n}gpu")
    start = time.perf_counter()
    trainer = setup_trainer(config)
    trainer.train()
    torch.cuda.synchronize()
    wall_s = time.perf_counter() - start
    steps = _guidance_seconds(trainer.pipeline.guidance_log)
    trainer.pipeline.close_guidance_group()
    del trainer
    release_gpu_memory()
    return {"case": f"scene: {args.data.name}", "n_gpus": n, "guidance_s_per_step": statistics.mean(steps),
            "guidance_s": steps, "wall_s": wall_s, "device": torch.cuda.get_device_name(0),
            "schedule": {"warmup_iters": args.warmup_iters, "denoise_steps": args.denoise_steps,
                         "phase_iters": args.phase_iters}}


def run_synthetic(args: Args, n: int) -> dict:
    from threedsr_ns.backends import make_backend
    from threedsr_ns.colorfix import bicubic_upsample
    from threedsr_ns.distributed import GuidanceGroup
    from threedsr_ns.evaluation import read_image
    from threedsr_ns.guidance import view_generators
    from threedsr_ns.pipeline import backend_kwargs
    from threedsr_ns.runs import release_gpu_memory
    from threedsr_ns.sampler import sampler_step

    config = ThreeDSRPipelineConfig(sr_backend="sd-x4-upscaler-random", guidance_batch_size=args.guidance_batch_size,
                                    guidance_devices=n)
    names = sorted(p for p in (args.data / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not names:
        raise SystemExit(f"{args.data / 'images'}: no LR images; prepare the scene with scripts/prepare_llff.py")
    views = [read_image(names[i % len(names)]) for i in range(args.synthetic_views)]
    lr = torch.stack(views).permute(0, 3, 1, 2).contiguous()  # on the CPU, as targets over the GPU budget are
    lr_up = bicubic_upsample(lr, config.upscale_factor)
    start = time.perf_counter()
    backend = make_backend(**backend_kwargs(config), device="cuda:0")
    group = GuidanceGroup.launch(n, backend_kwargs(config), "cuda:0") if n > 1 else None
    timesteps = backend.denoise_timesteps(config.denoise_steps)
    steps, latents, sr = [], None, None
    try:
        for k in (1, 2):
            torch.cuda.synchronize()
            step_start = time.perf_counter()
            common = dict(start_mode=config.start_latents, posterior=config.posterior, color_fix=config.color_fix,
                          latents=latents, toward=None if k == 1 else lr_up)
            if group is not None:
                latents, sr = group.sampler_step(backend, timesteps, k, lr, lr_up, config.guidance_seed,
                                                 scale=config.upscale_factor, **common)
            else:
                latents, sr = sampler_step(backend, timesteps, k, lr, lr_up,
                                           view_generators(config.guidance_seed, k, range(len(views))), **common)
            torch.cuda.synchronize()
            steps.append(time.perf_counter() - step_start)
    finally:
        if group is not None:
            group.close()
    wall_s = time.perf_counter() - start
    h, w = lr.shape[-2:]
    del backend, latents, sr
    release_gpu_memory()
    return {"case": SYNTHETIC_LABEL, "views": args.synthetic_views, "hr_size": [int(w) * 4, int(h) * 4], "n_gpus": n,
            "guidance_s_per_step": statistics.mean(steps), "guidance_s": steps, "wall_s": wall_s,
            "device": torch.cuda.get_device_name(0)}


def main(args: Optional[Args] = None) -> None:
    args = args or tyro.cli(Args)
    refuse_without_gpus(args.gpus)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for n in args.gpus:
        if not args.skip_scene:
            entries.append(run_scene(args, n))
            print(json.dumps(entries[-1]), flush=True)
        if args.synthetic_views:
            entries.append(run_synthetic(args, n))
            print(json.dumps(entries[-1]), flush=True)
    result = {"command": "python " + " ".join(sys.argv), "backend": "sd-x4-upscaler-random (random weights: cost only)",
              "entries": entries}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
