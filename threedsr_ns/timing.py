"""Per-iteration wall time and Gaussian count of a nerfstudio training run (benchmarks, studies)."""

from __future__ import annotations

import statistics
import time
from typing import Dict, List

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation


class IterationRecorder:
    """Wall-clock time between consecutive training iterations, and the Gaussian count every 100 steps."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.times: List[float] = []
        self.steps: List[int] = []
        self.gaussians: Dict[int, int] = {}
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self))

    def __call__(self, step: int) -> None:
        self.times.append(time.perf_counter())
        self.steps.append(step)
        if step % 100 == 0:
            self.gaussians[step] = int(self.trainer.pipeline.model.num_points)

    def ms_per_iteration(self, start: int, stop: int) -> Dict[str, float]:
        """Median and mean ms/iteration over steps [start, stop); the first step of a phase (which carries a
        guidance step) is left out of the median but not of the phase's wall time."""
        deltas = [(b - a) * 1e3 for s, a, b in zip(self.steps[1:], self.times, self.times[1:]) if start < s < stop]
        if not deltas:
            return {}
        return {"median_ms": statistics.median(deltas), "mean_ms": statistics.fmean(deltas), "iterations": len(deltas),
                "wall_s": sum(deltas) / 1e3}
