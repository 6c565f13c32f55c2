"""One command, three methods, one table: does 3dsr beat per-frame SR on the same scene?

  bicubic     the bicubic-upsampled LR as HR targets (no diffusion), then 3DGS at HR
  per-frame   the SR backend's own sampling, view by view, as HR targets: per-frame SR + 3DGS
  3dsr        the same backend and sampler, each step guided by the 3D-consistent renders

All three share the schedule (N0 LR warm-up + K x M HR iterations), the seed and the 3DGS settings; they
differ only in where the HR targets come from. The LR warm-up does not depend on the method, so by default it
is trained once and every method's HR phases start from its checkpoint (the same scene for all three, and
N0 iterations instead of 3 x N0). Each run is scored by threedsr_ns.evaluation (PSNR/SSIM at
GT size on the test views, fidelity to the LR input, multi-view consistency).

    python scripts/compare.py --data data/fern --out compare --backend sd-x4-upscaler

Writes <out>/compare.json, <out>/compare.md, <out>/crops.png (a crop of the first test view: GT and
each method's render) and <out>/evaluate_<method>/metrics.json/.md (scripts/evaluate.py's full report of each run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import tyro
from PIL import Image, ImageDraw

from threedsr_ns.config import threedsr_trainer_config
from threedsr_ns.evaluation import evaluate_run, load_run, read_image
from threedsr_ns.evaluation_report import write_report
from threedsr_ns.pipeline import ThreeDSRPipelineConfig
from threedsr_ns.runs import quiet, release_gpu_memory, setup_trainer

METHODS = ("bicubic", "per-frame", "3dsr")


@dataclass
class Args:
    data: Path
    """A prepared scene (scripts/prepare_llff.py): images/, gt/, transforms.json, split.json."""
    out: Path
    backend: str = "sd-x4-upscaler"
    """The SR backend of the per-frame and 3dsr runs (see --pipeline.sr-backend)."""
    warmup_iters: int = ThreeDSRPipelineConfig.warmup_iters
    """N0; the defaults of N0, K and M are `ns-train 3dsr`'s own (the paper's schedule)."""
    denoise_steps: int = ThreeDSRPipelineConfig.denoise_steps
    """K"""
    phase_iters: int = ThreeDSRPipelineConfig.phase_iters
    """M"""
    methods: Tuple[str, ...] = METHODS
    share_warmup: bool = True
    """Train the LR warm-up once (runs/.../warm-up) and start every method from its checkpoint."""
    crop: int = 128
    """Side of the square crop (GT pixels) shown in crops.png."""
    jobs: int = 1
    """Train and score this many methods at once, each in its own process, after the shared warm-up. A nerfstudio
    training process keeps an H100 only ~10% busy (its iterations are bound by Python and kernel launches), so
    methods run side by side nearly for free; start CUDA MPS first (`nvidia-cuda-mps-control -d`) for the full
    gain. Each process gets cpu_count / jobs CPU threads unless OMP_NUM_THREADS is set."""


def train(method: str, args: Args, warmup_checkpoint: Optional[Path] = None) -> Path:
    """Train one method (or, for method "warm-up", only the LR warm-up) and return its config.yml."""
    config = threedsr_trainer_config()
    pipeline = config.pipeline
    pipeline.datamanager.data = args.data
    pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = args.warmup_iters, args.denoise_steps, args.phase_iters
    pipeline.sr_backend = args.backend if method in ("per-frame", "3dsr") else "bicubic"  # none runs before N0
    pipeline.mode = "3dsr" if method == "3dsr" else "per-frame"
    if method == "warm-up":
        config.stop_at = args.warmup_iters
    config.load_checkpoint = warmup_checkpoint
    quiet(config, args.out / "runs", method)
    trainer = setup_trainer(config)
    trainer.train()
    release_gpu_memory()
    return Path(trainer.base_dir) / "config.yml"


def train_and_score(method: str, args: Args, warmup_checkpoint: Optional[Path]) -> Tuple[Path, dict]:
    config = train(method, args, warmup_checkpoint)
    result = evaluate_run(config, args.data)
    write_report(result, args.out / f"evaluate_{method}")  # per view, as scripts/evaluate.py writes it
    return config, result


def _in_worker(threads: int, method: str, args: Args, warmup_checkpoint: Optional[Path]) -> Tuple[Path, dict]:
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)  # jobs processes with every core each thrash the CPU
    return train_and_score(method, args, warmup_checkpoint)


def train_and_score_in_parallel(args: Args, warmup_checkpoint: Optional[Path]) -> Iterator[Tuple[str, Path, dict]]:
    """Each method in a process of its own (spawned: CUDA cannot be forked), yielded as it finishes. A method that
    fails is reported at the end, after the others have been scored."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    failed = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_in_worker, threads, m, args, warmup_checkpoint): m for m in args.methods}
        for future in as_completed(futures):
            try:
                yield (futures[future], *future.result())
            except Exception as error:  # noqa: BLE001 - the other methods' scores are still worth writing
                failed.append(f"{futures[future]}: {type(error).__name__}: {error}")
    if failed:
        raise SystemExit("methods that failed (the others are in compare.json):\n" + "\n".join(failed))


def last_checkpoint(config: Path) -> Path:
    return sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]


def crops_figure(configs: Dict[str, Path], data: Path, size: int) -> Image.Image:
    """GT | each method's render, on the centre crop of the first test view."""
    name = json.loads((data / "split.json").read_text())["test"][0]
    gt = read_image(data / "gt" / name)
    h, w = gt.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    panels = [("GT", gt)]
    for method, config in configs.items():
        pipeline, _ = load_run(config, data)
        index = [Path(f).name for f in pipeline.datamanager.eval_dataset._dataparser_outputs.image_filenames].index(name)
        with torch.no_grad():
            render = pipeline.model.get_outputs_for_camera(pipeline.datamanager.eval_dataset.cameras[index : index + 1])["rgb"]
        panels.append((method, render.cpu()))
    figure = Image.new("RGB", (size * len(panels), size + 16), "white")
    draw = ImageDraw.Draw(figure)
    for j, (title, image) in enumerate(panels):
        crop = (image[top : top + size, left : left + size].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        figure.paste(Image.fromarray(crop), (j * size, 16))
        draw.text((j * size + 3, 2), title, fill="black")
    return figure


def write_table(args: Args, results: Dict[str, dict]) -> str:
    """compare.md and compare.json for the methods scored so far, in --methods order; returns the Markdown."""
    results = {m: results[m] for m in args.methods if m in results}
    keys = ("psnr", "ssim", "lpips", "lr_psnr", "sr_target_disagreement", "render_disagreement")
    table = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for method, result in results.items():
        cells = [("-" if result["mean"][k] is None else f"{result['mean'][k]:.4f}") for k in keys]
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    shared = "; one shared LR warm-up" if args.share_warmup else ""
    header = (f"# {args.data.name}: bicubic vs per-frame SR vs 3dsr ({args.backend}; N0={args.warmup_iters}, "
              f"K={args.denoise_steps}, M={args.phase_iters}{shared})\n\nsr_target_disagreement: multi-view disagreement "
              f"of the final HR targets (lower = more consistent). {next(iter(results.values()))['lpips_note'] or ''}\n\n")
    markdown = header + "\n".join(table) + "\n"
    (args.out / "compare.md").write_text(markdown)
    (args.out / "compare.json").write_text(json.dumps({m: r["mean"] for m, r in results.items()}, indent=2))
    return markdown


def main() -> None:
    args = tyro.cli(Args)
    unknown = set(args.methods) - set(METHODS)
    if unknown or not args.methods:
        what = f"unknown methods {sorted(unknown)}" if unknown else "no methods given"
        raise SystemExit(f"{what}; choose one or more of {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    warmup = last_checkpoint(train("warm-up", args)) if args.share_warmup else None
    configs: Dict[str, Path] = {}
    results: Dict[str, dict] = {}
    if args.jobs > 1:
        finished = train_and_score_in_parallel(args, warmup)
    else:
        finished = ((m, *train_and_score(m, args, warmup)) for m in args.methods)
    for method, config, result in finished:
        configs[method], results[method] = config, result
        markdown = write_table(args, results)  # after each method: a run cut short keeps the finished scores
    crops_figure({m: configs[m] for m in args.methods}, args.data, args.crop).save(args.out / "crops.png")
    print(markdown)


if __name__ == "__main__":
    main()
