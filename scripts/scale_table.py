"""Issue 14's scale table: what 3dsr costs at the paper's size and on a real capture, from finished GPU runs.

    R=benchmarks/results S9=$R/paper-protocol-isolated-s9 S10=$R/paper-protocol-isolated-s10 \
        S11=$R/paper-protocol-isolated-s11 S12=$R/paper-protocol-isolated-s12
    python scripts/scale_table.py --llff $S12/fern $S11/fern $S10/fern $S9-png1/fern $S9-png6/fern \
        $R/paper-protocol-isolated/fern $R/paper-protocol-sd4-random-isolated/fern \
        $R/paper-protocol-sd4-random-n30000/fern $R/paper-protocol-sd4-random-n30000-m3000/fern \
        $R/paper-protocol/fern $R/paper-protocol/flower $R/paper-protocol-sd4-random/fern \
        --fox $S12/fox $S11/fox $S10/fox $S9-png1/fox $S9-png6/fox $R/paper-protocol-isolated/fox \
        $R/paper-protocol-isolated-m2500/fox $R/paper-protocol-isolated-default/fox \
        --fox-runs $R/paper-protocol-isolated/fox-per-frame \
        --isolated $S12/fern $S11/fern $S10/fern $S9-png1/fern $S9-png6/fern $R/paper-protocol-isolated/fern \
        $R/paper-protocol-sd4-random-isolated/fern $R/paper-protocol-sd4-random-n30000/fern \
        $R/paper-protocol-sd4-random-n30000-m3000/fern $S12/fox $S11/fox $S10/fox $S9-png1/fox $S9-png6/fox \
        $R/paper-protocol-isolated/fox $R/paper-protocol-isolated-m2500/fox $R/paper-protocol-isolated-default/fox \
        $R/paper-protocol-isolated/fox-per-frame --no-baseline $R/paper-protocol-sd4-random-n30000/fern \
        --fox-scores $R/fox-x4-shared-gpu-scores.json --device "NVIDIA H200" \
        --note "$(cat $R/scale-h200.note.txt)" --out $R/scale-h200   # the committed table

Reads scripts/compare.py's <folder>/compare.json of each run (each method's wall time and peak GPU memory, measured by
the process that trained it, and the shared warm-up's), writes <out>.json and <out>.md. Per run:
ratio_vs_no_diffusion = 3dsr's wall time / the bicubic run's, both from the warm-up checkpoint on (the same schedule and
3DGS work, no SR model; n/a for the --no-baseline folders); whole_run_ratio counts the shared LR warm-up in both;
per_method also holds each method's final Gaussian count and median ms per iteration where compare.json has them (runs
since commit 40babb6). --isolated names the
folders whose methods ran one process at a time on the GPU (run_llff_quality.sh with ISOLATED=1: since session 12 each
method in a fresh process of its own, compare.py --separate-processes; before, one after another in the warm-up's
process); the others shared it.
The fox capture's row also holds each method's quality against the original photos, with its wall time and peak GPU
memory: from --fox, then from the --fox-runs folders and the --fox-scores JSON (runs with their own warm-up). A
method found in more than one is listed once per run (`other_runs`), since runs from different warm-ups differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import tyro

PACE_KEYS = ("wall_s", "peak_gpu_mem_gb", "gaussians", "ms_per_iteration")  # the last two: None before 40babb6
FOX_KEYS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists", "lr_psnr", "hf_energy_ratio_render", "detail_consistency")


@dataclass
class Args:
    llff: Tuple[Path, ...]
    """compare.py output folders of paper-protocol LLFF scenes."""
    out: Path
    fox: Tuple[Path, ...] = ()
    """compare.py output folders of the fox x4 capture (scripts/prepare_capture.py), each a row of the cost table;
    the first one's methods head the fox quality table, the others' join it as other runs."""
    fox_runs: Tuple[Path, ...] = ()
    """More compare.py folders of the fox capture (each with its own warm-up), e.g. a method run alone later."""
    fox_scores: Optional[Path] = None
    """score_test_views.py-style JSON {method: {"mean": {...}, "hf_energy_ratio_render": ...}, "_about": "..."} of an
    earlier fox run (one whose timings were not kept, listed as on a shared GPU): its methods are added to the fox
    metrics with their source, beside the same methods' other runs."""
    isolated: Tuple[Path, ...] = ()
    """Those of the folders above whose methods ran one at a time on the GPU."""
    no_baseline: Tuple[Path, ...] = ()
    """Those of the folders above whose bicubic run is no no-diffusion baseline (it shared the GPU with a process left
    running, say): their ratios are n/a, and their per_method still lists that run's figures."""
    device: str = ""
    note: str = ""
    """How the runs were made: command, concurrency, what was not run."""


def run_entry(folder: Path, isolated: bool, baseline: bool = True) -> dict:
    result = json.loads((folder / "compare.json").read_text())
    methods = result["methods"]
    ours, plain = methods["3dsr"], methods.get("bicubic")
    warmup = result.get("warmup", {}).get("wall_s")
    ratio = whole = None
    if baseline and plain and plain.get("wall_s"):
        ratio = ours["wall_s"] / plain["wall_s"]
        if warmup is not None:
            whole = (warmup + ours["wall_s"]) / (warmup + plain["wall_s"])
    return {"render_size": result["render_size"], "protocol": result["protocol"], "backend": result["backend"],
            "schedule": result["schedule"], "isolated": isolated, "wall_s": ours["wall_s"],
            "ratio_vs_no_diffusion": ratio, "whole_run_ratio": whole,
            "warmup_wall_s": warmup, "peak_gpu_mem_gb": ours["peak_gpu_mem_gb"], "baseline_valid": baseline,
            "per_method": {m: {k: v.get(k) for k in PACE_KEYS} for m, v in methods.items()},
            "folder": str(folder)}


def fox_metrics(folder: Path, more: Tuple[Path, ...], earlier: Optional[Path], isolated: set) -> dict:
    """{method: {FOX_KEYS..., wall_s, peak_gpu_mem_gb, isolated, source, other_runs: [the same, of other runs]}}."""
    found = []  # (method, row), in the order the runs are given
    for path in (folder, *more):
        for method, v in json.loads((path / "compare.json").read_text())["methods"].items():
            found.append((method, {**{k: v.get(k) for k in FOX_KEYS}, "wall_s": v.get("wall_s"),
                                   "peak_gpu_mem_gb": v.get("peak_gpu_mem_gb"),
                                   "isolated": path.resolve() in isolated, "source": str(path)}))
    if earlier is not None:
        for method, r in json.loads(earlier.read_text()).items():
            if not method.startswith("_"):  # "_about": where the scores came from
                found.append((method, {**{k: r["mean"].get(k) for k in FOX_KEYS if k in r["mean"]},
                                       "hf_energy_ratio_render": r.get("hf_energy_ratio_render"), "wall_s": None,
                                       "peak_gpu_mem_gb": None, "isolated": False, "source": str(earlier)}))
    metrics: dict = {}
    for method, row in found:
        if method in metrics:
            metrics[method]["other_runs"].append(row)
        else:
            metrics[method] = {**row, "other_runs": []}
    return metrics


def _fmt(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}x"  # 3 decimals: the target is <= 1.10x


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    isolated = {p.resolve() for p in args.isolated}
    no_baseline = {p.resolve() for p in args.no_baseline}
    table: dict = {"device": args.device, "note": args.note, "runs": {}}
    for folder in (*args.llff, *args.fox):
        entry = run_entry(folder, folder.resolve() in isolated, folder.resolve() not in no_baseline)
        stem = "fox-x4" if folder in args.fox else f"{folder.name}-paper"
        name = f"{stem}-{entry['backend']}" + ("-isolated" if entry["isolated"] else "")
        if name in table["runs"]:  # the same scene and setting again (e.g. later code): named after its folder too
            name = f"{name}@{folder.parent.name}"
        if name in table["runs"]:
            raise SystemExit(f"{folder}: a run named {name} is already in the table")
        if folder in args.fox:
            entry["protocol"] = "capture x4 (LR = photos / 4, GT = the photos)"
            if folder == args.fox[0]:
                entry["metrics"] = fox_metrics(folder, (*args.fox[1:], *args.fox_runs), args.fox_scores, isolated)
        table["runs"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(table, indent=2))
    rows = ["| run | render size | schedule | GPU | 3dsr wall (s) | vs no diffusion | whole run (with warm-up) | "
            "peak GPU (GB) |", "|---|---|---|---|---|---|---|---|"]
    for name, run in table["runs"].items():
        w, h = run["render_size"]
        sched = run["schedule"]
        rows.append(f"| {name} | {w}x{h} | N0={sched['N0']}, K={sched['K']}, M={sched['M']} | "
                    f"{'alone' if run['isolated'] else 'shared'} | {_fmt(run['wall_s'], 0)} | "
                    f"{_ratio(run['ratio_vs_no_diffusion'])} | {_ratio(run['whole_run_ratio'])} | "
                    f"{_fmt(run['peak_gpu_mem_gb'], 1)} |")
    text = [f"# 3dsr at scale ({args.device or 'device not given'})", "", args.note, "", *rows, ""]
    for name, run in table["runs"].items():
        if "metrics" not in run:
            continue
        text += [f"{name}: the capture against its original photos (resampled into the undistorted render frame):", "",
                 "| method | PSNR (dB) | SSIM | LPIPS-Alex | LPIPS-VGG | DISTS | LR PSNR (dB) | wall (s) | GPU | from |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for method, first in run["metrics"].items():
            for i, m in enumerate([first, *first["other_runs"]]):
                label = method if i == 0 else f"{method} (another run)"
                gpu = "alone" if m["isolated"] else "shared"
                text.append(f"| {label} | {_fmt(m.get('psnr'), 3)} | {_fmt(m.get('ssim'), 4)} | "
                            f"{_fmt(m.get('lpips_alex'), 4)} | {_fmt(m.get('lpips_vgg'), 4)} | {_fmt(m.get('dists'), 4)} | "
                            f"{_fmt(m.get('lr_psnr'), 2)} | {_fmt(m.get('wall_s'), 0)} | {gpu} | {m['source']} |")
        text.append("")
    Path(f"{args.out}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
