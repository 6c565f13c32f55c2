"""Run nerfstudio's splatfacto on a machine without CUDA (tests, CI, laptops).

gsplat has no CPU kernels, and splatfacto calls `.cuda()` on a few tensors. When, and only when, CUDA
is absent, `splatfacto_on_cpu()` swaps splatfacto's `rasterization` for the project's PyTorch
reference rasterizer and makes `Tensor.cuda()` a no-op for the duration of the call. With CUDA present
it does nothing: gsplat stays the GPU path.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from threedsr_ns import rasterize_torch


@contextlib.contextmanager
def splatfacto_on_cpu() -> Iterator[None]:
    if torch.cuda.is_available():
        yield
        return
    import nerfstudio.models.splatfacto as splatfacto

    saved_rasterization, saved_cuda = splatfacto.rasterization, torch.Tensor.cuda
    splatfacto.rasterization = rasterize_torch.rasterization
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        splatfacto.rasterization = saved_rasterization
        torch.Tensor.cuda = saved_cuda  # type: ignore[method-assign]
