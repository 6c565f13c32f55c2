"""Wall time of the parts of a guidance step (SectionTimer), and the per-iteration wall time and Gaussian count of a
nerfstudio training run (IterationRecorder: benchmarks, studies)."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
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


class SectionTimer:
    """Wall time of each part of a guidance step, synchronising the GPU so the numbers are real."""

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
