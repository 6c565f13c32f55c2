"""What 3dsr costs without CUDA (the project's PyTorch rasterizer): the figures behind the line `ns-train 3dsr`
prints at start-up on a CPU (threedsr_ns.config.cpu_time_estimate) and behind `3dsr-preview`'s "minutes".

    python scripts/prepare_llff.py ../shared/data/llff/fern data/fern-small             # 126x94 -> 504x376
    python scripts/prepare_llff.py ../shared/data/llff/fern data/fern --protocol paper  # 504x378 -> 2016x1512
    python scripts/benchmark_cpu.py --preview-data data/fern-small --pace-data data/fern \
        --json benchmarks/results/cpu-fern.json

Two runs, each in this process through nerfstudio's trainer (as ns-train builds it), timed from the trainer's
construction to its last step:
- preview: `3dsr-preview` as it is (its short schedule, the shipped compact prior that `auto` picks offline) on
  --preview-data: the wall time a user waits, and what a guidance step of the compact prior costs per view and HR
  megapixel (its logged parts).
- pace: `3dsr` as it is (densification on), cut to its first iterations: --pace-warmup LR iterations, one guidance
  step, then --pace-phase HR iterations, on --pace-data, with the bicubic backend (the 3DGS work is the same; a
  compact-prior step over fern's 17 views at 2016x1512 alone would take ~20 min here): the median ms of an LR and of
  an HR iteration. These are the first iterations' paces, before the warm-up has densified: later iterations are
  slower, so an estimate made from them is a lower bound.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro

from threedsr_ns.config import threedsr_preview_trainer_config, threedsr_trainer_config
from threedsr_ns.runs import print_and_save_json, quiet, setup_trainer
from threedsr_ns.timing import IterationRecorder


@dataclass
class Args:
    preview_data: Path
    """The scene `3dsr-preview` runs on (its README figure: LLFF fern at the small protocol, 126x94 -> 504x376)."""
    pace_data: Path
    """The scene whose first iterations time the default method (LLFF fern at the paper protocol)."""
    out: Path = Path("outputs/benchmark_cpu")
    pace_warmup: int = 30
    pace_phase: int = 5
    json: Optional[Path] = None


def timed_run(config, data: Path, out: Path, name: str, backend: str) -> dict:
    """Train `config` on `data`; its wall time, its setup time, the LR and HR median ms per iteration, and each
    guidance step's logged parts per view and HR megapixel."""
    config.pipeline.datamanager.data = data
    config.pipeline.sr_backend = backend
    config.machine.device_type = "cpu"
    config = quiet(config, out, name)  # ThreeDSRTrainer derives max_num_iterations from the schedule
    start = time.perf_counter()
    trainer = setup_trainer(config)
    recorder = IterationRecorder(trainer)
    setup_s = time.perf_counter() - start
    trainer.train()
    wall_s = time.perf_counter() - start
    schedule, datamanager = trainer.pipeline.schedule, trainer.pipeline.datamanager
    (h, w), s = datamanager.lr_size, trainer.pipeline.config.upscale_factor
    lr = recorder.ms_per_iteration(0, schedule.warmup_iters)
    hr = recorder.ms_per_iteration(schedule.warmup_iters, schedule.total_iterations)
    lr_mp, hr_mp = h * w / 1e6, h * w * s * s / 1e6
    views = datamanager.num_train_views
    steps = [sum(v for part, v in entry.items() if part not in ("step", "iteration")) for entry in trainer.pipeline.guidance_log]
    return {"data": str(data), "lr_size": [w, h], "hr_size": [s * w, s * h],
            "schedule": {"N0": schedule.warmup_iters, "K": schedule.denoise_steps, "M": schedule.phase_iters},
            "backend": trainer.pipeline.backend.name, "wall_s": wall_s, "setup_s": setup_s,
            "lr_ms_per_iteration": lr["median_ms"], "hr_ms_per_iteration": hr["median_ms"],
            "lr_ms_per_megapixel": lr["median_ms"] / lr_mp, "hr_ms_per_megapixel": hr["median_ms"] / hr_mp,
            "views": views, "guidance_s": steps, "guidance_s_per_view_megapixel": [t / (views * hr_mp) for t in steps],
            "gaussians": recorder.gaussians, "guidance": trainer.pipeline.guidance_log}


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    result = {"device": f"cpu ({platform.processor() or platform.machine()})", "cpu_cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "runs": {}}
    result["runs"]["preview"] = timed_run(threedsr_preview_trainer_config(), args.preview_data, args.out, "preview",
                                          "compact")
    pace = threedsr_trainer_config()
    pace.pipeline.warmup_iters, pace.pipeline.denoise_steps, pace.pipeline.phase_iters = args.pace_warmup, 1, args.pace_phase
    result["runs"]["pace"] = timed_run(pace, args.pace_data, args.out, "pace", "bicubic")
    print_and_save_json(result, args.json)


if __name__ == "__main__":
    main()
