"""nerfstudio checkpoints of a 3dsr run load under torch's default `torch.load(weights_only=True)`.

nerfstudio's exponential-decay schedules compute learning rates with numpy, so the optimizer param groups
and schedulers in every checkpoint hold numpy float64 scalars, which weights-only loading (torch's default
since 2.6, and what ns-train --load-dir, ns-render, ns-viewer and ns-eval use) refuses. Exactly numpy
scalars and their dtypes are allowed; nothing else is.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_scalar_globals() -> list:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, type(np.dtype(np.float64))]


def allow_numpy_scalars_in_checkpoints() -> None:
    torch.serialization.add_safe_globals(numpy_scalar_globals())
