"""Merge scripts/compare.py results of several scenes into one quality table (issue 6's quality-llff.json).

    python scripts/quality_table.py --scenes compare/fern compare/flower compare/horns \\
        --out benchmarks/results/quality-llff --note "N0=10000, K=4, M=2500 on an H100"

Reads each <scene>/compare.json and <scene>/crops.png; writes <out>.json ({scene: {method: {psnr, ssim, lr_psnr,
consistency, render_disagreement}}}), <out>.md (one table, the per-scene verdicts of 3dsr against per-frame SR) and
<out>-crops.png (the scenes' crops stacked). `consistency` is compare's sr_target_disagreement: the multi-view
disagreement of the final HR targets on co-visible pixels (lower = more consistent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import tyro
from PIL import Image

KEYS = {"psnr": "psnr", "ssim": "ssim", "lr_psnr": "lr_psnr", "consistency": "sr_target_disagreement",
        "render_disagreement": "render_disagreement"}


@dataclass
class Args:
    scenes: Tuple[Path, ...]
    """compare.py output folders, one per scene (named after the scene)."""
    out: Path
    """Path stem: writes <out>.json, <out>.md and <out>-crops.png."""
    note: str = ""
    """One line on how the runs were made (schedule, machine, command)."""


def merge(scenes: Tuple[Path, ...]) -> dict:
    table = {}
    for folder in scenes:
        path = folder / "compare.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run scripts/compare.py --out {folder} first")
        by_method = json.loads(path.read_text())
        table[folder.name] = {method: {key: means[src] for key, src in KEYS.items()} for method, means in by_method.items()}
    return table


def verdicts(table: dict) -> list[str]:
    """3dsr against per-frame SR + 3DGS on each scene: PSNR higher, consistency lower (issue 6's targets)."""
    lines = []
    for scene, methods in table.items():
        if "3dsr" not in methods or "per-frame" not in methods:
            continue
        ours, base = methods["3dsr"], methods["per-frame"]
        d_psnr, d_cons = ours["psnr"] - base["psnr"], ours["consistency"] - base["consistency"]
        lines.append(f"- {scene}: 3dsr - per-frame = {d_psnr:+.3f} dB PSNR ({'better' if d_psnr > 0 else 'NOT better'}), "
                     f"{d_cons:+.5f} consistency ({'better' if d_cons < 0 else 'NOT better'})")
    return lines


def markdown(table: dict, note: str) -> str:
    header = "| scene | method | PSNR (dB) | SSIM | LR PSNR (dB) | consistency (lower = better) | render disagreement |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    for scene, methods in table.items():
        for method, m in methods.items():
            rows.append(f"| {scene} | {method} | {m['psnr']:.3f} | {m['ssim']:.4f} | {m['lr_psnr']:.3f} | "
                        f"{m['consistency']:.5f} | {m['render_disagreement']:.5f} |")
    return "\n".join([f"# LLFF x4: bicubic vs per-frame SR vs 3dsr\n", note, "", *rows, "", *verdicts(table), ""])


def stack_crops(scenes: Tuple[Path, ...]) -> Image.Image:
    crops = [Image.open(folder / "crops.png").convert("RGB") for folder in scenes]
    figure = Image.new("RGB", (max(c.width for c in crops), sum(c.height for c in crops)), "white")
    top = 0
    for crop in crops:
        figure.paste(crop, (0, top))
        top += crop.height
    return figure


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    table = merge(args.scenes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(table, indent=2))
    Path(f"{args.out}.md").write_text(markdown(table, args.note) + f"\n![crops]({args.out.name}-crops.png)\n")
    stack_crops(args.scenes).save(f"{args.out}-crops.png")
    print(markdown(table, args.note))


if __name__ == "__main__":
    main()
