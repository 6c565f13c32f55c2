"""One command, several methods, one table: does 3dsr beat per-frame SR on the same scene?

  bicubic                the bicubic-upsampled LR as HR targets (no diffusion), then 3DGS at HR
  per-frame              the paper's per-frame baseline: every view sampled through all K steps of the same backend and
                         sampler on its own, then 3DGS trains the K x M HR iterations on those final images
  per-frame-interleaved  ablation: 3dsr's schedule, each step toward the view's own previous SR target, not the render
  realesrgan             Real-ESRGAN x4plus per frame (a real pretrained SR network, deterministic), then 3DGS
  3dsr                   the same backend and sampler, each step guided by the 3D-consistent renders
  per-frame-v2, 3dsr-v2  per-frame and 3dsr with the compact-v2 prior (residual diffusion on Real-ESRGAN) as backend
  hr-3dgs                the ceiling, not a competitor: the same model trained on the GT train images at GT size for
                         N0 + K x M iterations from scratch (needs the GT of every view: prepare_llff --gt-views all)

All share the schedule (N0 LR warm-up + K x M HR iterations), the seed, the loss and the densification phases; they
differ only in where the HR targets come from. The LR warm-up does not depend on the method, so by default it
is trained once and every method's HR phases start from its checkpoint (the same scene for all, and N0 iterations
instead of one warm-up each). That warm-up also gives the one geometry every method's SR targets are warped with for
the detail-consistency score (its depth rendered at HR): no run grades itself. Each run is scored by
threedsr_ns.evaluation (PSNR / SSIM / LPIPS-Alex / LPIPS-VGG / DISTS at GT size on the test views, fidelity to the
LR input, detail consistency and high-frequency energy) and timed (wall time, peak GPU memory of its process).

    python scripts/compare.py --data data/fern --out compare --backend sd-x4-upscaler

A job longer than one stretch of device time splits at the warm-up: `--stop-after-warmup` trains only the warm-up,
and a later `--warmup-run <out>/runs/<scene>/3dsr/warm-up` (that folder carried to the new machine) trains and scores
the methods from it.

Writes <out>/compare.json, <out>/compare.md, <out>/crops.png (a crop of the first test view: GT and
each method's render) and <out>/evaluate_<method>/metrics.json/.md (scripts/evaluate.py's full report of each run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import tyro
from PIL import Image, ImageDraw

from threedsr_ns.config import threedsr_trainer_config
from threedsr_ns.evaluation import evaluate_run, load_run, read_gt, save_shared_geometry
from threedsr_ns.evaluation_report import write_report
from threedsr_ns.llff import lr_names
from threedsr_ns.pipeline import ThreeDSRPipelineConfig
from threedsr_ns.runs import quiet, release_gpu_memory, setup_trainer
from threedsr_ns.timing import IterationRecorder

METHOD_SETTINGS: Dict[str, Dict[str, str]] = {
    "bicubic": {"sr_backend": "bicubic"},
    "per-frame": {"mode": "per-frame"},
    "per-frame-interleaved": {"mode": "per-frame-interleaved"},
    "realesrgan": {"sr_backend": "realesrgan"},
    "3dsr": {"mode": "3dsr"},
    "per-frame-v2": {"mode": "per-frame", "sr_backend": "compact-v2"},
    "3dsr-v2": {"mode": "3dsr", "sr_backend": "compact-v2"},
}
"""Each method's pipeline settings; the others are shared (a diffusion method's backend is --backend)."""
HR_3DGS = "hr-3dgs"
METHODS = (*METHOD_SETTINGS, HR_3DGS)
DEFAULT_METHODS = ("bicubic", "per-frame", "3dsr")
TABLE_KEYS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists", "detail_consistency", "hf_energy_ratio",
              "hf_energy_ratio_render", "lr_psnr", "wall_s", "peak_gpu_mem_gb")


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
    methods: Tuple[str, ...] = DEFAULT_METHODS
    """Any of bicubic, per-frame, per-frame-interleaved, realesrgan, 3dsr, per-frame-v2, 3dsr-v2, hr-3dgs."""
    v2_model_path: Optional[Path] = None
    """The compact-v2 folder of the -v2 methods; default the package's."""
    share_warmup: bool = True
    """Train the LR warm-up once (runs/.../warm-up) and start every method from its checkpoint."""
    stop_after_warmup: bool = False
    """Train only the shared warm-up, then stop: the first half of a job split across device sessions. Its run
    folder, runs/<scene>/3dsr/warm-up (config.yml, warmup.json: its cost, nerfstudio_models/), is what --warmup-run
    takes."""
    warmup_run: Optional[Path] = None
    """A warm-up run folder from an earlier --stop-after-warmup (e.g. carried back from another device session):
    every method starts from its last checkpoint, and the shared geometry is rendered from it here, instead of
    training a warm-up."""
    crop: int = 128
    """Side of the square crop (GT pixels) shown in crops.png."""
    jobs: int = 1
    """Train and score this many methods at once, each in its own process, after the shared warm-up. A nerfstudio
    training process keeps an H100 only ~10% busy (its iterations are bound by Python and kernel launches), so
    methods run side by side nearly for free; start CUDA MPS first (`nvidia-cuda-mps-control -d`) for the full
    gain. Each process gets cpu_count / jobs CPU threads unless OMP_NUM_THREADS is set."""
    separate_processes: bool = False
    """Train and score every method in a fresh process of its own (spawned; one at a time with --jobs 1), as
    separate `ns-train` runs are: each method's wall time then includes its own process's start-up (CUDA, the
    imports its SR model needs), and not what the methods before it left in the process. The cost table's
    timings use it."""


def method_backend(method: str, args: Args) -> str:
    """The SR backend behind a method's HR targets: its own setting, else --backend; hr-3dgs has none (GT photos)."""
    return "none" if method == HR_3DGS else METHOD_SETTINGS[method].get("sr_backend", args.backend)


def train(method: str, args: Args, warmup_checkpoint: Optional[Path] = None) -> Tuple[Path, Dict[str, Optional[float]]]:
    """Train one method (or, for method "warm-up", only the LR warm-up); its config.yml and its cost: wall time of
    the training (from the warm-up checkpoint on), the peak GPU memory of this process while it trained, the Gaussian
    count it ended with and the median wall time of one of its iterations (`ms_per_iteration`, IterationRecorder:
    what tells a slower iteration from a longer start-up or slower guidance steps)."""
    config = threedsr_trainer_config()
    pipeline = config.pipeline
    pipeline.datamanager.data = args.data
    pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = args.warmup_iters, args.denoise_steps, args.phase_iters
    pipeline.sr_backend = args.backend
    for name, value in METHOD_SETTINGS.get(method, {"sr_backend": "bicubic"}).items():  # no SR runs before N0
        setattr(pipeline, name, value)
    if pipeline.sr_backend == "compact-v2" and args.v2_model_path is not None:
        pipeline.sr_model_path = str(args.v2_model_path)
    if method == "warm-up":
        config.stop_at = args.warmup_iters
    if method == HR_3DGS:  # no SR at all: the whole run is "warm-up" on the GT-size images, cut before guidance
        pipeline.datamanager.data = args.data / "transforms_gt.json"
        total = pipeline.schedule.total_iterations
        pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = total, 1, 1
        config.stop_at, warmup_checkpoint = total, None
    config.load_checkpoint = warmup_checkpoint
    quiet(config, args.out / "runs", method)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = setup_trainer(config)
    recorder = IterationRecorder(trainer)
    trainer.train()
    pace = recorder.ms_per_iteration(0, recorder.steps[-1] + 1) if recorder.steps else {}  # every step it trained
    cost = {"wall_s": time.perf_counter() - start,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
            "gaussians": int(trainer.pipeline.model.num_points),
            "ms_per_iteration": pace.get("median_ms")}
    release_gpu_memory()
    return Path(trainer.base_dir) / "config.yml", cost


def train_and_score(method: str, args: Args, warmup_checkpoint: Optional[Path]) -> Tuple[Path, dict]:
    config, cost = train(method, args, warmup_checkpoint)
    geometry = args.out / GEOMETRY_FILE
    result = evaluate_run(config, args.data, geometry=geometry if geometry.is_file() else None)
    result["mean"].update(cost)
    write_report(result, args.out / f"evaluate_{method}")  # per view, as scripts/evaluate.py writes it
    return config, result


def _in_worker(threads: int, method: str, args: Args, warmup_checkpoint: Optional[Path]) -> Tuple[Path, dict]:
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)  # jobs processes with every core each thrash the CPU
    return train_and_score(method, args, warmup_checkpoint)


def method_pool(args: Args) -> ProcessPoolExecutor:
    """--jobs spawned worker processes (CUDA cannot be forked); with --separate-processes each worker trains one
    method and exits, so that the next method starts in a fresh process."""
    return ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                               max_tasks_per_child=1 if args.separate_processes else None)


def train_and_score_in_parallel(args: Args, warmup_checkpoint: Optional[Path]) -> Iterator[Tuple[str, Path, dict]]:
    """Each method in a worker process (`method_pool`), yielded as it finishes. A method that fails is reported at
    the end, after the others have been scored."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    failed = []
    with method_pool(args) as pool:
        futures = {pool.submit(_in_worker, threads, m, args, warmup_checkpoint): m for m in args.methods}
        for future in as_completed(futures):
            try:
                yield (futures[future], *future.result())
            except Exception as error:  # noqa: BLE001 - the other methods' scores are still worth writing
                failed.append(f"{futures[future]}: {type(error).__name__}: {error}")
    if failed:
        raise SystemExit("methods that failed (the others are in compare.json):\n" + "\n".join(failed))


GEOMETRY_FILE = "shared_geometry.pt"
"""<out>/shared_geometry.pt: the warm-up's depth of every train view at HR, used to score every method."""


def checkpoints(run: Path) -> list:
    """A run folder's nerfstudio_models/step-*.ckpt, oldest first."""
    return sorted((run / "nerfstudio_models").glob("step-*.ckpt"))


def last_checkpoint(config: Path) -> Path:
    return checkpoints(config.parent)[-1]


def crops_figure(configs: Dict[str, Path], data: Path, size: int) -> Image.Image:
    """GT | each method's render, on the centre crop of the first test view."""
    name = json.loads((data / "split.json").read_text())["test"][0]
    panels = []
    for method, config in configs.items():
        pipeline, _ = load_run(config, data)
        dataset = pipeline.datamanager.eval_dataset
        index = lr_names(data, dataset._dataparser_outputs.image_filenames).index(name)  # hr-3dgs: GT files
        camera = dataset.cameras[index : index + 1]
        if not panels:  # the GT in the frame the runs render (a distorted capture's photo undistorted into it)
            panels.append(("GT", read_gt(data, name, camera)))
        with torch.no_grad():
            render = pipeline.model.get_outputs_for_camera(camera)["rgb"]
        panels.append((method, render.cpu()))
    h, w = panels[0][1].shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    figure = Image.new("RGB", (size * len(panels), size + 16), "white")
    draw = ImageDraw.Draw(figure)
    for j, (title, image) in enumerate(panels):
        crop = (image[top : top + size, left : left + size].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        figure.paste(Image.fromarray(crop), (j * size, 16))
        draw.text((j * size + 3, 2), title, fill="black")
    return figure


def write_table(args: Args, results: Dict[str, dict], warmup_cost: Optional[dict] = None) -> str:
    """compare.md and compare.json for the methods scored so far, in --methods order; returns the Markdown.
    `warmup_cost`: the shared warm-up's wall time and peak GPU memory (every method's whole run = it + the method's)."""
    results = {m: results[m] for m in args.methods if m in results}
    table = ["| method | " + " | ".join(TABLE_KEYS) + " |", "|---|" + "---|" * len(TABLE_KEYS)]
    for method, result in results.items():
        cells = [("-" if result["mean"].get(k) is None else f"{result['mean'][k]:.4f}") for k in TABLE_KEYS]
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))
    shared = "; one shared LR warm-up" if args.share_warmup else ""
    backends = {m: method_backend(m, args) for m in results}
    backends_text = ", ".join(f"{m}: {b}" for m, b in backends.items())
    header = (f"# {args.data.name} ({first['protocol']} protocol, renders {first['render_size'][0]}x{first['render_size'][1]}): "
              f"{' vs '.join(results)} (SR backend {backends_text}; N0={args.warmup_iters}, K={args.denoise_steps}, "
              f"M={args.phase_iters}{shared})\n\ndetail_consistency: correlation of the SR targets' detail bands across "
              f"views, warped with {first['consistency']['geometry']} (higher = more consistent; 0 = independent "
              f"details). hf_energy_ratio: high-frequency energy of the SR targets (_render: of the test renders) over "
              f"the GT's. wall_s / peak_gpu_mem_gb: the method's training from the warm-up checkpoint on. "
              f"{' '.join(first['metric_notes'])}\n\n")
    markdown = header + "\n".join(table) + "\n"
    (args.out / "compare.md").write_text(markdown)
    summary = {"protocol": first["protocol"], "render_size": first["render_size"], "backend": args.backend,
               "schedule": {"N0": args.warmup_iters, "K": args.denoise_steps, "M": args.phase_iters},
               "method_backends": backends, "methods": {m: r["mean"] for m, r in results.items()}}
    if warmup_cost is not None:
        summary["warmup"] = warmup_cost
    (args.out / "compare.json").write_text(json.dumps(summary, indent=2))
    return markdown


WARMUP_COST = "warmup.json"
"""The shared warm-up's cost (train()'s: wall_s, peak_gpu_mem_gb, gaussians, ms_per_iteration), in its run folder,
for a later --warmup-run."""


def carried_warmup(run: Path, args: Args) -> Tuple[Path, Path, Optional[dict]]:
    """(config.yml, last checkpoint, cost) of a --warmup-run folder, checked before any training: it must be a
    warm-up of this schedule's N0 (a checkpoint at step N0 - 1)."""
    config, found = run / "config.yml", checkpoints(run)
    if not config.is_file() or not found:
        raise SystemExit(f"--warmup-run {run}: no config.yml or nerfstudio_models/step-*.ckpt there; pass the "
                         f"runs/<scene>/3dsr/warm-up folder of a compare.py --stop-after-warmup run")
    step = int(found[-1].stem.split("-")[1])
    if step != args.warmup_iters - 1:
        raise SystemExit(f"--warmup-run {found[-1]} is a warm-up of {step + 1} iterations, not of "
                         f"--warmup-iters {args.warmup_iters}; pass the N0 it was trained with")
    cost = run / WARMUP_COST
    return config, found[-1], json.loads(cost.read_text()) if cost.is_file() else None


def main() -> None:
    args = tyro.cli(Args)
    unknown = set(args.methods) - set(METHODS)
    if unknown or not args.methods:
        what = f"unknown methods {sorted(unknown)}" if unknown else "no methods given"
        raise SystemExit(f"{what}; choose one or more of {', '.join(METHODS)}")
    if (args.stop_after_warmup or args.warmup_run is not None) and not args.share_warmup:
        raise SystemExit("--stop-after-warmup and --warmup-run need the shared warm-up (drop --no-share-warmup)")
    args.out.mkdir(parents=True, exist_ok=True)
    warmup, warmup_cost = None, None
    if args.warmup_run is not None:
        warmup_config, warmup, warmup_cost = carried_warmup(args.warmup_run, args)
    elif args.share_warmup:
        warmup_config, warmup_cost = train("warm-up", args)
        warmup = last_checkpoint(warmup_config)
        (warmup_config.parent / WARMUP_COST).write_text(json.dumps(warmup_cost, indent=2))
        if args.stop_after_warmup:
            print(f"warm-up done in {warmup_cost['wall_s']:.1f} s: {warmup_config.parent} (for --warmup-run)")
            return
    if warmup is not None:
        save_shared_geometry(warmup_config, args.data, args.out / GEOMETRY_FILE)
    configs: Dict[str, Path] = {}
    results: Dict[str, dict] = {}
    if args.jobs > 1 or args.separate_processes:
        finished = train_and_score_in_parallel(args, warmup)
    else:
        finished = ((m, *train_and_score(m, args, warmup)) for m in args.methods)
    for method, config, result in finished:
        configs[method], results[method] = config, result
        markdown = write_table(args, results, warmup_cost)  # after each method: a run cut short keeps the finished scores
    crops_figure({m: configs[m] for m in args.methods}, args.data, args.crop).save(args.out / "crops.png")
    print(markdown)


if __name__ == "__main__":
    main()
