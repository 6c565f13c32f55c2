"""How long a guidance step's pictures hold up training: PNG writes in the training thread vs the background writer.

    python scripts/benchmark_artifacts.py --images ../shared/data/llff/fern/images_2 \
        --json benchmarks/results/artifact-writes-cpu.json

Takes the first --views photos of a folder (LLFF fern's 2016x1512 GT photos: real content, the paper protocol's SR
target size) as one step's SR targets and times, on this machine:
  sync     threedsr_ns.artifacts.save_sr_targets in the calling thread (what a guidance step did before)
  submit   what the training thread does now: ArtifactWriter.submit (the uint8 CPU copy, then the queue)
  drain    from submit until the background writer has the PNGs on disk (it overlaps the next HR iterations)
  sync_level6_one_thread   the same PNGs at PIL's default zlib level 6 on one thread (what runs did before session 9)
each --repeats times (median), and the MB on disk of one step's PNGs at both levels.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import tyro
from PIL import Image

from threedsr_ns.artifacts import PNG_COMPRESS_LEVEL, ArtifactWriter, save_sr_targets
from threedsr_ns.runs import print_and_save_json


@dataclass
class Args:
    images: Path
    """Folder of photos used as one step's SR targets."""
    views: int = 17
    """Train views per step (LLFF fern has 17)."""
    repeats: int = 3
    json: Optional[Path] = None
    """Where to write the result (also printed)."""


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.views]
    if len(files) < args.views:
        raise SystemExit(f"{args.images}: {len(files)} photos, --views {args.views} asked for")
    targets = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])
    targets = targets.permute(0, 3, 1, 2).float() / 255.0  # as the datamanager holds them: float in [0, 1]
    names = [f.name for f in files]
    sheet = Image.new("RGB", (1280, 1000), "white")
    times: dict = {"sync": [], "submit": [], "drain": [], "sync_level6_one_thread": []}
    sizes: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            start = time.perf_counter()
            save_sr_targets(Path(tmp) / f"sync{r}", targets, names)
            sheet.save(Path(tmp) / f"sync{r}.png")
            times["sync"].append(time.perf_counter() - start)
            writer = ArtifactWriter()
            start = time.perf_counter()
            writer.submit(Path(tmp) / f"async{r}.png", sheet, Path(tmp) / f"async{r}", targets, names)
            times["submit"].append(time.perf_counter() - start)
            writer.wait()
            times["drain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            save_sr_targets(Path(tmp) / f"level6_{r}", targets, names, compress_level=6, threads=1)
            times["sync_level6_one_thread"].append(time.perf_counter() - start)
        for key, folder in (("mb_level1", "sync0"), ("mb_level6", "level6_0")):
            sizes[key] = sum(f.stat().st_size for f in (Path(tmp) / folder).iterdir()) / 1e6
    h, w = targets.shape[-2:]
    result = {"views": args.views, "size": [int(w), int(h)], "images": str(args.images), "repeats": args.repeats,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "compress_level": PNG_COMPRESS_LEVEL, **{f"{k}_s": statistics.median(v) for k, v in times.items()}, **sizes}
    print_and_save_json(result, args.json)


if __name__ == "__main__":
    main()
