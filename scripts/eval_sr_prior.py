"""Held-out check of the compact x4 SR prior on the 58 held-out photos of ../shared/data/sr_train.

PSNR / SSIM against GT for bicubic and for the prior (mean over seeds), the high-frequency energy ratio
against the GT spectrum, the per-pixel spread across seeds; writes <out>/heldout.json, <out>/heldout.md and
<out>/crops.png (LR | bicubic | seed 1 | seed 2 | GT). Definitions: threedsr_ns/sr_prior/metrics.py.

    python scripts/eval_sr_prior.py --out eval_sr_prior                      # the package's weights, 3DSR's sampler
    python scripts/eval_sr_prior.py --model .data/sr_ckpt --samplers ddpm:4 ddpm:50:noise ddim:50 --out eval_sr_prior
    python scripts/eval_sr_prior.py --update-card ...                        # also fill MODEL_CARD.md's held-out section

On the GPU machine, read a pack of the held-out split instead of the folder (it does not travel):
    python scripts/train_sr_prior.py pack --split heldout --out .data/sr_pack/heldout.npz   (here; about 4 MB)
    python3 scripts/eval_sr_prior.py --data .data/sr_pack/heldout.npz --model .data/sr_ckpt --out $OUT/eval
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's threedsr_ns without an install

import tyro  # noqa: E402

from threedsr_ns.sr_prior.evaluate import EvalConfig, evaluate, markdown_table  # noqa: E402


def main() -> None:
    cfg = tyro.cli(EvalConfig, description=__doc__)
    result = evaluate(cfg)
    print(markdown_table(result))
    print(f"wrote {cfg.out}/heldout.json, heldout.md, crops.png in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
