"""Evaluate a finished 3dsr run: PSNR / SSIM / LPIPS at GT resolution, LR fidelity, 3D consistency.

    python scripts/evaluate.py --config outputs/fern/3dsr/<timestamp>/config.yml --data data/fern --out eval/

writes eval/metrics.json (every figure, per view) and eval/metrics.md (Markdown tables), and prints the tables.
--data is the dataset scripts/prepare_llff.py wrote (LR images/, GT gt/, split.json). See
threedsr_ns/evaluation.py for what each figure measures.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import tyro

from threedsr_ns.evaluation_report import write_report


@dataclass
class EvaluateArgs:
    config: Path
    """config.yml of a finished run: outputs/<experiment>/3dsr/<timestamp>/config.yml."""
    data: Path
    """The prepared dataset the run trained on (scripts/prepare_llff.py output: images/, gt/, split.json)."""
    out: Path = Path("eval")
    """Folder for metrics.json and metrics.md (created if missing)."""
    neighbours: int = 2
    """Consistency: each train view is compared with this many nearest views (by camera centre)."""
    depth_tolerance: float = 0.05
    """Consistency: a warped pixel is co-visible when its depth agrees with the other view's within this fraction."""


def main(args: EvaluateArgs) -> Dict[str, Any]:
    from threedsr_ns.evaluation import evaluate_run  # imported after argument parsing: --help stays fast

    result = evaluate_run(args.config, args.data, neighbours=args.neighbours, depth_tolerance=args.depth_tolerance)
    print(write_report(result, args.out))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.md'}")
    return result


def entrypoint() -> None:
    args = tyro.cli(EvaluateArgs, description=__doc__)
    from threedsr_ns.evaluation import EvaluationError

    try:
        main(args)
    except (FileNotFoundError, EvaluationError) as error:  # wrong paths or runs: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
