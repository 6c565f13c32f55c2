"""Train a nerfstudio TrainerConfig in-process, as ns-train would (scripts: benchmark, studies, comparisons)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch


def quiet(config, out_dir, name: str):
    """Write under out_dir/…/<name>, log to tensorboard, save one checkpoint at the end, no evaluation passes."""
    config.output_dir, config.timestamp, config.vis = out_dir, name, "tensorboard"
    config.steps_per_save = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.steps_per_eval_batch = 10**9
    return config


def setup_trainer(config):
    """The trainer, set up: data parsed, models built (plain splatfacto: threedsr_ns.model.OfflineSplatfactoModel)."""
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    getattr(trainer, "setup_raising", trainer.setup)()  # a 3dsr trainer's errors as exceptions, not SystemExit
    return trainer


def print_and_save_json(result: dict, path: Optional[Path]) -> None:
    """A benchmark's result: printed as JSON and, given a path, written there too (its folder made if missing)."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def release_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
