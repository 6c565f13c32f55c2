"""3dsr checkpoints hold no numpy scalars, so `torch.load(weights_only=True)` (torch's default since 2.6, and what
ns-train --load-dir, ns-render, ns-viewer and ns-eval use) loads them with nothing registered.

nerfstudio's exponential-decay schedule computes its rate with numpy: every learning rate it sets, in the optimizer
param groups and the scheduler state of every checkpoint, is a numpy float64, which weights-only loading refuses.
`FloatExponentialDecaySchedulerConfig` is the same schedule with plain Python floats. Checkpoints written before
it still load where this package loads them itself (`legacy_numpy_scalars()`, scoped to the load).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Type

import numpy as np
import torch
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from torch.optim import Optimizer, lr_scheduler


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's ExponentialDecayScheduler whose rate multiplier is a Python float, not a numpy float64."""

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        numpy_rate = super().get_scheduler(optimizer, lr_init).lr_lambdas[0]
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: float(numpy_rate(step)))


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """ExponentialDecaySchedulerConfig (same options) whose checkpoints load with weights_only=True."""

    _target: Type = field(default_factory=lambda: FloatExponentialDecayScheduler)


def numpy_scalar_globals() -> list:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, type(np.dtype(np.float64))]


@contextlib.contextmanager
def legacy_numpy_scalars() -> Iterator[None]:
    """Inside the block, weights-only loading also accepts numpy scalars (checkpoints written before 3dsr's float
    schedules). Only what was not allowed already is added, and exactly that is removed again on exit."""
    allowed = set(map(id, torch.serialization.get_safe_globals()))
    added = [g for g in numpy_scalar_globals() if id(g) not in allowed]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        remaining = [g for g in torch.serialization.get_safe_globals() if not any(g is a for a in added)]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(remaining)
