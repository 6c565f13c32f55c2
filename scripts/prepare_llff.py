"""Prepare an LLFF scene for 3dsr: LR = GT/4 images, GT kept for evaluation, every 8th image a test view.

    python scripts/prepare_llff.py ../shared/data/llff/fern data/fern
    ns-train 3dsr --data data/fern
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro

from threedsr_ns.llff import prepare_llff


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    """LLFF scene folder with poses_bounds.npy and images_8/."""
    out: tyro.conf.Positional[Path]
    """Output folder (a nerfstudio dataset)."""
    scale: int = 4
    """Upscale factor s: LR = GT / s."""
    gt_width: Optional[int] = None
    """Resize the GT to this width first (small test scenes); default: keep images_8's size."""
    test_every: int = 8
    """Every n-th image is a test view (i % n == 0), as nerfstudio's eval_mode interval."""
    gt_views: Literal["all", "test"] = "all"
    """test: GT only for the test views (PSNR/SSIM need no more; a third of the size, e.g. to carry to a GPU
    machine). evaluate.py then reports no GT consistency reference."""


def main() -> None:
    args = tyro.cli(Args)
    summary = prepare_llff(args.scene, args.out, args.scale, args.gt_width, args.test_every, args.gt_views)
    print(f"{args.out}: LR {summary['lr_size'][0]}x{summary['lr_size'][1]}, GT {summary['gt_size'][0]}x{summary['gt_size'][1]}, "
          f"{len(summary['train'])} train / {len(summary['test'])} test views, SfM points: {summary['sfm_points']}")
    print(summary["crop"])


if __name__ == "__main__":
    main()
