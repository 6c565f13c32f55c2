"""What 3dsr costs on one GPU, on a prepared LLFF scene (scripts/prepare_llff.py).

Runs, each through nerfstudio's own trainer, timed from construction (models loaded) to the last step:
  3dsr           the paper's schedule (N0 LR + K x M HR) with the full-size SD x4 upscaler architecture in
                 RANDOM-WEIGHTS mode: its cost, never its quality
  no-diffusion   the same schedule with the bicubic backend: the same 3DGS work without the diffusion model
  splatfacto     nerfstudio's splatfacto at GT size (the HR anchor)

    python scripts/benchmark.py all --data data/fern --out bench         # everything, then the summary
    python scripts/benchmark.py run --kind 3dsr --data data/fern --out bench
    python scripts/benchmark.py summarize --out bench --json benchmarks/results/h100-fern.json
    python scripts/benchmark.py run --kind no-diffusion --data data/fern --out prof --warmup-iters 3000 \
        --denoise-steps 1 --phase-iters 400 --kernel-profile 300 50     # where an HR iteration's GPU time goes

Each run writes <out>/<kind>.json; `summarize` merges them into one JSON and a Markdown table beside it.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import torch
import tyro

from threedsr_ns.config import threedsr_trainer_config
from threedsr_ns.dataparser import ThreeDSRDataParserConfig
from threedsr_ns.model import OfflineSplatfactoModel
from threedsr_ns.pipeline import ThreeDSRPipelineConfig
from threedsr_ns.runs import quiet, release_gpu_memory, setup_trainer
from threedsr_ns.timing import IterationRecorder, KernelProfile, kernel_table

Kind = Literal["3dsr", "no-diffusion", "splatfacto"]
KINDS = ("3dsr", "no-diffusion", "splatfacto")


def make_config(kind: Kind, data: Path, out: Path, warmup: int, steps: int, phase: int, splatfacto_iters: int):
    if kind == "splatfacto":
        from nerfstudio.configs.method_configs import method_configs

        config = copy.deepcopy(method_configs["splatfacto"])
        config.pipeline.model._target = OfflineSplatfactoModel  # its LPIPS from converted weights: no download
        config.pipeline.datamanager.dataparser = ThreeDSRDataParserConfig(
            load_3D_points=True, eval_mode="interval", eval_interval=8, downscale_factor=1)
        config.pipeline.datamanager.data = data / "transforms_gt.json"
        config.max_num_iterations = splatfacto_iters
    else:
        config = threedsr_trainer_config()
        p = config.pipeline
        p.sr_backend = "sd-x4-upscaler-random" if kind == "3dsr" else "bicubic"
        p.warmup_iters, p.denoise_steps, p.phase_iters = warmup, steps, phase
        p.datamanager.data = data
        config.max_num_iterations = p.schedule.total_iterations
    return quiet(config, out / "runs", kind)


def run(kind: Kind, data: Path, out: Path, warmup: int, steps: int, phase: int, splatfacto_iters: int,
        profile: bool = False, kernel_profile: Optional[Tuple[int, int]] = None) -> dict:
    config = make_config(kind, data, out, warmup, steps, phase, splatfacto_iters)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = setup_trainer(config)
    recorder = IterationRecorder(trainer)
    kernels = None
    if kernel_profile is not None:  # from the first HR step on (splatfacto: from step 0)
        first = 0 if kind == "splatfacto" else warmup
        kernels = KernelProfile(trainer, first + kernel_profile[0], kernel_profile[1])
    setup_s = time.perf_counter() - start
    if profile:  # where the trainer's per-iteration time goes (Python side), top 40 by cumulative time
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(trainer.train)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        (out / f"{kind}.profile.txt").write_text(text.getvalue())
    else:
        trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall_s = time.perf_counter() - start

    result = {"kind": kind, "wall_s": wall_s, "setup_s": setup_s, "gaussians": recorder.gaussians,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    if kind == "splatfacto":
        result["phases"] = {"gt": recorder.ms_per_iteration(0, splatfacto_iters)}
    else:
        pipeline = trainer.pipeline
        schedule = pipeline.schedule
        starts = schedule.guidance_starts + [schedule.total_iterations]
        result["phases"] = {"lr_warmup": recorder.ms_per_iteration(0, schedule.warmup_iters)}
        for k in range(schedule.denoise_steps):
            result["phases"][f"hr_{k + 1}"] = recorder.ms_per_iteration(starts[k], starts[k + 1])
        result["guidance"] = pipeline.guidance_log
        result["backend"] = pipeline.config.sr_backend
        result["random_weights"] = bool(getattr(pipeline.backend, "random_weights", False))
        result["schedule"] = {"warmup_iters": warmup, "denoise_steps": steps, "phase_iters": phase}
    if kernels is not None:
        if not kernels.summary:
            raise SystemExit(f"--kernel-profile {kernel_profile[0]} {kernel_profile[1]}: the run ended before step "
                             f"{kernels.stop - 1}; profile fewer steps or train longer")
        result["kernel_profile"] = kernels.summary
        table = kernel_table(kernels.summary)
        (out / f"{kind}.kernels.md").write_text(table)
        print(table)
    (out / f"{kind}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "gaussians"}, indent=2))
    return result


def _hr_median(result: dict) -> Optional[float]:
    values = [p["median_ms"] for name, p in result["phases"].items() if name.startswith("hr_") and p]
    return statistics.median(values) if values else None


def summarize(out: Path, json_path: Optional[Path], command: str) -> dict:
    runs = {k: json.loads((out / f"{k}.json").read_text()) for k in KINDS if (out / f"{k}.json").exists()}
    full, none, anchor = runs.get("3dsr"), runs.get("no-diffusion"), runs.get("splatfacto")
    summary: dict = {"device": next(iter(runs.values()))["device"] if runs else None, "command": command}
    if full:
        summary.update(wall_s_3dsr=full["wall_s"], lr_ms_per_iter_3dsr=full["phases"]["lr_warmup"].get("median_ms"),
                       hr_ms_per_iter_3dsr=_hr_median(full), guidance_3dsr=full["guidance"],
                       random_weights=full["random_weights"], schedule=full["schedule"])
    if none:
        summary.update(wall_s_no_diffusion=none["wall_s"], lr_ms_per_iter_no_diffusion=none["phases"]["lr_warmup"].get("median_ms"),
                       hr_ms_per_iter_no_diffusion=_hr_median(none))
    if full and none:
        summary["ratio"] = full["wall_s"] / none["wall_s"]
    if anchor:
        summary["hr_ms_per_iter_splatfacto"] = anchor["phases"]["gt"].get("median_ms")
        summary["wall_s_splatfacto"] = anchor["wall_s"]
    peaks = [r["peak_gpu_mem_gb"] for r in runs.values() if r.get("peak_gpu_mem_gb") is not None]
    summary["peak_gpu_mem_gb"] = max(peaks) if peaks else None
    summary["runs"] = runs
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
        json_path.with_suffix(".md").write_text(markdown_table(summary))
    print(markdown_table(summary))
    return summary


def markdown_table(summary: dict) -> str:
    lines = [f"# 3dsr cost on {summary['device']}", "", f"`{summary['command']}`", "",
             "Random weights: the SD x4 architecture's cost only, never its quality." if summary.get("random_weights") else "",
             "", "| run | wall s | setup s | phase | median ms/it | mean ms/it | iterations | Gaussians at end |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, result in summary["runs"].items():
        last = result["gaussians"][max(result["gaussians"], key=int)] if result["gaussians"] else "-"
        for name, p in result["phases"].items():
            if p:
                lines.append(f"| {kind} | {result['wall_s']:.0f} | {result['setup_s']:.1f} | {name} | {p['median_ms']:.2f} | "
                             f"{p['mean_ms']:.2f} | {p['iterations']} | {last} |")
    if summary.get("guidance_3dsr"):
        lines += ["", "| guidance step | " + " | ".join(k for k in summary["guidance_3dsr"][-1] if k not in ("step", "iteration")) + " |",
                  "|---|" + "---|" * (len(summary["guidance_3dsr"][-1]) - 2)]
        for g in summary["guidance_3dsr"]:
            lines.append(f"| {g['step']} | " + " | ".join(f"{v:.3f} s" for k, v in g.items() if k not in ("step", "iteration")) + " |")
    keys = ["wall_s_3dsr", "wall_s_no_diffusion", "ratio", "lr_ms_per_iter_3dsr", "hr_ms_per_iter_3dsr",
            "hr_ms_per_iter_splatfacto", "peak_gpu_mem_gb"]
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {summary[k]:.3f} |" for k in keys if isinstance(summary.get(k), float)]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    data: Path
    """Prepared scene (scripts/prepare_llff.py output)."""
    out: Path
    kind: Kind = "3dsr"
    warmup_iters: int = ThreeDSRPipelineConfig.warmup_iters
    """N0; the defaults of N0, K and M are `ns-train 3dsr`'s own (the paper's schedule)."""
    denoise_steps: int = ThreeDSRPipelineConfig.denoise_steps
    """K"""
    phase_iters: int = ThreeDSRPipelineConfig.phase_iters
    """M"""
    splatfacto_iters: int = 20000
    profile: bool = False
    """Run under cProfile and write <out>/<kind>.profile.txt (slows the run: not for the timing figures)."""
    kernel_profile: Optional[Tuple[int, int]] = None
    """OFFSET COUNT: profile COUNT iterations from OFFSET steps after the warm-up (splatfacto: after step 0) with
    torch.profiler; the top kernels by device time go into <out>/<kind>.kernels.md and the run's JSON (those
    iterations run slower under the profiler: leave them out of timing figures)."""


@dataclass
class All(Run):
    json: Optional[Path] = None
    """Where summarize writes the merged JSON (and the Markdown table beside it)."""


@dataclass
class Summarize:
    out: Path
    json: Optional[Path] = None


def main() -> None:
    args = tyro.extras.subcommand_cli_from_dict({"run": Run, "all": All, "summarize": Summarize})
    command = "python " + " ".join(sys.argv)
    if isinstance(args, Summarize):
        summarize(args.out, args.json, command)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = KINDS if isinstance(args, All) else (args.kind,)
    for kind in kinds:
        run(kind, args.data, args.out, args.warmup_iters, args.denoise_steps, args.phase_iters, args.splatfacto_iters,
            args.profile, args.kernel_profile)
        release_gpu_memory()
    if isinstance(args, All):
        summarize(args.out, args.json, command)


if __name__ == "__main__":
    main()
