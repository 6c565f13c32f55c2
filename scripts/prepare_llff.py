"""Prepare an LLFF scene for 3dsr: LR images, GT kept for evaluation, every 8th image a test view.

    python scripts/prepare_llff.py ../shared/data/llff/fern data/fern --protocol paper   # 504x378 -> 2016x1512
    python scripts/prepare_llff.py ../shared/data/llff/fern data/fern                    # 126x94 -> 504x376
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
    protocol: Literal["small", "paper"] = "small"
    """paper: 3DSR's LLFF protocol, LR = images_8 (504x378), GT = images_2 (2016x1512), both as they are. small:
    GT = images_8 cropped to 504x376, LR = GT / 4 (126x94; NeRF-SR's protocol, this project's first tables)."""
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
    summary = prepare_llff(args.scene, args.out, args.scale, args.gt_width, args.test_every, args.gt_views,
                           args.protocol)
    print(f"{args.out} ({summary['protocol']} protocol): LR {summary['lr_size'][0]}x{summary['lr_size'][1]}, GT {summary['gt_size'][0]}x{summary['gt_size'][1]}, "
          f"{len(summary['train'])} train / {len(summary['test'])} test views, SfM points: {summary['sfm_points']}")
    print(summary["crop"])


if __name__ == "__main__":
    main()
