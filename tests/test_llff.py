"""prepare_llff's two protocols on the real LLFF fern files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from threedsr_ns.llff import gt_file, prepare_llff

from conftest import FERN


@pytest.fixture(scope="module")
def fern_paper(tmp_path_factory) -> tuple[Path, dict]:
    if not (FERN / "images_2").is_dir():
        pytest.skip(f"{FERN / 'images_2'} not found: the paper protocol's GT")
    out = tmp_path_factory.mktemp("paper") / "fern"
    return out, prepare_llff(FERN, out, protocol="paper", gt_views="test")


def test_paper_protocol_is_images_8_to_images_2_unchanged(fern_paper):
    out, summary = fern_paper
    assert summary["protocol"] == "paper" and summary["lr_size"] == [504, 378] and summary["gt_size"] == [2016, 1512]
    assert summary["test"] == ["image000.png", "image008.png", "image016.png"] and len(summary["train"]) == 17
    # byte-for-byte copies: nothing cropped, resampled or re-encoded
    assert (out / "images" / "image003.png").read_bytes() == (FERN / "images_8" / "image003.png").read_bytes()
    gt = gt_file(out, "image008.png")
    assert gt.name == "image008.jpg" and gt.read_bytes() == (FERN / "images_2" / "image008.jpg").read_bytes()
    assert not gt_file(out, "image001.png").is_file()  # --gt-views test: GT of the test views only
    # the GT is the same view 4x larger: downsampled x4 it matches the LR input closely
    lr = np.asarray(Image.open(out / "images" / "image008.png").convert("RGB"), dtype=np.float64)
    down = np.asarray(Image.open(gt).convert("RGB").resize((504, 378), Image.Resampling.BICUBIC), dtype=np.float64)
    assert 10 * np.log10(255.0**2 / np.mean((lr - down) ** 2)) > 30.0


def test_paper_protocol_cameras_are_the_lr_cameras_times_four(fern_paper):
    out, _ = fern_paper
    lr, gt = (json.loads((out / f).read_text()) for f in ("transforms.json", "transforms_gt.json"))
    assert (lr["w"], lr["h"], gt["w"], gt["h"]) == (504, 378, 2016, 1512)
    for key in ("fl_x", "fl_y", "cx", "cy"):
        assert gt[key] == pytest.approx(4 * lr[key])
    assert [f["transform_matrix"] for f in gt["frames"]] == [f["transform_matrix"] for f in lr["frames"]]
    assert gt["frames"][8]["file_path"] == "gt/image008.jpg"


def test_paper_protocol_refuses_a_resize_it_would_not_do(tmp_path):
    with pytest.raises(ValueError, match="drop --scale/--gt-width"):
        prepare_llff(FERN, tmp_path / "x", protocol="paper", gt_width=128)
