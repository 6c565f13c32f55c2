"""Run nerfstudio's splatfacto on a machine without CUDA (tests, CI, laptops), with no global patching.

gsplat has no CPU kernels, and splatfacto 1.1.5 calls `.cuda()` on a few tensors (the seed colours in
`populate_modules`, the intrinsics in `get_outputs`). The 3dsr model therefore runs those two methods of
splatfacto, when its Gaussians are on the CPU, with

* `cuda_calls_stay_put()`: a torch function mode (torch keeps modes per thread) under which `Tensor.cuda()`
  returns the tensor where it is, on this thread only and only for the duration of the call;
* `splatfacto_function_with(...)`: splatfacto's own function object rebuilt around a private copy of its
  module's globals in which `rasterization` is `threedsr_ns.rasterize_torch.rasterization`. Same code, no
  copy of it; `nerfstudio.models.splatfacto.rasterization` and `torch.Tensor.cuda` are never touched.

With the Gaussians on a CUDA device none of this is used: gsplat stays the GPU path.
"""

from __future__ import annotations

import builtins
import importlib
import types
from typing import Any, Callable, Dict, Optional

import torch
from torch.overrides import TorchFunctionMode, handle_torch_function, has_torch_function

from threedsr_ns import rasterize_torch


class cuda_calls_stay_put(TorchFunctionMode):
    """`Tensor.cuda()` is the identity inside this context, on the current thread only."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        return func(*args, **(kwargs or {}))


def splatfacto_function_with(function: Callable, imports: Optional[Dict[str, Dict[str, Any]]] = None,
                             **names) -> Callable:
    """A copy of the function object `function` (same code, defaults and closure) whose module-level names in
    `names` resolve to the given objects, and whose own `from module import name` statements get, for the
    modules in `imports`, the given objects; the modules themselves, sys.modules and builtins are unchanged."""
    scope = dict(function.__globals__)
    missing = set(names) - set(scope)
    if missing:  # a nerfstudio upgrade renamed what we redirect: fail loudly, not by running gsplat on the CPU
        raise RuntimeError(f"{function.__qualname__} no longer uses the module-level name(s) {sorted(missing)}")
    scope.update(names)
    if imports:
        scope["__builtins__"] = dict(vars(builtins), __import__=_import_with(imports))
    rebound = types.FunctionType(function.__code__, scope, function.__name__, function.__defaults__,
                                 function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    return rebound


def _import_with(overrides: Dict[str, Dict[str, Any]]) -> Callable:
    """An `__import__` for one function's frame: `from m import x` with m in `overrides` reads a private copy
    of m's namespace with the overriding names; every other import is the ordinary one."""
    views: Dict[str, types.ModuleType] = {}

    def private_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and fromlist and name in overrides:
            if name not in views:
                view = types.ModuleType(name)
                view.__dict__.update(vars(importlib.import_module(name)))
                view.__dict__.update(overrides[name])
                views[name] = view
            return views[name]
        return builtins.__import__(name, globals, locals, fromlist, level)

    return private_import


def reference_rasterization(*args, **kwargs):
    """`rasterize_torch.rasterization`, run outside any torch function mode (`cuda_calls_stay_put`), which would
    otherwise see each of its tensor operations through Python (~60,000 a 504x376 frame of 3dsr-preview's). Through
    torch's own protocol for overridable functions: the mode gets this one call and runs it with itself disabled."""
    tensors = tuple(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))  # splatfacto passes keywords
    if has_torch_function(tensors):
        return handle_torch_function(reference_rasterization, tensors, *args, **kwargs)
    return rasterize_torch.rasterization(*args, **kwargs)


def with_reference_rasterizer(function: Callable) -> Callable:
    """`function` (a splatfacto method) calling the PyTorch reference rasterizer instead of gsplat's."""
    return splatfacto_function_with(function, rasterization=reference_rasterization)
