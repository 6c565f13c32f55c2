"""Merge scripts/compare.py results of several scenes into one quality table.

    python scripts/quality_table.py --scenes compare/fern compare/flower --out benchmarks/results/quality-llff-paper \\
        --device "NVIDIA H200" --note "N0=5000, K=4, M=1000, compact prior"

Reads each <scene>/compare.json and <scene>/crops.png; writes <out>.json

    {"protocol": ..., "device": ..., "schedule": {"N0", "K", "M"}, "backend": ...,
     "scenes": {scene: {"render_size": [w, h], "methods": {method: {psnr, ssim, lpips_alex, lpips_vgg, dists,
                                                                    detail_consistency, hf_energy_ratio, ...,
                                                                    backend (where compare.py recorded it)}}}}}

<out>.md (one table, the paper's LLFF figures beside it, 3dsr's margins over the per-frame baseline per scene) and
<out>-crops.png (the scenes' crops stacked; with --no-stack-crops the Markdown links each folder's own crops.png
instead, so that no second copy of them is committed). Every folder must share one protocol and schedule. Several folders of one
scene (the same folder name, e.g. a later compare.py run of other methods with its own warm-up) are merged into that
scene; each method records the `run` folder it came from and `backend` maps each folder to its --backend.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import tyro
from PIL import Image

KEYS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists", "lpips_alex_threedsr_code", "detail_consistency",
        "sr_target_detail_correlation", "hf_energy_ratio", "hf_energy_ratio_render", "lr_psnr", "wall_s",
        "peak_gpu_mem_gb", "gaussians", "ms_per_iteration", "sr_target_disagreement")
PAPER_LLFF = {  # 3DSR (ICCV 2025), authors' poster: LLFF x4, mean of 8 scenes (PSNR / SSIM / LPIPS-Alex)
    "StableSR per frame + 3DGS": {"psnr": 22.75, "ssim": 0.717, "lpips_alex": 0.219},
    "SuperGaussian": {"psnr": 23.05, "ssim": 0.725, "lpips_alex": 0.296},
    "3DSR": {"psnr": 24.21, "ssim": 0.754, "lpips_alex": 0.181},
}
PAPER_MARGIN = {"psnr": 24.21 - 22.75, "lpips_alex": 0.181 - 0.219}


@dataclass
class Args:
    scenes: Tuple[Path, ...]
    """compare.py output folders, one per scene (named after the scene)."""
    out: Path
    """Path stem: writes <out>.json, <out>.md and <out>-crops.png."""
    device: str = ""
    """The machine the runs were made on."""
    note: str = ""
    """Lines on how the runs were made (command) and how they differ from the paper's, for the Markdown."""
    stack_crops: bool = True
    """Write <out>-crops.png, the folders' crops.png stacked; off: the Markdown links each folder's crops.png."""


def merge(scenes: Tuple[Path, ...], device: str) -> dict:
    merged: dict = {"scenes": {}}
    for folder in scenes:
        path = folder / "compare.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run scripts/compare.py --out {folder} first")
        result = json.loads(path.read_text())
        shared = {"protocol": result["protocol"], "device": device, "schedule": result["schedule"]}
        for key, value in shared.items():
            if merged.setdefault(key, value) != value:
                raise SystemExit(f"{path}: {key} {value!r} differs from the other scenes' {merged[key]!r}")
        merged.setdefault("backend", {})[str(folder)] = result["backend"]
        scene = merged["scenes"].setdefault(folder.name, {"render_size": result["render_size"], "methods": {}})
        if scene["render_size"] != result["render_size"]:
            raise SystemExit(f"{path}: render size {result['render_size']} differs from {scene['render_size']}")
        recorded = result.get("method_backends", {})  # compare.py records it since session 13; older runs do not
        for method, means in result["methods"].items():
            if method in scene["methods"]:
                raise SystemExit(f"{path}: method {method} of scene {folder.name} is in an earlier folder too")
            backend = {"backend": recorded[method]} if method in recorded else {}
            scene["methods"][method] = {**{k: means.get(k) for k in KEYS}, **backend, "run": str(folder)}
    return {k: merged[k] for k in ("protocol", "device", "schedule", "backend", "scenes")}


def _fmt(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


MARGIN_PAIRS = (("3dsr", "per-frame"), ("3dsr-v2", "per-frame-v2"), ("3dsr-v2", "3dsr"))
"""(ours, baseline) pairs whose margins the table states, when both are in a scene."""


def margins(table: dict) -> list[str]:
    """3dsr against the per-frame diffusion baseline (and compact-v2's pairs) on each scene: PSNR, LPIPS-Alex,
    detail consistency."""
    lines = []
    for scene, entry in table["scenes"].items():
        for ours_name, base_name in MARGIN_PAIRS:
            methods = entry["methods"]
            if ours_name not in methods or base_name not in methods:
                continue
            ours, base = methods[ours_name], methods[base_name]
            parts = []
            for key, better, digits, unit in (("psnr", 1, 3, " dB PSNR"), ("lpips_alex", -1, 4, " LPIPS-Alex"),
                                              ("detail_consistency", 1, 4, " detail consistency")):
                if ours.get(key) is None or base.get(key) is None:
                    parts.append(f"{key} n/a")
                    continue
                delta = ours[key] - base[key]
                # the paper's margin is over per-frame SR, at its own protocol only
                against_per_frame = base_name.startswith("per-frame") and table["protocol"] == "paper"
                paper = f"; paper {PAPER_MARGIN[key]:+.3f}" if key in PAPER_MARGIN and against_per_frame else ""
                parts.append(f"{delta:+.{digits}f}{unit} ({'better' if delta * better > 0 else 'NOT better'}{paper})")
            lines.append(f"- {scene}: {ours_name} - {base_name} = " + ", ".join(parts))
    return lines


def markdown(table: dict, note: str) -> str:
    s = table["schedule"]
    columns = ("PSNR (dB) ↑", "SSIM ↑", "LPIPS-Alex ↓", "LPIPS-Alex, 3DSR code's call ↓", "LPIPS-VGG ↓", "DISTS ↓",
               "detail consistency ↑",
               "HF energy (targets / renders vs GT)", "LR PSNR (dB)", "wall (s)", "peak GPU (GB)")
    rows = ["| scene | method | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for scene, entry in table["scenes"].items():
        for method, m in entry["methods"].items():
            cells = [_fmt(m["psnr"], 3), _fmt(m["ssim"], 4), _fmt(m["lpips_alex"], 4),
                     _fmt(m["lpips_alex_threedsr_code"], 4), _fmt(m["lpips_vgg"], 4),
                     _fmt(m["dists"], 4), _fmt(m["detail_consistency"], 4),
                     f"{_fmt(m['hf_energy_ratio'], 3)} / {_fmt(m['hf_energy_ratio_render'], 3)}", _fmt(m["lr_psnr"], 2),
                     _fmt(m["wall_s"], 0), _fmt(m["peak_gpu_mem_gb"], 1)]
            rows.append(f"| {scene} | {method} | " + " | ".join(cells) + " |")
    if table["protocol"] == "paper":
        paper = ["The paper's figures:", "", "| method (paper, LLFF mean of 8 scenes) | PSNR | SSIM | LPIPS-Alex |",
                 "|---|---|---|---|"]
        paper += [f"| {m} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['lpips_alex']:.3f} |" for m, v in PAPER_LLFF.items()]
    else:  # another size and LR: the paper's figures are not comparable
        paper = [f"The paper's figures are for its own protocol (LR images_8 504x378 -> GT images_2 2016x1512), not the "
                 f"{table['protocol']} protocol of this table: quality-llff-paper.md sets them beside ours."]
    sizes = ", ".join(f"{scene} {e['render_size'][0]}x{e['render_size'][1]}" for scene, e in table["scenes"].items())
    recorded = {method: m["backend"] for e in table["scenes"].values() for method, m in e["methods"].items()
                if "backend" in m}
    per_method = (" SR backend of each method, as compare.py recorded it: "
                  + ", ".join(f"{method} `{b}`" for method, b in recorded.items()) + ".") if recorded else ""
    return "\n".join([
        f"# LLFF x4 ({table['protocol']} protocol; renders {sizes})\n",
        f"Backend {', '.join(f'`{b}` ({f})' for f, b in table['backend'].items())}, N0={s['N0']}, K={s['K']}, M={s['M']}, {table['device'] or 'device not given'}. "
        f"wall / peak GPU: each method's training from the shared warm-up checkpoint on, in its own process.{per_method}", "",
        note, "", *rows, "", *margins(table), "", *paper, ""])


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
    table = merge(args.scenes, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(table, indent=2))
    text = markdown(table, args.note)
    if args.stack_crops:
        figures = f"\n![crops]({args.out.name}-crops.png)\n"
        stack_crops(args.scenes).save(f"{args.out}-crops.png")
    else:
        figures = "".join(f"\n![{folder.name} ({folder.parent.name})]({os.path.relpath(folder / 'crops.png', args.out.parent)})\n"
                          for folder in args.scenes)
    Path(f"{args.out}.md").write_text(text + figures)
    print(text)


if __name__ == "__main__":
    main()
