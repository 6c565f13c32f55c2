"""Score the test views of finished runs against a prepared dataset's GT, without the train-view consistency.

    python scripts/score_test_views.py --data data/fox-x4 --runs bicubic=outputs/.../config.yml 3dsr=... --out fox.json

For each run: PSNR, SSIM, LPIPS-Alex / -VGG, DISTS of the HR renders against the GT (a distorted capture's GT photo
resampled into the run's undistorted camera, see threedsr_ns.evaluation.read_gt), LR fidelity, and the renders'
high-frequency energy over the GT's; per view and mean. This is the test-view half of scripts/evaluate.py, for
runs whose consistency is not wanted (or on a machine where its time is not there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import tyro

KEYS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists", "lr_psnr")


@dataclass
class Args:
    data: Path
    """The prepared dataset the runs trained on (images/, gt/, transforms_gt.json)."""
    runs: Tuple[str, ...]
    """NAME=path/to/config.yml, one per run."""
    out: Path
    """JSON file to write."""


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    from threedsr_ns import evaluation

    scores = {}
    for item in args.runs:
        name, _, config = item.partition("=")
        if not config:
            raise SystemExit(f"--runs {item!r}: give NAME=path/to/config.yml")
        pipeline, step = evaluation.load_run(Path(config), args.data)
        dm = pipeline.datamanager
        views, notes, hf = evaluation.evaluate_test_views(pipeline.model, dm.eval_dataset, args.data,
                                                          int(dm.upscale_factor))
        scores[name] = {"step": int(step), "mean": {k: evaluation._mean([v[k] for v in views]) for k in KEYS},
                        "hf_energy_ratio_render": hf, "test_views": views, "notes": notes}
        args.out.write_text(json.dumps(scores, indent=1))  # after each run: a cut-short job keeps the others
        print(name, json.dumps(scores[name]["mean"]), flush=True)


if __name__ == "__main__":
    main()
