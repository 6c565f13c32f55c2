"""Issue 14's scale table: what 3dsr costs at the paper's size and on a real capture, from finished GPU runs.

    python scripts/scale_table.py --llff compare/fern compare/flower --fox fox-test-views.json \\
        --fox-render-size 1076 1916 --device "NVIDIA H200" --out benchmarks/results/scale-h200

Reads scripts/compare.py's <scene>/compare.json of the paper-protocol LLFF runs (each method's wall time and peak GPU
memory, measured in its own process) and scripts/score_test_views.py's JSON of the fox x4 runs; writes <out>.json and
<out>.md. ratio_vs_no_diffusion = 3dsr's wall time / the bicubic run's (the same schedule and 3DGS work, no SR model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import tyro


@dataclass
class Args:
    llff: Tuple[Path, ...]
    """compare.py output folders of paper-protocol scenes."""
    fox: Path
    """score_test_views.py's JSON of the fox x4 runs (bicubic, per-frame, 3dsr)."""
    fox_render_size: Tuple[int, int]
    """The fox runs' render size (4 x the undistorted LR frame their pre-flight line names)."""
    out: Path
    device: str = ""
    note: str = ""
    """How the runs were made: command, concurrency, what was not run."""


def llff_run(folder: Path) -> dict:
    result = json.loads((folder / "compare.json").read_text())
    methods = result["methods"]
    ours, plain = methods["3dsr"], methods.get("bicubic")
    ratio = ours["wall_s"] / plain["wall_s"] if plain and plain.get("wall_s") else None
    return {"render_size": result["render_size"], "protocol": result["protocol"], "backend": result["backend"],
            "schedule": result["schedule"], "wall_s": ours["wall_s"], "ratio_vs_no_diffusion": ratio,
            "peak_gpu_mem_gb": ours["peak_gpu_mem_gb"],
            "per_method": {m: {"wall_s": v["wall_s"], "peak_gpu_mem_gb": v["peak_gpu_mem_gb"]} for m, v in methods.items()}}


def _fmt(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    fox = json.loads(args.fox.read_text())
    table = {"device": args.device, "note": args.note,
             "runs": {f"{folder.name}-paper-{llff_run(folder)['backend']}": llff_run(folder) for folder in args.llff}}
    table["runs"]["fox-x4-compact"] = {
        "render_size": list(args.fox_render_size), "protocol": "capture x4 (LR = photos / 4, GT = the photos)",
        "wall_s": None, "ratio_vs_no_diffusion": None, "peak_gpu_mem_gb": None,
        "metrics": {m: {**r["mean"], "hf_energy_ratio_render": r["hf_energy_ratio_render"]} for m, r in fox.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(table, indent=2))
    rows = ["| run | render size | schedule | 3dsr wall (s) | vs no diffusion | peak GPU (GB) |", "|---|---|---|---|---|---|"]
    for name, run in table["runs"].items():
        w, h = run["render_size"]
        ratio = run["ratio_vs_no_diffusion"]
        sched = run.get("schedule")
        sched = "n/a" if not sched else f"N0={sched['N0']}, K={sched['K']}, M={sched['M']}"
        rows.append(f"| {name} | {w}x{h} | {sched} | {_fmt(run['wall_s'], 0)} | {'n/a' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{_fmt(run['peak_gpu_mem_gb'], 1)} |")
    fox_rows = ["| fox x4 method | PSNR (dB) | SSIM | LPIPS-Alex | LPIPS-VGG | DISTS | LR PSNR (dB) |", "|---|---|---|---|---|---|---|"]
    for method, m in table["runs"]["fox-x4-compact"]["metrics"].items():
        fox_rows.append(f"| {method} | {_fmt(m['psnr'], 3)} | {_fmt(m['ssim'], 4)} | {_fmt(m['lpips_alex'], 4)} | "
                        f"{_fmt(m['lpips_vgg'], 4)} | {_fmt(m['dists'], 4)} | {_fmt(m['lr_psnr'], 2)} |")
    text = "\n".join([f"# 3dsr at scale ({args.device or 'device not given'})", "", args.note, "", *rows, "",
                      "The fox capture against its original 1080x1920 photos (resampled into the undistorted render "
                      "frame):", "", *fox_rows, ""])
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
