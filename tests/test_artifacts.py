from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from threedsr_ns.artifacts import contact_sheet, save_sr_targets


def test_contact_sheet_places_lr_sr_and_render_in_columns():
    n, h, w = 3, 8, 10
    lr = torch.zeros(n, 3, h, w)
    sr_first = torch.full((n, 3, 4 * h, 4 * w), 0.25)
    sr_now = torch.full((n, 3, 4 * h, 4 * w), 0.5)
    render = torch.ones(n, 3, 4 * h, 4 * w)
    sheet = np.asarray(contact_sheet(lr, sr_first, sr_now, render, max_views=2, cell_width=40))
    cell_h = 32  # 40 * 32/40
    assert sheet.shape == (18 + 2 * cell_h, 4 * 40, 3)
    row = sheet[18 + cell_h + cell_h // 2]  # middle of the second view's row
    assert [int(row[j * 40 + 20, 0]) for j in range(4)] == [0, 64, 128, 255]


def test_sr_targets_are_saved_under_the_input_names(tmp_path):
    targets = torch.rand(2, 3, 12, 16)
    save_sr_targets(tmp_path, targets, ["images/a.jpg", "images/b.png"])
    saved = np.asarray(Image.open(tmp_path / "b.png"))
    assert saved.shape == (12, 16, 3)
    assert np.abs(saved / 255.0 - targets[1].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
