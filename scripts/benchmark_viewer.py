"""Does the nerfstudio viewer stay interactive at HR while 3dsr trains its 3DGS phases?

Trains a short 3dsr run (N0 LR iterations, then K HR phases of M) with nerfstudio's trainer and, during HR phases
2 and 4, a second thread that renders exactly as the viewer's render loop does (nerfstudio/viewer/
render_state_machine.py): take the trainer's train_lock, eval mode, `get_outputs_for_camera` under no_grad at the
viewer's resolution (default max_res 1024: 1024 px wide), then encode the frame as JPEG (quality 75, what the
viewer sends). Phases 1 and 3 run without it, so the cost to training shows too.

    python scripts/benchmark_viewer.py --data data/fern --json viewer.json

Writes the frame latencies (from asking for the lock to the encoded JPEG), the frames per second and the
median ms/iteration of each HR phase.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from PIL import Image

from threedsr_ns.config import threedsr_trainer_config
from threedsr_ns.runs import print_and_save_json, quiet, setup_trainer
from threedsr_ns.timing import IterationRecorder


@dataclass
class Args:
    data: Path
    """A prepared scene (scripts/prepare_llff.py)."""
    json: Path
    out: Path = Path("outputs/benchmark_viewer")
    backend: str = "compact"
    warmup_iters: int = 1000
    denoise_steps: int = 4
    phase_iters: int = 1000
    viewer_width: int = 1024
    """The width the viewer renders at (its max_res when the camera is still)."""


class ViewerLikeRenderer(threading.Thread):
    """Renders one train view at the viewer's resolution, back to back, while `active` is set."""

    def __init__(self, trainer, width: int) -> None:
        super().__init__(daemon=True)
        self.trainer, self.width = trainer, width
        self.active, self.stop = threading.Event(), threading.Event()
        self.latencies_ms: list[float] = []
        self.frame_size = (0, 0)

    def run(self) -> None:
        model = self.trainer.pipeline.model
        while not self.stop.is_set():
            if not self.active.wait(timeout=0.05):
                continue
            asked = time.perf_counter()
            with self.trainer.train_lock:
                camera = self.trainer.pipeline.datamanager.train_dataset.cameras[0:1].to(model.device)
                camera.rescale_output_resolution(self.width / int(camera.width))
                was_training = model.training
                model.eval()
                try:
                    with torch.no_grad():
                        rgb = model.get_outputs_for_camera(camera)["rgb"]
                finally:
                    if was_training:
                        model.train()
            frame = (rgb.clamp(0, 1) * 255).byte().cpu().numpy()
            Image.fromarray(frame).save(io.BytesIO(), format="JPEG", quality=75)
            self.latencies_ms.append((time.perf_counter() - asked) * 1e3)
            self.frame_size = frame.shape[1], frame.shape[0]


def main() -> None:
    args = tyro.cli(Args)
    config = threedsr_trainer_config()
    pipeline = config.pipeline
    pipeline.datamanager.data = args.data
    pipeline.sr_backend = args.backend
    pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = args.warmup_iters, args.denoise_steps, args.phase_iters
    quiet(config, args.out, "viewer")
    trainer = setup_trainer(config)
    recorder = IterationRecorder(trainer)
    renderer = ViewerLikeRenderer(trainer, args.viewer_width)
    n0, m = args.warmup_iters, args.phase_iters
    phases = [(n0 + k * m, n0 + (k + 1) * m) for k in range(args.denoise_steps)]
    with_viewer = {k for k in range(len(phases)) if k % 2 == 1}  # phases 2, 4, ...
    frames: dict[int, tuple[int, int]] = {}  # phase -> (first, end) index into renderer.latencies_ms

    def switch(step: int) -> None:
        for k, (start, stop) in enumerate(phases):
            if k in with_viewer and step == start + 1:  # after the phase's guidance step
                frames[k] = (len(renderer.latencies_ms), -1)
                renderer.active.set()
            if k in with_viewer and step == stop - 1:
                renderer.active.clear()
                frames[k] = (frames[k][0], len(renderer.latencies_ms))

    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], switch))
    renderer.start()
    trainer.train()
    renderer.stop.set()
    renderer.join()

    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "data": str(args.data), "backend": args.backend, "schedule": [n0, args.denoise_steps, m],
              "frame_size": list(renderer.frame_size), "phases": []}
    for k, (start, stop) in enumerate(phases):
        row = {"phase": k + 1, "viewer": k in with_viewer, **recorder.ms_per_iteration(start, stop)}
        if k in frames:
            lat = renderer.latencies_ms[frames[k][0]:frames[k][1]]
            row.update(frames=len(lat), frame_median_ms=statistics.median(lat), frame_p95_ms=float(np.percentile(lat, 95)),
                       frames_per_s=len(lat) / row["wall_s"] if row.get("wall_s") else None)
        result["phases"].append(row)
    print_and_save_json(result, args.json)


if __name__ == "__main__":
    main()
