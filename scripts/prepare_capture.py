"""Make an xs super-resolution task of a real capture: LR = the photos / s, GT = the photos themselves.

    python scripts/prepare_capture.py ../shared/data/instant_ngp/fox data/fox-x4
    ns-train 3dsr --data data/fox-x4
    python scripts/evaluate.py --config outputs/fox-x4/3dsr/<run>/config.yml --data data/fox-x4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from threedsr_ns.capture import prepare_capture


@dataclass
class Args:
    capture: tyro.conf.Positional[Path]
    """A nerfstudio capture folder: transforms.json (e.g. from ns-process-data) and its photos."""
    out: tyro.conf.Positional[Path]
    """Output folder (a nerfstudio dataset with gt/ beside it)."""
    scale: int = 4
    """s: LR = photos / s."""
    test_every: int = 8
    """Every n-th existing frame is a test view."""


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    s = prepare_capture(args.capture, args.out, args.scale, args.test_every)
    print(f"{args.out}: LR {s['lr_size'][0]}x{s['lr_size'][1]}, GT {s['gt_size'][0]}x{s['gt_size'][1]}, "
          f"{len(s['train'])} train / {len(s['test'])} test views ({s['skipped_missing']} listed frames have no photo)")


if __name__ == "__main__":
    main()
