"""Wall time of the parts of a guidance step (SectionTimer), the per-iteration wall time and Gaussian count of a
nerfstudio training run (IterationRecorder: benchmarks, studies), and a kernel profile of some of its iterations
(KernelProfile: scripts/benchmark.py --kernel-profile)."""

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


class KernelProfile:
    """torch.profiler over `count` training iterations from global step `start` (benchmarks): where an iteration's
    time goes on the device, kernel by kernel (on a machine without CUDA, the CPU ops instead)."""

    def __init__(self, trainer, start: int, count: int, top: int = 25) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.start, self.stop, self.top = start, start + count, top
        self.cuda = torch.cuda.is_available()
        self.profiler = None
        self.summary: Dict = {}
        self._begin = 0.0
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before))
        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after))

    def _before(self, step: int) -> None:
        if step == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self._begin = time.perf_counter()

    def _after(self, step: int) -> None:
        if step == self.stop - 1 and self.profiler is not None:
            if self.cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - self._begin
            self.profiler.stop()
            self.summary = summarize_kernels(self.profiler.key_averages(), self.stop - self.start, wall, self.cuda,
                                             self.top)
            self.summary["steps"] = [self.start, self.stop]
            self.profiler = None


def summarize_kernels(events, iterations: int, wall_s: float, device: bool, top: int) -> Dict:
    """Per iteration: wall time, the summed self time of every event on the device (kernels; without CUDA, every CPU
    op), and the `top` events by that time with their share of it."""

    def own(event) -> float:  # microseconds
        if not device:
            return float(event.self_cpu_time_total)
        value = getattr(event, "self_device_time_total", None)  # torch >= 2.4; self_cuda_time_total before
        return float(getattr(event, "self_cuda_time_total", 0.0) if value is None else value)

    timed = sorted((e for e in events if own(e) > 0), key=own, reverse=True)
    total_us = sum(own(e) for e in timed)
    rows = [{"name": e.key[:160], "ms_per_iteration": own(e) / 1e3 / iterations,
             "share": own(e) / total_us if total_us else 0.0, "calls_per_iteration": e.count / iterations}
            for e in timed[:top]]
    return {"iterations": iterations, "wall_ms_per_iteration": wall_s * 1e3 / iterations,
            "timed_on": "cuda" if device else "cpu",
            "busy_ms_per_iteration": total_us / 1e3 / iterations, "top": rows}


def kernel_table(summary: Dict) -> str:
    """summarize_kernels' result as Markdown."""
    what = "device (CUDA kernels)" if summary["timed_on"] == "cuda" else "CPU (no CUDA: CPU ops' self time)"
    first, stop = summary["steps"]
    lines = [f"Steps {first}-{stop - 1}: {summary['wall_ms_per_iteration']:.2f} ms wall and "
             f"{summary['busy_ms_per_iteration']:.2f} ms busy on the {what} per iteration.", "",
             "| event | ms / iteration | share of busy | calls / iteration |", "|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['ms_per_iteration']:.3f} | {r['share']:.1%} | {r['calls_per_iteration']:.1f} |"
              for r in summary["top"]]
    return "\n".join(lines) + "\n"
