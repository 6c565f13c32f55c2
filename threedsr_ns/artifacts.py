"""Pictures for people: each guidance step's SR targets as PNG, and contact sheets.

A contact sheet has one row per train view (the first `max_views`) and four columns:
    LR input (nearest-upsampled) | per-frame SR of step 1 | current SR target | current render
so a glance shows what the 3D guidance changed between the independent per-frame SR and now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

COLUMNS = ("LR input", "per-frame SR (step 1)", "SR target now", "render now")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] or [N, H, W, 3] float in [0, 1] -> [N, H, W, 3] uint8 on the CPU."""
    if images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.permute(0, 2, 3, 1)
    return (images.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def save_sr_targets(folder: Path, targets: torch.Tensor, names: Sequence[str]) -> None:
    """One PNG per train view, named after its input image."""
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(to_uint8(targets), names):
        Image.fromarray(image).save(folder / f"{Path(name).stem}.png")


def contact_sheet(lr: torch.Tensor, sr_first: torch.Tensor, sr_now: torch.Tensor, render: torch.Tensor,
                  max_views: int = 8, cell_width: int = 320) -> Image.Image:
    """All inputs [N, 3, ., .] in [0, 1]; lr at LR size, the others at HR size. Returns an RGB image."""
    n = min(max_views, lr.shape[0])
    hr_h, hr_w = sr_now.shape[-2:]
    cell_h = round(cell_width * hr_h / hr_w)
    lr_up = F.interpolate(lr[:n].float(), size=(hr_h, hr_w), mode="nearest")  # nearest: show the real LR pixels
    columns = [lr_up, sr_first[:n], sr_now[:n], render[:n]]
    cells = [F.interpolate(c.float(), size=(cell_h, cell_width), mode="area") for c in columns]
    header = 18
    sheet = Image.new("RGB", (cell_width * len(columns), header + cell_h * n), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (title, column) in enumerate(zip(COLUMNS, cells)):
        draw.text((j * cell_width + 4, 3), title, fill="black")
        for i, image in enumerate(to_uint8(column)):
            sheet.paste(Image.fromarray(image), (j * cell_width, header + i * cell_h))
    return sheet
