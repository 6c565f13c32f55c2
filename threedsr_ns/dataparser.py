"""nerfstudio's dataparser, reading the SfM point cloud (.ply) with numpy instead of open3d.

open3d is a heavy import that needs system libraries (libusb) many GPU images and servers lack, and it is
only used here to read a handful of vertices: a point cloud must never be the reason a run cannot start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Type

import numpy as np
import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz [N, 3] float32, rgb [N, 3] uint8) from the vertex element of an ASCII or binary .ply."""
    with open(path, "rb") as f:
        header = []
        while not header or header[-1] != "end_header":
            raw = f.readline()
            if not raw:
                raise ValueError(f"{path} is not a complete PLY file: no end_header")
            header.append(raw.decode("ascii", "replace").strip())
        if header[0] != "ply":
            raise ValueError(f"{path} is not a PLY file (it does not start with 'ply')")
        fmt, count, props, element = "", 0, [], ""
        for words in (line.split() for line in header[1:-1]):
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                element = words[1]
                if element == "vertex":
                    count = int(words[2])
                elif not count:
                    raise ValueError(f"{path}: only PLY files whose first element is 'vertex' are supported")
            elif words[0] == "property" and element == "vertex":
                if words[1] == "list":
                    raise ValueError(f"{path}: list properties in the vertex element are not supported")
                props.append((words[2], _PLY_TYPES[words[1]]))
        names = [n for n, _ in props]
        if fmt == "ascii":
            data = np.loadtxt(f, max_rows=count, ndmin=2)
            table = {n: data[:, i] for i, n in enumerate(names)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(n, order + t) for n, t in props])
            vertices = np.frombuffer(f.read(dtype.itemsize * count), dtype=dtype, count=count)
            table = {n: vertices[n] for n in names}
    xyz = np.stack([table["x"], table["y"], table["z"]], axis=-1).astype(np.float32)
    colour_names = ("red", "green", "blue") if "red" in table else ("r", "g", "b")
    if colour_names[0] in table:
        rgb = np.stack([table[n] for n in colour_names], axis=-1)
        rgb = (rgb * 255 if rgb.dtype.kind == "f" else rgb).clip(0, 255).astype(np.uint8)
    else:
        rgb = np.full_like(xyz, 128, dtype=np.uint8)
    return xyz, rgb


@dataclass
class ThreeDSRDataParserConfig(NerfstudioDataParserConfig):
    _target: Type = field(default_factory=lambda: ThreeDSRDataParser)


class ThreeDSRDataParser(Nerfstudio):
    config: ThreeDSRDataParserConfig

    def _load_3D_points(self, ply_file_path: Path, transform_matrix: torch.Tensor, scale_factor: float) -> Optional[Dict]:
        xyz, rgb = read_ply_points(ply_file_path)
        if len(xyz) == 0:
            return None
        # the same world transform nerfstudio applies to the cameras (orientation, centring, then scale)
        points = torch.from_numpy(xyz)
        points = torch.cat((points, torch.ones_like(points[:, :1])), -1) @ transform_matrix.T
        return {"points3D_xyz": points * scale_factor, "points3D_rgb": torch.from_numpy(rgb)}
