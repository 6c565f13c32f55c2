"""Is 3dsr's LR warm-up fast *and* sound? Splatfacto on the LR images, three ways, same data and seed:

  size-aware   3dsr's model: coarse-to-fine start never below 64 px, screen-size thresholds above gsplat's
               2 px minimum radius (threedsr_ns/strategy.py)
  split-off    splatfacto with only the screen-size split/cull turned off (stop_screen_size_at=0)
  splatfacto   nerfstudio's defaults (blows up at LLFF's LR size: every Gaussian splits at each refinement);
               stopped once an iteration takes longer than --give-up-ms

For each: ms/iteration and Gaussian count every 100 steps over the whole warm-up, and PSNR/SSIM on the LR
test views at the end.

    python scripts/warmup_study.py --data data/fern --out study --iters 30000
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import torch
import tyro
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

from threedsr_ns.config import threedsr_trainer_config
from threedsr_ns.runs import quiet, release_gpu_memory, setup_trainer
from threedsr_ns.timing import IterationRecorder

VARIANTS = ("size-aware", "split-off", "splatfacto")


@dataclass
class Args:
    data: Path
    out: Path
    iters: int = 30000
    variants: Tuple[str, ...] = VARIANTS
    give_up_ms: float = 200.0
    """Stop a variant whose iteration takes longer than this (the blow-up)."""


def make_config(variant: str, data: Path, out: Path, iters: int):
    config = threedsr_trainer_config()
    pipeline = config.pipeline
    pipeline.sr_backend = "bicubic"  # never used: the run stops at the end of the warm-up
    pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = iters, 1, 1
    pipeline.datamanager.data = data
    model = pipeline.model
    if variant != "size-aware":  # splatfacto's own size handling
        model.min_downscaled_side, model.screen_size_margin = 0, 0.0
    if variant == "split-off":
        model.stop_screen_size_at = 0
    return quiet(config, out / "runs", variant)


def run(variant: str, args: Args) -> dict:
    config = make_config(variant, args.data, args.out, args.iters)
    trainer = setup_trainer(config)
    recorder = IterationRecorder(trainer)

    def stop(step: int) -> None:
        """End of the warm-up (before the guidance step would run), or the blow-up."""
        recent = recorder.times[-21:]
        too_slow = len(recent) == 21 and (recent[-1] - recent[0]) / 20 * 1e3 > args.give_up_ms
        if step >= args.iters - 1 or too_slow:
            trainer.stop_training = True

    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], stop))
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    last = recorder.steps[-1]
    trainer.pipeline.eval()
    metrics = trainer.pipeline.get_average_eval_image_metrics(step=last)
    per_100 = {}
    for s0 in range(0, last + 1, 100):
        phase = recorder.ms_per_iteration(s0, s0 + 100)
        if phase:
            per_100[s0] = round(phase["median_ms"], 3)
    return {"variant": variant, "iterations": last + 1, "stopped_early": last + 1 < args.iters, "wall_s": wall,
            "median_ms": recorder.ms_per_iteration(0, last + 1).get("median_ms"),
            "lr_test_psnr": metrics.get("psnr"), "lr_test_ssim": metrics.get("ssim"),
            "gaussians": recorder.gaussians, "median_ms_per_100": per_100,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def main() -> None:
    args = tyro.cli(Args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in args.variants:
        results[variant] = run(variant, args)
        (args.out / "warmup_study.json").write_text(json.dumps(results, indent=2))
        r = results[variant]
        print(f"{variant}: {r['iterations']} it, {r['wall_s']:.0f} s, median {r['median_ms']:.2f} ms/it, "
              f"{max(r['gaussians'].values())} Gaussians max, LR test PSNR {r['lr_test_psnr']:.2f}", flush=True)
        release_gpu_memory()


if __name__ == "__main__":
    main()
