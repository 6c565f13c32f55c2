"""The held-out table of the SR priors: bicubic, Real-ESRGAN x4plus, compact (v1) and compact-v2.

    python scripts/heldout_sr_priors.py --out benchmarks/results/heldout-sr-priors
    python3 scripts/heldout_sr_priors.py --data .data/sr_pack/heldout.npz --v2-model-path /root/v2 --out $OUT/priors
    python scripts/heldout_sr_priors.py --from-json --update-card       # re-render <out>.md from <out>.json, fill the
                                                                        # held-out section of compact-v2's MODEL_CARD.md

Writes <out>.json (keys bicubic, realesrgan, compact, compact-v2, each with psnr, ssim, lpips_alex, dists,
hf_energy_ratio, seed_spread; plus meta and per-photo values), <out>.md and <out>-crops.png. Definitions:
threedsr_ns/sr_prior/compare_priors.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's threedsr_ns without an install

import tyro  # noqa: E402

from threedsr_ns.backends import make_backend  # noqa: E402
from threedsr_ns.backends.compact import CARD_FILE, PACKAGE_WEIGHTS_DIR_V2  # noqa: E402
from threedsr_ns.sr_prior.train import replace_heldout_section  # noqa: E402
from threedsr_ns.sr_prior.compare_priors import (  # noqa: E402
    PriorsConfig, compare_priors, markdown_table, write_markdown)


@dataclass
class Args(PriorsConfig):
    v1_model_path: Optional[Path] = None
    """compact: default the package's weights."""
    v2_model_path: Optional[Path] = None
    """compact-v2: default the package's weights."""
    from_json: bool = False
    """Do not run anything: re-render <out>.md from an existing <out>.json."""
    update_card: bool = False
    """Write the table into the held-out section of the compact-v2 folder's MODEL_CARD.md (--v2-model-path or the
    package's)."""


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.from_json:
        result = json.loads(args.out.with_suffix(".json").read_text())
        table = write_markdown(result, list(args.methods), args.out, with_crops=Path(f"{args.out}-crops.png").exists())
    else:
        paths = {"compact": args.v1_model_path, "compact-v2": args.v2_model_path}
        backends = {name: make_backend(name, model_path=str(paths[name]) if paths.get(name) else None,
                                       device=args.device, seed=args.seed) for name in args.methods}
        result = compare_priors(args, backends)
        table = markdown_table(result, list(args.methods))
        figure = ", -crops.png" if args.figure_photos else ""
        print(f"wrote {args.out}.json, .md{figure} in {result['meta']['wall_s']:.0f} s")
    print(table)
    if args.update_card:
        card = (args.v2_model_path or PACKAGE_WEIGHTS_DIR_V2) / CARD_FILE
        replace_heldout_section(card, table)
        print(f"updated {card}")


if __name__ == "__main__":
    main()
